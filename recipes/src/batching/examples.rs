//! Tokenisation of training records into `(input_ids, labels)`.
//!
//! Conventions (Hugging Face's): `labels` has the length of `input_ids` and is aligned with it;
//! a position whose label is [`IGNORE`] (-100) is not trained on; the loss shifts inside
//! (`logits[t]` predicts `labels[t+1]`), so `labels[0]` never counts and a target token is
//! any position `t >= 1` whose label is not -100.
//!
//! Per format:
//! - `text` (CPT): `encode(text)` with the tokenizer's own special tokens (its post-processor,
//!   e.g. Llama's BOS), then EOS appended unless already last. Every token is a target.
//! - `prompt-completion`: by default plain text, no template: `P = encode(prompt)`,
//!   `F = encode(prompt + completion)` (concatenated as is, no separator), EOS appended to `F`
//!   unless already last. With `use-chat-template` the prompt is rendered as one user turn with
//!   the generation prompt and `F` as that turn plus an assistant turn holding the completion.
//!   The completion starts at `lcp(P, F)`, the first index where the tokenised prompt and the
//!   full example differ (robust to merges across the boundary). Loss on the completion and
//!   the EOS (`loss-on all`: on everything). EOS is trained *by position*, never masked
//!   because its id equals the pad id.
//! - `messages`: the whole conversation `F` is rendered with the chat template and tokenised
//!   without extra special tokens (the template writes them). For each assistant turn `i`:
//!   `start = lcp(tok(render(m[..i], generation prompt)), F)`,
//!   `end = lcp(tok(render(m[..=i])), F)`; positions `start..end` are targets, which includes
//!   the turn's end-of-turn marker (`<|im_end|>`, `<|eot_id|>` …) since it belongs to the turn's
//!   render. No EOS is appended: the template's end-of-turn marker is what the model learns to
//!   stop on. `loss-on all`: every token.
//!
//! Truncation: none. An example longer than `max_len` tokens is returned as
//! [`Encoded::TooLong`]; the caller fails naming the record, or skips and counts it when the
//! user asked for skipping. An example with no target token is [`Encoded::NoTarget`] (same
//! treatment). Documents for CPT have no length limit: packing cuts them into blocks.

use super::chat::ChatTemplate;
use crate::data::{Message, Record, Role};
use anyhow::{anyhow, bail, Context};
use tokenizers::Tokenizer;

/// Label of a position that is not trained on.
pub const IGNORE: i64 = -100;

/// Which tokens an SFT example trains on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossOn {
    /// The completion / the assistant turns (default).
    Assistant,
    /// Every token.
    All,
}

impl LossOn {
    pub const NAMES: &'static [&'static str] = &["assistant", "completion", "all"];
    /// `assistant` and `completion` are synonyms.
    pub fn parse(s: &str) -> Option<LossOn> {
        match s {
            "assistant" | "completion" => Some(LossOn::Assistant),
            "all" => Some(LossOn::All),
            _ => None,
        }
    }
}

/// A tokenised example. `labels.len() == input_ids.len()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    pub input_ids: Vec<i64>,
    pub labels: Vec<i64>,
}

impl Example {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }
    /// Target tokens: positions `t >= 1` with a label.
    pub fn n_targets(&self) -> usize {
        self.labels.iter().skip(1).filter(|&&l| l != IGNORE).count()
    }
}

/// What encoding one SFT record gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Encoded {
    Ok(Example),
    /// Longer than the limit: `len` tokens, `max` allowed. `exact` is false when the record was
    /// too large to tokenise at all and `len` is a lower bound (see [`Encoder::example`]).
    TooLong {
        len: usize,
        max: usize,
        exact: bool,
    },
    /// Nothing to train on (every label masked).
    NoTarget,
}

/// Turns records into examples with one tokenizer (and template).
pub struct Encoder<'a> {
    pub tokenizer: &'a Tokenizer,
    pub template: Option<&'a ChatTemplate>,
    /// Appended to documents and plain prompt-completion examples.
    pub eos_id: u32,
    pub loss_on: LossOn,
    /// Render prompt-completion records with the chat template.
    pub use_chat_template: bool,
    /// Longest allowed SFT example, in tokens.
    pub max_len: Option<usize>,
}

impl<'a> Encoder<'a> {
    /// An encoder of plain documents (CPT, influence measurements): no template, loss on every
    /// token, EOS appended, no length limit.
    pub fn plain(tokenizer: &'a Tokenizer, eos_id: u32) -> Self {
        Encoder {
            tokenizer,
            template: None,
            eos_id,
            loss_on: LossOn::All,
            use_chat_template: false,
            max_len: None,
        }
    }

    fn encode(&self, text: &str, add_special: bool) -> anyhow::Result<Vec<i64>> {
        let enc = self
            .tokenizer
            .encode(text, add_special)
            .map_err(|e| anyhow!("tokenising: {e}"))?;
        Ok(enc.get_ids().iter().map(|&i| i as i64).collect())
    }

    fn template(&self) -> anyhow::Result<&ChatTemplate> {
        self.template.ok_or_else(|| {
            anyhow!("the tokenizer has no chat template (chat_template.jinja or tokenizer_config.json `chat_template`)")
        })
    }

    /// A CPT document: tokens + EOS (all targets).
    pub fn document(&self, text: &str) -> anyhow::Result<Vec<i64>> {
        let mut ids = self.encode(text, true)?;
        if ids.last() != Some(&(self.eos_id as i64)) {
            ids.push(self.eos_id as i64);
        }
        Ok(ids)
    }

    /// Encodes an SFT record (`prompt-completion` or `messages`; `text` is trained on
    /// entirely).
    ///
    /// A record far longer than `max_len` is not tokenised (a 50 MB line would take gigabytes):
    /// with a BPE model every token covers at most `L` bytes of text (`L` = the longest vocabulary
    /// entry, at least 4 for an unknown character), so a record of `B` bytes has at least
    /// `B / (4·L)` tokens (4× slack for normalisation); above `max_len` it is `TooLong`.
    pub fn example(&self, rec: &Record) -> anyhow::Result<Encoded> {
        if let Some((len, max)) = self.surely_too_long(rec) {
            return Ok(Encoded::TooLong {
                len,
                max,
                exact: false,
            });
        }
        let ex = match rec {
            Record::Text { text } => {
                let ids = self.document(text)?;
                Example {
                    labels: ids.clone(),
                    input_ids: ids,
                }
            }
            Record::PromptCompletion { prompt, completion } => {
                if self.use_chat_template {
                    let user = Message {
                        role: Role::User,
                        content: prompt.clone(),
                    };
                    let asst = Message {
                        role: Role::Assistant,
                        content: completion.clone(),
                    };
                    self.chat(&[user, asst])?
                } else {
                    self.prompt_completion(prompt, completion)?
                }
            }
            Record::Messages { messages } => self.chat(messages)?,
            Record::Preference { .. } => {
                bail!("preference records are for preference stages (dpo …), not SFT")
            }
        };
        Ok(self.check(ex))
    }

    /// `(lower bound of the token count, max_len)` when `rec` is certainly longer than
    /// `max_len` without tokenising it (see [`Encoder::example`]); `None` otherwise. Records under
    /// 64 bytes per allowed token return at once; only larger ones read the vocabulary.
    fn surely_too_long(&self, rec: &Record) -> Option<(usize, usize)> {
        let max = self.max_len?;
        let bytes = record_bytes(rec);
        if bytes <= max.saturating_mul(64) {
            return None;
        }
        if !matches!(self.tokenizer.get_model(), tokenizers::ModelWrapper::BPE(_)) {
            return None;
        }
        let longest = self
            .tokenizer
            .get_vocab(true)
            .keys()
            .map(String::len)
            .max()
            .unwrap_or(1)
            .max(4);
        let at_least = bytes / (4 * longest);
        (at_least > max).then_some((at_least, max))
    }

    fn check(&self, ex: Example) -> Encoded {
        if let Some(max) = self.max_len {
            if ex.len() > max {
                return Encoded::TooLong {
                    len: ex.len(),
                    max,
                    exact: true,
                };
            }
        }
        if ex.n_targets() == 0 {
            return Encoded::NoTarget;
        }
        Encoded::Ok(ex)
    }

    fn prompt_completion(&self, prompt: &str, completion: &str) -> anyhow::Result<Example> {
        let p = self.encode(prompt, true)?;
        let mut full = self.encode(&format!("{prompt}{completion}"), true)?;
        if full.last() != Some(&(self.eos_id as i64)) {
            full.push(self.eos_id as i64);
        }
        let start = lcp(&p, &full);
        let labels = full
            .iter()
            .enumerate()
            .map(|(i, &t)| {
                if self.loss_on == LossOn::All || i >= start {
                    t
                } else {
                    IGNORE
                }
            })
            .collect();
        Ok(Example {
            input_ids: full,
            labels,
        })
    }

    fn render_ids(&self, msgs: &[Message], gen: bool) -> anyhow::Result<Vec<i64>> {
        let text = self.template()?.render(msgs, gen)?;
        self.encode(&text, false)
    }

    fn chat(&self, messages: &[Message]) -> anyhow::Result<Example> {
        let full = self.render_ids(messages, false)?;
        if self.loss_on == LossOn::All {
            return Ok(Example {
                labels: full.clone(),
                input_ids: full,
            });
        }
        let mut labels = vec![IGNORE; full.len()];
        for (i, m) in messages.iter().enumerate() {
            if m.role != Role::Assistant {
                continue;
            }
            let start = match self.render_ids(&messages[..i], true) {
                Ok(p) => lcp(&p, &full),
                // Templates that cannot render an empty conversation: the turn starts at 0.
                Err(_) if i == 0 => 0,
                Err(e) => return Err(e).with_context(|| format!("rendering messages[..{i}]")),
            };
            let through = self
                .render_ids(&messages[..=i], false)
                .with_context(|| format!("rendering messages[..={i}]"))?;
            let end = lcp(&through, &full);
            if end > start {
                labels[start..end].copy_from_slice(&full[start..end]);
            }
        }
        Ok(Example {
            input_ids: full,
            labels,
        })
    }
}

/// Length of the longest common prefix.
pub fn lcp(a: &[i64], b: &[i64]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// `N tokens`, or `at least N tokens` when `N` is a lower bound ([`Encoded::TooLong`]).
pub fn tokens_text(len: usize, exact: bool) -> String {
    if exact {
        format!("{len} tokens")
    } else {
        format!("at least {len} tokens")
    }
}

/// Bytes of text in a record (what tokenisation reads).
fn record_bytes(rec: &Record) -> usize {
    match rec {
        Record::Text { text } => text.len(),
        Record::PromptCompletion { prompt, completion } => prompt.len() + completion.len(),
        Record::Messages { messages } => messages.iter().map(|m| m.content.len()).sum(),
        Record::Preference { .. } => 0,
    }
}
