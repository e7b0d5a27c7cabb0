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

use crate::arch::HfModel;
use crate::batching::examples::Example;
use crate::pref::logps::{seq_logps, SeqLogps};
use crate::pref::npo::{npo, retain_kl, retain_nll};
use crate::pref::pairs::{total, Order, Window};
use crate::pref::stored::{self, Policy, StoredRec};
use crate::prologue::{self, Start};
use crate::stage::{Kind, StageCtx, StageError};
use crate::trainer::output::write_output;
use crate::trainer::params;
use crate::trainer::{train, LossOut, Objective};
use anyhow::Context;
use dsl::KindSchema;
use kinds::npo::{Params, RetainLoss};
use kinds::Input;
use serde_json::{json, Value as J};
use tch::{Kind as Dtype, Tensor};

/// The `npo` kind.
pub struct Npo;

const ORDER: u64 = 0x4E0F_0DE4;
const RETAIN_ORDER: u64 = 0x4E0F_0DE5;

impl Kind for Npo {
    type Params = Params;

    fn schema(&self) -> KindSchema {
        kinds::npo::schema()
    }

    fn run(&self, ctx: &StageCtx, p: Params) -> Result<J, StageError> {
        let Start {
            mut model,
            tok,
            pad,
            ..
        } = prologue::start(ctx, &p.model, p.optim.load_dtype(), None, None)?;
        let policy = Policy::of(&model, &tok);
        let forget = seqs(ctx, &p.forget, &policy)?;
        let retain = match &p.retain {
            None => Vec::new(),
            Some(r) => seqs(ctx, r, &policy)?,
        };
        let batch = p.batch_size.max(1);
        let rbatch = p.retain_batch_size.map_or(batch, |v| v.max(1));
        let accum = p.optim.grad_accum.max(1);
        let n = forget.len() as u64;
        let mut spec = params::train_spec(&p.optim, &p.common);
        let (total_steps, limit) = params::item_budget(&p.optim, n, (batch * accum) as u64);
        spec.total_steps = total_steps;
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
            beta: p.beta,
            kl: p.retain_loss == RetainLoss::Kl,
            weight: p.retain_weight,
            window: Window::default(),
        };
        let summary = train(ctx, &mut model.hf, &spec, &mut obj)?;
        let extra = json!({
            "kind": "npo",
            "beta": obj.beta,
            "forget": n,
            "retain": obj.retain.len(),
            "retain_loss": p.retain_loss.name(),
            "retain_weight": obj.weight,
            "batch_size": batch,
            "grad_accum": accum,
        });
        write_output(ctx, &model, &model.dir, &summary, extra)
    }
}

/// A sequence with its stored reference log-probs.
pub struct RefSeq {
    pub seq: Example,
    pub ref_sum: f64,
    pub ref_tok: Vec<f32>,
}

/// The sequences of the `ref-logps` input `input`, which must hold single sequences with
/// reference log-probs.
fn seqs(ctx: &StageCtx, input: &Input, policy: &Policy) -> Result<Vec<RefSeq>, StageError> {
    let (recs, summary) = stored::read_for_policy(ctx, input, policy)?;
    if summary.layout != "sequences" || summary.reference.is_none() {
        return Err(StageError::user(
            format!("node {}: `{}={}` must be a ref-logps node with a reference `model=` over a non-preference dataset", ctx.node, input.param, ctx.input(&input.param)?.node),
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

impl NpoData {
    /// The retain term of each retain sequence (rows `nf..` of `lp`): `−logπ(y)/L` or the k2
    /// KL to the stored reference ([`crate::pref::npo`]).
    fn retain_term(&self, lp: &SeqLogps, r: &[&RefSeq], nf: i64) -> anyhow::Result<Tensor> {
        let nr = r.len() as i64;
        let len = lp.len.narrow(0, nf, nr).clamp_min(1.0);
        if !self.kl {
            return Ok(retain_nll(&lp.sum.narrow(0, nf, nr), &len));
        }
        let ref_tok: Vec<&[f32]> = r.iter().map(|s| s.ref_tok.as_slice()).collect();
        let labels: Vec<&[i64]> = r.iter().map(|s| s.seq.labels.as_slice()).collect();
        retain_kl(
            &lp.tok.narrow(0, nf, nr),
            &lp.mask.narrow(0, nf, nr),
            &len,
            &ref_tok,
            &labels,
        )
    }
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
    fn loss(&mut self, model: &HfModel, b: &Self::Batch) -> anyhow::Result<LossOut> {
        let f: Vec<&RefSeq> = b.0.iter().map(|&i| &self.forget[i]).collect();
        let r: Vec<&RefSeq> = b.1.iter().map(|&i| &self.retain[i]).collect();
        let all: Vec<&Example> = f.iter().chain(&r).map(|s| &s.seq).collect();
        let lp = seq_logps(model, &all, self.pad)?;
        let (nf, nr) = (f.len() as i64, r.len() as i64);
        let refs: Vec<f32> = f.iter().map(|s| s.ref_sum as f32).collect();
        let ref_f = Tensor::from_slice(&refs).to_device(lp.sum.device());
        let logp_f = lp.sum.narrow(0, 0, nf);
        let l_npo = npo(&logp_f, &ref_f, self.beta);
        let npo_sum = l_npo.sum(Dtype::Float);
        self.window.pairs += nf as f64;
        self.window.add("npo", total(&l_npo)?)?;
        self.window.add("logps/forget", total(&logp_f)?)?;
        if nr == 0 {
            return Ok(LossOut {
                sum: lp.attach(&npo_sum)?,
                extra: Vec::new(),
            });
        }
        let term = self.retain_term(&lp, &r, nf)?;
        self.window.add(
            "retain",
            total(&term)?
                .f_mul_scalar(nf as f64)?
                .f_div_scalar(nr as f64)?,
        )?;
        Ok(LossOut {
            sum: lp.attach(&(npo_sum + term.sum(Dtype::Float) * self.weight))?,
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
    fn window_metrics(&mut self) -> anyhow::Result<Vec<(String, f64)>> {
        self.window.take()
    }
}
