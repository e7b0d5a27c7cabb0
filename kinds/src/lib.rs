//! temper's node kinds as declarations, without torch: for each kind (one file each) its typed
//! parameters, declared once with [`params!`] so the schema the DSL validates against and the
//! struct the kind's `run` reads come from the same lines; its [`dsl::KindSchema`] and its
//! cross-parameter `check`. The front end (`temper`: check, plan, keys) needs only this crate;
//! the implementations live in `recipes` and run in the worker process.

pub mod common;
pub mod params;
pub mod train;

pub use common::Common;
pub use params::{DecodeError, FromParam, Input, ParamSet, PathParam};
