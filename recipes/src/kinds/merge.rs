//! The `merge` node kind: merges model-producing nodes tensor by tensor with one of the methods
//! of [`crate::merge`] (linear, slerp, task_arithmetic, ties, dare_linear, dare_ties,
//! model_stock), producing a `model` (an HF directory).
//!
//! ```kdl
//! merge final method=slerp t=0.5 { model instruct; model aligned }
//! merge soup method=ties base=base lambda=1.0 {
//!     model a weight=0.6 density=0.5
//!     model b weight=0.4 density=0.7
//!     t 0 0.5 1                                  // a gradient over layers (slerp only)
//!     filter "mlp" weight=0.8 model=a            // filter → value, first match wins
//! }
//! ```
//!
//! Parameters: node-level `t`, `lambda`, `weight`, `density` take a number or a gradient
//! (`weight 0.2 0.5 0.8`); `model NAME weight=… density=…` sets per-model scalars; repeated
//! `filter PATTERN param=value… [model=NAME]` entries apply to tensors whose name contains
//! PATTERN (`*` or "" = all). For a tensor, a per-model parameter takes the first matching
//! filter naming that model, then the first matching filter naming no model, then the model's
//! own value, then the node-level value, then the method's default; node-level parameters
//! (`t`, `lambda`) take the first matching filter, then the node-level value.
//! For slerp the base is `base=` when set, else the first `model`; exactly two models in all.

use crate::merge::driver::{self, Input, Job, ParamSet};
use crate::merge::params::ParamValue;
use crate::merge::st::OutDtype;
use crate::merge::{self, BaseUse, MethodDef, METHOD_NAMES};
use crate::stage::{Stage, StageCtx, StageError};
use dsl::{KindSchema, NodeDecl, ParamIssue, ParamSpec, ParamType, Value};
use serde_json::Value as J;
use std::collections::BTreeMap;

/// The `merge` kind.
pub struct Merge;

/// Numeric parameters that may be node-level, per model or in filters.
const NUMERIC: &[&str] = &["t", "lambda", "weight", "density"];

fn num() -> ParamType {
    ParamType::Float {
        min: None,
        max: None,
    }
}

fn grad() -> ParamType {
    ParamType::List(Box::new(num()))
}

impl Stage for Merge {
    fn schema(&self) -> KindSchema {
        let model_rec = ParamType::Record {
            positional: &["model"],
            fields: vec![
                ParamSpec::new("model", ParamType::Ref(&["model"])).doc("a model-producing node"),
                ParamSpec::new("weight", num())
                    .optional()
                    .doc("this model's weight"),
                ParamSpec::new("density", num())
                    .optional()
                    .doc("fraction of this model's task vector kept, in (0, 1]"),
            ],
        };
        let filter_rec = ParamType::Record {
            positional: &["pattern"],
            fields: vec![
                ParamSpec::new("pattern", ParamType::Str)
                    .doc("substring of tensor names; \"*\" or \"\" = all"),
                ParamSpec::new("model", ParamType::Ref(&["model"]))
                    .optional()
                    .doc("apply weight/density to this model only"),
                ParamSpec::new("t", num()).optional(),
                ParamSpec::new("lambda", num()).optional(),
                ParamSpec::new("weight", num()).optional(),
                ParamSpec::new("density", num()).optional(),
            ],
        };
        KindSchema::new("merge", 1, "model")
            .doc("Merges models tensor by tensor (linear, slerp, task_arithmetic, ties, dare_linear, dare_ties, model_stock), streaming from memory-mapped safetensors.")
            .param(ParamSpec::new("method", ParamType::Enum(METHOD_NAMES)).doc("the merge method"))
            .param(ParamSpec::new("model", model_rec).repeated().doc("an input model: `model NAME weight=… density=…`"))
            .param(ParamSpec::new("base", ParamType::Ref(&["model"])).optional().doc("the base model (task vectors are taken against it; slerp: t=0 returns it)"))
            .param(ParamSpec::new("t", grad()).optional().doc("slerp interpolation factor: a number or a gradient over layers"))
            .param(ParamSpec::new("lambda", grad()).optional().doc("task-vector scale (default 1)"))
            .param(ParamSpec::new("weight", grad()).optional().doc("weight of every model without its own (default 1)"))
            .param(ParamSpec::new("density", grad()).optional().doc("density of every model without its own (default 1)"))
            .param(ParamSpec::new("normalize", ParamType::Bool).optional().doc("divide by the sum of weights (default: on for linear and ties)"))
            .param(ParamSpec::new("filter", filter_rec).repeated().optional().doc("`filter PATTERN param=value… [model=NAME]`: values for tensors whose name contains PATTERN"))
            .param(ParamSpec::new("dtype", ParamType::Enum(&["f32", "bf16", "f16"])).optional().doc("output dtype (default: the base's / first model's)"))
            .param(ParamSpec::new("tokenizer-from", ParamType::Ref(&["model", "tokenizer"])).optional().doc("tokenizer of the result (required when the models' vocabularies differ)"))
            .param(ParamSpec::new("seed", ParamType::Int { min: Some(0), max: None }).default(Value::Int(0)).doc("seed of the random methods (dare_*)"))
            .param(ParamSpec::new("missing-from-base", ParamType::Bool).default(Value::Bool(false)).doc("take a tensor a model lacks from the base instead of failing"))
            .param(ParamSpec::new("shard-size", ParamType::Int { min: Some(1), max: None }).default(Value::Int(crate::arch::io::DEFAULT_MAX_SHARD_BYTES as i64)).doc("bytes per output shard"))
            .check(check)
    }

    fn run(&self, ctx: &StageCtx) -> Result<J, StageError> {
        let job = job(ctx)?;
        let mut tick = |i: usize, n: usize| {
            ctx.progress.set_length(n as u64);
            ctx.progress.set_position(i as u64);
            ctx.check_cancel()
        };
        driver::run(&job, &ctx.out_dir, &mut tick)
    }
}

fn records(v: Option<&Value>) -> Vec<&BTreeMap<String, Value>> {
    v.and_then(Value::as_list)
        .unwrap_or(&[])
        .iter()
        .filter_map(Value::as_record)
        .collect()
}

fn ref_name(r: &BTreeMap<String, Value>) -> Option<&str> {
    r.get("model").and_then(Value::as_str)
}

fn issue(param: Option<&str>, message: String, hint: Option<String>) -> ParamIssue {
    ParamIssue {
        param: param.map(str::to_string),
        message,
        hint,
    }
}

/// Recipe-time checks: the method's inputs (base, number of models), parameters the method does
/// not read, densities in (0, 1], `t` in [0, 1], filters naming merged models.
fn check(n: &NodeDecl) -> Vec<ParamIssue> {
    let mut out = Vec::new();
    let Some(m) = n
        .params
        .get("method")
        .and_then(Value::as_str)
        .and_then(merge::method)
    else {
        return out;
    };
    let set = |k: &str| n.param_locs.contains_key(k);
    let models = records(n.params.get("model"));
    let filters = records(n.params.get("filter"));
    let names: Vec<&str> = models.iter().filter_map(|r| ref_name(r)).collect();
    let base = n.params.get("base").and_then(Value::as_str);
    let reads = m
        .params
        .iter()
        .map(|p| p.name)
        .collect::<Vec<_>>()
        .join(", ");
    let reads = if reads.is_empty() {
        "no parameters".to_string()
    } else {
        reads
    };
    match m.base {
        BaseUse::None if base.is_some() => out.push(issue(
            Some("base"),
            format!("method {} takes no base model", m.name),
            Some("list every model to average as `model NAME weight=…`".into()),
        )),
        BaseUse::Required if base.is_none() => out.push(issue(
            None,
            format!("method {} needs a base model", m.name),
            Some("set `base=NAME`: task vectors are taken against it".into()),
        )),
        BaseUse::FirstOfTwo => {
            let extra = usize::from(base.is_some_and(|b| !names.contains(&b)));
            let total = names.len() + extra;
            if total != 2 {
                out.push(issue(
                    Some("model"),
                    format!("slerp merges exactly two models, found {total}"),
                    Some("use linear or model_stock for more than two models".into()),
                ));
            }
        }
        _ => {}
    }
    let others = names.iter().filter(|x| Some(**x) != base).count();
    if m.base == BaseUse::Required && others < m.min_models {
        out.push(issue(
            Some("model"),
            format!(
                "method {} needs at least {} model{} besides the base, found {others}",
                m.name,
                m.min_models,
                if m.min_models == 1 { "" } else { "s" }
            ),
            None,
        ));
    }
    let unknown = |p: &str| {
        issue(
            Some(p),
            format!("`{p}` is not a parameter of method {}", m.name),
            Some(format!("{} reads: {reads}", m.name)),
        )
    };
    for p in NUMERIC {
        if set(p) && m.param(p).is_none() {
            out.push(unknown(p));
        }
    }
    if set("normalize") && m.param("normalize").is_none() {
        out.push(unknown("normalize"));
    }
    if set("seed") && !m.random {
        out.push(unknown("seed"));
    }
    if set("missing-from-base") && m.base == BaseUse::None {
        out.push(unknown("missing-from-base"));
    }
    for (i, r) in models.iter().enumerate() {
        for f in ["weight", "density"] {
            if !matches!(r.get(f), None | Some(Value::Null)) && m.param(f).is_none() {
                out.push(issue(
                    Some("model"),
                    format!(
                        "model {}: `{f}` is not a parameter of method {}",
                        i + 1,
                        m.name
                    ),
                    Some(format!("{} reads: {reads}", m.name)),
                ));
            }
        }
    }
    for r in &filters {
        for f in NUMERIC {
            if !matches!(r.get(*f), None | Some(Value::Null)) && m.param(f).is_none() {
                out.push(issue(
                    Some("filter"),
                    format!("filter: `{f}` is not a parameter of method {}", m.name),
                    Some(format!("{} reads: {reads}", m.name)),
                ));
            }
        }
        if let Some(target) = ref_name(r) {
            if !names.contains(&target) {
                out.push(issue(
                    Some("filter"),
                    format!("filter names model `{target}`, which is not merged here"),
                    Some(format!("merged models: {}", names.join(", "))),
                ));
            }
        }
    }
    // Ranges: density in (0, 1], t in [0, 1].
    let mut values: Vec<(&str, f64)> = Vec::new();
    for p in ["density", "t"] {
        if let Some(v) = n.params.get(p).and_then(ParamValue::from_value) {
            values.extend(v.numbers().into_iter().map(|x| (p, x)));
        }
        for r in models.iter().chain(filters.iter()) {
            if let Some(x) = r.get(p).and_then(Value::as_f64) {
                values.push((p, x));
            }
        }
    }
    for (p, x) in values {
        let bad = if p == "density" {
            !(x > 0.0 && x <= 1.0)
        } else {
            !(0.0..=1.0).contains(&x)
        };
        if bad {
            let range = if p == "density" { "(0, 1]" } else { "[0, 1]" };
            out.push(issue(
                Some(p),
                format!("`{p}` must lie in {range}, found {x}"),
                Some(if p == "density" {
                    "density is the fraction of each task vector kept: 1 keeps all".into()
                } else {
                    "t = 0 returns the base, t = 1 the other model".into()
                }),
            ));
        }
    }
    for d in m.params {
        if d.default.is_none() && d.name != "normalize" && !set(d.name) {
            let in_filter = filters
                .iter()
                .any(|r| !matches!(r.get(d.name), None | Some(Value::Null)));
            if !in_filter {
                out.push(issue(
                    None,
                    format!("method {} needs `{}`", m.name, d.name),
                    Some(format!("e.g. `{}=0.5`", d.name)),
                ));
            }
        }
    }
    out
}

/// An input artifact as a merge [`Input`].
fn input_at(ctx: &StageCtx, path: &str) -> Result<Input, StageError> {
    let a = ctx.input(path)?;
    Ok(Input {
        name: a.node.clone(),
        dir: a.dir.clone(),
    })
}

/// Builds the driver's job from the node's parameters and inputs.
fn job(ctx: &StageCtx) -> Result<Job, StageError> {
    let mname = ctx.param("method").as_str().unwrap_or_default();
    let method: &'static MethodDef = merge::method(mname)
        .ok_or_else(|| StageError::user(format!("unknown merge method `{mname}`"), None))?;
    let recs = records(Some(ctx.param("model")));
    let mut models: Vec<(Input, &BTreeMap<String, Value>)> = Vec::new();
    for (i, r) in recs.iter().enumerate() {
        models.push((input_at(ctx, &format!("model[{i}].model"))?, r));
    }
    let mut base = match ctx.param("base") {
        Value::Ref(_) => Some(input_at(ctx, "base")?),
        _ => None,
    };
    if method.base == BaseUse::FirstOfTwo {
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
    let filters = records(Some(ctx.param("filter")));
    let fval = |r: &BTreeMap<String, Value>, p: &str| r.get(p).and_then(Value::as_f64);
    let pattern = |r: &BTreeMap<String, Value>| {
        r.get("pattern")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let mut params = ParamSet::default();
    for p in NUMERIC {
        let mut entries: Vec<(String, ParamValue)> = filters
            .iter()
            .filter(|r| ref_name(r).is_none())
            .filter_map(|r| fval(r, p).map(|x| (pattern(r), ParamValue::Scalar(x))))
            .collect();
        if let Some(v) = ParamValue::from_value(ctx.param(p)) {
            entries.push((String::new(), v));
        }
        if !entries.is_empty() {
            params
                .global
                .insert(p.to_string(), ParamValue::Filters(entries));
        }
    }
    for (m, r) in &models {
        let mut per = BTreeMap::new();
        for p in ["weight", "density"] {
            let mut entries: Vec<(String, ParamValue)> = filters
                .iter()
                .filter(|f| ref_name(f) == Some(m.name.as_str()))
                .filter_map(|f| fval(f, p).map(|x| (pattern(f), ParamValue::Scalar(x))))
                .collect();
            if entries.is_empty() && fval(r, p).is_none() {
                continue;
            }
            if let Some(ParamValue::Filters(g)) = params.global.get(p) {
                entries.extend(g.iter().filter(|(f, _)| !f.is_empty()).cloned());
            }
            if let Some(x) = fval(r, p) {
                entries.push((String::new(), ParamValue::Scalar(x)));
            }
            if let Some(ParamValue::Filters(g)) = params.global.get(p) {
                entries.extend(g.iter().filter(|(f, _)| f.is_empty()).cloned());
            }
            per.insert(p.to_string(), ParamValue::Filters(entries));
        }
        params.per_model.push(per);
    }
    Ok(Job {
        method,
        base,
        models: models.into_iter().map(|(m, _)| m).collect(),
        params,
        normalize: ctx.param("normalize").as_bool(),
        seed: ctx.param("seed").as_i64().unwrap_or(0).max(0) as u64,
        dtype: ctx.param("dtype").as_str().and_then(OutDtype::parse),
        tokenizer_from: match ctx.param("tokenizer-from") {
            Value::Ref(_) => Some(input_at(ctx, "tokenizer-from")?),
            _ => None,
        },
        missing_from_base: ctx.param("missing-from-base").as_bool().unwrap_or(false),
        max_shard_bytes: ctx.param("shard-size").as_i64().unwrap_or(i64::MAX).max(1) as u64,
        f64: false,
    })
}
