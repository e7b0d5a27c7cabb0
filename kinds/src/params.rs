//! Typed parameters: one declaration per parameter gives both the schema entry the DSL
//! validates against and the typed field a kind's `run` reads.
//!
//! ```ignore
//! kinds::params! {
//!     /// Parameters of `dpo`.
//!     pub struct DpoParams {
//!         beta: Option<f64> = ParamSpec::new("beta", float(0.0)).optional(),
//!         gamma: f64 = ParamSpec::new("gamma", float(0.0)).default(Value::Float(0.5)),
//!     }
//!     groups { optim: Optim }
//! }
//! ```
//!
//! expands to the struct, `DpoParams::specs()` (the `ParamSpec`s in order, then each group's)
//! and `DpoParams::decode(&values)`, which reads each field from the validated values through
//! [`FromParam`]. A default therefore exists once, in the spec: the DSL fills it in before a
//! node is keyed, and `decode` only converts (a missing required value is an internal error,
//! since validation would have refused the recipe).

use dsl::Value;
use std::collections::BTreeMap;

/// A parameter value that could not become its field's type (validation let through
/// something the kind does not read: a bug in the kind's declaration, never a user mistake).
#[derive(Debug, thiserror::Error)]
#[error("parameter `{param}`: {message}")]
pub struct DecodeError {
    pub param: String,
    pub message: String,
}

impl DecodeError {
    pub fn new(param: &str, message: impl Into<String>) -> Self {
        DecodeError {
            param: param.to_string(),
            message: message.into(),
        }
    }
}

/// Conversion of one validated parameter value into a field's type. `None` is a parameter
/// the recipe did not set and that has no default.
pub trait FromParam: Sized {
    fn from_param(v: Option<&Value>, name: &str) -> Result<Self, DecodeError>;
}

/// A set of parameters declared with [`params!`](crate::params): its specs and its decoding.
pub trait ParamSet: Sized {
    fn specs() -> Vec<dsl::ParamSpec>;
    fn decode(values: &BTreeMap<String, Value>) -> Result<Self, DecodeError>;
}

fn present(v: Option<&Value>) -> Option<&Value> {
    v.filter(|v| !matches!(v, Value::Null))
}

fn required<'a>(v: Option<&'a Value>, name: &str) -> Result<&'a Value, DecodeError> {
    present(v).ok_or_else(|| DecodeError::new(name, "no value (and no default)"))
}

fn wrong(name: &str, want: &str, v: &Value) -> DecodeError {
    DecodeError::new(name, format!("expected {want}, got {v:?}"))
}

impl<T: FromParam> FromParam for Option<T> {
    fn from_param(v: Option<&Value>, name: &str) -> Result<Self, DecodeError> {
        match present(v) {
            None => Ok(None),
            some => T::from_param(some, name).map(Some),
        }
    }
}

impl FromParam for f64 {
    fn from_param(v: Option<&Value>, name: &str) -> Result<Self, DecodeError> {
        let v = required(v, name)?;
        v.as_f64().ok_or_else(|| wrong(name, "a number", v))
    }
}

impl FromParam for i64 {
    fn from_param(v: Option<&Value>, name: &str) -> Result<Self, DecodeError> {
        let v = required(v, name)?;
        v.as_i64().ok_or_else(|| wrong(name, "an integer", v))
    }
}

impl FromParam for u64 {
    fn from_param(v: Option<&Value>, name: &str) -> Result<Self, DecodeError> {
        let v = required(v, name)?;
        v.as_i64()
            .and_then(|i| u64::try_from(i).ok())
            .ok_or_else(|| wrong(name, "a non-negative integer", v))
    }
}

impl FromParam for usize {
    fn from_param(v: Option<&Value>, name: &str) -> Result<Self, DecodeError> {
        u64::from_param(v, name).map(|u| u as usize)
    }
}

impl FromParam for u32 {
    fn from_param(v: Option<&Value>, name: &str) -> Result<Self, DecodeError> {
        let u = u64::from_param(v, name)?;
        u32::try_from(u).map_err(|_| DecodeError::new(name, format!("{u} is too large")))
    }
}

impl FromParam for bool {
    fn from_param(v: Option<&Value>, name: &str) -> Result<Self, DecodeError> {
        let v = required(v, name)?;
        v.as_bool().ok_or_else(|| wrong(name, "#true or #false", v))
    }
}

impl FromParam for String {
    fn from_param(v: Option<&Value>, name: &str) -> Result<Self, DecodeError> {
        match required(v, name)? {
            Value::Str(s) => Ok(s.clone()),
            v => Err(wrong(name, "a string", v)),
        }
    }
}

impl<T: FromParam> FromParam for Vec<T> {
    /// A list parameter; absent = empty.
    fn from_param(v: Option<&Value>, name: &str) -> Result<Self, DecodeError> {
        match present(v) {
            None => Ok(Vec::new()),
            Some(Value::List(items)) => items
                .iter()
                .enumerate()
                .map(|(i, x)| T::from_param(Some(x), &format!("{name}[{i}]")))
                .collect(),
            Some(one) => Ok(vec![T::from_param(Some(one), name)?]),
        }
    }
}

impl FromParam for Value {
    /// The value as validated, for parameters whose shape the kind reads itself.
    fn from_param(v: Option<&Value>, _name: &str) -> Result<Self, DecodeError> {
        Ok(v.cloned().unwrap_or(Value::Null))
    }
}

/// A reference to another node (`model=base`): the input's parameter path, under which the
/// runner hands its artifact to the stage, and the instance id it names.
#[derive(Clone, Debug, PartialEq)]
pub struct Input {
    /// The parameter path (`model`, `sources[1].data`), the key of `StageCtx::inputs`.
    pub param: String,
    /// The referenced instance id (`sft[lr=1e-4]`).
    pub node: String,
}

impl FromParam for Input {
    fn from_param(v: Option<&Value>, name: &str) -> Result<Self, DecodeError> {
        match required(v, name)? {
            Value::Ref(id) => Ok(Input {
                param: name.to_string(),
                node: id.clone(),
            }),
            v => Err(wrong(name, "a node reference", v)),
        }
    }
}

/// A path parameter as written, relative to the root recipe's directory.
#[derive(Clone, Debug, PartialEq)]
pub struct PathParam(pub String);

impl FromParam for PathParam {
    fn from_param(v: Option<&Value>, name: &str) -> Result<Self, DecodeError> {
        match required(v, name)? {
            Value::Path(p) => Ok(PathParam(p.clone())),
            v => Err(wrong(name, "a path", v)),
        }
    }
}

/// The value of `spec` in `values`, or its declared default when absent (values validated by
/// the DSL always hold the default already; a context built by hand may not).
pub fn lookup(values: &BTreeMap<String, Value>, spec: &dsl::ParamSpec) -> Option<Value> {
    match values.get(spec.name) {
        Some(v) => Some(v.clone()),
        None => match &spec.default {
            dsl::Default::Value(v) => Some(v.clone()),
            _ => None,
        },
    }
}

/// Reads a record's field by its KDL name (for record types decoded by hand).
pub fn field<T: FromParam>(
    r: &BTreeMap<String, Value>,
    record: &str,
    name: &str,
) -> Result<T, DecodeError> {
    T::from_param(r.get(name), &format!("{record}.{name}"))
}

/// An enum parameter decoded by its words: `impl_enum_param!(LogpNorm { Sum = "sum", Mean = "mean" })`
/// gives `LogpNorm::NAMES`, `name()`, `parse()` and [`FromParam`].
#[macro_export]
macro_rules! enum_param {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $word:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name { $($(#[$vmeta])* $variant),+ }
        impl $name {
            /// The words a recipe may write, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($word),+];
            pub fn name(self) -> &'static str {
                match self { $($name::$variant => $word),+ }
            }
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($word => Some($name::$variant),)+ _ => None }
            }
        }
        impl $crate::params::FromParam for $name {
            fn from_param(v: Option<&dsl::Value>, name: &str) -> Result<Self, $crate::params::DecodeError> {
                let s = <String as $crate::params::FromParam>::from_param(v, name)?;
                $name::parse(&s).ok_or_else(|| $crate::params::DecodeError::new(
                    name, format!("`{s}` is not one of {}", $name::NAMES.join(" | "))))
            }
        }
    };
}

/// Declares a parameter struct and its schema entries at once (see the module docs).
#[macro_export]
macro_rules! params {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$fmeta:meta])* $field:ident : $ty:ty = $spec:expr ),* $(,)?
        }
        $( groups { $( $(#[$gmeta:meta])* $gfield:ident : $gty:ty ),* $(,)? } )?
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
            $( $( $(#[$gmeta])* pub $gfield: $gty, )* )?
        }
        impl $crate::params::ParamSet for $name {
            fn specs() -> Vec<dsl::ParamSpec> {
                #[allow(unused_mut)]
                let mut v: Vec<dsl::ParamSpec> = vec![$($spec),*];
                $( $( v.extend(<$gty as $crate::params::ParamSet>::specs()); )* )?
                v
            }
            fn decode(
                values: &std::collections::BTreeMap<String, dsl::Value>,
            ) -> Result<Self, $crate::params::DecodeError> {
                Ok($name {
                    $( $field: {
                        let spec: dsl::ParamSpec = $spec;
                        <$ty as $crate::params::FromParam>::from_param(
                            $crate::params::lookup(values, &spec).as_ref(),
                            spec.name,
                        )?
                    }, )*
                    $( $( $gfield: <$gty as $crate::params::ParamSet>::decode(values)?, )* )?
                })
            }
        }
    };
}

impl FromParam for dsl::device::Device {
    fn from_param(v: Option<&Value>, name: &str) -> Result<Self, DecodeError> {
        let s = String::from_param(v, name)?;
        dsl::device::Device::parse(&s)
            .ok_or_else(|| DecodeError::new(name, format!("`{s}` is not a device")))
    }
}

impl FromParam for dsl::device::Dtype {
    fn from_param(v: Option<&Value>, name: &str) -> Result<Self, DecodeError> {
        let s = String::from_param(v, name)?;
        dsl::device::Dtype::parse(&s)
            .ok_or_else(|| DecodeError::new(name, format!("`{s}` is not a dtype")))
    }
}

/// `ParamType::Int { min, max: None }`.
pub fn int(min: i64) -> dsl::ParamType {
    dsl::ParamType::Int {
        min: Some(min),
        max: None,
    }
}

/// `ParamType::Float { min, max: None }`.
pub fn float(min: f64) -> dsl::ParamType {
    dsl::ParamType::Float {
        min: Some(min),
        max: None,
    }
}

/// `ParamType::Float { min, max }`.
pub fn float_in(min: f64, max: f64) -> dsl::ParamType {
    dsl::ParamType::Float {
        min: Some(min),
        max: Some(max),
    }
}

/// Whether the recipe set `k` on the node (explicitly, to a non-null value).
pub fn is_set(n: &dsl::NodeDecl, k: &str) -> bool {
    n.param_locs.contains_key(k) && !matches!(n.params.get(k), None | Some(Value::Null))
}
