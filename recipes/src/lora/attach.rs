//! Attaching a fresh adapter to a loaded model.
//!
//! Targets are matched as PEFT matches a `target_modules` list: a module matches a target when
//! its full name equals it or ends with `.` + target; `all-linear` matches every linear layer
//! of the blocks. A target that matches nothing is an error listing the model's modules.
//!
//! Each adapted module `M` gets `M.lora_A.weight` `[r, in]` — uniform in `±1/√in`, PEFT's
//! `kaiming_uniform_(a=√5)` bound, drawn from a SplitMix64 stream keyed by the seed and the
//! module name (so the values do not depend on the module order or on torch's RNG) — and
//! `M.lora_B.weight` `[out, r]` = 0, in f32 (whatever the base's dtype, as PEFT keeps adapters)
//! on the model's device, in a var store of their own. Every base variable is frozen (`requires_grad = false`): no base gradient is computed
//! and the optimizer holds state for the adapter only.
//!
//! A rank above `min(in, out)` of an adapted layer adds nothing: a warning in the node's log;
//! far above it (`kinds::lora::REFUSED_RANK_FACTOR`), a user error before any tensor is made.

use super::{Flags, LoraLayer};
use crate::arch::layers::Linear;
use crate::arch::HfModel;
use crate::stage::StageError;
use ::kinds::lora::{Lora, ALL_LINEAR, LINEAR_MODULES};
use anyhow::Context;
use std::collections::BTreeSet;
use std::sync::Arc;
use tch::nn::{Init, VarStore};
use tch::Tensor;

/// A trainable adapter attached to a model.
#[derive(Debug)]
pub struct Adapter {
    /// `MODULE.lora_A.weight` and `MODULE.lora_B.weight` for each adapted module.
    pub vs: VarStore,
    pub spec: Lora,
    /// Full names of the adapted modules, sorted.
    pub modules: Vec<String>,
    /// `target_modules` as written into `adapter_config.json` (sorted; `all-linear` expanded).
    pub targets: Vec<String>,
    pub flags: Arc<Flags>,
}

/// The linear layers of the decoder blocks by full module name, in layer order.
pub fn linears(model: &mut crate::arch::Model) -> Vec<(String, &mut Linear)> {
    let mut out = Vec::new();
    for (i, l) in model.layers.iter_mut().enumerate() {
        let (a, m) = (&mut l.self_attn, &mut l.mlp);
        let p = format!("model.layers.{i}");
        out.push((format!("{p}.self_attn.q_proj"), &mut a.q_proj));
        out.push((format!("{p}.self_attn.k_proj"), &mut a.k_proj));
        out.push((format!("{p}.self_attn.v_proj"), &mut a.v_proj));
        out.push((format!("{p}.self_attn.o_proj"), &mut a.o_proj));
        out.push((format!("{p}.mlp.gate_proj"), &mut m.gate_proj));
        out.push((format!("{p}.mlp.up_proj"), &mut m.up_proj));
        out.push((format!("{p}.mlp.down_proj"), &mut m.down_proj));
    }
    out
}

/// Whether module `name` matches `target` (PEFT's list rule, plus `all-linear`).
pub fn matches(name: &str, target: &str) -> bool {
    target == ALL_LINEAR || name == target || name.ends_with(&format!(".{target}"))
}

/// The adapted modules (sorted) and the `target_modules` list, or a user error naming a
/// target that matches nothing, with the modules there are.
pub fn resolve(
    names: &[String],
    targets: &[String],
    shown: &str,
) -> Result<(Vec<String>, Vec<String>), StageError> {
    let mut chosen = BTreeSet::new();
    for t in targets {
        if let Some((message, hint)) = ::kinds::lora::target_problem(t) {
            return Err(StageError::user(message, Some(hint)));
        }
        let hit: Vec<&String> = names.iter().filter(|n| matches(n, t)).collect();
        if hit.is_empty() {
            let layers = names.len() / LINEAR_MODULES.len();
            return Err(StageError::user(
                format!(
                    "LoRA target `{t}` matches no module of {shown}: it has {layers} layer(s) \
                     with linear modules {} (full names like `{}`)",
                    LINEAR_MODULES.join(", "),
                    names.first().map(String::as_str).unwrap_or("?")
                ),
                Some(
                    "name a module (`q_proj`), a suffix of a full name (`layers.0.self_attn.q_proj`), \
                     or `all-linear`"
                        .into(),
                ),
            ));
        }
        chosen.extend(hit.into_iter().cloned());
    }
    let mut written: BTreeSet<String> = BTreeSet::new();
    for t in targets {
        if t == ALL_LINEAR {
            written.extend(LINEAR_MODULES.iter().map(|m| m.to_string()));
        } else {
            written.insert(t.clone());
        }
    }
    Ok((chosen.into_iter().collect(), written.into_iter().collect()))
}

/// `rank` against the shapes of the adapted `modules` (`kinds::lora::rank_excess`, the rule
/// `check` applies where the recipe tells the shapes): a warning in the node's log when it
/// exceeds `min(in, out)` of a layer, a user error when it is refused.
fn check_rank(
    model: &mut crate::arch::Model,
    modules: &[String],
    rank: usize,
    shown: &str,
) -> Result<(), StageError> {
    let mut layers: Vec<(&str, usize, usize)> = Vec::new();
    for (name, lin) in linears(model) {
        if modules.binary_search(&name).is_err() {
            continue;
        }
        let short = LINEAR_MODULES
            .iter()
            .find(|m| name.ends_with(&format!(".{m}")));
        let (Some(short), &[out, inp]) = (short, &lin.weight.size()[..]) else {
            continue;
        };
        if !layers.iter().any(|(m, ..)| m == short) {
            layers.push((short, inp as usize, out as usize));
        }
    }
    let blocks = modules.len().div_ceil(layers.len().max(1));
    match ::kinds::lora::rank_excess(rank, &layers, blocks) {
        Some(x) if x.refused => Err(StageError::user(
            format!("{shown}: {}", x.message),
            Some(x.hint),
        )),
        Some(x) => {
            tracing::warn!("{shown}: {} ({})", x.message, x.hint);
            Ok(())
        }
        None => Ok(()),
    }
}

/// `A`'s initial values: uniform in `±1/√in`, from a stream keyed by `seed` and `module`.
fn init_a(seed: u64, module: &str, r: i64, inp: i64) -> Tensor {
    let h = blake3::hash(module.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    let mut g = crate::rng::SplitMix64::derived(seed, u64::from_le_bytes(b), 0x10A);
    let bound = 1.0 / (inp as f64).sqrt();
    let vals: Vec<f32> = (0..r * inp)
        .map(|_| ((2.0 * g.next_f64() - 1.0) * bound) as f32)
        .collect();
    Tensor::from_slice(&vals).view([r, inp])
}

/// Attaches a fresh adapter per `spec` to `model` (named `shown` in errors) and freezes the
/// base. `seed` keys `A`'s initial values.
pub fn attach(model: &mut HfModel, spec: &Lora, seed: u64, shown: &str) -> Result<(), StageError> {
    if model.adapter.is_some() {
        return Err(StageError::Other(anyhow::anyhow!(
            "{shown}: an adapter is attached already"
        )));
    }
    if spec.rank == 0 {
        return Err(StageError::user(
            "lora rank 0: the adapters need a rank of at least 1",
            Some("e.g. `lora rank=16 alpha=32`".to_string()),
        ));
    }
    let device = model.device();
    let kind = tch::Kind::Float;
    let flags = Arc::new(Flags::default());
    let mut vs = VarStore::new(device);
    vs.set_kind(kind);
    let names: Vec<String> = linears(&mut model.model)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let (modules, targets) = resolve(&names, &spec.target, shown)?;
    check_rank(&mut model.model, &modules, spec.rank, shown)?;
    let r = spec.rank as i64;
    let _guard = tch::no_grad_guard();
    for (name, lin) in linears(&mut model.model) {
        if modules.binary_search(&name).is_err() {
            continue;
        }
        let (out, inp) = match lin.weight.size()[..] {
            [o, i] => (o, i),
            _ => continue,
        };
        let mut p = vs.root();
        for seg in name.split('.') {
            p = &p / seg;
        }
        let mut a = (&p / "lora_A")
            .f_var("weight", &[r, inp], Init::Const(0.0))
            .with_context(|| format!("creating the adapter of {name}"))?;
        let b = (&p / "lora_B")
            .f_var("weight", &[out, r], Init::Const(0.0))
            .with_context(|| format!("creating the adapter of {name}"))?;
        let init = init_a(seed, &name, r, inp)
            .f_to_device(device)?
            .f_to_kind(kind)?;
        a.f_copy_(&init)?;
        lin.lora = Some(LoraLayer {
            a,
            b,
            scaling: spec.scaling(),
            dropout: spec.dropout,
            flags: flags.clone(),
        });
    }
    for (_, v) in model.vs.variables() {
        let _ = v.set_requires_grad(false);
    }
    model.adapter = Some(Adapter {
        vs,
        spec: spec.clone(),
        modules,
        targets,
        flags,
    });
    Ok(())
}

/// Sets the adapters' training mode (dropout on) when the model has one.
pub fn set_training(model: &HfModel, on: bool) {
    if let Some(a) = &model.adapter {
        a.flags.set_training(on);
    }
}
