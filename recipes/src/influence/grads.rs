//! Gradients of a sample's mean loss with respect to a selection of the model's tensors, and
//! the Gram matrix of those gradients in f64.
//!
//! Loss of a sample `D` of documents (token ids ending with EOS, each truncated to `seq_len`,
//! one document per row, right-padded): `L_D(θ) = Σ_{d∈D} Σ_{t≥1} CE(d_t | d_<t) / N_D` with
//! `N_D` the number of predicted tokens — the token-weighted mean CPT minimises. The cross
//! entropy is computed in f64 when the model is f64, else in f32.
//!
//! [`sample_grad`] returns the *summed* gradient `S_D = ∇ Σ CE` and `N_D`, so the mean gradient
//! of a union of halves is `(S_A + S_B) / (N_A + N_B)`. Flattened gradients are f64 vectors
//! over the selected tensors in name order (optionally projected, [`super::project`]).

use crate::arch::HfModel;
use crate::batching::examples::IGNORE;
use crate::batching::pack::cpt_batch;
use crate::trainer::lm;
use anyhow::{anyhow, Context};
use tch::{Kind, Reduction, Tensor};

/// The tensors whose gradients count: trainable variables whose name matches one of the
/// glob patterns (all when there are none), in name order. The others are frozen
/// (`requires_grad = false`) while the selection lives, and thawed when it is dropped.
pub struct Selection {
    pub names: Vec<String>,
    pub vars: Vec<Tensor>,
    frozen: Vec<Tensor>,
    /// Total number of selected scalars `P`.
    pub numel: usize,
}

impl Selection {
    pub fn new(model: &HfModel, patterns: &[String]) -> anyhow::Result<Selection> {
        let pats = patterns
            .iter()
            .map(|p| glob::Pattern::new(p).map_err(|e| anyhow!("parameter filter `{p}`: {e}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut all: Vec<(String, Tensor)> = model.vs.variables().into_iter().collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let (mut names, mut vars, mut frozen) = (Vec::new(), Vec::new(), Vec::new());
        for (n, v) in all {
            if pats.is_empty() || pats.iter().any(|p| p.matches(&n)) {
                names.push(n);
                vars.push(v);
            } else {
                let _ = v.set_requires_grad(false);
                frozen.push(v);
            }
        }
        if names.is_empty() {
            return Err(anyhow!(
                "the parameter filter {patterns:?} matches none of the model's tensors"
            ));
        }
        let numel = vars.iter().map(Tensor::numel).sum();
        Ok(Selection {
            names,
            vars,
            frozen,
            numel,
        })
    }

    fn zero_grads(&self) {
        for v in &self.vars {
            let mut v = v.shallow_clone();
            v.zero_grad();
        }
    }

    /// The gradients of the selected tensors as one flat f64 vector (zeros where undefined).
    fn flat_grad(&self) -> anyhow::Result<Tensor> {
        let parts = self
            .vars
            .iter()
            .map(|v| {
                let g = v.grad();
                if g.defined() {
                    Ok(g.f_flatten(0, -1)?.f_to_kind(Kind::Double)?)
                } else {
                    Ok(Tensor::f_zeros(
                        [v.numel() as i64],
                        (Kind::Double, v.device()),
                    )?)
                }
            })
            .collect::<Result<Vec<_>, tch::TchError>>()?;
        Ok(Tensor::f_cat(&parts, 0)?)
    }

    /// A copy of the selected tensors' values.
    pub fn snapshot(&self) -> anyhow::Result<Vec<Tensor>> {
        let _g = tch::no_grad_guard();
        Ok(self
            .vars
            .iter()
            .map(|v| v.f_detach_copy())
            .collect::<Result<_, _>>()?)
    }

    /// Restores values saved by [`Selection::snapshot`].
    pub fn restore(&self, snap: &[Tensor]) -> anyhow::Result<()> {
        let _g = tch::no_grad_guard();
        for (v, s) in self.vars.iter().zip(snap) {
            v.shallow_clone().f_copy_(s)?;
        }
        Ok(())
    }

    /// `θ ← θ + a·d` for a flat f64 direction `d` over the selection.
    pub fn add_scaled(&self, d: &Tensor, a: f64) -> anyhow::Result<()> {
        let _g = tch::no_grad_guard();
        let mut off = 0i64;
        for v in &self.vars {
            let n = v.numel() as i64;
            let part = d
                .f_narrow(0, off, n)?
                .f_view(v.size().as_slice())?
                .f_mul_scalar(a)?
                .f_to_kind(v.kind())?
                .f_to_device(v.device())?;
            let _ = v.shallow_clone().f_add_(&part)?;
            off += n;
        }
        Ok(())
    }
}

impl Drop for Selection {
    fn drop(&mut self) {
        for v in &self.frozen {
            let _ = v.set_requires_grad(true);
        }
    }
}

/// `Σ CE` over target tokens, in f64 when the logits are f64 (else f32).
pub fn sum_ce_exact(logits: &Tensor, labels: &Tensor) -> anyhow::Result<Tensor> {
    let (b, t, v) = logits.size3()?;
    let kind = if logits.kind() == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    };
    if t < 2 {
        return Ok(Tensor::f_zeros([], (kind, logits.device()))?);
    }
    let l = logits
        .f_narrow(1, 0, t - 1)?
        .f_to_kind(kind)?
        .f_reshape([b * (t - 1), v])?;
    let y = labels.f_narrow(1, 1, t - 1)?.f_reshape([b * (t - 1)])?;
    Ok(l.f_cross_entropy_loss::<Tensor>(&y, None, Reduction::Sum, IGNORE, 0.0)?)
}

/// How documents are batched.
#[derive(Clone, Copy, Debug)]
pub struct Batching {
    pub seq_len: usize,
    pub batch_size: usize,
    pub pad_id: i64,
}

/// `(Σ CE, N)` of each micro-batch's forward pass, calling `each` with the summed loss tensor.
fn for_batches(
    model: &HfModel,
    docs: &[&[i64]],
    bt: Batching,
    mut each: impl FnMut(Tensor) -> anyhow::Result<()>,
) -> anyhow::Result<usize> {
    let mut n = 0usize;
    for chunk in docs.chunks(bt.batch_size.max(1)) {
        let blocks: Vec<Vec<i64>> = chunk
            .iter()
            .map(|d| d[..d.len().min(bt.seq_len)].to_vec())
            .collect();
        let cols = blocks.iter().map(Vec::len).max().unwrap_or(0);
        if cols < 2 {
            continue;
        }
        let b = cpt_batch(&blocks, cols, bt.pad_id);
        n += b.n_target_tokens;
        let (logits, labels) = lm::logits(model, &b)?;
        each(sum_ce_exact(&logits, &labels)?)?;
    }
    Ok(n)
}

/// The summed gradient `S_D` (flat f64 over the selection) and `N_D` of a sample.
pub fn sample_grad(
    model: &HfModel,
    sel: &Selection,
    docs: &[&[i64]],
    bt: Batching,
) -> anyhow::Result<(Tensor, usize)> {
    sel.zero_grads();
    let n = for_batches(model, docs, bt, |loss| {
        loss.f_backward().context("backward pass")?;
        Ok(())
    })?;
    let g = sel.flat_grad()?;
    sel.zero_grads();
    Ok((g, n))
}

/// The mean loss `L_D(θ)` of a sample (no gradients), in f64.
pub fn mean_loss(model: &HfModel, docs: &[&[i64]], bt: Batching) -> anyhow::Result<f64> {
    let _g = tch::no_grad_guard();
    let mut total = 0.0;
    let n = for_batches(model, docs, bt, |loss| {
        total += loss.f_double_value(&[])?;
        Ok(())
    })?;
    if n == 0 {
        return Err(anyhow!("the sample has no predicted tokens"));
    }
    Ok(total / n as f64)
}

/// The Gram matrix `G = V Vᵀ` of vectors `V` (rows, flat f64), as nested f64.
pub fn gram(vectors: &[Tensor]) -> anyhow::Result<Vec<Vec<f64>>> {
    let m = Tensor::f_stack(vectors, 0)?.f_to_kind(Kind::Double)?;
    let g = m.f_matmul(&m.f_tr()?)?.f_to_device(tch::Device::Cpu)?;
    let n = vectors.len();
    let flat: Vec<f64> = Vec::<f64>::try_from(g.f_flatten(0, -1)?)?;
    Ok((0..n).map(|i| flat[i * n..(i + 1) * n].to_vec()).collect())
}
