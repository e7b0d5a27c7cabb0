//! Helpers shared by every group of the test binary: `dsl::Value` constructors, the lock
//! around torch's global random generator, and `lm` (a tiny tokenizer and Llama, datasets and
//! stage contexts with a cancel/crash hook) used by the `trainer` and `pref` groups.

#![allow(dead_code)]

pub mod lm;

use dsl::Value;
use std::sync::{Mutex, MutexGuard};

pub fn s(v: &str) -> Value {
    Value::Str(v.into())
}
pub fn p(v: &str) -> Value {
    Value::Path(v.into())
}
pub fn r(v: &str) -> Value {
    Value::Ref(v.into())
}
pub fn i(v: i64) -> Value {
    Value::Int(v)
}
pub fn f(v: f64) -> Value {
    Value::Float(v)
}
pub fn b(v: bool) -> Value {
    Value::Bool(v)
}

/// Held while seeding torch's global generator and drawing from it: the tests of every group
/// run in parallel in one process, so `manual_seed(s)` followed by draws is only reproducible
/// when no other test seeds or draws in between.
pub fn torch_rng() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
