//! The causal language model: `model.embed_tokens`, `model.layers.N`, `model.norm`, `lm_head`
//! (absent when embeddings are tied: the logits then use `embed_tokens`' weight).
//!
//! `logits = lm_head(norm(blocks(embed(ids))))`, computed in the variables' dtype.

use super::config::ArchConfig;
use super::layers::{Block, RmsNorm, Rope};
use super::mask::AttnMask;
use anyhow::{bail, Context, Result};
use tch::nn::{Init, Path};
use tch::{Kind, TchError, Tensor};

/// A Llama-family decoder with its LM head.
#[derive(Debug)]
pub struct Model {
    pub embed_tokens: Tensor,
    pub layers: Vec<Block>,
    pub norm: RmsNorm,
    /// `None` when tied to `embed_tokens`.
    pub lm_head: Option<Tensor>,
    pub rope: Rope,
    pub config: ArchConfig,
    /// Run each block checkpointed while autograd records ([`super::checkpoint`]): its
    /// activations are recomputed in backward instead of kept. Set by the trainer
    /// (`activation-checkpointing`); off by default.
    pub checkpointing: bool,
    /// Sharded training's hooks around the blocks ([`super::hooks`]); `None` outside it.
    pub hooks: Option<std::sync::Arc<dyn super::hooks::BlockHooks>>,
}

impl Model {
    /// Creates the variables under `root` (names as in the checkpoint) on the path's device, in
    /// the var store's kind. Weights are zero (norms one) until loaded.
    pub fn new(root: Path, cfg: &ArchConfig) -> Result<Self, TchError> {
        let m = &root / "model";
        let (v, h) = (cfg.vocab_size as i64, cfg.hidden_size as i64);
        let embed_tokens = (&m / "embed_tokens").f_var("weight", &[v, h], Init::Const(0.0))?;
        let layers = (0..cfg.num_layers)
            .map(|i| Block::new(&m / "layers" / i, cfg, i))
            .collect::<Result<Vec<_>, _>>()?;
        let norm = RmsNorm::new(&m / "norm", cfg.hidden_size, cfg.rms_norm_eps)?;
        let lm_head = if cfg.tie_embeddings {
            None
        } else {
            Some((&root / "lm_head").f_var("weight", &[v, h], Init::Const(0.0))?)
        };
        let rope = Rope::new(cfg, root.device())?;
        Ok(Model {
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope,
            config: cfg.clone(),
            checkpointing: false,
            hooks: None,
        })
    }

    /// Logits `[B, T, vocab]` in the model dtype for `input_ids` `[B, T]` (int64) at
    /// `position_ids` `[B, T]`, with attention restricted by `mask`.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        position_ids: &Tensor,
        mask: AttnMask,
    ) -> Result<Tensor> {
        let h = self.hidden_states(input_ids, position_ids, mask)?;
        Ok(h.f_linear::<&Tensor>(self.lm_head_weight(), None)?)
    }

    /// The LM head's weight `[vocab, hidden]`: `lm_head.weight`, or `embed_tokens.weight`
    /// when tied. `logits = hidden_states · Wᵀ`.
    pub fn lm_head_weight(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }

    /// The token embeddings of `input_ids` and the rotary `(cos, sin)` of `position_ids`, on the
    /// model's device and in its dtype.
    fn embed(&self, input_ids: &Tensor, position_ids: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let dev = self.embed_tokens.device();
        let kind = self.embed_tokens.f_kind()?;
        let ids = input_ids.f_to_device(dev)?.f_to_kind(Kind::Int64)?;
        let pos = position_ids.f_to_device(dev)?;
        let x = Tensor::f_embedding(&self.embed_tokens, &ids, -1, false, false)
            .context("embedding lookup (is every token id below vocab_size?)")?;
        let (cos, sin) = self.rope.cos_sin(&pos, kind)?;
        Ok((x, cos, sin))
    }

    /// The final normalised hidden states `[B, T, hidden]` (what the LM head reads).
    pub fn hidden_states(
        &self,
        input_ids: &Tensor,
        position_ids: &Tensor,
        mask: AttnMask,
    ) -> Result<Tensor> {
        let size = input_ids.size();
        let [b, t] = size[..] else {
            bail!("input ids must be [batch, time], got shape {size:?}")
        };
        if position_ids.size() != size {
            bail!(
                "position ids have shape {:?}, the input ids {size:?}",
                position_ids.size()
            );
        }
        mask.check(b, t)?;
        if let Some(h) = &self.hooks {
            h.ready()?;
        }
        let dev = self.embed_tokens.device();
        let (mut x, cos, sin) = self.embed(input_ids, position_ids)?;
        // At most two distinct masks: full causal and one sliding window.
        let full = mask.prepare(t, None, dev)?;
        let mut sliding: Option<(usize, super::mask::Prepared)> = None;
        let anchor = match self.checkpointing || self.hooks.is_some() {
            true => Some(super::checkpoint::anchor(dev)?),
            false => None,
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let m = match layer.window {
                None => &full,
                Some(w) => {
                    if sliding.as_ref().map(|(sw, _)| *sw) != Some(w) {
                        sliding = Some((w, mask.prepare(t, Some(w), dev)?));
                    }
                    sliding
                        .as_ref()
                        .map(|(_, m)| m)
                        .context("mask prepared above")?
                }
            };
            x = match &anchor {
                None => layer.forward(&x, &cos, &sin, m),
                Some(anchor) => self.unit(i, &x, anchor, layer, (&cos, &sin, m)),
            }
            .with_context(|| format!("layer {i}"))?;
        }
        Ok(self.norm.forward(&x)?)
    }

    /// Block `i` on `x` as a unit node ([`super::checkpoint::unit`]): recomputed in backward
    /// under activation checkpointing or when the hooks ask for it, with the hooks (if any)
    /// around it ([`super::hooks`]).
    fn unit(
        &self,
        i: usize,
        x: &Tensor,
        anchor: &Tensor,
        layer: &Block,
        (cos, sin, m): (&Tensor, &Tensor, &super::mask::Prepared),
    ) -> Result<Tensor, TchError> {
        let (block, cos, sin, m) = (
            layer.shallow_clone(),
            cos.shallow_clone(),
            sin.shallow_clone(),
            m.shallow_clone(),
        );
        let hooks = self.hooks.clone();
        let recompute = self.checkpointing || hooks.as_ref().is_some_and(|h| h.recompute());
        let f = {
            let hooks = hooks.clone();
            move |x: &Tensor, grad: bool| {
                if let Some(h) = &hooks {
                    h.enter(i)?;
                }
                let y = block.forward(x, &cos, &sin, &m);
                if let Some(h) = hooks.as_ref().filter(|_| !grad) {
                    h.leave(i)?;
                }
                y
            }
        };
        let done = hooks.map(|h| Box::new(move || h.done(i)) as Box<super::checkpoint::DoneFn>);
        super::checkpoint::unit(x, anchor, recompute, Box::new(f), done)
    }

    /// The final normalised hidden states `[B, T, hidden]` of new columns `start..start + T`
    /// (`start = cache.len`), using and filling `cache`: `input_ids` and `position_ids` are the
    /// new columns `[B, T]`, `attention` `[B, start + T]` the 0/1 padding mask of every column
    /// so far. Equal, up to float rounding, to the last T columns of [`Model::hidden_states`]
    /// over all columns with `AttnMask::Padding(attention)`.
    pub fn forward_cached(
        &self,
        input_ids: &Tensor,
        position_ids: &Tensor,
        attention: &Tensor,
        cache: &mut super::KvCache,
    ) -> Result<Tensor> {
        let size = input_ids.size();
        let [_, t] = size[..] else {
            bail!("input ids must be [batch, time], got shape {size:?}")
        };
        cache.reserve(t)?;
        if let Some(h) = &self.hooks {
            h.ready()?;
        }
        let start = cache.len;
        let dev = self.embed_tokens.device();
        let (mut x, cos, sin) = self.embed(input_ids, position_ids)?;
        let full = super::mask::padding_at(attention, start, t, None, dev)?;
        let mut sliding: Option<(usize, Tensor)> = None;
        for (i, layer) in self.layers.iter().enumerate() {
            let m = match layer.window {
                None => &full,
                Some(w) => {
                    if sliding.as_ref().map(|(sw, _)| *sw) != Some(w) {
                        sliding = Some((
                            w,
                            super::mask::padding_at(attention, start, t, Some(w), dev)?,
                        ));
                    }
                    &sliding.as_ref().context("mask prepared above")?.1
                }
            };
            if let Some(h) = &self.hooks {
                h.enter(i)?;
            }
            x = layer
                .forward_cached(&x, &cos, &sin, m, (&cache.keys[i], &cache.values[i]), start)
                .with_context(|| format!("layer {i}"))?;
            if let Some(h) = &self.hooks {
                h.leave(i)?;
            }
        }
        cache.len += t;
        Ok(self.norm.forward(&x)?)
    }
}
