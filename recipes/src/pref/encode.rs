//! Tokenisation of preference pairs, with the truncation rules.
//!
//! Each side is one sequence `prompt + completion`:
//! - plain (every field text, no `use-chat-template`): `P = encode(prompt)`,
//!   `F = encode(prompt + completion)` (concatenated as is) with EOS appended unless last;
//! - chat (any field a list of messages, or `use-chat-template`): a text prompt becomes one user
//!   turn and a text completion one assistant turn; `P` = the prompt turns rendered with the
//!   generation prompt, `F` = prompt and completion turns rendered; no EOS is appended (the
//!   template's end-of-turn marker ends the turn).
//!
//! The completion starts at `p = lcp(P, F)`, the first index where the tokenised prompt and
//! the full sequence differ; only tokens at `≥ p` are targets.
//!
//! Truncation, in this order:
//! 1. with `max-prompt-len M`, a longer prompt keeps its *last* `M` tokens (the start is cut);
//! 2. a record whose (truncated) prompt alone has `≥ max-len` tokens leaves no room for a
//!    completion: it is skipped and counted (`prompt_too_long`);
//! 3. each completion keeps its *first* `max-len − p` tokens (so a cut completion loses its
//!    EOS); such records are counted as `truncated`;
//! 4. a pair whose chosen and rejected token sequences are identical after truncation is skipped
//!    and counted (`identical_after_truncation`): it carries no preference.

use crate::batching::chat::ChatTemplate;
use crate::batching::examples::{lcp, Example, IGNORE};
use crate::data::{Message, Role, Turns};
use anyhow::{anyhow, Context};
use tokenizers::Tokenizer;

/// Tokenises preference pairs.
pub struct PairEncoder<'a> {
    pub tokenizer: &'a Tokenizer,
    pub template: Option<&'a ChatTemplate>,
    pub eos_id: u32,
    pub use_chat_template: bool,
    /// Longest sequence (prompt + completion) in tokens.
    pub max_len: usize,
    /// Longest prompt (cut from the start); `None` = no prompt limit besides `max_len`.
    pub max_prompt_len: Option<usize>,
}

/// The result of encoding one pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PairEncoded {
    Ok {
        chosen: Example,
        rejected: Example,
        /// A completion was cut to fit `max_len`, or the prompt to fit `max_prompt_len`.
        truncated: bool,
    },
    /// The prompt alone has `len ≥ max_len` tokens.
    PromptTooLong { len: usize },
    /// Chosen and rejected are the same tokens after truncation.
    Identical,
}

impl PairEncoder<'_> {
    fn encode(&self, text: &str, special: bool) -> anyhow::Result<Vec<i64>> {
        let e = self
            .tokenizer
            .encode(text, special)
            .map_err(|e| anyhow!("tokenising: {e}"))?;
        Ok(e.get_ids().iter().map(|&i| i as i64).collect())
    }

    fn render(&self, msgs: &[Message], gen: bool) -> anyhow::Result<Vec<i64>> {
        let t = self.template.ok_or_else(|| {
            anyhow!(
                "chat-formatted preference data needs a chat template, and the tokenizer has none"
            )
        })?;
        let text = t.render(msgs, gen)?;
        self.encode(&text, false)
    }

    /// `(prompt tokens P, full tokens F)` of one side.
    fn side(
        &self,
        prompt: &Turns,
        completion: &Turns,
        chat: bool,
    ) -> anyhow::Result<(Vec<i64>, Vec<i64>)> {
        if !chat {
            let (Turns::Text(p), Turns::Text(c)) = (prompt, completion) else {
                return Err(anyhow!("internal: plain encoding of chat turns"));
            };
            let pi = self.encode(p, true)?;
            let mut full = self.encode(&format!("{p}{c}"), true)?;
            if full.last() != Some(&(self.eos_id as i64)) {
                full.push(self.eos_id as i64);
            }
            return Ok((pi, full));
        }
        let as_msgs = |t: &Turns, role: Role| match t {
            Turns::Text(s) => vec![Message {
                role,
                content: s.clone(),
            }],
            Turns::Messages(m) => m.clone(),
        };
        let pm = as_msgs(prompt, Role::User);
        let mut all = pm.clone();
        all.extend(as_msgs(completion, Role::Assistant));
        let pi = self.render(&pm, true).context("rendering the prompt")?;
        let full = self
            .render(&all, false)
            .context("rendering prompt + completion")?;
        Ok((pi, full))
    }

    /// One side as an example: prompt cut per `max_prompt_len`, completion per `max_len`.
    /// `Err(prompt_len)` when the prompt fills `max_len`.
    fn example(&self, p_ids: &[i64], full: &[i64]) -> (Result<Example, usize>, bool) {
        let p = lcp(p_ids, full).min(full.len());
        let cut = match self.max_prompt_len {
            Some(m) if p > m => p - m,
            _ => 0,
        };
        let plen = p - cut;
        if plen >= self.max_len {
            return (Err(plen), cut > 0);
        }
        let keep = (full.len() - cut).min(self.max_len);
        let ids: Vec<i64> = full[cut..cut + keep].to_vec();
        let truncated = cut > 0 || keep < full.len() - cut;
        let labels = ids
            .iter()
            .enumerate()
            .map(|(i, &t)| if i >= plen { t } else { IGNORE })
            .collect();
        (
            Ok(Example {
                input_ids: ids,
                labels,
            }),
            truncated,
        )
    }

    /// Encodes one pair per the module's rules.
    pub fn pair(
        &self,
        prompt: &Turns,
        chosen: &Turns,
        rejected: &Turns,
    ) -> anyhow::Result<PairEncoded> {
        let chat = self.use_chat_template
            || [prompt, chosen, rejected]
                .iter()
                .any(|t| matches!(t, Turns::Messages(_)));
        let (pc, fc) = self.side(prompt, chosen, chat).context("chosen")?;
        let (pr, fr) = self.side(prompt, rejected, chat).context("rejected")?;
        let (c, tc) = self.example(&pc, &fc);
        let (r, tr) = self.example(&pr, &fr);
        match (c, r) {
            (Ok(chosen), Ok(rejected)) => {
                if chosen.input_ids == rejected.input_ids {
                    return Ok(PairEncoded::Identical);
                }
                Ok(PairEncoded::Ok {
                    chosen,
                    rejected,
                    truncated: tc || tr,
                })
            }
            (Err(len), _) | (_, Err(len)) => Ok(PairEncoded::PromptTooLong { len }),
        }
    }
}
