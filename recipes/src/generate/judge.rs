//! The `judge-logp` score of `pairs`: the mean per-token log-probability of a completion `y`
//! given its prompt `x` under a judge model, `(1/|y|) Σ_t log π(y_t | x, y_<t)`.
//!
//! A completion is scored on the tokens a preference stage trains on, tokenised by the rules
//! of [`crate::pref::encode`]:
//! - plain (a text prompt the `generate` node did not render with the chat template):
//!   `P = encode(prompt)`, `F = encode(prompt + completion)` with the tokenizer's special
//!   tokens, EOS appended to `F` unless already last;
//! - chat (a prompt of chat turns, or a text prompt rendered as one user turn): `P` = the
//!   prompt turns rendered with the generation prompt, `F` = the prompt turns plus the
//!   completion as an assistant turn, rendered;
//!
//! and the targets are `F`'s tokens from `lcp(P, F)` on — so the EOS or end-of-turn marker
//! counts as a token of the completion. A sequence longer than the judge's
//! `max_position_embeddings` keeps its first tokens (the completion's tail is not scored); a
//! prompt that fills the judge's context is an error.
//!
//! Completions blank after trimming are not scored (NaN: [`crate::generate::rank::choose`]
//! leaves them out), and the same text twice under one prompt is scored once, so identical
//! completions tie exactly. Log-probs come from [`crate::pref::logps::seq_logps`] (f32 sums)
//! under `no_grad`, `batch_size` sequences per forward, grouped by length (a score does not
//! depend on the grouping beyond float rounding).

use super::rank::Sample;
use crate::arch::HfModel;
use crate::batching::chat::ChatTemplate;
use crate::batching::examples::{lcp, Example, IGNORE};
use crate::data::{Message, Role, Turns};
use crate::pref::logps::seq_logps;
use crate::stage::StageError;
use anyhow::{anyhow, Context};
use std::collections::HashMap;
use tokenizers::Tokenizer;

/// A judge: its model and how it tokenises.
pub struct Judge<'a> {
    pub model: &'a HfModel,
    /// How errors name the model (`model judge`).
    pub shown: &'a str,
    pub tokenizer: &'a Tokenizer,
    pub template: Option<&'a ChatTemplate>,
    /// Appended to plain sequences; needed only when a prompt is plain text.
    pub eos_id: Option<u32>,
    pub pad_id: i64,
    /// Render text prompts as one user turn (the `generate` node's `use-chat-template`).
    pub chat_text: bool,
    /// Sequences per forward.
    pub batch_size: usize,
}

impl Judge<'_> {
    fn encode_text(&self, text: &str, special: bool) -> anyhow::Result<Vec<i64>> {
        let e = self
            .tokenizer
            .encode(text, special)
            .map_err(|e| anyhow!("tokenising: {e}"))?;
        Ok(e.get_ids().iter().map(|&i| i as i64).collect())
    }

    fn render(&self, msgs: &[Message], gen: bool) -> Result<Vec<i64>, StageError> {
        let t = self.template.ok_or_else(|| {
            StageError::user(
                format!(
                    "{}: chat prompts need a chat template, and its tokenizer has none",
                    self.shown
                ),
                Some("judge with a model whose directory has chat_template.jinja or a `chat_template` in tokenizer_config.json".into()),
            )
        })?;
        Ok(self.encode_text(&t.render(msgs, gen)?, false)?)
    }

    /// `(P, F)`: the prompt's tokens and the full sequence's, per the module's rules.
    fn sequence(
        &self,
        prompt: &Turns,
        completion: &str,
    ) -> Result<(Vec<i64>, Vec<i64>), StageError> {
        let turns = match prompt {
            Turns::Text(p) if !self.chat_text => {
                let eos = self.eos_id.ok_or_else(|| {
                    StageError::Other(anyhow!("internal: a plain prompt and no EOS id"))
                })? as i64;
                let pi = self.encode_text(p, true)?;
                let mut full = self.encode_text(&format!("{p}{completion}"), true)?;
                if full.last() != Some(&eos) {
                    full.push(eos);
                }
                return Ok((pi, full));
            }
            Turns::Text(p) => vec![Message {
                role: Role::User,
                content: p.clone(),
            }],
            Turns::Messages(m) => m.clone(),
        };
        let pi = self.render(&turns, true)?;
        let mut all = turns;
        all.push(Message {
            role: Role::Assistant,
            content: completion.to_string(),
        });
        let full = self.render(&all, false)?;
        Ok((pi, full))
    }

    /// The example scoring `completion` after `prompt`: targets from `lcp(P, F)` on, cut to
    /// the judge's context. `index` names the record in errors.
    pub fn encode(
        &self,
        index: u64,
        prompt: &Turns,
        completion: &str,
    ) -> Result<Example, StageError> {
        let (pi, full) = self.sequence(prompt, completion)?;
        let start = lcp(&pi, &full);
        let max = self.model.config.max_position.unwrap_or(usize::MAX);
        if start >= max {
            return Err(StageError::user(
                format!(
                    "record {index}: the prompt has {start} tokens, which fills {}'s context ({max} positions): nothing of the completion can be scored",
                    self.shown
                ),
                Some("judge with a model of a longer context, or give the generate node shorter prompts".into()),
            ));
        }
        let ids: Vec<i64> = full.into_iter().take(max).collect();
        let labels = ids
            .iter()
            .enumerate()
            .map(|(i, &t)| if i >= start { t } else { IGNORE })
            .collect();
        let ex = Example {
            input_ids: ids,
            labels,
        };
        if ex.n_targets() == 0 {
            return Err(StageError::Other(anyhow!(
                "record {index}: a completion has no token to score"
            )));
        }
        Ok(ex)
    }

    /// The score of every completion of every sample (NaN for blank ones). `step(n)` is
    /// called after each forward with the sequences it held; an error from it (a cancel) stops.
    pub fn scores(
        &self,
        samples: &[Sample],
        step: &mut dyn FnMut(usize) -> Result<(), StageError>,
    ) -> Result<Vec<Vec<f64>>, StageError> {
        let mut out: Vec<Vec<f64>> = samples
            .iter()
            .map(|s| vec![f64::NAN; s.completions.len()])
            .collect();
        // (sample, completion) of each distinct non-blank text per prompt, and its example.
        let mut todo: Vec<((usize, usize), Example)> = Vec::new();
        let mut same: Vec<((usize, usize), usize)> = Vec::new();
        for (i, s) in samples.iter().enumerate() {
            let mut first: HashMap<&str, usize> = HashMap::new();
            for (j, c) in s.completions.iter().enumerate() {
                if c.trim().is_empty() {
                    continue;
                }
                if let Some(&k) = first.get(c.as_str()) {
                    same.push(((i, j), k));
                    continue;
                }
                first.insert(c, j);
                todo.push(((i, j), self.encode(s.index, &s.prompt, c)?));
            }
        }
        todo.sort_by_key(|(_, e)| std::cmp::Reverse(e.len()));
        let _guard = tch::no_grad_guard();
        for chunk in todo.chunks(self.batch_size.max(1)) {
            let seqs: Vec<&Example> = chunk.iter().map(|(_, e)| e).collect();
            let means = self.means(&seqs).with_context(|| {
                format!("{}: log-probs of {} completions", self.shown, seqs.len())
            })?;
            for (((i, j), _), m) in chunk.iter().zip(means) {
                out[*i][*j] = m;
            }
            step(chunk.len())?;
        }
        for ((i, j), k) in same {
            out[i][j] = out[i][k];
        }
        Ok(out)
    }

    /// Mean target log-prob of each sequence, in one forward.
    fn means(&self, seqs: &[&Example]) -> anyhow::Result<Vec<f64>> {
        let lp = seq_logps(self.model, seqs, self.pad_id)?;
        let mean = lp
            .sum
            .f_to_kind(tch::Kind::Double)?
            .f_div(&lp.len.f_to_kind(tch::Kind::Double)?)?;
        Ok(Vec::<f64>::try_from(&mean)?)
    }
}
