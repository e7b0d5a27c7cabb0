//! The `eval` node kind: scores one or more models on one or more datasets.
//!
//! ```kdl
//! eval scores {
//!     model init; model tuned                 // compare "before" and "after"
//!     data heldout metric=exact-match         // default metric by the dataset's format
//!     data web-val metric=perplexity
//!     max-new-tokens 32; max-records 200
//! }
//! ```
//!
//! Metrics, for every model × dataset (each model tokenises with the tokenizer and chat
//! template of its own directory):
//! - **loss** = `Σ CE / Σ targets`, the token-weighted mean cross-entropy (nats) over the target
//!   tokens, encoded exactly as SFT/CPT train them ([`crate::train::examples`]): the completion
//!   and its EOS for prompt-completion, the assistant turns for messages, every token (EOS
//!   appended) for text; **perplexity** = `exp(loss)`. A text document longer than the model's
//!   `max_position_embeddings` is scored in consecutive windows of that length (the first
//!   token of a window has no context and is not a target).
//! - **exact-match** (prompt-completion; messages: the last assistant turn given the turns
//!   before it) = the fraction of records whose greedy completion ([`crate::evaluate::greedy`],
//!   at most `max-new-tokens`, stopped at EOS or at an `eos_token_id` of the model's
//!   generation_config.json) decodes, special tokens skipped, to the reference after trimming
//!   whitespace at both ends.
//! - **preference-accuracy** (preference data only) = the fraction of pairs whose chosen
//!   completion has the higher summed log-prob, `mean[logπ(yc) > logπ(yr)]`, with the mean
//!   margin `mean[logπ(yc) − logπ(yr)]` and, as `loss`, the chosen completions' token-weighted
//!   CE ([`crate::evaluate::pref`]). Pairs are tokenised as `ref-logps` / `dpo` do
//!   ([`crate::pref::encode`], `max-len` = the model's limit); pairs identical after
//!   truncation or without a completion token are skipped and counted.
//!
//! `metric` per dataset: `loss` / `perplexity` (same numbers), `exact-match` (loss too) or
//! `preference-accuracy`; unset: by format (exact-match, preference-accuracy, else loss).
//! `max-records N` keeps the first N records. Computes in f32 on every device; `batch-size`
//! is not semantic (it only changes float rounding).
//!
//! Artifact: `results.json` (parameters and, per model × dataset, format, metric, records,
//! target tokens, loss, perplexity, exact-match or preference accuracy and margin with counts,
//! and the first `examples`
//! predictions). The summary (what `temper show` prints) holds the same rows without the
//! examples, and the log gets a table.

use crate::arch::{HfModel, LoadOptions};
use crate::data::{read_normalized, Format, Message, Record, Role, Turns};
use crate::evaluate::pref::{encode_pairs, preference_scores};
pub use crate::evaluate::report::table;
use crate::evaluate::report::{finite, summary_row};
use crate::evaluate::{exact_match, greedy, loss_sum, GreedyOptions, LossSum};
use crate::pref::encode::PairEncoder;
use crate::stage::{InputArtifact, Stage, StageCtx, StageError};
use crate::tok::TokenizerDir;
use crate::train::chat::ChatTemplate;
use crate::train::examples::{tokens_text, Encoded, Encoder, Example, LossOn};
use anyhow::{anyhow, Context};
use dsl::{KindSchema, NodeDecl, ParamIssue, ParamSpec, ParamType, Value};
use serde_json::{json, Value as J};
use std::collections::BTreeSet;
use std::fs;
use tch::{Device, Kind};

/// The `eval` kind.
pub struct Eval;

/// Name of the results file in the artifact.
pub const RESULTS_FILE: &str = "results.json";

/// Metric names accepted by `data NAME metric=…`.
pub const METRICS: &[&str] = &["loss", "perplexity", "exact-match", "preference-accuracy"];

/// Fixed clock for chat templates that print a date, so results never depend on the day.
const TEMPLATE_NOW: i64 = 1_735_689_600; // 2025-01-01T00:00:00Z

fn int(min: i64) -> ParamType {
    ParamType::Int {
        min: Some(min),
        max: None,
    }
}

impl Stage for Eval {
    fn schema(&self) -> KindSchema {
        KindSchema::new("eval", 1, "eval")
            .doc("Held-out loss / perplexity, greedy exact-match and preference accuracy of one or more models on one or more datasets.")
            .param(ParamSpec::new("model", ParamType::Ref(&["model"])).repeated()
                .doc("a model to evaluate; repeat to compare several (before / after)"))
            .param(
                ParamSpec::new(
                    "data",
                    ParamType::Record {
                        positional: &["name"],
                        fields: vec![
                            ParamSpec::new("name", ParamType::Ref(&["dataset"])).doc("the dataset node"),
                            ParamSpec::new("metric", ParamType::Enum(METRICS)).optional()
                                .doc("loss | perplexity | exact-match | preference-accuracy (default by format)"),
                        ],
                    },
                )
                .repeated()
                .doc("`data NAME metric=exact-match`; repeat for each dataset"),
            )
            .param(ParamSpec::new("max-new-tokens", int(1)).default(Value::Int(32))
                .doc("exact-match: most tokens generated per record"))
            .param(ParamSpec::new("max-records", int(1)).optional()
                .doc("score only the first N records of each dataset"))
            .param(ParamSpec::new("use-chat-template", ParamType::Bool).default(Value::Bool(false))
                .doc("render prompt-completion records as a chat turn (as `sft use-chat-template` trains them)"))
            .param(ParamSpec::new("skip-long", ParamType::Bool).default(Value::Bool(false))
                .doc("skip (and count) records longer than the model's limit instead of failing"))
            .param(ParamSpec::new("examples", int(0)).default(Value::Int(5))
                .doc("predictions kept per model × dataset in results.json"))
            .param(ParamSpec::new("batch-size", int(1)).default(Value::Int(16)).non_semantic()
                .doc("records per forward pass"))
            .check(check)
    }

    fn run(&self, ctx: &StageCtx) -> Result<J, StageError> {
        run(ctx)
    }
}

/// Distinct models and datasets.
fn check(n: &NodeDecl) -> Vec<ParamIssue> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for m in n
        .params
        .get("model")
        .and_then(|v| v.as_list())
        .unwrap_or(&[])
    {
        if let Some(name) = m.as_str() {
            if !seen.insert(name.to_string()) {
                out.push(ParamIssue {
                    param: Some("model".into()),
                    message: format!("model `{name}` is listed twice"),
                    hint: Some("list each model once".into()),
                });
            }
        }
    }
    let mut seen = BTreeSet::new();
    for d in n
        .params
        .get("data")
        .and_then(|v| v.as_list())
        .unwrap_or(&[])
    {
        if let Some(name) = d
            .as_record()
            .and_then(|r| r.get("name"))
            .and_then(|v| v.as_str())
        {
            if !seen.insert(name.to_string()) {
                out.push(ParamIssue {
                    param: Some("data".into()),
                    message: format!("dataset `{name}` is listed twice"),
                    hint: Some("list each dataset once".into()),
                });
            }
        }
    }
    out
}

/// A dataset to score.
struct DataSet {
    node: String,
    format: Format,
    metric: &'static str,
    records: Vec<Record>,
}

/// Everything of a model needed to score it.
struct Scorer {
    node: String,
    model: HfModel,
    tok: TokenizerDir,
    template: Option<ChatTemplate>,
    eos: u32,
    stop: Vec<i64>,
    pad: i64,
    max_len: Option<usize>,
}

fn run(ctx: &StageCtx) -> Result<J, StageError> {
    let dev = crate::trainer::params::parse_device(&ctx.device)?;
    if let Some(t) = ctx.param("threads").as_i64().filter(|t| *t > 0) {
        tch::set_num_threads(t as i32);
    }
    let n_models = ctx.param("model").as_list().map_or(0, |l| l.len());
    let data_params = ctx.param("data").as_list().unwrap_or(&[]).to_vec();
    if n_models == 0 || data_params.is_empty() {
        return Err(StageError::user(
            "an eval node needs at least one `model` and one `data`",
            Some("e.g. `eval scores { model tuned; data heldout }`".into()),
        ));
    }
    let max_records = ctx.param("max-records").as_i64().map(|n| n as usize);
    let mut sets = Vec::new();
    for (j, d) in data_params.iter().enumerate() {
        let input = ctx.input(&format!("data[{j}].name"))?;
        let (format, mut records) = read_normalized(&input.dir)
            .with_context(|| format!("reading dataset {}", input.node))?;
        if let Some(n) = max_records {
            records.truncate(n);
        }
        let asked = d
            .as_record()
            .and_then(|r| r.get("metric"))
            .and_then(|v| v.as_str());
        let metric = pick_metric(asked, format, &input.node)?;
        sets.push(DataSet {
            node: input.node.clone(),
            format,
            metric,
            records,
        });
    }
    let opts = Opts {
        max_new: ctx.param("max-new-tokens").as_i64().unwrap_or(32).max(1) as usize,
        chat: ctx.param("use-chat-template").as_bool().unwrap_or(false),
        skip_long: ctx.param("skip-long").as_bool().unwrap_or(false),
        keep: ctx.param("examples").as_i64().unwrap_or(5).max(0) as usize,
        batch: ctx.param("batch-size").as_i64().unwrap_or(16).max(1) as usize,
    };
    let per_model: u64 = sets
        .iter()
        .map(|s| s.records.len() as u64 * if s.metric == "exact-match" { 2 } else { 1 })
        .sum();
    ctx.progress.set_length(per_model * n_models as u64);
    let mut rows = Vec::new();
    for i in 0..n_models {
        ctx.check_cancel()?;
        let input = ctx.input(&format!("model[{i}]"))?;
        ctx.progress.set_message(&format!("loading {}", input.node));
        let scorer = Scorer::load(input, dev)?;
        for set in &sets {
            ctx.check_cancel()?;
            ctx.progress
                .set_message(&format!("{} on {}", scorer.node, set.node));
            let row = score(ctx, &scorer, set, &opts).map_err(|e| match e {
                StageError::User { message, hint } => StageError::User {
                    message: format!("model {} on dataset {}: {message}", scorer.node, set.node),
                    hint,
                },
                StageError::Other(e) => StageError::Other(
                    e.context(format!("model {} on dataset {}", scorer.node, set.node)),
                ),
                c => c,
            })?;
            let _ = ctx.metrics.log(&summary_row(&row));
            rows.push(row);
        }
    }
    let results = json!({
        "max_new_tokens": opts.max_new,
        "max_records": max_records,
        "results": rows,
    });
    let p = ctx.out_dir.join(RESULTS_FILE);
    fs::write(
        &p,
        serde_json::to_string_pretty(&results).context("serialising results")? + "\n",
    )
    .with_context(|| format!("writing {}", p.display()))?;
    for line in table(&rows) {
        tracing::info!("{line}");
    }
    Ok(json!({ "results": rows.iter().map(summary_row).collect::<Vec<_>>() }))
}

/// The metric of a dataset: the one asked for, or the default of its format.
fn pick_metric(
    asked: Option<&str>,
    format: Format,
    node: &str,
) -> Result<&'static str, StageError> {
    let m = match asked {
        Some("exact-match") => "exact-match",
        Some("perplexity") => "perplexity",
        Some("preference-accuracy") => "preference-accuracy",
        Some(_) => "loss",
        None if format == Format::PromptCompletion => "exact-match",
        None if format == Format::Preference => "preference-accuracy",
        None => "loss",
    };
    match format {
        Format::Preference if m != "preference-accuracy" => Err(StageError::user(
            format!("dataset {node} is in the preference format: eval scores it with preference-accuracy only, not {m}"),
            Some("use `metric=preference-accuracy` (or leave `metric` unset) for preference data".into()),
        )),
        _ if format != Format::Preference && m == "preference-accuracy" => Err(StageError::user(
            format!("dataset {node}: preference-accuracy needs prompt/chosen/rejected pairs, and this dataset is {}", format.name()),
            Some("give a `format=preference` dataset, or use loss / exact-match here".into()),
        )),
        Format::Text if m == "exact-match" => Err(StageError::user(
            format!("dataset {node}: exact-match needs prompts and references, and this dataset is plain text"),
            Some("use `metric=loss` (or perplexity) for text data".into()),
        )),
        _ => Ok(m),
    }
}

/// Evaluation options read from the node.
struct Opts {
    max_new: usize,
    chat: bool,
    skip_long: bool,
    keep: usize,
    batch: usize,
}

impl Scorer {
    fn load(input: &InputArtifact, dev: Device) -> Result<Scorer, StageError> {
        let shown = format!("model {}", input.node);
        let opts = LoadOptions {
            device: dev,
            dtype: Some(Kind::Float),
        };
        let model = HfModel::load(&input.dir, &shown, &opts)?;
        let tok = TokenizerDir::load(&input.dir, &shown)?;
        let mut template = ChatTemplate::load(&input.dir, &tok.tokenizer)
            .map_err(|e| StageError::user(format!("{shown}: {e:#}"), None))?;
        if let Some(t) = template.as_mut() {
            t.set_now(TEMPLATE_NOW);
        }
        let eos = tok.eos_id().ok_or_else(|| {
            StageError::user(
                format!(
                    "{shown}: the tokenizer has no EOS token (tokenizer_config.json `eos_token`)"
                ),
                Some("eval needs EOS to end completions and to score them".into()),
            )
        })?;
        let mut stop = vec![eos as i64];
        stop.extend(crate::evaluate::generation_eos(&input.dir));
        stop.sort_unstable();
        stop.dedup();
        let pad = tok.pad_id().unwrap_or(eos) as i64;
        let max_len = model.config.max_position;
        Ok(Scorer {
            node: input.node.clone(),
            model,
            tok,
            template,
            eos,
            stop,
            pad,
            max_len,
        })
    }

    fn encoder(&self, chat: bool) -> Encoder<'_> {
        Encoder {
            tokenizer: &self.tok.tokenizer,
            template: self.template.as_ref(),
            eos_id: self.eos,
            loss_on: LossOn::Assistant,
            use_chat_template: chat,
            max_len: self.max_len,
        }
    }

    fn encode(&self, text: &str, special: bool) -> anyhow::Result<Vec<i64>> {
        let enc = self
            .tok
            .tokenizer
            .encode(text, special)
            .map_err(|e| anyhow!("tokenising: {e}"))?;
        Ok(enc.get_ids().iter().map(|&i| i as i64).collect())
    }

    fn template(&self) -> Result<&ChatTemplate, StageError> {
        self.template.as_ref().ok_or_else(|| {
            StageError::user(
                format!("model {} has no chat template", self.node),
                Some("messages data and `use-chat-template` need chat_template.jinja or tokenizer_config.json `chat_template` in the model directory".into()),
            )
        })
    }

    /// The prompt tokens and reference of a record for exact-match.
    fn prompt(&self, rec: &Record, chat: bool) -> Result<(Vec<i64>, String), StageError> {
        match rec {
            Record::PromptCompletion { prompt, completion } if chat => {
                let user = Message {
                    role: Role::User,
                    content: prompt.clone(),
                };
                let text = self.template()?.render(&[user], true)?;
                Ok((self.encode(&text, false)?, completion.clone()))
            }
            Record::PromptCompletion { prompt, completion } => {
                Ok((self.encode(prompt, true)?, completion.clone()))
            }
            Record::Messages { messages } => {
                let last = messages
                    .iter()
                    .rposition(|m| m.role == Role::Assistant)
                    .ok_or_else(|| StageError::user("a record has no assistant turn", None))?;
                let text = self.template()?.render(&messages[..last], true)?;
                Ok((self.encode(&text, false)?, messages[last].content.clone()))
            }
            _ => Err(StageError::user(
                "exact-match needs prompt-completion or messages records",
                None,
            )),
        }
    }
}

/// Text documents in windows of at most `max_len` tokens.
fn text_windows(ids: Vec<i64>, max_len: Option<usize>) -> Vec<Example> {
    let w = max_len.unwrap_or(usize::MAX).max(2);
    ids.chunks(w)
        .map(|c| Example {
            input_ids: c.to_vec(),
            labels: c.to_vec(),
        })
        .collect()
}

/// Scores one model on one dataset: a result row (JSON).
fn score(ctx: &StageCtx, s: &Scorer, set: &DataSet, o: &Opts) -> Result<J, StageError> {
    if set.metric == "preference-accuracy" {
        return score_pairs(ctx, s, set, o);
    }
    let enc = s.encoder(o.chat);
    let mut examples = Vec::new();
    let mut skipped = 0usize;
    let mut kept: Vec<usize> = Vec::new();
    for (k, rec) in set.records.iter().enumerate() {
        if let Record::Text { text } = rec {
            examples.extend(text_windows(enc.document(text)?, s.max_len));
            kept.push(k);
            continue;
        }
        match enc
            .example(rec)
            .with_context(|| format!("record {}", k + 1))?
        {
            Encoded::Ok(ex) => {
                examples.push(ex);
                kept.push(k);
            }
            Encoded::TooLong { len, max, exact } if !o.skip_long => {
                return Err(StageError::user(
                    format!(
                        "record {} has {}, more than the model's limit of {max}",
                        k + 1,
                        tokens_text(len, exact)
                    ),
                    Some(
                        "set `skip-long #true` to skip and count such records, or `max-records`"
                            .into(),
                    ),
                ))
            }
            Encoded::TooLong { .. } => skipped += 1,
            Encoded::NoTarget => {
                return Err(StageError::user(
                    format!(
                        "record {} has no token to score (empty completion or no assistant turn)",
                        k + 1
                    ),
                    None,
                ))
            }
        }
    }
    let progress = |n: usize| ctx.progress.inc(n as u64);
    let loss: LossSum = loss_sum(&s.model, &examples, o.batch, s.pad, progress)?;
    let mut row = json!({
        "model": s.node,
        "data": set.node,
        "format": set.format.name(),
        "metric": set.metric,
        "n": kept.len(),
        "skipped": skipped,
        "target_tokens": loss.targets,
        "loss": finite(loss.mean()),
        "perplexity": finite(loss.perplexity()),
        "exact_match": J::Null,
    });
    if set.metric != "exact-match" {
        return Ok(row);
    }
    let mut prompts = Vec::with_capacity(kept.len());
    let mut refs = Vec::with_capacity(kept.len());
    for &k in &kept {
        let (p, r) = s
            .prompt(&set.records[k], o.chat)
            .map_err(|e| prefix(e, &format!("record {}", k + 1)))?;
        prompts.push(p);
        refs.push(r);
    }
    let gopts = GreedyOptions {
        max_new_tokens: o.max_new,
        stop: s.stop.clone(),
        pad_id: s.pad,
        batch_size: o.batch,
    };
    let gens = greedy(&s.model, &prompts, &gopts, progress)?;
    let mut correct = 0usize;
    let mut shown = Vec::new();
    for ((&k, g), reference) in kept.iter().zip(&gens).zip(&refs) {
        let ids: Vec<u32> = g.tokens.iter().map(|&t| t as u32).collect();
        let pred = s
            .tok
            .tokenizer
            .decode(&ids, true)
            .map_err(|e| anyhow!("decoding record {}: {e}", k + 1))?;
        let ok = exact_match(&pred, reference);
        correct += usize::from(ok);
        if shown.len() < o.keep {
            shown.push(json!({
                "record": k + 1,
                "prompt": prompt_text(&set.records[k]),
                "reference": reference,
                "prediction": pred,
                "correct": ok,
                "stopped": g.stopped,
            }));
        }
    }
    let n = gens.len();
    row["exact_match"] = json!(if n == 0 {
        0.0
    } else {
        correct as f64 / n as f64
    });
    row["correct"] = json!(correct);
    row["examples"] = J::Array(shown);
    Ok(row)
}

fn prefix(e: StageError, what: &str) -> StageError {
    match e {
        StageError::User { message, hint } => StageError::User {
            message: format!("{what}: {message}"),
            hint,
        },
        StageError::Other(e) => StageError::Other(e.context(what.to_string())),
        c => c,
    }
}

/// The prompt of a record as a string (for the examples shown).
fn prompt_text(r: &Record) -> String {
    match r {
        Record::PromptCompletion { prompt, .. } => prompt.clone(),
        Record::Preference {
            prompt: Turns::Text(p),
            ..
        } => p.clone(),
        Record::Messages { messages } => messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(|m| m.content.clone())
            .unwrap_or_default(),
        _ => String::new(),
    }
}

/// Preference accuracy of one model on one preference dataset: a result row (JSON).
fn score_pairs(ctx: &StageCtx, s: &Scorer, set: &DataSet, o: &Opts) -> Result<J, StageError> {
    let enc = PairEncoder {
        tokenizer: &s.tok.tokenizer,
        template: s.template.as_ref(),
        eos_id: s.eos,
        use_chat_template: o.chat,
        max_len: s.max_len.unwrap_or(usize::MAX),
        max_prompt_len: None,
    };
    let e = encode_pairs(&enc, &set.records, o.skip_long)?;
    let progress = |n: usize| ctx.progress.inc(n as u64);
    let sc = preference_scores(&s.model, &e.pairs, o.batch, s.pad, progress)?;
    let shown: Vec<J> = (e.kept.iter().zip(&sc.margins).take(o.keep))
        .map(|(&k, &m)| {
            let p = prompt_text(&set.records[k]);
            json!({ "record": k + 1, "prompt": p, "margin": finite(m), "correct": m > 0.0 })
        })
        .collect();
    Ok(json!({
        "model": s.node,
        "data": set.node,
        "format": set.format.name(),
        "metric": set.metric,
        "n": sc.n(),
        "skipped": e.skipped,
        "target_tokens": sc.chosen_tokens,
        "loss": finite(sc.chosen_loss()),
        "perplexity": finite(sc.chosen_loss().exp()),
        "exact_match": J::Null,
        "preference_accuracy": finite(sc.accuracy()),
        "correct": sc.correct(),
        "margin": finite(sc.mean_margin()),
        "examples": shown,
    }))
}
