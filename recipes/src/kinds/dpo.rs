//! The `dpo` node kind: preference optimisation of a policy `model` on the pairs of a
//! `ref-logps` node, with any loss of [`crate::pref::LOSSES`] (declared in `kinds::losses`:
//! sigmoid / cDPO, robust, hinge, ipo, sigmoid_norm, orpo, simpo; RPO through `nll-weight`).
//! Produces a `model`.
//!
//! ```kdl
//! ref-logps ref model=instruct data=prefs { max-len 512 }
//! dpo aligned model=instruct ref=ref { loss sigmoid; beta 0.1; nll-weight 1.0 }   // RPO
//! ```
//!
//! The pairs, their tokenisation and truncation, and the reference log-probs come from `ref=`
//! (there is no `data=`: one node owns the tokenisation, so the policy and the stored reference
//! log-probs always see the same tokens). The reference model is never loaded here. The
//! policy's tokenizer must map every token to the same id as the one `ref=` used (compared by
//! [`crate::pref::stored::read_for_policy`]), else the node fails.
//!
//! Training reuses [`crate::trainer::train`] (checkpoints, resume, NaN detection, metrics):
//! one normalisation unit per pair, so a step's loss is the mean per-pair loss. Chosen and
//! rejected of a micro-batch go through one forward pass. Order: epoch `e` visits the pairs in
//! `SplitMix64::derived(seed, ORDER, e).permutation(n)`; `⌈epochs·n⌉` pairs (default 1 epoch)
//! or `steps · batch-size · grad-accum`.
//!
//! Metrics (besides the trainer's loss, lr, grad_norm, tokens/s): those of
//! [`crate::pref::pairs`] — rewards, accuracies, log-probs and NLL, means over the pairs of the
//! logging window (all steps since the previous metrics line).

use crate::pref::pairs::{Order, Pair, PrefData, Window};
use crate::pref::stored::{self, Policy, StoredSummary};
use crate::pref::LossConfig;
use crate::prologue::{self, Start};
use crate::stage::{Kind, StageCtx, StageError};
use crate::trainer::output::write_output;
use crate::trainer::params;
use crate::trainer::train;
use dsl::KindSchema;
use kinds::dpo::Params;
use serde_json::{json, Value as J};

/// The `dpo` kind.
pub struct Dpo;

/// Stream key of the epoch permutations.
const ORDER: u64 = 0x0DF0_0DE4;

impl Kind for Dpo {
    type Params = Params;

    fn schema(&self) -> KindSchema {
        kinds::dpo::schema()
    }

    fn run(&self, ctx: &StageCtx, p: Params) -> Result<J, StageError> {
        let cfg = loss_config(ctx, &p)?;
        let Start {
            mut model,
            tok,
            pad,
            ..
        } = prologue::start(ctx, &p.model, p.optim.load_dtype(), None, None)?;
        let policy = Policy::of(&model, &tok);
        let (recs, summary) = stored::read_for_policy(ctx, &p.reference, &policy)?;
        check_ref(ctx, &p, &cfg, &summary)?;
        let pairs = Pair::from_stored(recs);
        let (batch, accum) = (p.batch_size.max(1), p.optim.grad_accum.max(1));
        let n = pairs.len() as u64;
        let mut spec = params::train_spec(&p.optim, &p.common);
        let (total_steps, limit) = params::item_budget(&p.optim, n, (batch * accum) as u64);
        spec.total_steps = total_steps;
        let mut obj = PrefData {
            pairs,
            order: Order::new(spec.seed, ORDER, n),
            cursor: 0,
            limit,
            batch,
            accum,
            pad,
            cfg,
            window: Window::default(),
        };
        let train_summary = train(ctx, &mut model.hf, &spec, &mut obj)?;
        let extra = json!({
            "kind": "dpo",
            "loss": cfg.decl.name,
            "beta": cfg.beta,
            "label_smoothing": cfg.label_smoothing,
            "nll_weight": cfg.nll_weight,
            "pairs": n,
            "skipped": summary.skipped,
            "truncated": summary.truncated,
            "batch_size": batch,
            "grad_accum": accum,
        });
        write_output(ctx, &model, &model.dir, &train_summary, extra)
    }
}

/// The loss configuration of the node: the loss's declared defaults (β, α, normalisation)
/// where the node leaves them unset.
pub fn loss_config(ctx: &StageCtx, p: &Params) -> Result<LossConfig, StageError> {
    let mut c = LossConfig::new(p.loss);
    if let Some(b) = p.beta {
        c.beta = b;
    }
    c.label_smoothing = p.label_smoothing;
    c.gamma = p.gamma;
    if let Some(a) = p.nll_weight {
        c.nll_weight = a;
    }
    c.nll_norm = p.nll_norm;
    if let Some(n) = p.logp_norm {
        c.logp_norm = n;
    }
    if c.beta <= 0.0 {
        return Err(StageError::user(
            format!("node {}: beta must be positive", ctx.node),
            None,
        ));
    }
    Ok(c)
}

/// The `ref=` artifact must hold pairs, with reference log-probs when the loss needs them.
fn check_ref(
    ctx: &StageCtx,
    p: &Params,
    cfg: &LossConfig,
    summary: &StoredSummary,
) -> Result<(), StageError> {
    let shown = format!("ref-logps {}", ctx.input(&p.reference.param)?.node);
    if summary.layout != "pairs" {
        return Err(StageError::user(
            format!(
                "node {}: {shown} holds single sequences, not preference pairs",
                ctx.node
            ),
            Some("give the ref-logps node a `format=preference` dataset".into()),
        ));
    }
    if cfg.decl.needs_ref && summary.reference.is_none() {
        return Err(StageError::user(
            format!("node {}: loss {} needs reference log-probs, and {shown} has no `model=`", ctx.node, cfg.decl.name),
            Some("give the ref-logps node the reference model, or use a reference-free loss (simpo, orpo)".into()),
        ));
    }
    Ok(())
}
