//! `temper run recipe.kdl [--only NODE…] [--keep-going] [--jobs N] [--no-wait]
//! [--executor local|slurm [--wait] [--hold]]`.
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
    /// Where nodes run: here (`local`), or as Slurm jobs (`slurm`: submits and returns).
    #[arg(long, value_enum, default_value_t = Executor::Local)]
    pub executor: Executor,
    /// With `--executor slurm`: follow the jobs until the DAG ends (exit 0 when all are done).
    #[arg(long)]
    pub wait: bool,
    /// With `--executor slurm`: submit the jobs held (`scontrol release ID` starts one).
    #[arg(long)]
    pub hold: bool,
    /// Re-hash every built artifact a node will read before running anything (reads them all;
    /// cheap `stat` checks always run): a damaged one is moved aside and rebuilt.
    #[arg(long)]
    pub verify_inputs: bool,
}

/// Where `temper run` runs nodes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Executor {
    Local,
    Slurm,
}

pub fn run(g: &Global, a: RunArgs) -> Result<ExitCode> {
    let kinds = crate::Kinds::builtin();
    if a.executor == Executor::Slurm {
        return run_slurm(g, a, &kinds);
    }
    if a.wait || a.hold {
        return Err(crate::text::UsageError(
            "--wait and --hold go with --executor slurm (a local run always waits)".into(),
        )
        .into());
    }
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
        verify_inputs: a.verify_inputs,
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

/// `--executor slurm`: submit, print what was sent, and with `--wait` follow the jobs; when some
/// nodes waited for a select's scores, submit again once the jobs are done (the selects resolve).
fn run_slurm(g: &Global, a: RunArgs, kinds: &crate::Kinds) -> Result<ExitCode> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if a.wait {
        let s = stop.clone();
        let _ = ctrlc::set_handler(move || s.store(true, std::sync::atomic::Ordering::SeqCst));
    }
    loop {
        let (done, waiting, skipped) = submit_and_follow(g, &a, kinds, &stop)?;
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(ExitCode::from(130));
        }
        match done {
            _ if skipped > 0 && waiting == 0 => return Ok(ExitCode::from(1)),
            None => return Ok(ExitCode::SUCCESS),
            Some(false) => return Ok(ExitCode::from(1)),
            Some(true) if waiting > 0 => {
                println!("scores built: submitting the {waiting} node(s) that waited for them");
            }
            Some(true) => return Ok(ExitCode::SUCCESS),
        }
    }
}

/// One submission, followed to its end with `--wait`: (whether every job ended well — `None`
/// without `--wait` —, how many nodes wait for a select's scores, how many were not submitted).
fn submit_and_follow(
    g: &Global,
    a: &RunArgs,
    kinds: &crate::Kinds,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<(Option<bool>, usize, usize)> {
    // GPUs are on the compute nodes, not here: `device "cuda:N"` is checked for syntax only.
    let loaded = a.recipe.load_to_inspect(kinds)?;
    let store = g.open_store()?;
    let opts = crate::slurm::SubmitOptions {
        only: a.only.clone(),
        lock_wait: !a.no_wait,
        hold: a.hold,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        verify_inputs: a.verify_inputs,
    };
    let sent = crate::slurm::submit(&store, kinds, loaded, &opts)?;
    let count = |f: &dyn Fn(&crate::slurm::Sent) -> bool| {
        sent.nodes.iter().filter(|(_, _, s)| f(s)).count()
    };
    use crate::slurm::Sent;
    let submitted = count(&|s| matches!(s, Sent::Submitted(_)));
    let queued = count(&|s| matches!(s, Sent::Queued(_)));
    let waiting = count(&|s| matches!(s, Sent::Waiting(_)));
    let skipped = count(&|s| matches!(s, Sent::Skipped(_)));
    let cached = count(&|s| matches!(s, Sent::Cached));
    let mut line = format!(
        "run {}: {submitted} submitted, {queued} already queued, {cached} cached",
        sent.run.run_id
    );
    if waiting > 0 {
        line += &format!(", {waiting} waiting for scores");
    }
    if skipped > 0 {
        line += &format!(", {skipped} not submitted");
    }
    println!("{line}");
    if !a.wait {
        if submitted + queued > 0 {
            println!(
                "follow with `temper status` (or rerun with --wait); stop with `temper cancel`"
            );
        }
        if waiting > 0 {
            println!(
                "once the scores are built, run this again to submit the nodes that wait for them"
            );
        }
        return Ok((None, waiting, skipped));
    }
    let done = crate::slurm::observe::follow(&store, &sent.run, &|| {
        stop.load(std::sync::atomic::Ordering::SeqCst)
    })?;
    if !stop.load(std::sync::atomic::Ordering::SeqCst) {
        println!(
            "run {}: {}",
            sent.run.run_id,
            if done {
                "all done"
            } else {
                "not all done (`temper status` says which)"
            }
        );
    }
    Ok((Some(done), waiting, skipped))
}
