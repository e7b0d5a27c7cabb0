//! Model merging: one file per method, a registry mapping method names to their declarations
//! (mergekit-style: which inputs a method takes and which parameters it reads, with defaults),
//! per-tensor parameter resolution ([`params`]) and the streaming driver ([`driver`]) that reads
//! one tensor from every input (memory-mapped safetensors), merges it and appends it to the
//! output shard ([`st`]).
//!
//! Methods are pure functions over flat tensors (`Vec<T>`, `T` = f32 at run time, f64 in tests):
//! reductions (norms, dot products, sums of weights) are accumulated in f64 either way.
//! Adding a method: its declaration in `kinds::merge` (read by the recipe check without torch),
//! one file here exporting a [`Method`] with the arithmetic, and one line in each table.

pub mod dare_linear;
pub mod dare_ties;
pub mod driver;
pub mod linear;
pub mod model_stock;
pub mod params;
pub mod shards;
pub mod slerp;
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

pub use kinds::merge::{BaseUse, MethodDecl, ParamDecl};

/// A method: its declaration (`kinds::merge`, what recipes are checked against) and its
/// arithmetic, in f32 (run time) and f64 (golden tests).
#[derive(Clone, Copy)]
pub struct Method {
    pub decl: &'static MethodDecl,
    pub merge_f32: MergeFn<f32>,
    pub merge_f64: MergeFn<f64>,
}

impl std::fmt::Debug for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Method")
            .field("name", &self.decl.name)
            .finish_non_exhaustive()
    }
}

/// Every merge method, in the order of `kinds::merge::METHODS`. Adding one: its declaration
/// there, a file here exporting its `METHOD`, and a line in each table.
pub const METHODS: &[Method] = &[
    linear::METHOD,
    slerp::METHOD,
    task_arithmetic::METHOD,
    ties::METHOD,
    dare_linear::METHOD,
    dare_ties::METHOD,
    model_stock::METHOD,
];

/// The method called `name`.
pub fn method(name: &str) -> Option<&'static Method> {
    METHODS.iter().find(|m| m.decl.name == name)
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

#[cfg(test)]
mod tests {
    /// The implementations and the declarations list the same methods in the same order.
    #[test]
    fn tables_agree() {
        let impls: Vec<&str> = super::METHODS.iter().map(|m| m.decl.name).collect();
        let decls: Vec<&str> = kinds::merge::METHODS.iter().map(|m| m.name).collect();
        assert_eq!(impls, decls);
        assert_eq!(decls, kinds::merge::METHOD_NAMES);
    }

    /// The default `shard-size` is the model writer's default shard size.
    #[test]
    fn shard_size_default_agrees() {
        assert_eq!(
            kinds::merge::DEFAULT_SHARD_SIZE,
            crate::arch::io::DEFAULT_MAX_SHARD_BYTES
        );
    }
}
