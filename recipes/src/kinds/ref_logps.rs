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

use crate::arch::{HfModel, LoadOptions};
use crate::data::{read_normalized, Format, Record};
use crate::pref::encode::{PairEncoded, PairEncoder};
use crate::pref::logps::seq_logps;
use crate::pref::stored::{self, Seq, StoredRec, StoredSummary};
use crate::stage::{Stage, StageCtx, StageError};
use crate::tok::TokenizerDir;
use crate::train::chat::ChatTemplate;
use crate::train::examples::{Encoded, Encoder, Example, LossOn};
use crate::trainer::params::{self, int};
use anyhow::Context;
use dsl::{KindSchema, NodeDecl, ParamIssue, ParamSpec, ParamType, Value};
use serde_json::Value as J;
use std::collections::BTreeMap;

/// The `ref-logps` kind.
pub struct RefLogps;

impl Stage for RefLogps {
    fn schema(&self) -> KindSchema {
        KindSchema::new("ref-logps", 1, "ref-logps")
            .doc("Tokenised preference (or forget/retain) data with the reference model's log-probs, computed once and read by dpo / npo.")
            .param(ParamSpec::new("model", ParamType::Ref(&["model"])).optional().doc("the reference model (omit to only tokenise, for simpo / orpo)"))
            .param(ParamSpec::new("data", ParamType::Ref(&["dataset"])).doc("preference data, or any dataset for npo forget / retain sets"))
            .param(ParamSpec::new("tokenizer", ParamType::Ref(&["tokenizer", "model"])).optional().doc("default: the model's tokenizer files"))
            .param(ParamSpec::new("max-len", int(2)).optional().doc("longest prompt + completion in tokens (default: the model's max_position_embeddings, else 1024)"))
            .param(ParamSpec::new("max-prompt-len", int(1)).optional().doc("prompts longer than this keep their last tokens (default: no limit besides max-len)"))
            .param(ParamSpec::new("use-chat-template", ParamType::Bool).default(Value::Bool(false)).doc("render plain-text pairs / prompt-completion records with the chat template"))
            .param(ParamSpec::new("dtype", ParamType::Enum(&["auto", "f32", "bf16"])).default(Value::Str("auto".into())).doc("reference compute dtype: auto = f32 on CPU, bf16 on CUDA"))
            .param(ParamSpec::new("batch-size", int(1)).default(Value::Int(8)).non_semantic().doc("records per forward pass"))
            .check(check)
    }

    fn run(&self, ctx: &StageCtx) -> Result<J, StageError> {
        run(ctx)
    }
}

fn check(n: &NodeDecl) -> Vec<ParamIssue> {
    let mut out = Vec::new();
    if !params::is_set(n, "model") && !params::is_set(n, "tokenizer") {
        out.push(ParamIssue {
            param: None,
            message: "ref-logps needs `model=` (the reference) or, to only tokenise, `tokenizer=`"
                .into(),
            hint: Some("`ref-logps ref model=sft data=prefs`".into()),
        });
    }
    out
}

fn skip(m: &mut BTreeMap<String, u64>, reason: &str) {
    *m.entry(reason.to_string()).or_default() += 1;
}

fn run(ctx: &StageCtx) -> Result<J, StageError> {
    let device = params::parse_device(&ctx.device)?;
    let model = match ctx.param("model") {
        Value::Null => None,
        _ => {
            let input = ctx.input("model")?;
            let dtype =
                params::resolve_dtype(ctx.param("dtype").as_str().unwrap_or("auto"), device);
            let opts = LoadOptions {
                device,
                dtype: Some(dtype),
            };
            Some((
                HfModel::load(&input.dir, &format!("model {}", input.node), &opts)?,
                input,
            ))
        }
    };
    let (tok_dir, tok_shown) = match (ctx.param("tokenizer"), &model) {
        (Value::Null, Some((_, m))) => (m.dir.clone(), format!("model {}", m.node)),
        _ => {
            let t = ctx.input("tokenizer")?;
            (t.dir.clone(), format!("tokenizer {}", t.node))
        }
    };
    let tdir = TokenizerDir::load(&tok_dir, &tok_shown)?;
    let eos = tdir.eos_id().ok_or_else(|| {
        StageError::user(
            format!("{tok_shown}: the tokenizer has no EOS token (`eos_token` in tokenizer_config.json)"),
            Some("completions end with EOS".into()),
        )
    })?;
    let pad = tdir.pad_id().unwrap_or(eos) as i64;
    let maxp = model.as_ref().and_then(|(m, _)| m.config.max_position);
    let max_len = match (params::get_u64(ctx, "max-len"), maxp) {
        (Some(m), Some(p)) if m as usize > p => {
            return Err(StageError::user(
                format!(
                    "max-len {m} is longer than the reference model's max_position_embeddings {p}"
                ),
                Some(format!("use max-len {p} or less")),
            ))
        }
        (Some(m), _) => m as usize,
        (None, Some(p)) => p,
        (None, None) => 1024,
    };
    let max_prompt_len = params::get_u64(ctx, "max-prompt-len").map(|m| m as usize);
    let template = match ChatTemplate::load(&tok_dir, &tdir.tokenizer) {
        Ok(Some(mut t)) => {
            t.set_now(0);
            Some(t)
        }
        Ok(None) => None,
        Err(e) => return Err(StageError::user(format!("{tok_shown}: {e:#}"), None)),
    };
    let use_chat = ctx.param("use-chat-template").as_bool().unwrap_or(false);
    let data = ctx.input("data")?;
    let (format, records) =
        read_normalized(&data.dir).with_context(|| format!("dataset {}", data.node))?;
    let at = |i: usize| {
        format!(
            "dataset {}: record {} (line {} of data.jsonl)",
            data.node,
            i + 1,
            i + 1
        )
    };

    // Tokenise.
    let mut skipped: BTreeMap<String, u64> = BTreeMap::new();
    let mut truncated = 0u64;
    let mut recs: Vec<StoredRec> = Vec::with_capacity(records.len());
    if format == Format::Preference {
        let enc = PairEncoder {
            tokenizer: &tdir.tokenizer,
            template: template.as_ref(),
            eos_id: eos,
            use_chat_template: use_chat,
            max_len,
            max_prompt_len,
        };
        for (i, r) in records.iter().enumerate() {
            ctx.check_cancel()?;
            let Record::Preference {
                prompt,
                chosen,
                rejected,
            } = r
            else {
                return Err(StageError::user(
                    format!("{}: not a preference record", at(i)),
                    None,
                ));
            };
            match enc
                .pair(prompt, chosen, rejected)
                .map_err(|e| StageError::user(format!("{}: {e:#}", at(i)), None))?
            {
                PairEncoded::Ok {
                    chosen,
                    rejected,
                    truncated: t,
                } => {
                    if chosen.n_targets() == 0 || rejected.n_targets() == 0 {
                        skip(&mut skipped, "no_target");
                        continue;
                    }
                    truncated += u64::from(t);
                    recs.push(StoredRec::Pair {
                        record: i,
                        chosen: Seq::from_example(&chosen),
                        rejected: Seq::from_example(&rejected),
                        ref_chosen: None,
                        ref_rejected: None,
                    });
                }
                PairEncoded::PromptTooLong { len } => {
                    tracing::debug!(
                        "{}: prompt of {len} tokens fills max-len {max_len}, skipped",
                        at(i)
                    );
                    skip(&mut skipped, "prompt_too_long");
                }
                PairEncoded::Identical => skip(&mut skipped, "identical_after_truncation"),
            }
        }
    } else {
        if format == Format::Messages && template.is_none() {
            return Err(StageError::user(
                format!(
                    "{tok_shown}: messages data needs a chat template, and this tokenizer has none"
                ),
                None,
            ));
        }
        let enc = Encoder {
            tokenizer: &tdir.tokenizer,
            template: template.as_ref(),
            eos_id: eos,
            loss_on: LossOn::Assistant,
            use_chat_template: use_chat,
            max_len: Some(max_len),
        };
        for (i, r) in records.iter().enumerate() {
            ctx.check_cancel()?;
            match enc.example(r).with_context(|| at(i))? {
                Encoded::Ok(ex) => recs.push(StoredRec::Seq {
                    record: i,
                    seq: Seq::from_example(&ex),
                    ref_sum: None,
                    ref_tok: None,
                }),
                Encoded::TooLong { .. } => skip(&mut skipped, "too_long"),
                Encoded::NoTarget => skip(&mut skipped, "no_target"),
            }
        }
    }
    let n_skipped: u64 = skipped.values().sum();
    if n_skipped > 0 {
        tracing::warn!(node = %ctx.node, "{n_skipped} of {} records skipped: {skipped:?}", records.len());
    }
    if recs.is_empty() {
        return Err(StageError::user(
            format!(
                "dataset {}: no record left after tokenisation ({skipped:?})",
                data.node
            ),
            Some("raise `max-len`, or set `max-prompt-len` to cut long prompts".into()),
        ));
    }

    // Reference log-probs.
    let (mut mc, mut mr) = (None, None);
    if let Some((m, _)) = &model {
        let bs = params::get_u64(ctx, "batch-size").unwrap_or(8).max(1) as usize;
        ctx.progress.set_length(recs.len() as u64);
        let _guard = tch::no_grad_guard();
        for chunk in recs.chunks_mut(bs) {
            ctx.check_cancel()?;
            fill(m, chunk, pad)
                .with_context(|| format!("node {}: reference log-probs", ctx.node))?;
            ctx.progress.inc(chunk.len() as u64);
        }
        let mean = |f: &dyn Fn(&StoredRec) -> Option<f64>| {
            let v: Vec<f64> = recs.iter().filter_map(f).collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        };
        mc = mean(&|r| match r {
            StoredRec::Pair { ref_chosen, .. } => *ref_chosen,
            StoredRec::Seq { ref_sum, .. } => *ref_sum,
        });
        mr = mean(&|r| match r {
            StoredRec::Pair { ref_rejected, .. } => *ref_rejected,
            StoredRec::Seq { .. } => None,
        });
    }
    let summary = StoredSummary {
        kind: "ref-logps".into(),
        layout: if format == Format::Preference {
            "pairs"
        } else {
            "sequences"
        }
        .into(),
        records: records.len(),
        kept: recs.len(),
        skipped,
        truncated,
        reference: model.as_ref().map(|(_, i)| i.node.clone()),
        tokenizer_fingerprint: stored::tokenizer_fingerprint(&tdir.tokenizer),
        max_len,
        max_prompt_len,
        use_chat_template: use_chat,
        mean_ref_chosen: mc,
        mean_ref_rejected: mr,
    };
    stored::write(&ctx.out_dir, &recs, &summary)
        .with_context(|| format!("node {}: writing the artifact", ctx.node))?;
    Ok(serde_json::to_value(&summary).context("summary")?)
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
