//! The `ref-logps` node kind: tokenises a dataset once and computes the reference model's
//! log-probs of every record, so preference stages (`dpo`, `npo`) never load the reference
//! model. Keyed, like every node, by its inputs (reference model, dataset, tokenizer) and its
//! tokenisation parameters — a sweep over β, loss or learning rate of the stages that read it
//! computes it once.
//!
//! ```kdl
//! ref-logps ref model=instruct data=prefs { max-len 512; max-prompt-len 256 }
//! dpo aligned model=instruct ref=ref { loss sigmoid; beta 0.1 }
//! ```
//!
//! Preference data (`prompt/chosen/rejected`) is stored as pairs, tokenised and truncated per
//! [`crate::pref::encode`] (records whose prompt fills `max-len` skipped and counted); any other
//! format as single sequences (targets as for SFT: the completion / assistant turns, all tokens
//! for `text`; longer than `max-len` skipped and counted), with per-token reference log-probs
//! for NPO's KL retain term. Without `model=` the node only tokenises (for the reference-free
//! losses `simpo` and `orpo`); `tokenizer=` is then required.
//!
//! Log-probs are computed in f32 sums ([`crate::pref::logps`]) under `no_grad`, `batch-size`
//! records per forward (chosen and rejected of a pair in the same forward). The pass is short
//! and not checkpointed: a cancelled node starts over.

use crate::arch::HfModel;
use crate::batching::chat::ChatTemplate;
use crate::batching::examples::{Encoded, Encoder, Example, LossOn};
use crate::data::{read_normalized, Format, Record};
use crate::pref::encode::{PairEncoded, PairEncoder};
use crate::pref::logps::seq_logps;
use crate::pref::stored::{self, Seq, StoredRec, StoredSummary};
use crate::prologue::{self, Model, Tok};
use crate::stage::{InputArtifact, Kind, StageCtx, StageError};
use anyhow::Context;
use dsl::KindSchema;
use kinds::ref_logps::Params;
use serde_json::Value as J;
use std::collections::BTreeMap;

/// The `ref-logps` kind.
pub struct RefLogps;

/// `max-len` when neither the node nor a reference model gives one.
const FALLBACK_MAX_LEN: usize = 1024;

impl Kind for RefLogps {
    type Params = Params;

    fn schema(&self) -> KindSchema {
        kinds::ref_logps::schema()
    }

    fn run(&self, ctx: &StageCtx, p: Params) -> Result<J, StageError> {
        let device = prologue::device(ctx)?;
        let model = match &p.model {
            None => None,
            Some(m) => Some(prologue::load_model(
                ctx,
                m,
                device,
                prologue::resolve_dtype(p.dtype, device),
            )?),
        };
        let tok = prologue::tokenizer(ctx, p.tokenizer.as_ref(), model.as_ref())?;
        let eos = tok.eos("completions end with EOS")?;
        let maxp = model.as_ref().and_then(|m| m.hf.config.max_position);
        let max_len = prologue::max_len(p.max_len, maxp, FALLBACK_MAX_LEN, "the reference model")?;
        let template = tok.chat_template()?;
        let data = ctx.input(&p.data.param)?;
        let (format, records) =
            read_normalized(&data.dir).with_context(|| format!("dataset {}", data.node))?;
        let cx = Tokenise {
            ctx,
            p: &p,
            tok: &tok,
            template: template.as_ref(),
            eos,
            max_len,
            data,
        };
        let mut t = if format == Format::Preference {
            cx.pairs(&records)?
        } else {
            cx.sequences(format, &records)?
        };
        t.check(ctx, data, records.len())?;
        let (mc, mr) = match &model {
            Some(m) => reference_logps(ctx, m, &mut t.recs, p.batch_size, tok.pad())?,
            None => (None, None),
        };
        let summary = StoredSummary {
            kind: "ref-logps".into(),
            layout: if format == Format::Preference {
                "pairs"
            } else {
                "sequences"
            }
            .into(),
            records: records.len(),
            kept: t.recs.len(),
            skipped: t.skipped,
            truncated: t.truncated,
            reference: model.as_ref().map(|m| m.node.clone()),
            tokenizer_fingerprint: stored::tokenizer_fingerprint(&tok.dir.tokenizer),
            max_len,
            max_prompt_len: p.max_prompt_len,
            use_chat_template: p.use_chat_template,
            mean_ref_chosen: mc,
            mean_ref_rejected: mr,
        };
        stored::write(&ctx.out_dir, &t.recs, &summary)
            .with_context(|| format!("node {}: writing the artifact", ctx.node))?;
        Ok(serde_json::to_value(&summary).context("summary")?)
    }
}

/// What tokenising a dataset needs.
struct Tokenise<'a> {
    ctx: &'a StageCtx,
    p: &'a Params,
    tok: &'a Tok,
    template: Option<&'a ChatTemplate>,
    eos: u32,
    max_len: usize,
    data: &'a InputArtifact,
}

/// The tokenised records, and the ones left out (by reason) or truncated.
#[derive(Default)]
struct Tokenised {
    recs: Vec<StoredRec>,
    skipped: BTreeMap<String, u64>,
    truncated: u64,
}

impl Tokenised {
    fn skip(&mut self, reason: &str) {
        *self.skipped.entry(reason.to_string()).or_default() += 1;
    }

    /// Logs the skips of `n` records; fails when nothing is left.
    fn check(&self, ctx: &StageCtx, data: &InputArtifact, n: usize) -> Result<(), StageError> {
        let skipped = &self.skipped;
        let n_skipped: u64 = skipped.values().sum();
        if n_skipped > 0 {
            tracing::warn!(node = %ctx.node, "{n_skipped} of {n} records skipped: {skipped:?}");
        }
        if self.recs.is_empty() {
            return Err(StageError::user(
                format!(
                    "dataset {}: no record left after tokenisation ({skipped:?})",
                    data.node
                ),
                Some("raise `max-len`, or set `max-prompt-len` to cut long prompts".into()),
            ));
        }
        Ok(())
    }
}

impl Tokenise<'_> {
    fn at(&self, i: usize) -> String {
        format!(
            "dataset {}: record {} (line {} of data.jsonl)",
            self.data.node,
            i + 1,
            i + 1
        )
    }

    /// Preference records as pairs, per [`crate::pref::encode`].
    fn pairs(&self, records: &[Record]) -> Result<Tokenised, StageError> {
        let enc = PairEncoder {
            tokenizer: &self.tok.dir.tokenizer,
            template: self.template,
            eos_id: self.eos,
            use_chat_template: self.p.use_chat_template,
            max_len: self.max_len,
            max_prompt_len: self.p.max_prompt_len,
        };
        let mut out = Tokenised::default();
        for (i, r) in records.iter().enumerate() {
            self.ctx.check_cancel()?;
            let Record::Preference {
                prompt,
                chosen,
                rejected,
            } = r
            else {
                return Err(StageError::user(
                    format!("{}: not a preference record", self.at(i)),
                    None,
                ));
            };
            match enc
                .pair(prompt, chosen, rejected)
                .map_err(|e| StageError::user(format!("{}: {e:#}", self.at(i)), None))?
            {
                PairEncoded::Ok {
                    chosen,
                    rejected,
                    truncated,
                } => {
                    if chosen.n_targets() == 0 || rejected.n_targets() == 0 {
                        out.skip("no_target");
                        continue;
                    }
                    out.truncated += u64::from(truncated);
                    out.recs.push(StoredRec::Pair {
                        record: i,
                        chosen: Seq::from_example(&chosen),
                        rejected: Seq::from_example(&rejected),
                        ref_chosen: None,
                        ref_rejected: None,
                    });
                }
                PairEncoded::PromptTooLong { len } => {
                    tracing::debug!(
                        "{}: prompt of {len} tokens fills max-len {}, skipped",
                        self.at(i),
                        self.max_len
                    );
                    out.skip("prompt_too_long");
                }
                PairEncoded::Identical => out.skip("identical_after_truncation"),
            }
        }
        Ok(out)
    }

    /// Any other format as single sequences, targets as for SFT.
    fn sequences(&self, format: Format, records: &[Record]) -> Result<Tokenised, StageError> {
        if format == Format::Messages && self.template.is_none() {
            return Err(StageError::user(
                format!(
                    "{}: messages data needs a chat template, and this tokenizer has none",
                    self.tok.shown
                ),
                None,
            ));
        }
        let enc = Encoder {
            tokenizer: &self.tok.dir.tokenizer,
            template: self.template,
            eos_id: self.eos,
            loss_on: LossOn::Assistant,
            use_chat_template: self.p.use_chat_template,
            max_len: Some(self.max_len),
        };
        let mut out = Tokenised::default();
        for (i, r) in records.iter().enumerate() {
            self.ctx.check_cancel()?;
            match enc.example(r).with_context(|| self.at(i))? {
                Encoded::Ok(ex) => out.recs.push(StoredRec::Seq {
                    record: i,
                    seq: Seq::from_example(&ex),
                    ref_sum: None,
                    ref_tok: None,
                }),
                Encoded::TooLong { .. } => out.skip("too_long"),
                Encoded::NoTarget => out.skip("no_target"),
            }
        }
        Ok(out)
    }
}

/// Fills the reference log-probs of `recs` under `no_grad`, `batch` records per forward:
/// the means of the chosen (or sequence) and rejected sums.
fn reference_logps(
    ctx: &StageCtx,
    m: &Model,
    recs: &mut [StoredRec],
    batch: usize,
    pad: i64,
) -> Result<(Option<f64>, Option<f64>), StageError> {
    ctx.progress.set_length(recs.len() as u64);
    let _guard = tch::no_grad_guard();
    for chunk in recs.chunks_mut(batch.max(1)) {
        ctx.check_cancel()?;
        fill(&m.hf, chunk, pad)
            .with_context(|| format!("node {}: reference log-probs", ctx.node))?;
        ctx.progress.inc(chunk.len() as u64);
    }
    let mean = |f: &dyn Fn(&StoredRec) -> Option<f64>| {
        let v: Vec<f64> = recs.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let mc = mean(&|r| match r {
        StoredRec::Pair { ref_chosen, .. } => *ref_chosen,
        StoredRec::Seq { ref_sum, .. } => *ref_sum,
    });
    let mr = mean(&|r| match r {
        StoredRec::Pair { ref_rejected, .. } => *ref_rejected,
        StoredRec::Seq { .. } => None,
    });
    Ok((mc, mr))
}

/// Computes the reference log-probs of `chunk` in one forward.
fn fill(m: &HfModel, chunk: &mut [StoredRec], pad: i64) -> anyhow::Result<()> {
    let mut seqs: Vec<Example> = Vec::new();
    let pairs = matches!(chunk.first(), Some(StoredRec::Pair { .. }));
    for r in chunk.iter() {
        match r {
            StoredRec::Pair { chosen, .. } => seqs.push(chosen.to_example()),
            StoredRec::Seq { seq, .. } => seqs.push(seq.to_example()),
        }
    }
    if pairs {
        for r in chunk.iter() {
            if let StoredRec::Pair { rejected, .. } = r {
                seqs.push(rejected.to_example());
            }
        }
    }
    let refs: Vec<&Example> = seqs.iter().collect();
    let lp = seq_logps(m, &refs, pad)?;
    let sums = Vec::<f64>::try_from(&lp.sum.to_kind(tch::Kind::Double))?;
    let n = chunk.len();
    for (i, r) in chunk.iter_mut().enumerate() {
        match r {
            StoredRec::Pair {
                ref_chosen,
                ref_rejected,
                ..
            } => {
                *ref_chosen = Some(sums[i]);
                *ref_rejected = Some(sums[n + i]);
            }
            StoredRec::Seq {
                seq,
                ref_sum,
                ref_tok,
                ..
            } => {
                *ref_sum = Some(sums[i]);
                let row = lp.tok.get(i as i64);
                let mask = lp.mask.get(i as i64);
                let all = Vec::<f32>::try_from(&row)?;
                let on = Vec::<f32>::try_from(&mask)?;
                let toks: Vec<f32> = all
                    .iter()
                    .zip(&on)
                    .filter(|(_, &m)| m > 0.0)
                    .map(|(&x, _)| x)
                    .collect();
                debug_assert_eq!(toks.len(), seq.to_example().n_targets());
                *ref_tok = Some(toks);
            }
        }
    }
    Ok(())
}
