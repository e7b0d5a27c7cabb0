//! `temper run recipe.kdl [--only NODE…] [--keep-going] [--jobs N] [--no-wait]`.
use super::{Global, RecipeArgs};
use crate::exec::{Control, Outcome, RunOptions};
use anyhow::Result;
use clap::Args;
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
            eprintln!("stopping after checkpoint (Ctrl-C again to abort)");
        } else {
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
    for (id, key, o) in &report.outcomes {
        match o {
            Outcome::Failed(_) | Outcome::Skipped(_) | Outcome::Cancelled | Outcome::NotStarted => {
                eprintln!("{:<12} {id} {}", &key[..12.min(key.len())], o.word())
            }
            _ => println!("{:<12} {id} {}", &key[..12.min(key.len())], o.word()),
        }
    }
    println!("run {}: {}", report.run_id, report.summary());
    Ok(if report.interrupted {
        ExitCode::from(130)
    } else if report.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
