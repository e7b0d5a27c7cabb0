//! Parameter values as they appear in a recipe, after validation.
//!
//! A `Value` is what a parameter holds once the DSL has checked it against the kind's schema.
//! References to other nodes are kept as `Ref(name)` so the planner can replace them by keys.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A typed parameter value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    /// A path as written in the recipe, relative to the directory of the file that wrote it
    /// (the DSL rewrites it relative to the root recipe's directory). Never part of a key:
    /// the planner hashes the content instead.
    Path(String),
    /// Name of another node of the recipe.
    Ref(String),
    List(Vec<Value>),
    /// A child node with positional arguments and properties mapped to named fields.
    Record(BTreeMap<String, Value>),
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) | Value::Path(s) | Value::Ref(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(l) => Some(l),
            _ => None,
        }
    }
    pub fn as_record(&self) -> Option<&BTreeMap<String, Value>> {
        match self {
            Value::Record(r) => Some(r),
            _ => None,
        }
    }

    /// Canonical JSON used in keys: floats in shortest round-trip form, records with sorted
    /// fields, references as `{"ref": name}` (the planner substitutes input keys).
    pub fn to_canonical_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            // Floats are written as strings so 1.0 and 1 never collide with ints and the text is
            // the shortest round-trip representation (Rust's `{}` for f64).
            Value::Float(f) => J::String(format!("f:{f:?}")),
            Value::Str(s) => J::String(s.clone()),
            Value::Path(p) => serde_json::json!({ "path": p }),
            Value::Ref(r) => serde_json::json!({ "ref": r }),
            Value::List(l) => J::Array(l.iter().map(|v| v.to_canonical_json()).collect()),
            Value::Record(r) => {
                let mut m = serde_json::Map::new();
                for (k, v) in r {
                    m.insert(k.clone(), v.to_canonical_json());
                }
                J::Object(m)
            }
        }
    }

    /// Short human form used in variant names and messages (`0.1`, `cosine`, `[1, 2]`).
    pub fn display(&self) -> String {
        match self {
            Value::Null => "#null".into(),
            Value::Bool(b) => format!("#{b}"),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => format!("{f:?}"),
            Value::Str(s) | Value::Path(s) | Value::Ref(s) => s.clone(),
            Value::List(l) => format!(
                "[{}]",
                l.iter().map(|v| v.display()).collect::<Vec<_>>().join(", ")
            ),
            Value::Record(r) => format!(
                "{{{}}}",
                r.iter()
                    .map(|(k, v)| format!("{k}={}", v.display()))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        }
    }
}
