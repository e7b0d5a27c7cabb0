//! `merge`: merges model-producing nodes tensor by tensor with one of the methods declared in
//! [`METHODS`], producing a `model` (an HF directory).
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
//!
//! A method's declaration ([`MethodDecl`]: base use, fewest models, the parameters it reads
//! with their defaults, randomness) is what [`check`] validates a recipe against; its
//! arithmetic lives in `recipes::merge`, one file per method, under the same name.

use crate::model::WeightDtype;
use crate::params::{field, DecodeError, FromParam, Input, ParamSet};
use dsl::{KindSchema, NodeDecl, ParamIssue, ParamSpec, ParamType, Value};
use std::collections::BTreeMap;

/// How a method uses the `base` model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BaseUse {
    /// No base: every input is a `model` (linear).
    None,
    /// A base is required (task vectors are taken against it).
    Required,
    /// The base is the first of exactly two inputs: `base=` when set, else the first `model`
    /// (slerp).
    FirstOfTwo,
}

/// A parameter a method reads, and its default when the recipe does not set it
/// (`None` = the recipe must set it).
#[derive(Clone, Copy, Debug)]
pub struct ParamDecl {
    pub name: &'static str,
    pub default: Option<f64>,
    /// Set per input model (`model NAME weight=…`) rather than once for the node.
    pub per_model: bool,
}

/// A method's declaration: what the `merge` kind validates a recipe against.
#[derive(Clone, Copy, Debug)]
pub struct MethodDecl {
    pub name: &'static str,
    pub doc: &'static str,
    pub base: BaseUse,
    /// Fewest non-base models.
    pub min_models: usize,
    pub params: &'static [ParamDecl],
    /// Default of `normalize` (only meaningful when `params` mentions it).
    pub normalize_default: bool,
    /// Uses `seed`.
    pub random: bool,
}

impl MethodDecl {
    pub fn param(&self, name: &str) -> Option<&ParamDecl> {
        self.params.iter().find(|p| p.name == name)
    }
}

/// `weight`: per model, default 1.
pub const WEIGHT: ParamDecl = ParamDecl {
    name: "weight",
    default: Some(1.0),
    per_model: true,
};
/// `density`: per model, the fraction of a task vector kept, default 1.
pub const DENSITY: ParamDecl = ParamDecl {
    name: "density",
    default: Some(1.0),
    per_model: true,
};
/// `lambda`: the task-vector scale, default 1.
pub const LAMBDA: ParamDecl = ParamDecl {
    name: "lambda",
    default: Some(1.0),
    per_model: false,
};
/// `normalize`: divide by the sum of weights; its default is the method's `normalize_default`.
pub const NORMALIZE: ParamDecl = ParamDecl {
    name: "normalize",
    default: None,
    per_model: false,
};
/// `t`: slerp's interpolation factor, required.
pub const T: ParamDecl = ParamDecl {
    name: "t",
    default: None,
    per_model: false,
};

#[rustfmt::skip]
pub const LINEAR: MethodDecl = MethodDecl { name: "linear", doc: "weighted average Σ wᵢθᵢ / Σ wᵢ", base: BaseUse::None, min_models: 1, params: &[WEIGHT, NORMALIZE], normalize_default: true, random: false };
#[rustfmt::skip]
pub const SLERP: MethodDecl = MethodDecl { name: "slerp", doc: "spherical interpolation between two models by t (t=0: the base)", base: BaseUse::FirstOfTwo, min_models: 1, params: &[T], normalize_default: false, random: false };
#[rustfmt::skip]
pub const TASK_ARITHMETIC: MethodDecl = MethodDecl { name: "task_arithmetic", doc: "sum of weighted task vectors: θbase + λ·Σ wᵢτᵢ", base: BaseUse::Required, min_models: 1, params: &[WEIGHT, LAMBDA, NORMALIZE], normalize_default: false, random: false };
#[rustfmt::skip]
pub const TIES: MethodDecl = MethodDecl { name: "ties", doc: "TIES: top-k sparsified task vectors with sign consensus, normalised", base: BaseUse::Required, min_models: 1, params: &[WEIGHT, DENSITY, LAMBDA, NORMALIZE], normalize_default: true, random: false };
#[rustfmt::skip]
pub const DARE_LINEAR: MethodDecl = MethodDecl { name: "dare_linear", doc: "DARE: random drop of task-vector entries, L1 rescale, weighted sum", base: BaseUse::Required, min_models: 1, params: &[WEIGHT, DENSITY, LAMBDA, NORMALIZE], normalize_default: false, random: true };
#[rustfmt::skip]
pub const DARE_TIES: MethodDecl = MethodDecl { name: "dare_ties", doc: "DARE sparsification with TIES sign consensus", base: BaseUse::Required, min_models: 1, params: &[WEIGHT, DENSITY, LAMBDA, NORMALIZE], normalize_default: false, random: true };
#[rustfmt::skip]
pub const MODEL_STOCK: MethodDecl = MethodDecl { name: "model_stock", doc: "Model Stock: interpolate the models' mean toward the base by their task vectors' angle", base: BaseUse::Required, min_models: 2, params: &[], normalize_default: false, random: false };

/// Every merge method, by name (the order of `temper kinds` and of `recipes::merge::METHODS`).
pub const METHODS: &[MethodDecl] = &[
    LINEAR,
    SLERP,
    TASK_ARITHMETIC,
    TIES,
    DARE_LINEAR,
    DARE_TIES,
    MODEL_STOCK,
];

/// Method names in registry order (the `method` enum).
pub const METHOD_NAMES: &[&str] = &[
    LINEAR.name,
    SLERP.name,
    TASK_ARITHMETIC.name,
    TIES.name,
    DARE_LINEAR.name,
    DARE_TIES.name,
    MODEL_STOCK.name,
];

/// The method called `name`.
pub fn method(name: &str) -> Option<&'static MethodDecl> {
    METHODS.iter().find(|m| m.name == name)
}

impl FromParam for &'static MethodDecl {
    fn from_param(v: Option<&Value>, name: &str) -> Result<Self, DecodeError> {
        let s = String::from_param(v, name)?;
        method(&s).ok_or_else(|| DecodeError::new(name, format!("unknown merge method `{s}`")))
    }
}

/// Bytes per output shard unless `shard-size` says otherwise (as Hugging Face's 2 GB).
pub const DEFAULT_SHARD_SIZE: u64 = 2_000_000_000;

/// The numeric parameters that may be node-level, per model or in filters.
pub const NUMERIC: &[&str] = &["t", "lambda", "weight", "density"];

/// `model NAME weight=W density=D`.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    pub model: Input,
    pub weight: Option<f64>,
    pub density: Option<f64>,
}

impl FromParam for Model {
    fn from_param(v: Option<&Value>, name: &str) -> Result<Self, DecodeError> {
        match v {
            Some(Value::Record(r)) => Ok(Model {
                model: field(r, name, "model")?,
                weight: field(r, name, "weight")?,
                density: field(r, name, "density")?,
            }),
            other => Err(not_record(name, other)),
        }
    }
}

/// `filter PATTERN param=value… [model=NAME]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Filter {
    /// Substring of tensor names; `*` or "" = all.
    pub pattern: String,
    /// The merged model whose `weight`/`density` this filter sets; `None` = every model.
    pub model: Option<Input>,
    /// The numeric parameters it sets, by name (only those given).
    pub values: BTreeMap<&'static str, f64>,
}

impl FromParam for Filter {
    fn from_param(v: Option<&Value>, name: &str) -> Result<Self, DecodeError> {
        let Some(Value::Record(r)) = v else {
            return Err(not_record(name, v));
        };
        let mut values = BTreeMap::new();
        for p in NUMERIC {
            if let Some(x) = field::<Option<f64>>(r, name, p)? {
                values.insert(*p, x);
            }
        }
        Ok(Filter {
            pattern: field(r, name, "pattern")?,
            model: field(r, name, "model")?,
            values,
        })
    }
}

fn not_record(name: &str, v: Option<&Value>) -> DecodeError {
    DecodeError::new(name, format!("expected a record, got {v:?}"))
}

fn num() -> ParamType {
    ParamType::Float {
        min: None,
        max: None,
    }
}

/// A number or a gradient over layers.
fn grad() -> ParamType {
    ParamType::List(Box::new(num()))
}

fn model_record() -> ParamType {
    ParamType::Record {
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
    }
}

fn filter_record() -> ParamType {
    ParamType::Record {
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
    }
}

crate::params! {
    /// Parameters of `merge`. A node-level `t`/`lambda`/`weight`/`density` is a number (one
    /// element) or a gradient over layers (several); empty = unset.
    pub struct Params {
        method: &'static MethodDecl = ParamSpec::new("method", ParamType::Enum(METHOD_NAMES)).doc("the merge method"),
        model: Vec<Model> = ParamSpec::new("model", model_record()).repeated().doc("an input model: `model NAME weight=… density=…`"),
        base: Option<Input> = ParamSpec::new("base", ParamType::Ref(&["model"])).optional().doc("the base model (task vectors are taken against it; slerp: t=0 returns it)"),
        t: Vec<f64> = ParamSpec::new("t", grad()).optional().doc("slerp interpolation factor: a number or a gradient over layers"),
        lambda: Vec<f64> = ParamSpec::new("lambda", grad()).optional().doc("task-vector scale (default 1)"),
        weight: Vec<f64> = ParamSpec::new("weight", grad()).optional().doc("weight of every model without its own (default 1)"),
        density: Vec<f64> = ParamSpec::new("density", grad()).optional().doc("density of every model without its own (default 1)"),
        normalize: Option<bool> = ParamSpec::new("normalize", ParamType::Bool).optional().doc("divide by the sum of weights (default: on for linear and ties)"),
        filter: Vec<Filter> = ParamSpec::new("filter", filter_record()).repeated().optional().doc("`filter PATTERN param=value… [model=NAME]`: values for tensors whose name contains PATTERN"),
        dtype: Option<WeightDtype> = ParamSpec::new("dtype", ParamType::Enum(WeightDtype::NAMES)).optional().doc("output dtype (default: the base's / first model's)"),
        tokenizer_from: Option<Input> = ParamSpec::new("tokenizer-from", ParamType::Ref(&["model", "tokenizer"])).optional().doc("tokenizer of the result (required when the models' vocabularies differ)"),
        seed: u64 = ParamSpec::new("seed", ParamType::Int { min: Some(0), max: None }).default(Value::Int(0)).doc("seed of the random methods (dare_*)"),
        missing_from_base: bool = ParamSpec::new("missing-from-base", ParamType::Bool).default(Value::Bool(false)).doc("take a tensor a model lacks from the base instead of failing"),
        shard_size: u64 = ParamSpec::new("shard-size", ParamType::Int { min: Some(1), max: None }).default(Value::Int(DEFAULT_SHARD_SIZE as i64)).doc("bytes per output shard"),
    }
}

impl Params {
    /// The node-level value of numeric parameter `p` (one of [`NUMERIC`]).
    pub fn numeric(&self, p: &str) -> &[f64] {
        match p {
            "t" => &self.t,
            "lambda" => &self.lambda,
            "weight" => &self.weight,
            "density" => &self.density,
            _ => &[],
        }
    }
}

/// The `merge` kind's declaration.
pub fn schema() -> KindSchema {
    KindSchema::new("merge", 1, "model")
        .doc("Merges models tensor by tensor (linear, slerp, task_arithmetic, ties, dare_linear, dare_ties, model_stock), streaming from memory-mapped safetensors.")
        .params(Params::specs())
        .check(check)
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

fn is_set(r: &BTreeMap<String, Value>, f: &str) -> bool {
    !matches!(r.get(f), None | Some(Value::Null))
}

fn issue(param: Option<&str>, message: String, hint: Option<String>) -> ParamIssue {
    ParamIssue {
        param: param.map(str::to_string),
        message,
        hint,
    }
}

/// The node as `check` reads it: the method, the merged models' records and names, the
/// filters, the base.
struct Node<'a> {
    n: &'a NodeDecl,
    m: &'static MethodDecl,
    models: Vec<&'a BTreeMap<String, Value>>,
    filters: Vec<&'a BTreeMap<String, Value>>,
    names: Vec<&'a str>,
    base: Option<&'a str>,
    /// "weight, density, …" or "no parameters".
    reads: String,
}

impl Node<'_> {
    fn set(&self, k: &str) -> bool {
        self.n.param_locs.contains_key(k)
    }
    fn unknown(&self, param: &str, what: String) -> ParamIssue {
        issue(
            Some(param),
            format!("{what} is not a parameter of method {}", self.m.name),
            Some(format!("{} reads: {}", self.m.name, self.reads)),
        )
    }
}

/// Recipe-time checks: the method's inputs (base, number of models), parameters the method does
/// not read, densities in (0, 1], `t` in [0, 1], filters naming merged models, parameters the
/// method needs without a default.
pub fn check(n: &NodeDecl) -> Vec<ParamIssue> {
    let Some(m) = n
        .params
        .get("method")
        .and_then(Value::as_str)
        .and_then(method)
    else {
        return Vec::new();
    };
    let models = records(n.params.get("model"));
    let names = models.iter().filter_map(|r| ref_name(r)).collect();
    let reads = m
        .params
        .iter()
        .map(|p| p.name)
        .collect::<Vec<_>>()
        .join(", ");
    let node = Node {
        n,
        m,
        models,
        filters: records(n.params.get("filter")),
        names,
        base: n.params.get("base").and_then(Value::as_str),
        reads: if reads.is_empty() {
            "no parameters".to_string()
        } else {
            reads
        },
    };
    let mut out = Vec::new();
    check_inputs(&node, &mut out);
    check_unread(&node, &mut out);
    check_ranges(&node, &mut out);
    check_required(&node, &mut out);
    out
}

/// The base the method expects and the number of models besides it.
fn check_inputs(c: &Node, out: &mut Vec<ParamIssue>) {
    let m = c.m;
    match m.base {
        BaseUse::None if c.base.is_some() => out.push(issue(
            Some("base"),
            format!("method {} takes no base model", m.name),
            Some("list every model to average as `model NAME weight=…`".into()),
        )),
        BaseUse::Required if c.base.is_none() => out.push(issue(
            None,
            format!("method {} needs a base model", m.name),
            Some("set `base=NAME`: task vectors are taken against it".into()),
        )),
        BaseUse::FirstOfTwo => {
            let extra = usize::from(c.base.is_some_and(|b| !c.names.contains(&b)));
            let total = c.names.len() + extra;
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
    let others = c.names.iter().filter(|x| Some(**x) != c.base).count();
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
}

/// Parameters set on the node, a model or a filter that the method does not read; filters
/// naming a model that is not merged.
fn check_unread(c: &Node, out: &mut Vec<ParamIssue>) {
    let m = c.m;
    for p in NUMERIC {
        if c.set(p) && m.param(p).is_none() {
            out.push(c.unknown(p, format!("`{p}`")));
        }
    }
    if c.set("normalize") && m.param("normalize").is_none() {
        out.push(c.unknown("normalize", "`normalize`".into()));
    }
    if c.set("seed") && !m.random {
        out.push(c.unknown("seed", "`seed`".into()));
    }
    if c.set("missing-from-base") && m.base == BaseUse::None {
        out.push(c.unknown("missing-from-base", "`missing-from-base`".into()));
    }
    for (i, r) in c.models.iter().enumerate() {
        for f in ["weight", "density"] {
            if is_set(r, f) && m.param(f).is_none() {
                out.push(c.unknown("model", format!("model {}: `{f}`", i + 1)));
            }
        }
    }
    for r in &c.filters {
        for f in NUMERIC {
            if is_set(r, f) && m.param(f).is_none() {
                out.push(c.unknown("filter", format!("filter: `{f}`")));
            }
        }
        if let Some(target) = ref_name(r) {
            if !c.names.contains(&target) {
                out.push(issue(
                    Some("filter"),
                    format!("filter names model `{target}`, which is not merged here"),
                    Some(format!("merged models: {}", c.names.join(", "))),
                ));
            }
        }
    }
}

/// Every number a value can produce: a number, or each element of a gradient.
fn numbers(v: &Value) -> Vec<f64> {
    match v {
        Value::Int(_) | Value::Float(_) => v.as_f64().into_iter().collect(),
        Value::List(l) => l.iter().filter_map(Value::as_f64).collect(),
        _ => Vec::new(),
    }
}

/// `density ∈ (0, 1]` and `t ∈ [0, 1]`, wherever they are set.
fn check_ranges(c: &Node, out: &mut Vec<ParamIssue>) {
    let mut values: Vec<(&str, f64)> = Vec::new();
    for p in ["density", "t"] {
        if let Some(v) = c.n.params.get(p) {
            values.extend(numbers(v).into_iter().map(|x| (p, x)));
        }
        for r in c.models.iter().chain(c.filters.iter()) {
            if let Some(x) = r.get(p).and_then(Value::as_f64) {
                values.push((p, x));
            }
        }
    }
    for (p, x) in values {
        let (bad, range, hint) = if p == "density" {
            (
                !(x > 0.0 && x <= 1.0),
                "(0, 1]",
                "density is the fraction of each task vector kept: 1 keeps all",
            )
        } else {
            (
                !(0.0..=1.0).contains(&x),
                "[0, 1]",
                "t = 0 returns the base, t = 1 the other model",
            )
        };
        if bad {
            out.push(issue(
                Some(p),
                format!("`{p}` must lie in {range}, found {x}"),
                Some(hint.into()),
            ));
        }
    }
}

/// A parameter the method reads without a default must be set on the node or in a filter.
fn check_required(c: &Node, out: &mut Vec<ParamIssue>) {
    for d in c.m.params {
        if d.default.is_none() && d.name != "normalize" && !c.set(d.name) {
            let in_filter = c.filters.iter().any(|r| is_set(r, d.name));
            if !in_filter {
                out.push(issue(
                    None,
                    format!("method {} needs `{}`", c.m.name, d.name),
                    Some(format!("e.g. `{}=0.5`", d.name)),
                ));
            }
        }
    }
}
