//! The LM head and its log-softmax applied a chunk of tokens at a time, so that no
//! `[tokens, vocab]` tensor outlives one chunk — neither in the forward nor kept for the backward.
//!
//! For hidden rows `h` `[N, H]`, head weight `W` `[V, H]` (the embedding when tied) and targets
//! `y` `[N]`: `logp_i = z_i[y_i] − logsumexp(z_i)` with `z_i = h_i Wᵀ` (the matmul in the model's
//! dtype, the rest in f32, f64 for an f64 model). Given upstream gradients `g` `[N]` (`∂L/∂logp`),
//! `D_i = g_i (e_{y_i} − softmax(z_i))` and the gradients are `∂L/∂h_i = D_i W` and
//! `∂L/∂W = Σ_i D_iᵀ h_i`, both computed chunk by chunk without a graph.
//!
//! libtorch (through tch) has no custom autograd function, so the gradients are injected: the
//! result is `value + s − s.detach()` with `s = Σ h ⊙ ∂L/∂h + Σ W ⊙ ∂L/∂W` (each factor detached
//! but `h` and `W`). Its value is exactly `value` (`s − s` is 0 for finite `s`), and its backward
//! gives `h` and `W` exactly those gradients — scaled by whatever linear factor the caller applies
//! (the trainer's `1/N`). What stays alive until the backward is `∂L/∂h` (`[N, H]`, the hidden
//! states' dtype) and `∂L/∂W` (`[V, H]` f32): O(N·H + V·H), never O(N·V). Peak memory during the
//! pass adds about two `[chunk, V]` f32 buffers (the chunk's logits, `logsumexp`'s temporary;
//! for a bf16 model also the cast of the chunk and a `[V, H]` product before it joins `∂L/∂W`).
//! Measured on CPU (`recipes/examples/ce_memory.rs`; N = 4096, V = 151936, H = 896, one
//! `[N, V]` f32 tensor = 2374 MiB): forward + backward peaks at +7.1 GiB unchunked and +1.7 GiB
//! with 1024-token chunks, for the summed CE and for sequence log-probs alike.
//!
//! - [`sum_ce`]: `Σ −logp` (SFT, CPT, eval). `g = −1` is known up front: one pass.
//! - [`token_logps`] then [`TokenLogps::attach`]: per-token log-probs for a loss that is not
//!   linear in them (DPO, NPO). The first pass computes the values without gradients; `attach`
//!   takes `∂L/∂logp` from autograd on the small loss graph and runs the second pass.
//!
//! Results do not depend on the chunk size beyond float rounding (the sums over the vocabulary
//! are per row; only the order of `∂L/∂W`'s accumulation over chunks changes), and for a given
//! chunk size they are bit-stable on CPU. Gradients are computed only where autograd would:
//! in grad mode, for `h` when it requires grad, for `W` when it does.

use anyhow::Context;
use tch::{Kind, Tensor};

/// Tokens per chunk when the caller has no reason to choose: a `[2048, 152k]` f32 chunk is
/// 1.2 GB, small next to the `[tokens, vocab]` tensor it replaces and large enough that the
/// matmuls stay efficient. Non-semantic: results depend on it only through float rounding.
pub const CHUNK_TOKENS: usize = 2048;

/// Whether autograd records operations now (tch exposes no getter: a probe on a scalar).
fn grad_mode() -> bool {
    let probe = Tensor::ones([], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    (&probe * 1.0).requires_grad()
}

/// The float kind the log-softmax is computed in for hidden states of kind `k`.
fn compute_kind(k: Kind) -> Kind {
    if k == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    }
}

/// The target positions of labels `[rows, cols]` (host, row-major): the flat row indices
/// `b·(T−1) + t` of the hidden states that predict a label — `t < cols − 1` with
/// `labels[b, t + 1] ≠ ignore` — and those labels. Built on the host: no device read.
pub fn target_rows(labels: &[i64], rows: usize, cols: usize, ignore: i64) -> (Vec<i64>, Vec<i64>) {
    let (mut keep, mut y) = (Vec::new(), Vec::new());
    if cols < 2 {
        return (keep, y);
    }
    for r in 0..rows {
        for t in 0..cols - 1 {
            let l = labels[r * cols + t + 1];
            if l != ignore {
                keep.push((r * (cols - 1) + t) as i64);
                y.push(l);
            }
        }
    }
    (keep, y)
}

/// The rows `keep` (from [`target_rows`]) of `h` `[B, T, H]` shifted: `[K, H]`, with the graph.
pub fn select_rows(h: &Tensor, keep: &Tensor) -> anyhow::Result<Tensor> {
    let (b, t, hidden) = h.size3()?;
    Ok(h.f_narrow(1, 0, t - 1)?
        .f_reshape([b * (t - 1), hidden])?
        .f_index_select(0, keep)?)
}

/// `(∂L/∂h, ∂L/∂W)`; `∂L/∂W` only when asked for.
type Grads = (Tensor, Option<Tensor>);

/// One chunked pass: the values `logp` `[N]` (compute kind) and, with `g`, the gradients
/// `(∂L/∂h` `[N, H]` in `h`'s kind, `∂L/∂W` `[V, H]` in the compute kind`)`.
fn pass(
    h: &Tensor,
    w: &Tensor,
    y: &Tensor,
    g: Option<&Tensor>,
    want_w: bool,
    chunk: usize,
) -> anyhow::Result<(Tensor, Option<Grads>)> {
    let _guard = tch::no_grad_guard();
    let (n, _) = h.size2()?;
    let hk = h.f_kind()?;
    let ck = compute_kind(hk);
    let wd = w.f_to_kind(hk)?;
    let chunk = chunk.max(1) as i64;
    let mut logp = Vec::new();
    let mut gh = Vec::new();
    let mut gw = match (g, want_w) {
        (Some(_), true) => Some(Tensor::f_zeros(w.size(), (ck, w.device()))?),
        _ => None,
    };
    let mut start = 0;
    while start < n {
        let c = chunk.min(n - start);
        let hc = h.f_narrow(0, start, c)?;
        let yc = y.f_narrow(0, start, c)?.f_unsqueeze(1)?;
        let mut z = hc.f_linear::<&Tensor>(&wd, None)?.f_to_kind(ck)?;
        let lse = z.f_logsumexp([-1], true)?;
        logp.push(z.f_gather(1, &yc, false)?.f_sub(&lse)?.f_squeeze_dim(1)?);
        if let Some(g) = g {
            // z becomes D = g·(e_y − softmax(z)), in place: one [c, V] buffer.
            let gc = g.f_narrow(0, start, c)?.f_to_kind(ck)?.f_unsqueeze(1)?;
            let _ = z.f_sub_(&lse)?.f_exp_()?.f_mul_(&gc.f_neg()?)?;
            let _ = z.f_scatter_add_(1, &yc, &gc)?;
            let d = z.f_to_kind(hk)?;
            gh.push(d.f_mm(&wd)?);
            if let Some(gw) = gw.as_mut() {
                if hk == ck {
                    let _ = gw.f_addmm_(&d.f_tr()?, &hc)?;
                } else {
                    let _ = gw.f_add_(&d.f_tr()?.f_mm(&hc)?.f_to_kind(ck)?)?;
                }
            }
        }
        start += c;
    }
    let logp = if logp.is_empty() {
        Tensor::f_zeros([0], (ck, h.device()))?
    } else {
        Tensor::f_cat(&logp, 0)?
    };
    let grads = match g {
        None => None,
        Some(_) if gh.is_empty() => Some((h.f_zeros_like()?, gw)),
        Some(_) => Some((Tensor::f_cat(&gh, 0)?, gw)),
    };
    Ok((logp, grads))
}

/// `value + s − s.detach()`, `s = Σ h ⊙ gh + Σ W ⊙ gW`: the value of `value`, the gradients
/// `gh`, `gW` (see the module docs). A term whose tensor has no path to a trained variable
/// (`h` not requiring grad, `gW` not computed) is left out.
fn inject(
    value: &Tensor,
    h: &Tensor,
    w: &Tensor,
    gh: &Tensor,
    gw: Option<&Tensor>,
) -> anyhow::Result<Tensor> {
    let kind = value.f_kind()?;
    let mut s = Tensor::f_zeros([], (kind, value.device()))?;
    if h.requires_grad() {
        s = s.f_add(&h.f_mul(gh)?.f_sum(kind)?)?;
    }
    if let Some(gw) = gw {
        s = s.f_add(&w.f_mul(gw)?.f_sum(kind)?)?;
    }
    Ok(value.f_detach()?.f_add(&s.f_sub(&s.f_detach()?)?)?)
}

/// `Σ_i −logp_i` over rows `h` `[N, H]` with targets `y` `[N]` (every one a real target): a
/// scalar in f32 (f64 for an f64 model) whose backward reaches `h` and `w` when autograd would.
pub fn sum_ce(h: &Tensor, w: &Tensor, y: &Tensor, chunk: usize) -> anyhow::Result<Tensor> {
    let grad = grad_mode();
    let (want_h, want_w) = (grad && h.requires_grad(), grad && w.requires_grad());
    let g = if want_h || want_w {
        Some(Tensor::f_full(
            [h.size2()?.0],
            -1.0,
            (compute_kind(h.f_kind()?), h.device()),
        )?)
    } else {
        None
    };
    let (logp, grads) = pass(h, w, y, g.as_ref(), want_w, chunk).context("chunked LM head")?;
    let value = logp.f_sum(logp.f_kind()?)?.f_neg()?;
    match grads {
        None => Ok(value),
        Some((gh, gw)) => inject(&value, h, w, &gh, gw.as_ref()),
    }
}

/// Per-token log-probs whose gradient is computed once the loss built on them is known.
pub struct TokenLogps {
    /// `[N]` log-probs (compute kind): a leaf that requires grad when the head trains, else
    /// plain values. Build the loss on it, then pass the loss to [`TokenLogps::attach`].
    pub logp: Tensor,
    h: Tensor,
    w: Tensor,
    y: Tensor,
    want_w: bool,
    chunk: usize,
}

/// The log-probs `logp_i` of targets `y` `[N]` after rows `h` `[N, H]` under head `w`, values
/// only (the first pass).
pub fn token_logps(h: &Tensor, w: &Tensor, y: &Tensor, chunk: usize) -> anyhow::Result<TokenLogps> {
    let grad = grad_mode();
    let (want_h, want_w) = (grad && h.requires_grad(), grad && w.requires_grad());
    let (logp, _) = pass(h, w, y, None, false, chunk).context("chunked LM head")?;
    let logp = if want_h || want_w {
        logp.set_requires_grad(true)
    } else {
        logp
    };
    Ok(TokenLogps {
        logp,
        h: h.shallow_clone(),
        w: w.shallow_clone(),
        y: y.shallow_clone(),
        want_w,
        chunk,
    })
}

impl TokenLogps {
    /// `loss` with its gradient carried to `h` and `W`: the same value, and a backward equal to
    /// the backward of `loss` had the log-probs kept their graph. `loss` must depend on the
    /// model only through [`TokenLogps::logp`] (the second pass recomputes the head with
    /// `∂loss/∂logp`). Without gradients (no grad mode, nothing trained) `loss` comes back as is.
    pub fn attach(&self, loss: &Tensor) -> anyhow::Result<Tensor> {
        if !self.logp.requires_grad() || !loss.requires_grad() {
            return Ok(loss.shallow_clone());
        }
        let g = Tensor::f_run_backward(&[loss], &[&self.logp], false, false)
            .context("gradient of the loss w.r.t. the log-probs")?;
        let g = g.first().context("one gradient per input")?;
        let want_w = self.want_w && grad_mode();
        let (_, grads) = pass(&self.h, &self.w, &self.y, Some(g), want_w, self.chunk)
            .context("chunked LM head (gradients)")?;
        let (gh, gw) = grads.context("the pass with gradients returns them")?;
        inject(loss, &self.h, &self.w, &gh, gw.as_ref())
    }
}
