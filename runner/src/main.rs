//! The `temper` binary: parses the command line, sets up logging and dispatches to the
//! subcommands in `runner::cmd`. Recipe diagnostics go to stderr with exit code 2; any other
//! error is printed as an anyhow chain with exit code 1.

use clap::Parser;
use runner::cmd::{dispatch, Cli};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let bars = matches!(cli.command, runner::cmd::Command::Run(_)) && !cli.global.quiet;
    runner::progress::init(cli.global.verbosity(), bars);
    // Reference libtorch so the binary links it (and, through build.rs, libtorch_cuda).
    tracing::debug!(cuda = tch::Cuda::is_available(), "libtorch loaded");
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            if let Some(r) = e.downcast_ref::<runner::plan::RecipeError>() {
                eprint!("{}", r.0);
                if !r.0.ends_with('\n') {
                    eprintln!();
                }
                return ExitCode::from(2);
            }
            if let Some(u) = e.downcast_ref::<runner::exec::UsageError>() {
                eprintln!("error: {u}");
                return ExitCode::from(2);
            }
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
