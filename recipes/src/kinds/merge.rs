//! The `merge` node kind (parameters, their resolution order and the recipe checks:
//! `kinds::merge`): the typed parameters become a driver [`Job`] — the inputs, and for each
//! numeric parameter its sources in resolution order — and the streaming driver
//! ([`crate::merge::driver`]) merges tensor by tensor into a `model` (an HF directory).
//!
//! Resolution order, as [`ParamValue::Filters`] entries (first match wins): node-level
//! `t`/`lambda`/`weight`/`density` = the filters naming no model, then the node value
//! (pattern ""); a model's `weight`/`density` = the filters naming it, the filters naming no
//! model, its own value, then the node value. The method's default comes last (driver).

use crate::merge::driver::{self, Input, Job, ParamSet};
use crate::merge::params::ParamValue;
use crate::merge::{self, BaseUse, Method};
use crate::stage::{Kind, StageCtx, StageError};
use ::kinds::merge::{Params, NUMERIC};
use ::kinds::Input as Ref;
use dsl::KindSchema;
use serde_json::Value as J;
use std::collections::BTreeMap;

/// The `merge` kind.
pub struct Merge;

impl Kind for Merge {
    type Params = Params;

    fn schema(&self) -> KindSchema {
        ::kinds::merge::schema()
    }

    fn run(&self, ctx: &StageCtx, p: Params) -> Result<J, StageError> {
        let job = job(ctx, &p)?;
        let mut tick = |i: usize, n: usize| {
            ctx.progress.set_length(n as u64);
            ctx.progress.set_position(i as u64);
            ctx.check_cancel()
        };
        driver::run(&job, &ctx.out_dir, &mut tick)
    }
}

/// A referenced model as a merge [`Input`]. An adapter node is folded into its base first
/// ([`crate::lora::load::fold_to_dir`], into `work_dir/folded/<key>`).
fn input_at(ctx: &StageCtx, r: &Ref) -> Result<Input, StageError> {
    let a = ctx.input(&r.param)?;
    if !crate::lora::is_adapter_dir(&a.dir) {
        return Ok(Input {
            name: a.node.clone(),
            dir: a.dir.clone(),
        });
    }
    let out = ctx.work_dir.join("folded").join(&a.key);
    if out.exists() {
        std::fs::remove_dir_all(&out)
            .map_err(|e| anyhow::anyhow!("removing {}: {e}", out.display()))?;
    }
    let lineage = crate::lora::load::fold_to_dir(&a.dir, &a.node, &a.key, &out)?;
    tracing::info!(
        "folded adapter {} into its base {}",
        a.node,
        lineage.base.node
    );
    Ok(Input {
        name: a.node.clone(),
        dir: out,
    })
}

/// Adapters are differences from their base: merging adapters trained on different bases (or
/// against a `base=` they were not trained on) would mix unrelated changes, so it is refused
/// (before anything is folded).
fn check_bases(ctx: &StageCtx, p: &Params) -> Result<(), StageError> {
    let mut adapters = Vec::new();
    for r in p.model.iter().map(|m| &m.model).chain(p.base.iter()) {
        let a = ctx.input(&r.param)?;
        if crate::lora::is_adapter_dir(&a.dir) {
            let shown = format!("adapter {}", a.node);
            let base = crate::lora::peft::read_lineage(&a.dir, &shown)?.base;
            adapters.push((a.node.clone(), base));
        }
    }
    let Some((first, b0)) = adapters.first() else {
        return Ok(());
    };
    for (n, b) in &adapters[1..] {
        if b.key != b0.key {
            return Err(StageError::user(
                format!(
                    "adapters of different bases: {first} adapts {} and {n} adapts {}",
                    b0.node, b.node
                ),
                Some(
                    "merge adapters trained on the same base model, or merge full models \
                     (a training node without `lora`)"
                        .into(),
                ),
            ));
        }
    }
    if let Some(base) = &p.base {
        let a = ctx.input(&base.param)?;
        if !crate::lora::is_adapter_dir(&a.dir) && a.key != b0.key {
            return Err(StageError::user(
                format!(
                    "base={}, but adapter {first} was trained on {}: its changes are relative \
                     to another model",
                    base.node, b0.node
                ),
                Some(format!("use base={} (the adapters' base)", b0.node)),
            ));
        }
    }
    Ok(())
}

/// Builds the driver's job from the node's parameters and inputs.
fn job(ctx: &StageCtx, p: &Params) -> Result<Job, StageError> {
    let method: &'static Method = merge::method(p.method.name).ok_or_else(|| {
        anyhow::anyhow!(
            "merge method `{}` is declared but not implemented",
            p.method.name
        )
    })?;
    check_bases(ctx, p)?;
    let (base, models) = inputs(ctx, p, method)?;
    let params = param_set(p, &models);
    Ok(Job {
        method,
        base,
        models: models.into_iter().map(|(m, _)| m).collect(),
        params,
        normalize: p.normalize,
        seed: p.seed,
        dtype: p.dtype.map(Into::into),
        tokenizer_from: p
            .tokenizer_from
            .as_ref()
            .map(|t| input_at(ctx, t))
            .transpose()?,
        missing_from_base: p.missing_from_base,
        max_shard_bytes: p.shard_size,
        f64: false,
    })
}

/// The models besides the base, each with its `model` record.
type Models<'p> = Vec<(Input, &'p ::kinds::merge::Model)>;

/// The base and the other models, each with its `model` record. For slerp (the base is the
/// first of two) the base is `base=` when set, else the first `model`, and exactly one other
/// model must remain.
fn inputs<'p>(
    ctx: &StageCtx,
    p: &'p Params,
    method: &Method,
) -> Result<(Option<Input>, Models<'p>), StageError> {
    let mut models = Vec::with_capacity(p.model.len());
    for r in &p.model {
        models.push((input_at(ctx, &r.model)?, r));
    }
    let mut base = p.base.as_ref().map(|b| input_at(ctx, b)).transpose()?;
    if method.decl.base == BaseUse::FirstOfTwo {
        if let Some(b) = &base {
            models.retain(|(m, _)| m.name != b.name);
        } else if !models.is_empty() {
            base = Some(models.remove(0).0);
        }
        if models.len() != 1 {
            return Err(StageError::user(
                format!(
                    "slerp merges exactly two models, found {}",
                    models.len() + usize::from(base.is_some())
                ),
                None,
            ));
        }
    }
    Ok((base, models))
}

/// The filters' entries for numeric parameter `name`, from the filters that `pick` selects
/// (each a scalar under its pattern).
fn filter_entries(
    p: &Params,
    name: &str,
    pick: impl Fn(Option<&Ref>) -> bool,
) -> Vec<(String, ParamValue)> {
    p.filter
        .iter()
        .filter(|f| pick(f.model.as_ref()))
        .filter_map(|f| {
            let x = f.values.get(name)?;
            Some((f.pattern.clone(), ParamValue::Scalar(*x)))
        })
        .collect()
}

/// Every numeric parameter's sources, node-level and per model (module doc).
fn param_set(p: &Params, models: &[(Input, &::kinds::merge::Model)]) -> ParamSet {
    let mut params = ParamSet::default();
    for name in NUMERIC {
        let mut entries = filter_entries(p, name, |m| m.is_none());
        if let Some(v) = ParamValue::from_numbers(p.numeric(name)) {
            entries.push((String::new(), v));
        }
        if !entries.is_empty() {
            params
                .global
                .insert(name.to_string(), ParamValue::Filters(entries));
        }
    }
    for (m, r) in models {
        let per = per_model(p, &params.global, &m.name, r);
        params.per_model.push(per);
    }
    params
}

/// One model's `weight`/`density` sources: the filters naming it, the node-level filters,
/// its own value, the node value. Absent when neither a filter names it nor it sets its own
/// (the driver then reads the node-level entry).
fn per_model(
    p: &Params,
    global: &BTreeMap<String, ParamValue>,
    model: &str,
    r: &::kinds::merge::Model,
) -> BTreeMap<String, ParamValue> {
    let mut per = BTreeMap::new();
    for (name, own) in [("weight", r.weight), ("density", r.density)] {
        let mut entries = filter_entries(p, name, |m| m.is_some_and(|m| m.node == model));
        if entries.is_empty() && own.is_none() {
            continue;
        }
        let node = match global.get(name) {
            Some(ParamValue::Filters(g)) => g.as_slice(),
            _ => &[],
        };
        entries.extend(node.iter().filter(|(f, _)| !f.is_empty()).cloned());
        if let Some(x) = own {
            entries.push((String::new(), ParamValue::Scalar(x)));
        }
        entries.extend(node.iter().filter(|(f, _)| f.is_empty()).cloned());
        per.insert(name.to_string(), ParamValue::Filters(entries));
    }
    per
}
