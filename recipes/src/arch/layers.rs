//! The decoder's building blocks, each built from an `nn::Path` whose variable names are the
//! checkpoint's (`…self_attn.q_proj.weight`), so loading is a name lookup.
//!
//! Numerics follow transformers' Llama code:
//! - RMSNorm: `y = w · cast(x / sqrt(mean(x²) + ε))`, the normalisation in f32, then cast back
//!   to the input dtype before the weight multiply;
//! - RoPE (default type): `inv_freq[k] = 1 / θ^(2k/d)` in f32, angles `pos · inv_freq` in f32,
//!   `cos`/`sin` of `[angles, angles]` cast to the model dtype;
//!   `rope(x) = x·cos + rotate_half(x)·sin`, `rotate_half([a, b]) = [−b, a]`;
//! - attention: `softmax(q kᵀ / sqrt(d) + mask) v` through `scaled_dot_product_attention`, each
//!   k/v head shared by `heads / kv_heads` query heads (GQA). The kernel's `enable_gqa` does the
//!   sharing without copying k/v where it has a fast path (always on CPU; on CUDA only without
//!   a mask, transformers' rule — with a mask it would fall back to the math kernel); elsewhere
//!   k/v heads are materialised (`Attention::repeat_kv`). Both give identical values;
//! - MLP (SwiGLU): `down(silu(gate(x)) ⊙ up(x))`;
//! - block: `h = x + attn(norm₁(x))`, `out = h + mlp(norm₂(h))`.
//!
//! Variables start at zero (norms at one): a model is meant to be filled by loading.

use super::config::ArchConfig;
use super::mask::Prepared;
use tch::nn::{Init, Path};
use tch::{Kind, TchError, Tensor};

/// `y = x Wᵀ + b`, weight `[out, in]` as in checkpoints; with a LoRA adapter attached,
/// `y = x Wᵀ + b + s · B(A(dropout(x)))` ([`crate::lora::LoraLayer`]).
#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub lora: Option<crate::lora::LoraLayer>,
}

impl Linear {
    pub fn new(p: Path, inp: usize, out: usize, bias: bool) -> Result<Self, TchError> {
        let weight = p.f_var("weight", &[out as i64, inp as i64], Init::Const(0.0))?;
        let bias = if bias {
            Some(p.f_var("bias", &[out as i64], Init::Const(0.0))?)
        } else {
            None
        };
        Ok(Linear {
            weight,
            bias,
            lora: None,
        })
    }
    /// The same layer sharing its variables (gradients accumulate into the same tensors).
    pub fn shallow_clone(&self) -> Linear {
        Linear {
            weight: self.weight.shallow_clone(),
            bias: self.bias.as_ref().map(Tensor::shallow_clone),
            lora: self
                .lora
                .as_ref()
                .map(crate::lora::LoraLayer::shallow_clone),
        }
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        let y = x.f_linear(&self.weight, self.bias.as_ref())?;
        match &self.lora {
            Some(l) => y.f_add(&l.delta(x)?),
            None => Ok(y),
        }
    }
}

/// Root-mean-square layer norm with a learned scale.
#[derive(Debug)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    pub fn new(p: Path, dim: usize, eps: f64) -> Result<Self, TchError> {
        let weight = p.f_var("weight", &[dim as i64], Init::Const(1.0))?;
        Ok(RmsNorm { weight, eps })
    }
    pub fn shallow_clone(&self) -> RmsNorm {
        RmsNorm {
            weight: self.weight.shallow_clone(),
            eps: self.eps,
        }
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        let kind = x.f_kind()?;
        let xf = x.f_to_kind(Kind::Float)?;
        let var = xf.f_square()?.f_mean_dim(-1, true, Kind::Float)?;
        let y = xf.f_mul(&var.f_add_scalar(self.eps)?.f_rsqrt()?)?;
        self.weight.f_mul(&y.f_to_kind(kind)?)
    }
}

/// Rotary position embedding (default type).
#[derive(Debug)]
pub struct Rope {
    /// `[head_dim / 2]`, f32.
    pub inv_freq: Tensor,
}

impl Rope {
    pub fn new(cfg: &ArchConfig, device: tch::Device) -> Result<Self, TchError> {
        let d = cfg.head_dim as i64;
        let exps = Tensor::f_arange_start_step(0, d, 2, (Kind::Float, device))?.f_div_scalar(d)?;
        let inv_freq = Tensor::f_pow_scalar(cfg.rope_theta, &exps)?.f_reciprocal()?;
        Ok(Rope { inv_freq })
    }
    /// `(cos, sin)`, each `[B, 1, T, head_dim]` in `kind`, for `position_ids` `[B, T]`.
    pub fn cos_sin(&self, position_ids: &Tensor, kind: Kind) -> Result<(Tensor, Tensor), TchError> {
        let freqs = position_ids
            .f_to_kind(Kind::Float)?
            .f_unsqueeze(-1)?
            .f_mul(&self.inv_freq)?;
        let emb = Tensor::f_cat(&[&freqs, &freqs], -1)?;
        let cos = emb.f_cos()?.f_to_kind(kind)?.f_unsqueeze(1)?;
        let sin = emb.f_sin()?.f_to_kind(kind)?.f_unsqueeze(1)?;
        Ok((cos, sin))
    }
}

fn rotate_half(x: &Tensor) -> Result<Tensor, TchError> {
    let d = x.size().last().copied().unwrap_or(0);
    let a = x.f_narrow(-1, 0, d / 2)?;
    let b = x.f_narrow(-1, d / 2, d - d / 2)?;
    Tensor::f_cat(&[b.f_neg()?, a], -1)
}

fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor, TchError> {
    x.f_mul(cos)?.f_add(&rotate_half(x)?.f_mul(sin)?)
}

/// Multi-head attention with grouped k/v heads.
#[derive(Debug)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub num_heads: i64,
    pub num_kv_heads: i64,
    pub head_dim: i64,
}

impl Attention {
    pub fn new(p: Path, cfg: &ArchConfig) -> Result<Self, TchError> {
        let (h, d) = (cfg.hidden_size, cfg.head_dim);
        let (q, kv) = (cfg.num_heads * d, cfg.num_kv_heads * d);
        Ok(Attention {
            q_proj: Linear::new(&p / "q_proj", h, q, cfg.qkv_bias)?,
            k_proj: Linear::new(&p / "k_proj", h, kv, cfg.qkv_bias)?,
            v_proj: Linear::new(&p / "v_proj", h, kv, cfg.qkv_bias)?,
            o_proj: Linear::new(&p / "o_proj", q, h, cfg.o_bias)?,
            num_heads: cfg.num_heads as i64,
            num_kv_heads: cfg.num_kv_heads as i64,
            head_dim: d as i64,
        })
    }

    pub fn shallow_clone(&self) -> Attention {
        Attention {
            q_proj: self.q_proj.shallow_clone(),
            k_proj: self.k_proj.shallow_clone(),
            v_proj: self.v_proj.shallow_clone(),
            o_proj: self.o_proj.shallow_clone(),
            ..*self
        }
    }

    /// `[B, H, T, D]` from `[B, T, H·D]`.
    fn heads(&self, x: &Tensor, n: i64) -> Result<Tensor, TchError> {
        let s = x.size();
        x.f_view([s[0], s[1], n, self.head_dim])?.f_transpose(1, 2)
    }

    /// Repeats each k/v head `heads / kv_heads` times: `[B, KV, T, D] → [B, H, T, D]`.
    fn repeat_kv(&self, x: Tensor) -> Result<Tensor, TchError> {
        let rep = self.num_heads / self.num_kv_heads;
        if rep == 1 {
            return Ok(x);
        }
        let s = x.size();
        x.f_unsqueeze(2)?
            .f_expand([s[0], s[1], rep, s[2], s[3]], false)?
            .f_reshape([s[0], s[1] * rep, s[2], s[3]])
    }

    /// `(q, k, v)` of `x` `[B, T, hidden]`: `[B, H, T, D]`, `[B, KV, T, D]` ×2, q and k rotated.
    fn project(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor), TchError> {
        let q = apply_rope(
            &self.heads(&self.q_proj.forward(x)?, self.num_heads)?,
            cos,
            sin,
        )?;
        let k = apply_rope(
            &self.heads(&self.k_proj.forward(x)?, self.num_kv_heads)?,
            cos,
            sin,
        )?;
        let v = self.heads(&self.v_proj.forward(x)?, self.num_kv_heads)?;
        Ok((q, k, v))
    }

    /// `o_proj(softmax(q kᵀ / √d + mask) v)` back to `[B, Tq, hidden]` (`mask` `None` =
    /// causal, else dense).
    fn attend(
        &self,
        q: &Tensor,
        k: Tensor,
        v: Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor, TchError> {
        let qs = q.size();
        let gqa = self.num_heads != self.num_kv_heads
            && (mask.is_none() || q.device() == tch::Device::Cpu);
        let (k, v) = if gqa {
            (k, v)
        } else {
            (self.repeat_kv(k)?, self.repeat_kv(v)?)
        };
        let scale = (self.head_dim as f64).powf(-0.5);
        let y = Tensor::f_scaled_dot_product_attention(
            q,
            &k,
            &v,
            mask,
            0.0,
            mask.is_none(),
            scale,
            gqa,
        )?;
        let y = y
            .f_transpose(1, 2)?
            .f_reshape([qs[0], qs[2], self.num_heads * self.head_dim])?;
        self.o_proj.forward(&y)
    }

    /// The attention of packed rows given as sequences ([`Prepared::Varlen`]): the projections
    /// stay in the token-major layout `[B·T, heads, D]` the varlen kernel reads (RoPE applied
    /// there, with `cos`/`sin` viewed as `[B, T, 1, D]`), then [`super::varlen::attention`].
    fn attend_varlen(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        (cu, max_len, window_left): (&Tensor, i64, Option<i64>),
    ) -> Result<Tensor, TchError> {
        let s = x.size();
        let (b, t, d) = (s[0], s[1], self.head_dim);
        let (cos, sin) = (cos.f_transpose(1, 2)?, sin.f_transpose(1, 2)?);
        let tokens = |y: Tensor, n: i64| y.f_view([b, t, n, d]);
        let q = apply_rope(
            &tokens(self.q_proj.forward(x)?, self.num_heads)?,
            &cos,
            &sin,
        )?;
        let k = apply_rope(
            &tokens(self.k_proj.forward(x)?, self.num_kv_heads)?,
            &cos,
            &sin,
        )?;
        let v = self.v_proj.forward(x)?;
        let flat = |y: &Tensor, n: i64| y.f_reshape([b * t, n, d]);
        let seqs = super::varlen::Seqs {
            cu,
            max_len,
            scale: (d as f64).powf(-0.5),
            window_left,
        };
        let y = super::varlen::attention(
            &flat(&q, self.num_heads)?,
            &flat(&k, self.num_kv_heads)?,
            &flat(&v, self.num_kv_heads)?,
            seqs,
        )?;
        self.o_proj
            .forward(&y.f_reshape([b, t, self.num_heads * d])?)
    }

    pub fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Prepared,
    ) -> Result<Tensor, TchError> {
        let dense = match mask {
            Prepared::Causal => None,
            Prepared::Dense(m) => Some(m),
            Prepared::Varlen {
                cu,
                max_len,
                window_left,
            } => return self.attend_varlen(x, cos, sin, (cu, *max_len, *window_left)),
        };
        let (q, k, v) = self.project(x, cos, sin)?;
        self.attend(&q, k, v, dense)
    }

    /// Attention of new columns `start..start + T` of `x` `[B, T, hidden]`: their keys and values
    /// are written into `keys`/`values` (`[B, KV, capacity, D]`) at those columns, and the queries
    /// attend over columns `0..start + T` under `mask` (`[B, 1, T, start + T]`).
    pub fn forward_cached(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        cache: (&Tensor, &Tensor),
        start: i64,
    ) -> Result<Tensor, TchError> {
        let (q, k, v) = self.project(x, cos, sin)?;
        let t = k.size()[2];
        let (keys, values) = cache;
        keys.f_narrow(2, start, t)?.f_copy_(&k)?;
        values.f_narrow(2, start, t)?.f_copy_(&v)?;
        let k = keys.f_narrow(2, 0, start + t)?;
        let v = values.f_narrow(2, 0, start + t)?;
        self.attend(&q, k, v, Some(mask))
    }
}

/// SwiGLU feed-forward.
#[derive(Debug)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl Mlp {
    pub fn new(p: Path, cfg: &ArchConfig) -> Result<Self, TchError> {
        let (h, i, b) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias);
        Ok(Mlp {
            gate_proj: Linear::new(&p / "gate_proj", h, i, b)?,
            up_proj: Linear::new(&p / "up_proj", h, i, b)?,
            down_proj: Linear::new(&p / "down_proj", i, h, b)?,
        })
    }
    pub fn shallow_clone(&self) -> Mlp {
        Mlp {
            gate_proj: self.gate_proj.shallow_clone(),
            up_proj: self.up_proj.shallow_clone(),
            down_proj: self.down_proj.shallow_clone(),
        }
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        let g = self.gate_proj.forward(x)?.f_silu()?;
        self.down_proj.forward(&g.f_mul(&self.up_proj.forward(x)?)?)
    }
}

/// One decoder layer (`model.layers.N`).
#[derive(Debug)]
pub struct Block {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Mlp,
    /// Sliding attention window of this layer, if any.
    pub window: Option<usize>,
}

impl Block {
    pub fn new(p: Path, cfg: &ArchConfig, layer: usize) -> Result<Self, TchError> {
        Ok(Block {
            input_layernorm: RmsNorm::new(
                &p / "input_layernorm",
                cfg.hidden_size,
                cfg.rms_norm_eps,
            )?,
            self_attn: Attention::new(&p / "self_attn", cfg)?,
            post_attention_layernorm: RmsNorm::new(
                &p / "post_attention_layernorm",
                cfg.hidden_size,
                cfg.rms_norm_eps,
            )?,
            mlp: Mlp::new(&p / "mlp", cfg)?,
            window: cfg.windows.get(layer).copied().flatten(),
        })
    }
    /// The same block sharing its variables: what a checkpointed call owns
    /// ([`super::checkpoint`]).
    pub fn shallow_clone(&self) -> Block {
        Block {
            input_layernorm: self.input_layernorm.shallow_clone(),
            self_attn: self.self_attn.shallow_clone(),
            post_attention_layernorm: self.post_attention_layernorm.shallow_clone(),
            mlp: self.mlp.shallow_clone(),
            window: self.window,
        }
    }
    pub fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Prepared,
    ) -> Result<Tensor, TchError> {
        let h = x.f_add(&self.self_attn.forward(
            &self.input_layernorm.forward(x)?,
            cos,
            sin,
            mask,
        )?)?;
        self.feed_forward(h)
    }

    /// The block over new columns with the layer's KV cache (see [`Attention::forward_cached`]).
    pub fn forward_cached(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        cache: (&Tensor, &Tensor),
        start: i64,
    ) -> Result<Tensor, TchError> {
        let h = x.f_add(&self.self_attn.forward_cached(
            &self.input_layernorm.forward(x)?,
            cos,
            sin,
            mask,
            cache,
            start,
        )?)?;
        self.feed_forward(h)
    }

    /// `h + mlp(norm₂(h))`.
    fn feed_forward(&self, h: Tensor) -> Result<Tensor, TchError> {
        h.f_add(
            &self
                .mlp
                .forward(&self.post_attention_layernorm.forward(&h)?)?,
        )
    }
}
