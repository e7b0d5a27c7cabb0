//! temper's runner: turns a validated recipe into a plan (petgraph), computes Merkle keys,
//! explains what will run and why, schedules nodes on devices with checkpoints and resume,
//! and reports progress. Holds the `temper` binary's subcommands, one file each in `cmd/`.
//!
//! The path of a recipe: [`plan::load`] (dsl: parse, validate, expand) → [`keys`] (a key tree
//! and blake3 key per instance, inputs first) → [`plan::plan`] (state and reasons from the
//! store) → [`exec::run`] (run lock, re-plan, execute; workers run the stages and publish).
//! Everything takes a [`Kinds`] (registry + how to launch workers) so tests can run kinds of
//! their own on in-process workers (`recipes::worker::InProcess`).

pub mod assemble;
pub mod cmd;
pub mod damage;
mod device;
pub mod diff;
pub mod exec;
pub mod html;
pub mod keys;
pub mod launch;
pub mod lineage;
pub mod nodelog;
mod only;
pub mod plan;
mod pool;
pub mod progress;
pub mod reason;
pub mod report;
pub mod select;
pub mod slurm;
pub mod target;
pub mod text;

use kinds::job::Launcher;
use std::sync::Arc;

/// The node kinds a run can use: the DSL registry, and how to launch the workers that run them.
#[derive(Clone)]
pub struct Kinds {
    pub registry: dsl::Registry,
    pub launcher: Arc<dyn Launcher>,
}

impl Kinds {
    /// Kinds declared by `registry`, run by workers from `launcher`.
    pub fn new(registry: dsl::Registry, launcher: Arc<dyn Launcher>) -> Kinds {
        Kinds { registry, launcher }
    }
    /// Every kind temper ships, run in `temper-worker` processes.
    pub fn builtin() -> Kinds {
        Kinds::new(kinds::registry(), Arc::new(launch::Processes::default()))
    }
}
