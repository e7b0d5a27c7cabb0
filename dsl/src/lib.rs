//! temper's recipe language. Parses KDL 2.0 recipe files (with `include`s), validates every
//! node against the kind schemas registered in a [`Registry`], applies `--set` overrides and
//! expands sweep axes into shared instances. Reports all errors of a file at once, as miette
//! diagnostics with file:line:col. Knows nothing of torch or storage.

pub mod recipe;
pub mod schema;
pub mod value;

pub use recipe::{Axis, AxisMember, Expanded, Instance, Loc, NodeDecl, Recipe, SourceFile, Variant};
pub use schema::{Default, KindSchema, ParamIssue, ParamSpec, ParamType, Registry};
pub use value::Value;
