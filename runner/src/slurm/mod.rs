//! The Slurm executor: the same plan, keys and store as a local run, with each uncached
//! instance run as one Slurm job instead of in a local worker.
//!
//! The executor boundary: the front (`temper run --executor slurm`, [`submit`]) plans under the
//! run lock and submits; it holds nothing while jobs run. A job runs `temper worker --slurm
//! JOB` ([`alloc`]), which records its attempt, runs a `temper-worker` and publishes into the
//! shared store exactly as a local worker does. What was submitted is in the store's ledger
//! ([`ledger`]), so `temper status`, `plan`, `cancel` and a later `run` re-attach from any
//! process ([`observe`]); a job whose id a killed front never wrote is found by its name
//! ([`adopt`]). Cluster settings ([`settings`]) never enter a key. Slurm is used
//! only through its command line ([`cli`]).

pub mod adopt;
pub mod alloc;
pub mod cli;
pub mod ledger;
pub mod observe;
pub mod preflight;
pub mod script;
pub mod settings;
pub mod submit;

pub use ledger::{Ledger, RunFile, Submission};
pub use observe::{Phase, View};
pub use submit::{submit, Sent, SubmitOptions, Submitted};
