//! The `temper` command line: global options and one file per subcommand, each holding its
//! clap arguments and a `run` that calls into the library and returns the exit code
//! (0 success, 1 failure, 2 recipe or usage error).

pub mod cancel;
pub mod check;
pub mod export;
pub mod gc;
pub mod kinds;
pub mod ls;
pub mod pin;
pub mod plan;
pub mod report;
pub mod results;
pub mod run;
pub mod show;
pub mod status;
pub mod unpin;
pub mod verify;
pub mod why;
pub mod worker;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// temper: run LLM post-training recipes with cached, resumable, explained steps.
#[derive(Parser, Debug)]
#[command(name = "temper", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand accepts.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Store directory.
    #[arg(long, global = true, env = "TEMPER_STORE", default_value = ".temper")]
    pub store: PathBuf,
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

impl Global {
    pub fn verbosity(&self) -> i8 {
        if self.quiet {
            -1
        } else {
            self.verbose.min(3) as i8
        }
    }
    /// Opens (creating) the store.
    pub fn open_store(&self) -> Result<store::Store> {
        store::Store::open(&self.store)
            .with_context(|| format!("opening the store at {}", self.store.display()))
    }
}

/// The recipe and `--set` overrides shared by recipe commands.
#[derive(Args, Debug, Clone)]
pub struct RecipeArgs {
    /// The recipe file (.kdl).
    pub recipe: PathBuf,
    /// Override a parameter: `node.param=value` (same grammar as in the file); repeatable.
    #[arg(long = "set", value_name = "NODE.PARAM=VALUE")]
    pub set: Vec<String>,
    /// Refuse a sweep of more variants than N (at most 1,000,000; the limit on instances
    /// scales with it).
    #[arg(long, value_name = "N", default_value_t = dsl::limits::DEFAULT_MAX_VARIANTS)]
    pub max_variants: usize,
    /// The recipe is untrusted (CI on a pull request): refuse every include and path outside
    /// its repository (nearest directory above it with a `.git`), so nothing outside is read,
    /// listed or hashed.
    #[arg(long)]
    pub untrusted: bool,
    /// Check `device "cuda:N"` and CUDA nodes' `ranks` against N CUDA devices instead of this
    /// machine's (e.g. when checking on a login node a recipe that will run on GPU nodes).
    #[arg(long, value_name = "N")]
    pub cuda_devices: Option<usize>,
    /// Check CPU nodes' `ranks` against N cores instead of this machine's.
    #[arg(long, value_name = "N")]
    pub cpu_cores: Option<usize>,
    /// Check training nodes' estimated memory per rank against CUDA devices of GIB GiB each
    /// instead of this machine's (`plan` shows the estimates either way).
    #[arg(long, value_name = "GIB")]
    pub cuda_memory: Option<f64>,
}

impl RecipeArgs {
    /// Loads the recipe to run it here (`check`, `plan`, `run`): `device` values and `ranks`
    /// are checked against this machine's CUDA devices and CPU cores (or `--cuda-devices`,
    /// `--cpu-cores`), so a `cuda:9` typo or more ranks than the machine holds is a located
    /// recipe error, not a failed run. The recipe's warnings go to stderr.
    pub fn load(&self, kinds: &crate::Kinds) -> Result<crate::plan::Loaded> {
        let cuda = self
            .cuda_devices
            .unwrap_or_else(crate::device::cuda_devices);
        let cores = self.cpu_cores.unwrap_or_else(crate::device::cpu_cores);
        let memory = self
            .cuda_memory_mib()
            .or_else(crate::device::cuda_memory_mib);
        let loaded = self.load_with(kinds, (Some(cuda), Some(cores)), memory)?;
        eprint!(
            "{}",
            dsl::Diagnostics::render_warnings(&loaded.recipe.warnings)
        );
        Ok(loaded)
    }
    /// Loads the recipe to inspect what was built (`why`, `results`, `export`, `pin`) or to run
    /// it elsewhere (Slurm): devices are checked for syntax only, so results of a GPU run can
    /// be read on any machine.
    pub fn load_to_inspect(&self, kinds: &crate::Kinds) -> Result<crate::plan::Loaded> {
        self.load_with(
            kinds,
            (self.cuda_devices, self.cpu_cores),
            self.cuda_memory_mib(),
        )
    }
    /// `--cuda-memory` in MiB.
    fn cuda_memory_mib(&self) -> Option<u64> {
        self.cuda_memory
            .filter(|g| g.is_finite() && *g > 0.0)
            .map(|g| (g * 1024.0) as u64)
    }
    fn load_with(
        &self,
        kinds: &crate::Kinds,
        (cuda, cores): (Option<usize>, Option<usize>),
        cuda_memory_mib: Option<u64>,
    ) -> Result<crate::plan::Loaded> {
        let opts = dsl::LoadOptions {
            untrusted: self.untrusted,
            cuda_devices: cuda,
            cpu_cores: cores,
            cuda_memory_mib,
            ..dsl::LoadOptions::default().with_max_variants(self.max_variants)
        };
        crate::plan::load_with(&self.recipe, &kinds.registry, &self.set, &opts)
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Parse, validate and expand a recipe.
    Check(check::CheckArgs),
    /// Show what a run would do and why.
    Plan(plan::PlanArgs),
    /// Run a recipe.
    Run(run::RunArgs),
    /// What changed for a node since it was last built.
    Why(why::WhyArgs),
    /// The current or last run (and the last Slurm submission, job by job).
    Status(status::StatusArgs),
    /// Stop the Slurm jobs a recipe submitted (all, or some nodes and their dependents).
    Cancel(cancel::CancelArgs),
    /// One row per sweep variant: swept values and final metrics.
    Results(results::ResultsArgs),
    /// A node's record, artifact, summary and log.
    Show(show::ShowArgs),
    /// One self-contained HTML page: the DAG, curves, results and eval tables.
    Report(report::ReportArgs),
    /// Every finished artifact in the store.
    Ls(ls::LsArgs),
    /// Copy a node's artifact out of the store.
    Export(export::ExportArgs),
    /// Delete artifacts not reachable from the named recipes or pins.
    Gc(gc::GcArgs),
    /// Keep a recipe's artifacts from gc under a name.
    Pin(pin::PinArgs),
    /// Remove a pin.
    Unpin(unpin::UnpinArgs),
    /// Re-hash every artifact against its manifest.
    Verify(verify::VerifyArgs),
    /// The node kinds with their parameters.
    Kinds(kinds::KindsArgs),
    /// Run one job file against its store and publish it (what `temper run`'s workers do).
    #[command(hide = true)]
    Worker(worker::WorkerArgs),
}

/// Runs the parsed command line.
pub fn dispatch(cli: Cli) -> Result<ExitCode> {
    let g = cli.global;
    match cli.command {
        Command::Check(a) => check::run(&g, a),
        Command::Plan(a) => plan::run(&g, a),
        Command::Run(a) => run::run(&g, a),
        Command::Why(a) => why::run(&g, a),
        Command::Status(a) => status::run(&g, a),
        Command::Cancel(a) => cancel::run(&g, a),
        Command::Results(a) => results::run(&g, a),
        Command::Show(a) => show::run(&g, a),
        Command::Report(a) => report::run(&g, a),
        Command::Ls(a) => ls::run(&g, a),
        Command::Export(a) => export::run(&g, a),
        Command::Gc(a) => gc::run(&g, a),
        Command::Pin(a) => pin::run(&g, a),
        Command::Unpin(a) => unpin::run(&g, a),
        Command::Verify(a) => verify::run(&g, a),
        Command::Kinds(a) => kinds::run(&g, a),
        Command::Worker(a) => worker::run(&g, a),
    }
}

pub use crate::text::{human_bytes, human_time};
