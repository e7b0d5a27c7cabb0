//! `temper run recipe.kdl [--only NODE…] [--keep-going] [--jobs N] [--no-wait]`.
use super::{Global, RecipeArgs};
use crate::exec::{Control, Outcome, RunOptions};
use anyhow::Result;
use clap::Args;
use std::io::Write;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub recipe: RecipeArgs,
    /// Run only these nodes (declared names or instance ids) and their uncached inputs.
    #[arg(long, num_args = 1.., value_name = "NODE")]
    pub only: Vec<String>,
    /// After a failure, keep running the branches that do not depend on it.
    #[arg(long)]
    pub keep_going: bool,
    /// Nodes to run at once.
    #[arg(long, short = 'j', default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: u16,
    /// Fail at once if another run holds the store instead of waiting.
    #[arg(long)]
    pub no_wait: bool,
}

pub fn run(g: &Global, a: RunArgs) -> Result<ExitCode> {
    let kinds = crate::Kinds::builtin();
    let loaded = a.recipe.load(&kinds)?;
    let store = g.open_store()?;
    let control = Control::new();
    let c = control.clone();
    // A second handler cannot be installed in one process; ignore that case (tests).
    let _ = ctrlc::set_handler(move || {
        if c.interrupt() == 1 {
            let _ = writeln!(
                std::io::stderr(),
                "stopping after checkpoint (Ctrl-C again to abort)"
            );
        } else {
            // The workers run in process groups of their own: end them, then the front.
            c.kill_all();
            std::process::exit(130);
        }
    });
    let opts = RunOptions {
        only: a.only,
        keep_going: a.keep_going,
        jobs: a.jobs as usize,
        wait: !a.no_wait,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let report = crate::exec::run(&store, &kinds, loaded, &opts, &control)?;
    // Writes ignore errors: a closed stdout/stderr must not turn a finished run into a panic
    // (SIGPIPE stays ignored for `run`, see main.rs).
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    for (id, key, o) in &report.outcomes {
        let line = format!("{:<12} {id} {}", &key[..12.min(key.len())], o.word());
        let _ = match o {
            Outcome::Failed(_) | Outcome::Skipped(_) | Outcome::Cancelled | Outcome::NotStarted => {
                writeln!(err, "{line}")
            }
            _ => writeln!(out, "{line}"),
        };
    }
    let _ = writeln!(out, "run {}: {}", report.run_id, report.summary());
    Ok(if report.interrupted {
        ExitCode::from(130)
    } else if report.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
