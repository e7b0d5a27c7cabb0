//! The one stage prologue every training kind and `eval` start from: the `model=` input loaded
//! on the node's device in its resolved dtype, the tokenizer found, EOS checked where the kind
//! needs one, the pad id picked, lengths checked against the model's context.
//!
//! Rules, each stated once here:
//! - device: `ctx.device` (already resolved by the runner: `cpu` or `cuda:N`);
//! - dtype: [`dsl::device::Dtype::resolve`] on that device (`auto` = bf16 on CUDA, f32 on CPU),
//!   the same rule the keys use;
//! - tokenizer: the `tokenizer=` input when the node sets one, else the model's directory;
//! - EOS: a kind that appends or trains EOS fails with one message when the tokenizer has none;
//! - pad: the tokenizer's pad token, else EOS, else 0 (padding is masked, its id never trained);
//! - lengths: a length parameter may not exceed the model's `max_position_embeddings`.

use crate::arch::{HfModel, LoadOptions};
use crate::batching::chat::ChatTemplate;
use crate::stage::{StageCtx, StageError};
use crate::tok::TokenizerDir;
use dsl::device::Dtype;
use kinds::Input;
use std::path::PathBuf;
use tch::Device;

/// `cpu` | `cuda` | `cuda:N` → a tch device.
pub fn parse_device(s: &str) -> Result<Device, StageError> {
    use dsl::device::Device as Wanted;
    match Wanted::parse(s) {
        Some(Wanted::Cpu) => Ok(Device::Cpu),
        Some(Wanted::Cuda(n)) => Ok(Device::Cuda(n.unwrap_or(0))),
        Some(Wanted::Auto) | None => Err(StageError::user(
            format!("device `{s}` is not a resolved device"),
            Some("the runner hands stages `cpu` or `cuda:N`".into()),
        )),
    }
}

/// The node's device (`ctx.device`, resolved by the runner).
pub fn device(ctx: &StageCtx) -> Result<Device, StageError> {
    parse_device(&ctx.device)
}

pub use crate::trainer::params::resolve_dtype;

/// A loaded `model=` input.
pub struct Model {
    pub hf: HfModel,
    /// The producing node's instance id (`instruct`).
    pub node: String,
    /// Its artifact directory.
    pub dir: PathBuf,
    /// What an adapter trained on it sits on (see [`crate::lora::Lineage`]).
    pub lineage: crate::lora::Lineage,
}

impl Model {
    /// How errors name it: `model NODE`.
    pub fn shown(&self) -> String {
        format!("model {}", self.node)
    }

    /// Fails when `len` (the value of the length parameter `param`) exceeds the model's
    /// `max_position_embeddings`; `whose` names the model in the message (`the model`,
    /// `the reference model`).
    pub fn check_len(&self, param: &str, len: usize, whose: &str) -> Result<(), StageError> {
        check_len(param, len, self.hf.config.max_position, whose)
    }
}

/// Loads `input` on `device` in `kind`: a full model, or an adapter node's base with the
/// adapter (and any below it) folded in ([`crate::lora::load_model_dir`]).
pub fn load_model(
    ctx: &StageCtx,
    input: &Input,
    device: Device,
    kind: tch::Kind,
) -> Result<Model, StageError> {
    let a = ctx.input(&input.param)?;
    let (hf, lineage) = crate::lora::load_model_dir(
        &a.dir,
        &a.node,
        &a.key,
        &LoadOptions {
            device,
            dtype: Some(kind),
        },
    )?;
    Ok(Model {
        hf,
        node: a.node.clone(),
        dir: a.dir.clone(),
        lineage,
    })
}

/// A tokenizer found for a node.
pub struct Tok {
    pub dir: TokenizerDir,
    /// Where its files are (copied next to a trained model).
    pub path: PathBuf,
    /// How errors name it: `tokenizer NODE` or `model NODE`.
    pub shown: String,
}

impl Tok {
    /// The EOS id; `why` says what the kind needs it for (the hint of the one "no EOS" error).
    pub fn eos(&self, why: &str) -> Result<u32, StageError> {
        self.dir.eos_id().ok_or_else(|| {
            StageError::user(
                format!(
                    "{}: the tokenizer has no EOS token (`eos_token` in tokenizer_config.json)",
                    self.shown
                ),
                Some(why.to_string()),
            )
        })
    }

    /// The padding id: the pad token, else EOS, else 0.
    pub fn pad(&self) -> i64 {
        self.dir.pad_id().or(self.dir.eos_id()).unwrap_or(0) as i64
    }

    /// The chat template of the tokenizer's directory, its clock pinned (`now` = 0) so that
    /// a run and its resume render the same text.
    pub fn chat_template(&self) -> Result<Option<ChatTemplate>, StageError> {
        match ChatTemplate::load(&self.path, &self.dir.tokenizer) {
            Ok(Some(mut t)) => {
                t.set_now(0);
                Ok(Some(t))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(StageError::user(format!("{}: {e:#}", self.shown), None)),
        }
    }
}

/// The tokenizer of a node: the `tokenizer=` input when given, else `model`'s directory.
pub fn tokenizer(
    ctx: &StageCtx,
    tokenizer: Option<&Input>,
    model: Option<&Model>,
) -> Result<Tok, StageError> {
    let (path, shown) = match (tokenizer, model) {
        (Some(t), _) => {
            let a = ctx.input(&t.param)?;
            (a.dir.clone(), format!("tokenizer {}", a.node))
        }
        (None, Some(m)) => (m.dir.clone(), m.shown()),
        (None, None) => {
            return Err(StageError::Other(anyhow::anyhow!(
                "node {}: neither a tokenizer nor a model to take one from",
                ctx.node
            )))
        }
    };
    let dir = TokenizerDir::load(&path, &shown)?;
    Ok(Tok { dir, path, shown })
}

/// What a kind starts from: its model and tokenizer, the EOS id when it asked for one, and the
/// pad id.
pub struct Start {
    pub model: Model,
    pub tok: Tok,
    /// `Some` when the kind asked for EOS (`eos_for`).
    pub eos: Option<u32>,
    pub pad: i64,
}

/// The prologue of a kind that trains or scores `model`: loads it on the node's device in
/// `dtype` resolved, finds the tokenizer (`tokenizer` or the model's), and, when `eos_for`
/// says why the kind needs EOS, checks it is there.
pub fn start(
    ctx: &StageCtx,
    model: &Input,
    dtype: Dtype,
    tokenizer: Option<&Input>,
    eos_for: Option<&str>,
) -> Result<Start, StageError> {
    let device = device(ctx)?;
    let model = load_model(ctx, model, device, resolve_dtype(dtype, device))?;
    let tok = self::tokenizer(ctx, tokenizer, Some(&model))?;
    let eos = eos_for.map(|why| tok.eos(why)).transpose()?;
    let pad = tok.pad();
    Ok(Start {
        model,
        tok,
        eos,
        pad,
    })
}

/// Fails when `len` (parameter `param`) exceeds the context `max_position` of `whose`.
pub fn check_len(
    param: &str,
    len: usize,
    max_position: Option<usize>,
    whose: &str,
) -> Result<(), StageError> {
    match max_position {
        Some(p) if len > p => Err(StageError::user(
            format!("{param} {len} is longer than {whose}'s max_position_embeddings {p}"),
            Some(format!("use {param} {p} or less")),
        )),
        _ => Ok(()),
    }
}

/// A `max-len` parameter resolved: as set (checked against the context), else the model's
/// `max_position_embeddings`, else `fallback`.
pub fn max_len(
    set: Option<usize>,
    max_position: Option<usize>,
    fallback: usize,
    whose: &str,
) -> Result<usize, StageError> {
    match set {
        Some(m) => check_len("max-len", m, max_position, whose).map(|()| m),
        None => Ok(max_position.unwrap_or(fallback)),
    }
}
