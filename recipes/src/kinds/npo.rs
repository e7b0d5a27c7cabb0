//! The `npo` node kind: unlearning with Negative Preference Optimisation on a forget set,
//! optionally regularised on a retain set. Produces a `model`.
//!
//! ```kdl
//! ref-logps forget-ref model=base data=forget
//! ref-logps retain-ref model=base data=retain
//! npo unlearned model=base forget=forget-ref retain=retain-ref { beta 0.1; retain-weight 1.0 }
//! ```
//!
//! Per step, with `F` forget sequences and `R` retain sequences (`R = F` by default):
//! `loss = [Σ_forget npo(y) + c·Σ_retain r(y)] / F`, where `npo` is
//! [`crate::pref::npo::npo`] on summed completion log-probs against the stored reference, `c`
//! is `retain-weight`, and `r` is the retain term of `retain-loss` (`nll`: `−logπ(y)/L`; `kl`:
//! the per-token k2 KL estimate against the stored reference, see [`crate::pref::npo`]). With
//! `R = F` this is `mean npo + c · mean r`. Forget and retain sequences share one forward pass.
//! The forget / retain sets are `ref-logps` nodes over any dataset format (targets as for SFT).
//!
//! Order: forget sequences as in `dpo` (seeded permutation per epoch, `⌈epochs·n⌉` or
//! `steps · batch-size · grad-accum`); the retain set cycles through its own seeded
//! permutations, `R` per micro-batch. Metrics: `npo`, `logps/forget`, `retain` (means over the
//! logging window), plus the trainer's.

use super::dpo::{read_ref, total, Order, Window};
use crate::pref::logps::seq_logps;
use crate::pref::npo::npo;
use crate::pref::stored::StoredRec;
use crate::stage::{Stage, StageCtx, StageError};
use crate::tok::TokenizerDir;
use crate::train::examples::Example;
use crate::trainer::params::{self, float, int};
use crate::trainer::{train, LossOut, Objective};
use anyhow::Context;
use dsl::{KindSchema, NodeDecl, ParamIssue, ParamSpec, ParamType, Value};
use serde_json::{json, Value as J};
use tch::{Kind, Tensor};

/// The `npo` kind.
pub struct Npo;

const ORDER: u64 = 0x4E0F_0DE4;
const RETAIN_ORDER: u64 = 0x4E0F_0DE5;

impl Stage for Npo {
    fn schema(&self) -> KindSchema {
        KindSchema::new("npo", 1, "model")
            .doc("Unlearning with NPO on a forget set (ref-logps node), optionally with an NLL or KL term on a retain set.")
            .param(ParamSpec::new("model", ParamType::Ref(&["model"])).doc("the model to make forget (usually the reference of `forget=`)"))
            .param(ParamSpec::new("forget", ParamType::Ref(&["ref-logps"])).doc("ref-logps node over the forget set"))
            .param(ParamSpec::new("retain", ParamType::Ref(&["ref-logps"])).optional().doc("ref-logps node over the retain set"))
            .param(ParamSpec::new("beta", float(0.0)).default(Value::Float(0.1)).doc("NPO's β"))
            .param(ParamSpec::new("retain-loss", ParamType::Enum(&["nll", "kl"])).default(Value::Str("nll".into()))
                .doc("nll: −logπ(y)/L; kl: per-token k2 KL to the stored reference"))
            .param(ParamSpec::new("retain-weight", float(0.0)).default(Value::Float(1.0)).doc("c, the weight of the retain term"))
            .param(ParamSpec::new("batch-size", int(1)).default(Value::Int(8)).doc("forget sequences per micro-batch"))
            .param(ParamSpec::new("retain-batch-size", int(1)).optional().doc("retain sequences per micro-batch (default: batch-size)"))
            .params(params::optim_params())
            .check(check)
    }

    fn run(&self, ctx: &StageCtx) -> Result<J, StageError> {
        run(ctx)
    }
}

fn check(n: &NodeDecl) -> Vec<ParamIssue> {
    let mut out = Vec::new();
    params::check_optim(n, &mut out);
    params::check_steps_or_epochs(n, &mut out);
    out
}

/// A sequence with its stored reference log-probs.
pub struct RefSeq {
    pub seq: Example,
    pub ref_sum: f64,
    pub ref_tok: Vec<f32>,
}

fn seqs(
    ctx: &StageCtx,
    param: &str,
    tdir: &TokenizerDir,
    vocab: usize,
) -> Result<Vec<RefSeq>, StageError> {
    let (recs, summary) = read_ref(ctx, param, tdir, vocab)?;
    let node = &ctx.input(param)?.node;
    if summary.layout != "sequences" || summary.reference.is_none() {
        return Err(StageError::user(
            format!("node {}: `{param}={node}` must be a ref-logps node with a reference `model=` over a non-preference dataset", ctx.node),
            Some("e.g. `ref-logps forget-ref model=base data=forget` with a text or prompt-completion dataset".into()),
        ));
    }
    Ok(recs
        .into_iter()
        .filter_map(|r| match r {
            StoredRec::Seq {
                seq,
                ref_sum: Some(s),
                ref_tok,
                ..
            } => Some(RefSeq {
                seq: seq.to_example(),
                ref_sum: s,
                ref_tok: ref_tok.unwrap_or_default(),
            }),
            _ => None,
        })
        .collect())
}

fn run(ctx: &StageCtx) -> Result<J, StageError> {
    let (mut model, model_dir) = params::load_model(ctx)?;
    let tdir = TokenizerDir::load(&model_dir, &format!("model {}", ctx.input("model")?.node))?;
    let pad = tdir.pad_id().or(tdir.eos_id()).unwrap_or(0) as i64;
    let vocab = model.config.vocab_size;
    let forget = seqs(ctx, "forget", &tdir, vocab)?;
    let retain = match ctx.param("retain") {
        Value::Null => Vec::new(),
        _ => seqs(ctx, "retain", &tdir, vocab)?,
    };
    let batch = params::get_u64(ctx, "batch-size").unwrap_or(8).max(1) as usize;
    let rbatch = params::get_u64(ctx, "retain-batch-size").map_or(batch, |v| v.max(1) as usize);
    let accum = params::get_u64(ctx, "grad-accum").unwrap_or(1).max(1) as usize;
    let n = forget.len() as u64;
    let mut spec = params::train_spec(ctx);
    let limit = match params::get_u64(ctx, "steps") {
        Some(s) => {
            spec.total_steps = s;
            s.saturating_mul((batch * accum) as u64)
        }
        None => {
            let e = ctx.param("epochs").as_f64().unwrap_or(1.0);
            let limit = ((e * n as f64).ceil() as u64).max(1);
            spec.total_steps = limit.div_ceil((batch * accum) as u64);
            limit
        }
    };
    let kl = ctx.param("retain-loss").as_str() == Some("kl");
    let mut obj = NpoData {
        order: Order::new(spec.seed, ORDER, n),
        retain_order: Order::new(spec.seed, RETAIN_ORDER, retain.len() as u64),
        forget,
        retain,
        cursor: 0,
        retain_cursor: 0,
        limit,
        batch,
        rbatch,
        accum,
        pad,
        beta: params::get_f64(ctx, "beta", 0.1),
        kl,
        weight: params::get_f64(ctx, "retain-weight", 1.0),
        window: Window::default(),
    };
    let summary = train(ctx, &mut model, &spec, &mut obj)?;
    let extra = json!({
        "kind": "npo",
        "beta": obj.beta,
        "forget": n,
        "retain": obj.retain.len(),
        "retain_loss": if kl { "kl" } else { "nll" },
        "retain_weight": obj.weight,
        "batch_size": batch,
        "grad_accum": accum,
        "dtype": params::dtype_name(model.kind()),
    });
    params::write_output(ctx, &model, &model_dir, &summary, extra)
}

/// The NPO data source and loss.
pub struct NpoData {
    pub forget: Vec<RefSeq>,
    pub retain: Vec<RefSeq>,
    order: Order,
    retain_order: Order,
    cursor: u64,
    retain_cursor: u64,
    limit: u64,
    batch: usize,
    rbatch: usize,
    accum: usize,
    pad: i64,
    beta: f64,
    kl: bool,
    weight: f64,
    window: Window,
}

impl Objective for NpoData {
    /// (forget indices, retain indices)
    type Batch = (Vec<usize>, Vec<usize>);

    fn micro_batches(&mut self, _step: u64) -> anyhow::Result<Option<Vec<Self::Batch>>> {
        let end = (self.cursor + (self.batch * self.accum) as u64).min(self.limit);
        if end <= self.cursor {
            return Ok(None);
        }
        let idx: Vec<usize> = (self.cursor..end).map(|g| self.order.at(g)).collect();
        self.cursor = end;
        let mut out = Vec::new();
        for c in idx.chunks(self.batch) {
            let mut r = Vec::new();
            if !self.retain.is_empty() && self.weight > 0.0 {
                for _ in 0..self.rbatch {
                    r.push(self.retain_order.at(self.retain_cursor));
                    self.retain_cursor += 1;
                }
            }
            out.push((c.to_vec(), r));
        }
        Ok(Some(out))
    }
    fn n_targets(&self, b: &Self::Batch) -> usize {
        b.0.len()
    }
    fn n_tokens(&self, b: &Self::Batch) -> usize {
        b.0.iter().map(|&i| self.forget[i].seq.len()).sum::<usize>()
            + b.1.iter().map(|&i| self.retain[i].seq.len()).sum::<usize>()
    }
    fn loss(&mut self, model: &crate::arch::HfModel, b: &Self::Batch) -> anyhow::Result<LossOut> {
        let f: Vec<&RefSeq> = b.0.iter().map(|&i| &self.forget[i]).collect();
        let r: Vec<&RefSeq> = b.1.iter().map(|&i| &self.retain[i]).collect();
        let all: Vec<&Example> = f.iter().chain(&r).map(|s| &s.seq).collect();
        let lp = seq_logps(model, &all, self.pad)?;
        let (nf, nr) = (f.len() as i64, r.len() as i64);
        let dev = lp.sum.device();
        let refs: Vec<f32> = f.iter().map(|s| s.ref_sum as f32).collect();
        let ref_f = Tensor::from_slice(&refs).to_device(dev);
        let logp_f = lp.sum.narrow(0, 0, nf);
        let l_npo = npo(&logp_f, &ref_f, self.beta);
        let npo_sum = l_npo.sum(Kind::Float);
        let mut retain_sum: Option<Tensor> = None;
        let w = &mut self.window;
        w.pairs += nf as f64;
        w.add("npo", total(&l_npo.detach())?);
        w.add("logps/forget", total(&logp_f.detach())?);
        if nr > 0 {
            let len = lp.len.narrow(0, nf, nr).clamp_min(1.0);
            let term = if self.kl {
                // Per-token reference log-probs laid out like the policy's [nr, T−1] mask.
                let mask = lp.mask.narrow(0, nf, nr);
                let mut flat = vec![0f32; (nr * mask.size()[1]) as usize];
                let cols = mask.size()[1] as usize;
                let m = Vec::<f32>::try_from(&mask.flatten(0, -1))?;
                for (row, s) in r.iter().enumerate() {
                    let mut k = 0;
                    for c in 0..cols {
                        if m[row * cols + c] > 0.0 {
                            flat[row * cols + c] = s.ref_tok.get(k).copied().unwrap_or(0.0);
                            k += 1;
                        }
                    }
                }
                let ref_tok = Tensor::from_slice(&flat)
                    .view([nr, cols as i64])
                    .to_device(dev);
                let d = (lp.tok.narrow(0, nf, nr) - ref_tok) * &mask;
                (d.square() * 0.5).sum_dim_intlist(1, false, Kind::Float) / &len
            } else {
                -lp.sum.narrow(0, nf, nr) / &len
            };
            w.add("retain", total(&term.detach())? * nf as f64 / nr as f64);
            retain_sum = Some(term.sum(Kind::Float) * self.weight);
        }
        let loss = match retain_sum {
            Some(r) => npo_sum + r,
            None => npo_sum,
        };
        Ok(LossOut {
            sum: loss,
            extra: Vec::new(),
        })
    }
    fn state(&self) -> J {
        json!({"forget_consumed": self.cursor, "retain_consumed": self.retain_cursor, "window": self.window})
    }
    fn restore(&mut self, s: &J) -> anyhow::Result<()> {
        self.cursor = s
            .get("forget_consumed")
            .and_then(J::as_u64)
            .context("no `forget_consumed` in the data position")?;
        self.retain_cursor = s.get("retain_consumed").and_then(J::as_u64).unwrap_or(0);
        if let Some(w) = s.get("window") {
            self.window = serde_json::from_value(w.clone()).context("the metrics window")?;
        }
        Ok(())
    }
    fn epoch(&self) -> f64 {
        self.cursor as f64 / self.forget.len().max(1) as f64
    }
    fn window_metrics(&mut self) -> Vec<(String, f64)> {
        self.window.take()
    }
}
