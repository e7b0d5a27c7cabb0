//! The `dpo` node kind: preference optimisation of a policy `model` on the pairs of a
//! `ref-logps` node, with any loss of [`crate::pref::LOSSES`] (sigmoid / cDPO, robust, hinge,
//! ipo, sigmoid_norm, orpo, simpo; RPO through `nll-weight`). Produces a `model`.
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
//! [`crate::pref::stored::tokenizer_fingerprint`]), else the node fails.
//!
//! Training reuses [`crate::trainer::train`] (checkpoints, resume, NaN detection, metrics):
//! one normalisation unit per pair, so a step's loss is the mean per-pair loss. Chosen and
//! rejected of a micro-batch go through one forward pass. Order: epoch `e` visits the pairs in
//! `SplitMix64::derived(seed, ORDER, e).permutation(n)`; `⌈epochs·n⌉` pairs (default 1 epoch)
//! or `steps · batch-size · grad-accum`.
//!
//! Metrics (besides the trainer's loss, lr, grad_norm, tokens/s): `rewards/chosen`,
//! `rewards/rejected`, `rewards/margins`, `rewards/accuracies` (strict `ρc > ρr`),
//! `logps/chosen`, `logps/rejected` (sums over completion tokens), `nll` when used — each the
//! mean over the pairs of the logging window (all steps since the previous metrics line).

use crate::pref::logps::seq_logps;
use crate::pref::stored::{self, StoredRec};
use crate::pref::{self, LogpNorm, LossConfig, PairInputs};
use crate::stage::{Stage, StageCtx, StageError};
use crate::tok::TokenizerDir;
use crate::train::examples::Example;
use crate::train::rng::SplitMix64;
use crate::trainer::params::{self, float, int};
use crate::trainer::{train, LossOut, Objective};
use anyhow::Context;
use dsl::{KindSchema, NodeDecl, ParamIssue, ParamSpec, ParamType, Value};
use serde_json::{json, Value as J};
use tch::{Kind, Tensor};

/// The `dpo` kind.
pub struct Dpo;

/// Stream key of the epoch permutations.
const ORDER: u64 = 0x0DF0_0DE4;

impl Stage for Dpo {
    fn schema(&self) -> KindSchema {
        KindSchema::new("dpo", 1, "model")
            .doc("Preference optimisation (DPO, cDPO, robust, hinge, IPO, sigmoid_norm, RPO, ORPO, SimPO) on the pairs of a ref-logps node.")
            .param(ParamSpec::new("model", ParamType::Ref(&["model"])).doc("the policy to train (usually the SFT model the reference log-probs were computed with)"))
            .param(ParamSpec::new("ref", ParamType::Ref(&["ref-logps"])).doc("a ref-logps node: the pairs and the reference log-probs"))
            .param(ParamSpec::new("loss", ParamType::Enum(pref::LOSS_NAMES)).default(Value::Str("sigmoid".into()))
                .doc("sigmoid | robust | hinge | ipo | sigmoid_norm | orpo | simpo"))
            .param(ParamSpec::new("beta", float(0.0)).optional().doc("β (λ for orpo); default 0.1, 2.0 for simpo"))
            .param(ParamSpec::new("label-smoothing", ParamType::Float { min: Some(0.0), max: Some(0.4999) }).default(Value::Float(0.0))
                .doc("ε of cDPO (sigmoid), robust and simpo"))
            .param(ParamSpec::new("gamma", float(0.0)).default(Value::Float(0.5)).doc("SimPO's margin γ"))
            .param(ParamSpec::new("nll-weight", float(0.0)).optional().doc("α of the NLL on chosen (RPO); default 0, 1 for orpo"))
            .param(ParamSpec::new("nll-norm", ParamType::Enum(LogpNorm::NAMES)).default(Value::Str("mean".into()))
                .doc("NLL = −logπ(yc)/Lc (mean, default) or −logπ(yc) (sum)"))
            .param(ParamSpec::new("logp-norm", ParamType::Enum(LogpNorm::NAMES)).optional()
                .doc("ρ from summed (default) or per-token mean log-probs, for sigmoid / robust / hinge"))
            .param(ParamSpec::new("batch-size", int(1)).default(Value::Int(8)).doc("pairs per micro-batch"))
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
    let loss = n
        .params
        .get("loss")
        .and_then(|v| v.as_str())
        .unwrap_or("sigmoid");
    if params::is_set(n, "logp-norm") && pref::find(loss).is_some_and(|d| d.logp_norm.is_none()) {
        out.push(ParamIssue {
            param: Some("logp-norm".into()),
            message: format!("loss {loss} is defined on per-token averages; `logp-norm` applies to sigmoid, robust and hinge"),
            hint: None,
        });
    }
    out
}

/// The loss configuration of the node's parameters.
pub fn loss_config(ctx: &StageCtx) -> Result<LossConfig, StageError> {
    let name = ctx.param("loss").as_str().unwrap_or("sigmoid");
    let decl = pref::find(name).ok_or_else(|| {
        StageError::user(
            format!("unknown loss `{name}`"),
            Some(pref::LOSS_NAMES.join(" | ")),
        )
    })?;
    let mut c = LossConfig::new(decl);
    if let Some(b) = ctx.param("beta").as_f64() {
        c.beta = b;
    }
    c.label_smoothing = params::get_f64(ctx, "label-smoothing", 0.0);
    c.gamma = params::get_f64(ctx, "gamma", 0.5);
    if let Some(a) = ctx.param("nll-weight").as_f64() {
        c.nll_weight = a;
    }
    c.nll_norm =
        LogpNorm::parse(ctx.param("nll-norm").as_str().unwrap_or("mean")).unwrap_or(LogpNorm::Mean);
    if let Some(n) = ctx.param("logp-norm").as_str().and_then(LogpNorm::parse) {
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

/// Reads the `ref=` artifact, checking that the policy's tokenizer matches: (records, summary).
pub fn read_ref(
    ctx: &StageCtx,
    param: &str,
    policy_tok: &TokenizerDir,
    vocab: usize,
) -> Result<(Vec<StoredRec>, stored::StoredSummary), StageError> {
    let input = ctx.input(param)?;
    let shown = format!("ref-logps {}", input.node);
    let (recs, summary) = stored::read(&input.dir, &shown)?;
    let fp = stored::tokenizer_fingerprint(&policy_tok.tokenizer);
    if fp != summary.tokenizer_fingerprint {
        return Err(StageError::user(
            format!(
                "node {}: {shown} was tokenised with a different tokenizer (vocabulary {}) than the policy model {} (vocabulary {fp})",
                ctx.node, summary.tokenizer_fingerprint, ctx.input("model")?.node
            ),
            Some("compute the reference log-probs with a reference model that shares the policy's tokenizer (usually the policy's starting point)".into()),
        ));
    }
    let max_id = recs
        .iter()
        .flat_map(|r| match r {
            StoredRec::Pair {
                chosen, rejected, ..
            } => chosen.ids.iter().chain(&rejected.ids).max().copied(),
            StoredRec::Seq { seq, .. } => seq.ids.iter().max().copied(),
        })
        .max()
        .unwrap_or(0);
    if max_id < 0 || max_id as usize >= vocab {
        return Err(StageError::user(
            format!("node {}: {shown} holds token id {max_id}, outside the policy's vocabulary of {vocab}", ctx.node),
            None,
        ));
    }
    Ok((recs, summary))
}

/// A pair ready for training.
pub struct Pair {
    pub chosen: Example,
    pub rejected: Example,
    pub ref_chosen: Option<f64>,
    pub ref_rejected: Option<f64>,
}

fn run(ctx: &StageCtx) -> Result<J, StageError> {
    let cfg = loss_config(ctx)?;
    let (mut model, model_dir) = params::load_model(ctx)?;
    let tdir = TokenizerDir::load(&model_dir, &format!("model {}", ctx.input("model")?.node))?;
    let pad = tdir.pad_id().or(tdir.eos_id()).unwrap_or(0) as i64;
    let (recs, summary) = read_ref(ctx, "ref", &tdir, model.config.vocab_size)?;
    let shown = format!("ref-logps {}", ctx.input("ref")?.node);
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
    let pairs: Vec<Pair> = recs
        .into_iter()
        .filter_map(|r| match r {
            StoredRec::Pair {
                chosen,
                rejected,
                ref_chosen,
                ref_rejected,
                ..
            } => Some(Pair {
                chosen: chosen.to_example(),
                rejected: rejected.to_example(),
                ref_chosen,
                ref_rejected,
            }),
            StoredRec::Seq { .. } => None,
        })
        .collect();
    let batch = params::get_u64(ctx, "batch-size").unwrap_or(8).max(1) as usize;
    let accum = params::get_u64(ctx, "grad-accum").unwrap_or(1).max(1) as usize;
    let n = pairs.len() as u64;
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
    let train_summary = train(ctx, &mut model, &spec, &mut obj)?;
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
        "dtype": params::dtype_name(model.kind()),
    });
    params::write_output(ctx, &model, &model_dir, &train_summary, extra)
}

/// A seeded order over `n` items, one permutation per epoch.
pub struct Order {
    seed: u64,
    stream: u64,
    n: u64,
    perm: Option<(u64, Vec<u32>)>,
}

impl Order {
    pub fn new(seed: u64, stream: u64, n: u64) -> Order {
        Order {
            seed,
            stream,
            n: n.max(1),
            perm: None,
        }
    }
    /// The item at global position `g` (epoch `g / n`).
    pub fn at(&mut self, g: u64) -> usize {
        let (epoch, i) = (g / self.n, (g % self.n) as usize);
        if self.perm.as_ref().map(|p| p.0) != Some(epoch) {
            let p = SplitMix64::derived(self.seed, self.stream, epoch).permutation(self.n as usize);
            self.perm = Some((epoch, p));
        }
        self.perm.as_ref().map_or(i, |p| p.1[i] as usize)
    }
}

/// Sums over the pairs of the logging window.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Window {
    pub pairs: f64,
    pub sums: Vec<(String, f64)>,
}

impl Window {
    pub fn add(&mut self, k: &str, x: f64) {
        match self.sums.iter_mut().find(|(n, _)| n == k) {
            Some(s) => s.1 += x,
            None => self.sums.push((k.to_string(), x)),
        }
    }
    /// Means per pair; resets the window.
    pub fn take(&mut self) -> Vec<(String, f64)> {
        let n = self.pairs.max(1.0);
        let out = self.sums.iter().map(|(k, x)| (k.clone(), x / n)).collect();
        *self = Window::default();
        out
    }
}

/// Sum of a `[B]` tensor as f64.
pub fn total(t: &Tensor) -> anyhow::Result<f64> {
    Ok(t.f_sum(Kind::Double)?.f_double_value(&[])?)
}

/// The DPO data source and loss.
pub struct PrefData {
    pub pairs: Vec<Pair>,
    pub order: Order,
    pub cursor: u64,
    pub limit: u64,
    pub batch: usize,
    pub accum: usize,
    pub pad: i64,
    pub cfg: LossConfig,
    pub window: Window,
}

impl Objective for PrefData {
    type Batch = Vec<usize>;

    fn micro_batches(&mut self, _step: u64) -> anyhow::Result<Option<Vec<Vec<usize>>>> {
        let end = (self.cursor + (self.batch * self.accum) as u64).min(self.limit);
        if end <= self.cursor {
            return Ok(None);
        }
        let idx: Vec<usize> = (self.cursor..end).map(|g| self.order.at(g)).collect();
        self.cursor = end;
        Ok(Some(idx.chunks(self.batch).map(|c| c.to_vec()).collect()))
    }
    fn n_targets(&self, b: &Vec<usize>) -> usize {
        b.len()
    }
    fn n_tokens(&self, b: &Vec<usize>) -> usize {
        b.iter()
            .map(|&i| self.pairs[i].chosen.len() + self.pairs[i].rejected.len())
            .sum()
    }
    fn loss(&mut self, model: &crate::arch::HfModel, b: &Vec<usize>) -> anyhow::Result<LossOut> {
        let ps: Vec<&Pair> = b.iter().map(|&i| &self.pairs[i]).collect();
        let seqs: Vec<&Example> = ps
            .iter()
            .map(|p| &p.chosen)
            .chain(ps.iter().map(|p| &p.rejected))
            .collect();
        let lp = seq_logps(model, &seqs, self.pad)?;
        let k = ps.len() as i64;
        let (pc, pr) = (lp.sum.narrow(0, 0, k), lp.sum.narrow(0, k, k));
        let (lc, lr) = (
            lp.len.narrow(0, 0, k).clamp_min(1.0),
            lp.len.narrow(0, k, k).clamp_min(1.0),
        );
        let dev = lp.sum.device();
        let refs = |f: &dyn Fn(&Pair) -> Option<f64>| -> Option<Tensor> {
            let v: Option<Vec<f32>> = ps.iter().map(|p| f(p).map(|x| x as f32)).collect();
            v.map(|v| Tensor::from_slice(&v).to_device(dev))
        };
        let (rc, rr) = (refs(&|p| p.ref_chosen), refs(&|p| p.ref_rejected));
        let out = pref::pair_loss(
            &self.cfg,
            &PairInputs {
                chosen: &pc,
                rejected: &pr,
                ref_chosen: rc.as_ref(),
                ref_rejected: rr.as_ref(),
                len_chosen: &lc,
                len_rejected: &lr,
            },
        )?;
        let w = &mut self.window;
        w.pairs += k as f64;
        w.add("rewards/chosen", total(&out.reward_chosen)?);
        w.add("rewards/rejected", total(&out.reward_rejected)?);
        w.add(
            "rewards/margins",
            total(&(&out.reward_chosen - &out.reward_rejected))?,
        );
        w.add(
            "rewards/accuracies",
            total(
                &out.reward_chosen
                    .gt_tensor(&out.reward_rejected)
                    .to_kind(Kind::Float),
            )?,
        );
        w.add("logps/chosen", total(&pc.detach())?);
        w.add("logps/rejected", total(&pr.detach())?);
        if let Some(nll) = &out.nll {
            w.add("nll", total(&nll.detach())?);
        }
        Ok(LossOut {
            sum: out.loss.sum(Kind::Float),
            extra: Vec::new(),
        })
    }
    fn state(&self) -> J {
        json!({"pairs_consumed": self.cursor, "window": self.window})
    }
    fn restore(&mut self, s: &J) -> anyhow::Result<()> {
        self.cursor = s
            .get("pairs_consumed")
            .and_then(J::as_u64)
            .context("no `pairs_consumed` in the data position")?;
        if let Some(w) = s.get("window") {
            self.window = serde_json::from_value(w.clone()).context("the metrics window")?;
        }
        Ok(())
    }
    fn epoch(&self) -> f64 {
        self.cursor as f64 / self.pairs.len().max(1) as f64
    }
    fn window_metrics(&mut self) -> Vec<(String, f64)> {
        self.window.take()
    }
}
