//! The `generate` node kind (parameters and checks: `kinds::generate`): completions of a model
//! for the prompts of a dataset, through the KV-cached decoder ([`crate::generate::decode`]).
//!
//! Prompts: a prompt-completion record's prompt (as a user turn through the chat template with
//! `use-chat-template`, else the plain text with the tokenizer's special tokens), its completion
//! kept as the reference; a messages record up to its last assistant turn, rendered with the
//! chat template and the generation prompt, that turn being the reference; a preference
//! record's prompt, `chosen` being the reference. Completions stop at EOS (the tokenizer's and
//! generation_config.json's `eos_token_id`s), at a `stop` string (a stop string that is one token
//! of the vocabulary stops as that token; others are found in the decoded text and cut there),
//! after `max-new-tokens` or at the position limit.
//!
//! Artifact — a dataset that any node reading `data=` accepts:
//! - `data.jsonl` + `stats.json`: one record per completion, prompt-completion (messages when the
//!   prompts were chat turns), in prompt order then completion order;
//! - `samples.jsonl`: one line per prompt `{index, prompt, reference, completions,
//!   finish_reasons, tokens, token_ids, logprobs?}` (what `pairs` reads);
//! - `generate_summary.json`: counts, finish reasons, decode time and tokens/s.

use crate::batching::chat::ChatTemplate;
use crate::data::{read_normalized, write_normalized, Format, Message, Record, Role, Turns};
use crate::generate::decode::{decode, Completion, DecodeOptions, Request};
use crate::generate::sample::Sampling;
use crate::prologue;
use crate::stage::{Kind, StageCtx, StageError};
use crate::tok::TokenizerDir;
use ::kinds::generate::Params;
use anyhow::{anyhow, Context};
use dsl::KindSchema;
use serde_json::{json, Value as J};
use std::collections::BTreeMap;
use std::time::Instant;

/// The `generate` kind.
pub struct Generate;

/// File of the per-prompt samples in the artifact.
pub const SAMPLES_FILE: &str = "samples.jsonl";
/// Benchmark hook: `1` decodes without the KV cache (the whole prefix at every step).
pub const NO_CACHE_ENV: &str = "TEMPER_GENERATE_NO_CACHE";

/// A prompt ready to decode.
struct Prompt {
    /// Index of its record in the dataset.
    index: usize,
    ids: Vec<i64>,
    /// The prompt as the output records carry it: text or chat turns.
    shown: Turns,
    reference: Option<String>,
}

impl Kind for Generate {
    type Params = Params;

    fn schema(&self) -> KindSchema {
        ::kinds::generate::schema()
    }

    fn run(&self, ctx: &StageCtx, p: Params) -> Result<J, StageError> {
        let start = prologue::start(ctx, &p.model, p.dtype, None, None)?;
        let model = &start.model;
        let tok = &start.tok.dir;
        let eos = start
            .tok
            .eos("generate ends completions at EOS (set eos_token in tokenizer_config.json)")?;
        let mut template = ChatTemplate::load(&model.dir, &tok.tokenizer)
            .map_err(|e| StageError::user(format!("{}: {e:#}", model.shown()), None))?;
        if let Some(t) = template.as_mut() {
            t.set_now(crate::evaluate::score::TEMPLATE_NOW);
        }
        let data = ctx.input(&p.data.param)?;
        let (format, mut records) =
            read_normalized(&data.dir).with_context(|| format!("dataset {}", data.node))?;
        if let Some(m) = p.max_records {
            records.truncate(m);
        }
        let chat = ChatUse {
            template: template.as_ref(),
            model: &model.node,
            on: p.use_chat_template,
        };
        let max_pos = model.hf.config.max_position.unwrap_or(usize::MAX);
        let (prompts, skipped_long) = encode_prompts(
            &records,
            tok,
            &chat,
            &data.node,
            max_pos,
            &model.shown(),
            p.skip_long,
        )?;
        if p.temperature == 0.0 && p.n > 1 {
            tracing::warn!(
                "{}: temperature 0 is greedy: the {} completions of each prompt are identical",
                ctx.node,
                p.n
            );
        }
        let (stop_ids, stop_texts) = stops(eos as i64, &model.dir, tok, &p.stop);
        let requests: Vec<Request> = prompts
            .iter()
            .flat_map(|pr| {
                (0..p.n).map(|j| Request {
                    prompt: pr.ids.clone(),
                    record: pr.index as u64,
                    sample: j as u64,
                })
            })
            .collect();
        let opts = decode_options(&p, stop_ids, start.pad);
        let check = |ids: &[i64]| -> bool {
            let t = text_of(tok, ids, false);
            stop_texts.iter().any(|s| t.contains(s.as_str()))
        };
        let stop_check: Option<crate::generate::decode::StopCheck> =
            (!stop_texts.is_empty()).then_some(&check);
        ctx.progress.set_length(requests.len() as u64);
        let t0 = Instant::now();
        let done = decode(&model.hf, &requests, &opts, stop_check, |n| {
            ctx.progress.inc(n as u64)
        })
        .map_err(|e| StageError::Other(e.context(format!("{}: decoding", model.shown()))))?;
        let seconds = t0.elapsed().as_secs_f64();
        let out = Output {
            tok,
            stop_texts: &stop_texts,
            prompts: &prompts,
            n: p.n,
            logprobs: p.logprobs,
        };
        out.write(ctx, format, &done, skipped_long, seconds, &p)
    }
}

/// The prompts of `records` as tokens, and how many were skipped for leaving no room below the
/// position limit (`skip-long`; without it such a prompt fails the node).
fn encode_prompts(
    records: &[Record],
    tok: &TokenizerDir,
    chat: &ChatUse,
    data: &str,
    max_pos: usize,
    model: &str,
    skip_long: bool,
) -> Result<(Vec<Prompt>, usize), StageError> {
    let mut prompts = Vec::with_capacity(records.len());
    let mut skipped_long = 0usize;
    for (i, rec) in records.iter().enumerate() {
        let pr = prompt(tok, chat, i, rec, data)?;
        if pr.ids.len() >= max_pos {
            if skip_long {
                skipped_long += 1;
                continue;
            }
            return Err(StageError::user(
                format!(
                    "record {} of {data}: its prompt has {} tokens, which leaves no room below \
                     {model}'s position limit ({max_pos})",
                    i + 1,
                    pr.ids.len(),
                ),
                Some("set `skip-long #true` to skip and count such prompts".into()),
            ));
        }
        prompts.push(pr);
    }
    Ok((prompts, skipped_long))
}

/// What ends a completion: token ids (EOS, the model's generation EOS ids, and every `stop`
/// string that is a single token), sorted and unique; and the other `stop` strings, matched
/// on the decoded text.
fn stops(
    eos: i64,
    model_dir: &std::path::Path,
    tok: &TokenizerDir,
    stop: &[String],
) -> (Vec<i64>, Vec<String>) {
    let mut ids = vec![eos];
    ids.extend(crate::evaluate::generation_eos(model_dir));
    let mut texts = Vec::new();
    for s in stop {
        match tok.tokenizer.token_to_id(s) {
            Some(id) => ids.push(id as i64),
            None => texts.push(s.clone()),
        }
    }
    ids.sort_unstable();
    ids.dedup();
    (ids, texts)
}

/// The decoder's options for the node's parameters (`TEMPER_GENERATE_NO_CACHE=1` turns the KV
/// cache off, for benchmarks).
fn decode_options(p: &Params, stop_ids: Vec<i64>, pad_id: i64) -> DecodeOptions {
    DecodeOptions {
        max_new_tokens: p.max_new_tokens,
        stop_ids,
        pad_id,
        batch_size: p.batch_size,
        sampling: Sampling {
            temperature: p.temperature,
            top_k: p.top_k,
            top_p: p.top_p,
        },
        seed: p.seed,
        logprobs: p.logprobs,
        cache: !matches!(
            std::env::var(NO_CACHE_ENV).as_deref(),
            Ok("1") | Ok("true") | Ok("yes")
        ),
    }
}

/// Whether and how prompts go through the chat template.
struct ChatUse<'a> {
    template: Option<&'a ChatTemplate>,
    model: &'a str,
    /// `use-chat-template` (plain-text prompts; chat turns always use it).
    on: bool,
}

impl ChatUse<'_> {
    fn render(&self, turns: &[Message]) -> Result<String, StageError> {
        let t = self.template.ok_or_else(|| {
            StageError::user(
                format!("model {} has no chat template", self.model),
                Some("chat prompts and `use-chat-template` need chat_template.jinja or tokenizer_config.json `chat_template` in the model directory".into()),
            )
        })?;
        Ok(t.render(turns, true)?)
    }
}

fn encode(tok: &TokenizerDir, text: &str, special: bool) -> Result<Vec<i64>, StageError> {
    let enc = tok
        .tokenizer
        .encode(text, special)
        .map_err(|e| anyhow!("tokenising: {e}"))?;
    Ok(enc.get_ids().iter().map(|&i| i as i64).collect())
}

fn text_of(tok: &TokenizerDir, ids: &[i64], skip_special: bool) -> String {
    let ids: Vec<u32> = ids.iter().map(|&t| t as u32).collect();
    tok.tokenizer.decode(&ids, skip_special).unwrap_or_default()
}

/// The text of a preference side (its last assistant turn for chat turns).
fn side_text(t: &Turns) -> String {
    match t {
        Turns::Text(s) => s.clone(),
        Turns::Messages(m) => m
            .iter()
            .rev()
            .find(|m| m.role == Role::Assistant)
            .or(m.last())
            .map(|m| m.content.clone())
            .unwrap_or_default(),
    }
}

/// The prompt of record `i`.
fn prompt(
    tok: &TokenizerDir,
    chat: &ChatUse,
    i: usize,
    rec: &Record,
    data: &str,
) -> Result<Prompt, StageError> {
    let at = |e: StageError| crate::evaluate::score::prefix(e, &format!("record {}", i + 1));
    let text_prompt = |p: &str| -> Result<Vec<i64>, StageError> {
        if chat.on {
            let user = Message {
                role: Role::User,
                content: p.to_string(),
            };
            encode(tok, &chat.render(&[user])?, false)
        } else {
            encode(tok, p, true)
        }
    };
    let (ids, shown, reference) = match rec {
        Record::PromptCompletion { prompt, completion } => (
            text_prompt(prompt).map_err(at)?,
            Turns::Text(prompt.clone()),
            Some(completion.clone()),
        ),
        Record::Messages { messages } => {
            let (turns, reference) = match messages.last() {
                Some(m) if m.role == Role::Assistant => {
                    (&messages[..messages.len() - 1], Some(m.content.clone()))
                }
                _ => (&messages[..], None),
            };
            let ids = encode(tok, &chat.render(turns).map_err(at)?, false).map_err(at)?;
            (ids, Turns::Messages(turns.to_vec()), reference)
        }
        Record::Preference { prompt, chosen, .. } => {
            let ids = match prompt {
                Turns::Text(p) => text_prompt(p).map_err(at)?,
                Turns::Messages(m) => {
                    encode(tok, &chat.render(m).map_err(at)?, false).map_err(at)?
                }
            };
            (ids, prompt.clone(), Some(side_text(chosen)))
        }
        Record::Text { .. } => return Err(StageError::user(
            format!("dataset {data} is text: generate needs prompts"),
            Some(
                "give prompt-completion, messages or preference data (`format=prompt-completion`)"
                    .into(),
            ),
        )),
    };
    if ids.is_empty() {
        return Err(StageError::user(
            format!("record {} of {data}: the prompt is empty", i + 1),
            None,
        ));
    }
    Ok(Prompt {
        index: i,
        ids,
        shown,
        reference,
    })
}

/// Writes the artifact.
struct Output<'a> {
    tok: &'a TokenizerDir,
    stop_texts: &'a [String],
    prompts: &'a [Prompt],
    n: usize,
    logprobs: bool,
}

impl Output<'_> {
    /// A completion's text: decoded without special tokens, cut at the first stop string.
    fn text(&self, c: &Completion) -> String {
        let mut t = text_of(self.tok, &c.tokens, true);
        if let Some(at) = self
            .stop_texts
            .iter()
            .filter_map(|s| t.find(s.as_str()))
            .min()
        {
            t.truncate(at);
        }
        t
    }

    fn write(
        &self,
        ctx: &StageCtx,
        format: Format,
        done: &[Completion],
        skipped_long: usize,
        seconds: f64,
        p: &Params,
    ) -> Result<J, StageError> {
        let chat_out = format == Format::Messages
            || self
                .prompts
                .iter()
                .any(|pr| matches!(pr.shown, Turns::Messages(_)));
        let Lines {
            records,
            samples,
            finishes,
            new_tokens,
        } = self.lines(done, chat_out);
        let dir = &ctx.out_dir;
        let path = dir.join(SAMPLES_FILE);
        std::fs::write(&path, samples).with_context(|| format!("writing {}", path.display()))?;
        let out_format = if chat_out {
            Format::Messages
        } else {
            Format::PromptCompletion
        };
        write_normalized(dir, out_format, &records, json!({"skipped": skipped_long}))?;
        let summary = json!({
            "prompts": self.prompts.len(),
            "completions": done.len(),
            "n": self.n,
            "skipped_long": skipped_long,
            "new_tokens": new_tokens,
            "mean_new_tokens": if done.is_empty() { 0.0 } else { new_tokens as f64 / done.len() as f64 },
            "finish_reasons": finishes,
            "seconds": seconds,
            "tokens_per_s": if seconds > 0.0 { new_tokens as f64 / seconds } else { 0.0 },
            "temperature": p.temperature,
            "top_p": p.top_p,
            "top_k": p.top_k,
            "seed": p.seed,
            "use_chat_template": p.use_chat_template,
            "format": out_format.name(),
        });
        crate::json::write_json(&dir.join("generate_summary.json"), &summary)?;
        tracing::info!(
            "{}: {} completions of {} prompts ({} skipped as too long), {} new tokens in {:.1} s \
             ({:.0} tokens/s); finished by {}",
            ctx.node,
            done.len(),
            self.prompts.len(),
            skipped_long,
            new_tokens,
            seconds,
            summary["tokens_per_s"].as_f64().unwrap_or(0.0),
            finishes
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(summary)
    }

    /// Every completion as a dataset record, `samples.jsonl`'s line per prompt, and the counts
    /// of the summary.
    fn lines(&self, done: &[Completion], chat_out: bool) -> Lines {
        let mut records = Vec::with_capacity(done.len());
        let mut samples = String::new();
        let mut finishes: BTreeMap<&str, usize> = BTreeMap::new();
        let mut new_tokens = 0usize;
        for (pr, cs) in self.prompts.iter().zip(done.chunks(self.n.max(1))) {
            let texts: Vec<String> = cs.iter().map(|c| self.text(c)).collect();
            for (c, t) in cs.iter().zip(&texts) {
                *finishes.entry(c.finish.name()).or_default() += 1;
                new_tokens += c.tokens.len();
                records.push(output_record(&pr.shown, t, chat_out));
            }
            let mut line = json!({
                "index": pr.index,
                "prompt": pr.shown,
                "reference": pr.reference,
                "completions": texts,
                "finish_reasons": cs.iter().map(|c| c.finish.name()).collect::<Vec<_>>(),
                "tokens": cs.iter().map(|c| c.tokens.len()).collect::<Vec<_>>(),
                "token_ids": cs.iter().map(|c| &c.tokens).collect::<Vec<_>>(),
            });
            if self.logprobs {
                line["logprobs"] = json!(cs.iter().map(|c| &c.logprobs).collect::<Vec<_>>());
            }
            samples.push_str(&line.to_string());
            samples.push('\n');
        }
        Lines {
            records,
            samples,
            finishes,
            new_tokens,
        }
    }
}

/// What [`Output::lines`] builds from the completions.
struct Lines {
    records: Vec<Record>,
    samples: String,
    finishes: BTreeMap<&'static str, usize>,
    new_tokens: usize,
}

/// The dataset record of one completion: prompt-completion, or the prompt's turns plus the
/// completion as an assistant turn.
fn output_record(prompt: &Turns, completion: &str, chat: bool) -> Record {
    let assistant = Message {
        role: Role::Assistant,
        content: completion.to_string(),
    };
    match (prompt, chat) {
        (Turns::Text(p), false) => Record::PromptCompletion {
            prompt: p.clone(),
            completion: completion.to_string(),
        },
        (Turns::Text(p), true) => Record::Messages {
            messages: vec![
                Message {
                    role: Role::User,
                    content: p.clone(),
                },
                assistant,
            ],
        },
        (Turns::Messages(m), _) => {
            let mut messages = m.clone();
            messages.push(assistant);
            Record::Messages { messages }
        }
    }
}
