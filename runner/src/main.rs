//! The `temper` binary: parses the command line, sets up logging and dispatches to the
//! subcommands in `runner::cmd`. Recipe diagnostics go to stderr with exit code 2; any other
//! error is printed as an anyhow chain with exit code 1. A closed stdout or stderr (`temper
//! kinds | head -1`) ends a command quietly by SIGPIPE, as for any Unix filter; `temper run`
//! instead keeps running to the end and drops what it cannot print.

use clap::Parser;
use runner::cmd::{dispatch, Cli};
use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, runner::cmd::Command::Run(_)) {
        restore_sigpipe();
    }
    let bars = matches!(cli.command, runner::cmd::Command::Run(_)) && !cli.global.quiet;
    runner::progress::init(cli.global.verbosity(), bars);
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            if let Some(r) = e.downcast_ref::<runner::plan::RecipeError>() {
                let nl = if r.0.ends_with('\n') { "" } else { "\n" };
                let _ = write!(std::io::stderr(), "{}{nl}", r.0);
                return ExitCode::from(2);
            }
            if let Some(u) = e.downcast_ref::<runner::text::UsageError>() {
                let _ = writeln!(std::io::stderr(), "error: {u}");
                return ExitCode::from(2);
            }
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Rust ignores SIGPIPE, which turns a write to a closed pipe into a `println!` panic. Restore
/// the default disposition so the process ends quietly (status 141 in a shell) instead. Not
/// for `run`: a closed pipe must not kill training; its few prints ignore write errors and
/// tracing's writers drop them.
fn restore_sigpipe() {
    // SAFETY: called first thing in `main`, before any thread exists; SIG_DFL is a valid
    // disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
