//! Scoring one model on one dataset: the result rows of the `eval` node kind.
//!
//! - **loss** = `Σ CE / Σ targets` over the target tokens, encoded exactly as SFT/CPT train
//!   them ([`crate::batching::examples`]); **perplexity** = `exp(loss)`. A text document longer
//!   than the model's `max_position_embeddings` is scored in consecutive windows of that length
//!   (the first token of a window has no context and is not a target).
//! - **exact-match** (prompt-completion; messages: the last assistant turn given the turns
//!   before it) = the fraction of records whose greedy completion (at most `max_new` tokens,
//!   stopped at EOS or at an `eos_token_id` of generation_config.json) decodes, special tokens
//!   skipped, to the reference after trimming whitespace at both ends.
//! - **preference-accuracy** = `mean[logπ(yc) > logπ(yr)]` with the mean margin
//!   `mean[logπ(yc) − logπ(yr)]` and, as `loss`, the chosen completions' token-weighted CE
//!   ([`super::pref`]); pairs are tokenised as `ref-logps` / `dpo` do.
//!
//! A row (JSON): model, data, format, metric, n, skipped, target_tokens, loss, perplexity,
//! exact_match (and correct, examples) or preference_accuracy, correct, margin, examples.

use super::pref::{encode_pairs, preference_scores};
use super::report::finite;
use super::{exact_match, greedy, loss_sum, GreedyOptions, LossSum};
use crate::arch::HfModel;
use crate::batching::chat::ChatTemplate;
use crate::batching::examples::{tokens_text, Encoded, Encoder, Example, LossOn};
use crate::data::{Format, Message, Record, Role, Turns};
use crate::pref::encode::PairEncoder;
use crate::prologue;
use crate::stage::{StageCtx, StageError};
use crate::tok::TokenizerDir;
use anyhow::{anyhow, Context};
use dsl::device::Dtype;
use kinds::eval::Metric;
use serde_json::{json, Value as J};

/// Fixed clock for chat templates that print a date, so results never depend on the day.
pub const TEMPLATE_NOW: i64 = 1_735_689_600; // 2025-01-01T00:00:00Z

/// A dataset to score, with the metric picked for it.
pub struct DataSet {
    pub node: String,
    pub format: Format,
    pub metric: Metric,
    pub records: Vec<Record>,
}

/// How records are scored.
pub struct Opts {
    /// Exact-match: most tokens generated per record.
    pub max_new: usize,
    /// Render prompt-completion records as a chat turn.
    pub chat: bool,
    /// Skip (and count) records longer than the model's limit instead of failing.
    pub skip_long: bool,
    /// Predictions kept per row.
    pub keep: usize,
    /// Records per forward pass.
    pub batch: usize,
}

/// Everything of a model needed to score it.
pub struct Scorer {
    pub node: String,
    model: HfModel,
    tok: TokenizerDir,
    template: Option<ChatTemplate>,
    eos: u32,
    stop: Vec<i64>,
    pad: i64,
    max_len: Option<usize>,
}

impl Scorer {
    /// Loads `model` through the prologue in f32 (on every device) with its own tokenizer and
    /// chat template; stops generating at EOS and at generation_config.json's `eos_token_id`s.
    pub fn load(ctx: &StageCtx, model: &kinds::Input) -> Result<Scorer, StageError> {
        let start = prologue::start(ctx, model, Dtype::F32, None, None)?;
        let shown = start.model.shown();
        let dir = start.model.dir.clone();
        let mut template = ChatTemplate::load(&dir, &start.tok.dir.tokenizer)
            .map_err(|e| StageError::user(format!("{shown}: {e:#}"), None))?;
        if let Some(t) = template.as_mut() {
            t.set_now(TEMPLATE_NOW);
        }
        let eos = start
            .tok
            .eos("eval needs EOS to end completions and to score them")?;
        let mut stop = vec![eos as i64];
        stop.extend(super::generation_eos(&dir));
        stop.sort_unstable();
        stop.dedup();
        let max_len = start.model.hf.config.max_position;
        Ok(Scorer {
            node: start.model.node,
            model: start.model.hf,
            tok: start.tok.dir,
            template,
            eos,
            stop,
            pad: start.pad,
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

/// The records as loss examples: (examples, indices of the records kept, records skipped as
/// too long).
fn loss_examples(
    s: &Scorer,
    set: &DataSet,
    o: &Opts,
) -> Result<(Vec<Example>, Vec<usize>, usize), StageError> {
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
    Ok((examples, kept, skipped))
}

/// Scores one model on one dataset: a result row (JSON).
pub fn score(ctx: &StageCtx, s: &Scorer, set: &DataSet, o: &Opts) -> Result<J, StageError> {
    if set.metric == Metric::PreferenceAccuracy {
        return score_pairs(ctx, s, set, o);
    }
    let (examples, kept, skipped) = loss_examples(s, set, o)?;
    let progress = |n: usize| ctx.progress.inc(n as u64);
    let loss: LossSum = loss_sum(&s.model, &examples, o.batch, s.pad, progress)?;
    let mut row = json!({
        "model": s.node,
        "data": set.node,
        "format": set.format.name(),
        "metric": set.metric.name(),
        "n": kept.len(),
        "skipped": skipped,
        "target_tokens": loss.targets,
        "loss": finite(loss.mean()),
        "perplexity": finite(loss.perplexity()),
        "exact_match": J::Null,
    });
    if set.metric == Metric::ExactMatch {
        exact_match_fields(ctx, s, set, o, &kept, &mut row)?;
    }
    Ok(row)
}

/// Generates greedily for the `kept` records and adds `exact_match`, `correct` and the first
/// `keep` predictions to `row`.
fn exact_match_fields(
    ctx: &StageCtx,
    s: &Scorer,
    set: &DataSet,
    o: &Opts,
    kept: &[usize],
    row: &mut J,
) -> Result<(), StageError> {
    let mut prompts = Vec::with_capacity(kept.len());
    let mut refs = Vec::with_capacity(kept.len());
    for &k in kept {
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
    let gens = greedy(&s.model, &prompts, &gopts, |n| ctx.progress.inc(n as u64))?;
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
    Ok(())
}

/// `what: message` for user errors, a context line for the others.
pub fn prefix(e: StageError, what: &str) -> StageError {
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
        "metric": set.metric.name(),
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
