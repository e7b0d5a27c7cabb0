//! Model merging: one file per method, a registry mapping method names to their declarations
//! (mergekit-style: which inputs a method takes and which parameters it reads, with defaults),
//! per-tensor parameter resolution ([`params`]) and the streaming driver ([`driver`]) that reads
//! one tensor from every input (memory-mapped safetensors), merges it and appends it to the
//! output shard ([`st`]).
//!
//! Methods are pure functions over flat tensors (`Vec<T>`, `T` = f32 at run time, f64 in tests):
//! reductions (norms, dot products, sums of weights) are accumulated in f64 either way.
//! Adding a method: one file exporting a [`MethodDef`] plus one line in [`METHODS`].

pub mod dare_linear;
pub mod dare_ties;
pub mod driver;
pub mod linear;
pub mod model_stock;
pub mod params;
pub mod slerp;
pub mod st;
pub mod task_arithmetic;
pub mod task_vector;
pub mod ties;

use std::ops::{Add, AddAssign, Div, Mul, Neg, Sub};

/// The float type a merge computes in (f32 at run time, f64 in golden tests).
pub trait Real:
    Copy
    + Default
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + Send
    + Sync
    + std::fmt::Debug
    + 'static
{
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    fn abs(self) -> Self;
}

impl Real for f32 {
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn abs(self) -> Self {
        f32::abs(self)
    }
}

impl Real for f64 {
    fn from_f64(x: f64) -> Self {
        x
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn abs(self) -> Self {
        f64::abs(self)
    }
}

/// The inputs of one tensor: the base's copy (for methods that use one) and each other model's.
/// All have the same length (the driver checks shapes first).
#[derive(Clone, Debug)]
pub struct Tensors<T> {
    pub base: Option<Vec<T>>,
    pub models: Vec<Vec<T>>,
}

/// Parameter values resolved for one tensor (see [`params`]): per model (`weight[i]`,
/// `density[i]`, same order as [`Tensors::models`]) and global.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorParams {
    pub weight: Vec<f64>,
    pub density: Vec<f64>,
    pub t: f64,
    pub lambda: f64,
    pub normalize: bool,
    /// Seed of this tensor's random draws (already derived from the node seed and the tensor
    /// name by the driver; model `i` uses stream `i`).
    pub seed: u64,
}

impl Default for TensorParams {
    fn default() -> Self {
        TensorParams {
            weight: Vec::new(),
            density: Vec::new(),
            t: 0.5,
            lambda: 1.0,
            normalize: false,
            seed: 0,
        }
    }
}

/// A merge function: the tensors of one name and their parameters → the merged tensor, or a
/// message (the driver adds the tensor name).
pub type MergeFn<T> = fn(Tensors<T>, &TensorParams) -> Result<Vec<T>, String>;

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
#[derive(Clone, Copy)]
pub struct MethodDef {
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
    pub merge_f32: MergeFn<f32>,
    pub merge_f64: MergeFn<f64>,
}

impl std::fmt::Debug for MethodDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MethodDef")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl MethodDef {
    pub fn param(&self, name: &str) -> Option<&ParamDecl> {
        self.params.iter().find(|p| p.name == name)
    }
}

/// Shared parameter declarations.
pub const WEIGHT: ParamDecl = ParamDecl {
    name: "weight",
    default: Some(1.0),
    per_model: true,
};
pub const DENSITY: ParamDecl = ParamDecl {
    name: "density",
    default: Some(1.0),
    per_model: true,
};
pub const LAMBDA: ParamDecl = ParamDecl {
    name: "lambda",
    default: Some(1.0),
    per_model: false,
};
pub const NORMALIZE: ParamDecl = ParamDecl {
    name: "normalize",
    default: None,
    per_model: false,
};

/// Every merge method, by name. Adding one: a file with its `DEF` and a line here.
pub const METHODS: &[MethodDef] = &[
    linear::DEF,
    slerp::DEF,
    task_arithmetic::DEF,
    ties::DEF,
    dare_linear::DEF,
    dare_ties::DEF,
    model_stock::DEF,
];

/// Method names in registry order (the `method` enum of the `merge` kind).
pub const METHOD_NAMES: &[&str] = &[
    linear::DEF.name,
    slerp::DEF.name,
    task_arithmetic::DEF.name,
    ties::DEF.name,
    dare_linear::DEF.name,
    dare_ties::DEF.name,
    model_stock::DEF.name,
];

/// The method called `name`.
pub fn method(name: &str) -> Option<&'static MethodDef> {
    METHODS.iter().find(|m| m.name == name)
}

/// f64 dot product of two tensors.
pub fn dot<T: Real>(a: &[T], b: &[T]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x.to_f64() * y.to_f64()).sum()
}

/// f64 Euclidean norm.
pub fn norm<T: Real>(a: &[T]) -> f64 {
    dot(a, a).sqrt()
}

/// Checks every input has the same length as the first; returns it.
pub(crate) fn same_len<T>(t: &Tensors<T>) -> Result<usize, String> {
    let n = t
        .base
        .as_ref()
        .map(Vec::len)
        .or_else(|| t.models.first().map(Vec::len))
        .ok_or("no input tensors")?;
    if t.models.iter().any(|m| m.len() != n) {
        return Err("inputs have different numbers of elements".into());
    }
    Ok(n)
}
