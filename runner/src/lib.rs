//! temper's runner: turns a validated recipe into a plan (petgraph), computes Merkle keys,
//! explains what will run and why, schedules nodes on devices with checkpoints and resume,
//! and reports progress. Holds the `temper` binary's subcommands, one file each in `cmd/`.
//!
//! The path of a recipe: [`plan::load`] (dsl: parse, validate, expand) → [`keys`] (a key tree
//! and blake3 key per instance, inputs first) → [`plan::plan`] (state and reasons from the
//! store) → [`exec::run`] (run lock, re-plan, execute, publish). Everything takes a [`Kinds`]
//! (registry + stage implementations) so tests can run on kinds of their own.

pub mod cmd;
mod device;
pub mod diff;
pub mod exec;
pub mod keys;
pub mod nodelog;
pub mod plan;
pub mod progress;
pub mod report;

use recipes::Stage;
use std::collections::HashMap;
use std::sync::Arc;

/// The node kinds a run can use: the DSL registry and the implementation of each kind.
#[derive(Clone)]
pub struct Kinds {
    pub registry: dsl::Registry,
    stages: HashMap<String, Arc<dyn Stage>>,
}

impl Kinds {
    /// Kinds from stage implementations (the registry is built from their schemas).
    pub fn new(stages: Vec<Box<dyn Stage>>) -> Kinds {
        let mut registry = dsl::Registry::new();
        let mut map = HashMap::new();
        for s in stages {
            let schema = s.schema();
            map.insert(schema.name.to_string(), Arc::from(s));
            registry.register(schema);
        }
        Kinds {
            registry,
            stages: map,
        }
    }
    /// Every kind temper ships ([`recipes::stages`]).
    pub fn builtin() -> Kinds {
        Kinds::new(recipes::stages())
    }
    pub fn stage(&self, kind: &str) -> Option<Arc<dyn Stage>> {
        self.stages.get(kind).cloned()
    }
}
