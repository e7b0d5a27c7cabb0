//! One `reweight` measurement end to end on token ids: gradients of every domain half and
//! target, their f64 Gram matrix, scores, abstention, the update, diagnostics and (check mode)
//! the measured loss changes. The `reweight` kind reads files and calls [`estimate`]; tests call
//! it directly.
//!
//! Vectors: `g_k^A = S_k^A / N_k^A`, `g_k^B = S_k^B / N_k^B`,
//! `g_k = (S_k^A + S_k^B) / (N_k^A + N_k^B)`, `h_j = S_j / N_j` (see [`super::grads`]), each
//! projected when a projection dimension is set. Check mode, for each target j and domain k:
//! predicted `η·⟨h_j, g_k⟩`, measured `L_j(θ) − L_j(θ − η·g_k)` (the step on the unprojected
//! `g_k`, over the selected tensors), and Spearman's ρ between them over all `(j, k)` pairs.

use super::grads::{gram, mean_loss, sample_grad, Batching, Selection};
use super::project::Projector;
use super::sample;
use super::score::{abstain, normalise_weights, scores, Dots, Scores};
use super::stats::spearman;
use super::update::{self, BoundHit, Bounds};
use crate::arch::HfModel;
use anyhow::{anyhow, Context};
use serde::Serialize;
use tch::Tensor;

/// A domain: its sampled documents (token ids), its starting weight and bounds.
pub struct DomainIn<'a> {
    pub name: String,
    pub docs: Vec<&'a [i64]>,
    pub w0: f64,
}

/// A target: its sampled documents and weight `c_j` (not yet normalised).
pub struct TargetIn<'a> {
    pub name: String,
    pub docs: Vec<&'a [i64]>,
    pub weight: f64,
}

/// The knobs of a measurement.
#[derive(Clone, Debug)]
pub struct Config {
    pub batching: Batching,
    /// Glob patterns of tensor names whose gradients count (empty = all).
    pub params: Vec<String>,
    pub project: Option<usize>,
    pub seed: u64,
    /// Trust region τ.
    pub temperature: f64,
    /// Smoothing ε.
    pub smoothing: f64,
    /// Abstain when the spread of scores is within `z·√2` standard errors.
    pub abstain_z: f64,
    /// Check mode: the step η of the measured loss changes.
    pub check_lr: Option<f64>,
}

/// Check-mode measurements.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub lr: f64,
    /// `η·⟨h_j, g_k⟩`, `[J][K]`.
    pub predicted: Vec<Vec<f64>>,
    /// `L_j(θ) − L_j(θ − η·g_k)`, `[J][K]`.
    pub measured: Vec<Vec<f64>>,
    /// `L_j(θ)`.
    pub target_loss: Vec<f64>,
    /// Spearman's ρ over all `(j, k)` pairs; null when undefined (constant side).
    pub rank_correlation: Option<f64>,
}

/// Everything `diagnostics.json` holds.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub domains: Vec<String>,
    pub targets: Vec<String>,
    /// Normalised `c_j`.
    pub target_weights: Vec<f64>,
    pub samples: Vec<usize>,
    pub target_samples: Vec<usize>,
    /// Selected scalars `P` and the dimension the dot products were taken in.
    pub params_counted: usize,
    pub projection_dim: Option<usize>,
    /// `⟨h_j, g_k⟩`, `[J][K]`.
    pub influence: Vec<Vec<f64>>,
    pub domain_grad_norms: Vec<f64>,
    pub target_grad_norms: Vec<f64>,
    /// `cos(g_k, g_l)`.
    pub domain_cosine: Vec<Vec<f64>>,
    pub scores: Scores,
    pub abstained: bool,
    pub abstain_reason: Option<String>,
    pub w0: Vec<f64>,
    pub w: Vec<f64>,
    pub floor: Vec<f64>,
    pub cap: Vec<f64>,
    pub kl: Option<f64>,
    pub effective_domains: f64,
    pub bounds_hit: Vec<BoundHit>,
    pub check: Option<Check>,
    /// Remarks for the user (e.g. a domain smaller than the sample size).
    pub notes: Vec<String>,
}

fn vectorise(proj: &Option<Projector>, v: Tensor) -> anyhow::Result<Tensor> {
    match proj {
        Some(p) => p.apply(&v),
        None => Ok(v),
    }
}

/// Measures influence and computes the new weights (module docs). `w0` is renormalised;
/// bounds are checked for feasibility first.
pub fn estimate(
    model: &HfModel,
    domains: &[DomainIn],
    targets: &[TargetIn],
    bounds: &Bounds,
    cfg: &Config,
    cancel: &dyn Fn() -> anyhow::Result<()>,
) -> anyhow::Result<Report> {
    let names: Vec<String> = domains.iter().map(|d| d.name.clone()).collect();
    update::check_bounds(bounds, &names).map_err(|e| anyhow!(e))?;
    let c = normalise_weights(&targets.iter().map(|t| t.weight).collect::<Vec<_>>())
        .map_err(|e| anyhow!(e))?;
    let w0 = normalise_weights(&domains.iter().map(|d| d.w0).collect::<Vec<_>>())
        .map_err(|e| anyhow!("starting mixture: {e}"))?;
    let sel = Selection::new(model, &cfg.params)?;
    let proj = cfg.project.map(|dim| Projector {
        dim,
        seed: cfg.seed,
    });
    let bt = cfg.batching;
    let (kk, jj) = (domains.len(), targets.len());

    // Rows: g_1..g_K, g^A_1..g^A_K, g^B_1..g^B_K, h_1..h_J.
    let mut full = Vec::with_capacity(kk);
    let mut halves_a = Vec::with_capacity(kk);
    let mut halves_b = Vec::with_capacity(kk);
    let mut raw_g = Vec::new();
    for d in domains {
        cancel()?;
        if d.docs.len() < 2 {
            return Err(anyhow!(
                "domain {}: {} sampled record(s); the uncertainty estimate needs at least 2",
                d.name,
                d.docs.len()
            ));
        }
        let h = sample::half(d.docs.len());
        let (sa, na) = sample_grad(model, &sel, &d.docs[..h], bt)
            .with_context(|| format!("domain {}: gradient of half A", d.name))?;
        let (sb, nb) = sample_grad(model, &sel, &d.docs[h..], bt)
            .with_context(|| format!("domain {}: gradient of half B", d.name))?;
        if na == 0 || nb == 0 {
            return Err(anyhow!(
                "domain {}: a half of its sample has no tokens to predict",
                d.name
            ));
        }
        let g = sa.f_add(&sb)?.f_div_scalar((na + nb) as f64)?;
        if cfg.check_lr.is_some() {
            raw_g.push(g.shallow_clone());
        }
        full.push(vectorise(&proj, g)?);
        halves_a.push(vectorise(&proj, sa.f_div_scalar(na as f64)?)?);
        halves_b.push(vectorise(&proj, sb.f_div_scalar(nb as f64)?)?);
    }
    let mut hs = Vec::with_capacity(jj);
    for t in targets {
        cancel()?;
        if t.docs.is_empty() {
            return Err(anyhow!("target {}: no records", t.name));
        }
        let (s, n) = sample_grad(model, &sel, &t.docs, bt)
            .with_context(|| format!("target {}: gradient", t.name))?;
        if n == 0 {
            return Err(anyhow!("target {}: no tokens to predict", t.name));
        }
        hs.push(vectorise(&proj, s.f_div_scalar(n as f64)?)?);
    }
    let rows: Vec<Tensor> = full
        .iter()
        .chain(&halves_a)
        .chain(&halves_b)
        .chain(&hs)
        .map(Tensor::shallow_clone)
        .collect();
    let gm = gram(&rows)?;
    let (ia, ib, ih) = (kk, 2 * kk, 3 * kk);
    let dots = Dots {
        hg: (0..jj)
            .map(|j| (0..kk).map(|k| gm[ih + j][k]).collect())
            .collect(),
        hg_a: (0..jj)
            .map(|j| (0..kk).map(|k| gm[ih + j][ia + k]).collect())
            .collect(),
        hg_b: (0..jj)
            .map(|j| (0..kk).map(|k| gm[ih + j][ib + k]).collect())
            .collect(),
        h_norm: (0..jj)
            .map(|j| gm[ih + j][ih + j].max(0.0).sqrt())
            .collect(),
    };
    let g_norm: Vec<f64> = (0..kk).map(|k| gm[k][k].max(0.0).sqrt()).collect();
    let cosine = (0..kk)
        .map(|a| {
            (0..kk)
                .map(|b| {
                    let d = g_norm[a] * g_norm[b];
                    if d > 0.0 {
                        gm[a][b] / d
                    } else {
                        0.0
                    }
                })
                .collect()
        })
        .collect();
    let sc = scores(&dots, &c);
    let mut reason = abstain(&sc, cfg.abstain_z);
    let mut w = w0.clone();
    let mut hits = Vec::new();
    if reason.is_none() {
        match update::update(&w0, &sc.s, cfg.temperature, cfg.smoothing, bounds) {
            Some(u) => {
                w = u.w;
                hits = u.hits;
            }
            None => reason = Some("all domain scores are equal: kept the starting weights".into()),
        }
    }

    let check = match cfg.check_lr {
        None => None,
        Some(lr) => {
            let snap = sel.snapshot()?;
            let base: Vec<f64> = targets
                .iter()
                .map(|t| mean_loss(model, &t.docs, bt))
                .collect::<anyhow::Result<_>>()?;
            let mut measured = vec![vec![0.0; kk]; jj];
            for (k, g) in raw_g.iter().enumerate() {
                cancel()?;
                sel.add_scaled(g, -lr)?;
                for (j, t) in targets.iter().enumerate() {
                    measured[j][k] = base[j] - mean_loss(model, &t.docs, bt)?;
                }
                sel.restore(&snap)?;
            }
            let predicted: Vec<Vec<f64>> = dots
                .hg
                .iter()
                .map(|r| r.iter().map(|x| lr * x).collect())
                .collect();
            let rho = spearman(&predicted.concat(), &measured.concat());
            Some(Check {
                lr,
                predicted,
                measured,
                target_loss: base,
                rank_correlation: rho,
            })
        }
    };
    Ok(Report {
        domains: names,
        targets: targets.iter().map(|t| t.name.clone()).collect(),
        target_weights: c,
        samples: domains.iter().map(|d| d.docs.len()).collect(),
        target_samples: targets.iter().map(|t| t.docs.len()).collect(),
        params_counted: sel.numel,
        projection_dim: cfg.project,
        influence: dots.hg.clone(),
        domain_grad_norms: g_norm,
        target_grad_norms: dots.h_norm.clone(),
        domain_cosine: cosine,
        scores: sc,
        abstained: reason.is_some(),
        abstain_reason: reason,
        kl: update::kl(&w, &w0),
        effective_domains: update::effective_domains(&w),
        w0,
        w,
        floor: bounds.floor.clone(),
        cap: bounds.cap.clone(),
        bounds_hit: hits,
        check,
        notes: Vec::new(),
    })
}
