//! Slurm's command line, run and parsed: `sbatch --parsable`, one batched `squeue` per poll,
//! `scontrol` (partitions, host lists, requeue, release) and `scancel`. Every call runs with
//! the submitting shell's `SLURM_*`/`SBATCH_*`/`SRUN_*` variables removed (a `temper run`
//! started inside an allocation must not hand that allocation's settings to its jobs), except
//! `SLURM_CONF`, which names the cluster.

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// Environment variables of the submitting process never passed to Slurm's commands.
fn inherited_slurm_var(name: &str) -> bool {
    (name.starts_with("SLURM_") && name != "SLURM_CONF")
        || name.starts_with("SBATCH_")
        || name.starts_with("SRUN_")
        || name.starts_with("SALLOC_")
}

/// A Slurm command with a clean environment.
pub fn command(program: &str) -> Command {
    let mut c = Command::new(program);
    for (k, _) in std::env::vars_os() {
        if let Some(k) = k.to_str() {
            if inherited_slurm_var(k) {
                c.env_remove(k);
            }
        }
    }
    c.stdin(Stdio::null());
    c
}

/// Runs `program args`, returning stdout; a non-zero exit is an error quoting stderr.
pub fn run(program: &str, args: &[String]) -> Result<String> {
    let out = output(program, args, None)?;
    if !out.status.success() {
        bail!("{}", failure(program, args, &out));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn output(program: &str, args: &[String], stdin: Option<&str>) -> Result<Output> {
    output_of(command(program), program, args, stdin)
}

fn output_of(
    mut c: Command,
    program: &str,
    args: &[String],
    stdin: Option<&str>,
) -> Result<Output> {
    c.args(args);
    if stdin.is_some() {
        c.stdin(Stdio::piped());
    }
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c
        .spawn()
        .with_context(|| format!("running `{program}` (is Slurm installed and on PATH?)"))?;
    if let Some(text) = stdin {
        use std::io::Write;
        let mut w = child.stdin.take().expect("piped stdin");
        w.write_all(text.as_bytes())
            .with_context(|| format!("writing to `{program}`"))?;
    }
    child
        .wait_with_output()
        .with_context(|| format!("waiting for `{program}`"))
}

fn failure(program: &str, args: &[String], out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    let err = err.trim();
    format!(
        "`{program} {}` failed ({}){}",
        args.join(" "),
        out.status,
        if err.is_empty() {
            String::new()
        } else {
            format!(": {err}")
        }
    )
}

/// The first `program` on `PATH`.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Whether an `sbatch` error is worth retrying: a submit limit (`MaxSubmitJobs`), a busy or
/// unreachable controller.
pub fn transient(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    [
        "maxsubmitjob",
        "max_submit",
        "submit limit",
        "resource temporarily unavailable",
        "socket timed out",
        "slurm_persist_conn",
        "unable to contact slurm controller",
        "connection refused",
        "try again",
    ]
    .iter()
    .any(|w| s.contains(w))
}

/// `sbatch`, killed when the thread that started it ends: a front killed while it submits
/// leaves no `sbatch` behind that would create a job after the next run looked for it.
fn sbatch_command() -> Command {
    use std::os::unix::process::CommandExt;
    let mut c = command("sbatch");
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) in the forked child before
    // exec. A parent that died before prctl took effect is caught by its pid changing.
    unsafe {
        c.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    c
}

/// Submits `script` (its text goes on sbatch's stdin, so the script need not be readable on
/// the compute node) with `args`; returns the job id. Transient failures are retried with
/// back-off for up to `patience`; before each retry `already` is asked for a job the failed
/// call may have created anyway (a controller that timed out after queueing it), and its id is
/// returned instead of submitting a second job.
pub fn sbatch(
    args: &[String],
    script: &str,
    patience: Duration,
    already: &dyn Fn() -> Option<String>,
) -> Result<String> {
    let mut args = args.to_vec();
    args.insert(0, "--parsable".into());
    let start = std::time::Instant::now();
    let mut pause = Duration::from_millis(500);
    loop {
        let out = output_of(sbatch_command(), "sbatch", &args, Some(script))?;
        if out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout);
            // `--parsable` prints `id` or `id;cluster`.
            let id = text
                .trim()
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
            if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
                bail!("sbatch printed no job id: {:?}", text.trim());
            }
            return Ok(id);
        }
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        if !transient(&err) || start.elapsed() + pause > patience {
            bail!("{}", failure("sbatch", &args, &out));
        }
        tracing::warn!(
            "sbatch: {} (retrying in {:.1} s)",
            err.trim(),
            pause.as_secs_f64()
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(30));
        if let Some(id) = already() {
            return Ok(id);
        }
    }
}

/// What `squeue` says about one job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueState {
    /// `PENDING`, `RUNNING`, `COMPLETED`, `FAILED`, `CANCELLED`, `TIMEOUT`, …
    pub state: String,
    /// `None`, `Dependency`, `DependencyNeverSatisfied`, `BeginTime`, `Resources`, …
    pub reason: String,
    /// The node list (empty while pending).
    pub nodes: String,
    /// The job's name (temper checks it, so a job id Slurm reused is not taken for its job).
    pub name: String,
}

impl QueueState {
    /// Still in the queue or running (Slurm will do something more with it).
    pub fn active(&self) -> bool {
        matches!(
            self.state.as_str(),
            "PENDING"
                | "RUNNING"
                | "CONFIGURING"
                | "COMPLETING"
                | "SUSPENDED"
                | "REQUEUED"
                | "REQUEUE_HOLD"
                | "REQUEUE_FED"
                | "RESIZING"
                | "SIGNALING"
                | "STAGE_OUT"
                | "PREEMPTED"
                | "STOPPED"
                | "RESV_DEL_HOLD"
        )
    }
    /// Pending on a dependency that can never be satisfied (an input's job failed).
    pub fn never_runs(&self) -> bool {
        self.state == "PENDING" && self.reason.starts_with("DependencyNeverSatisfied")
    }
}

/// One `squeue` call for every job of this user (all states, so finished jobs Slurm still
/// remembers come back too); the jobs of `ids` found, by id. Jobs Slurm has purged are absent.
pub fn squeue(ids: &[String]) -> Result<HashMap<String, QueueState>> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let wanted: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
    Ok(squeue_all()?
        .into_iter()
        .filter(|(id, _)| wanted.contains(id.as_str()))
        .collect())
}

/// One `squeue` call: every job of this user Slurm lists, in all states, with its id.
pub fn squeue_all() -> Result<Vec<(String, QueueState)>> {
    let user = whoami();
    let args: Vec<String> = [
        "--noheader",
        "--states=all",
        "--array",
        "--user",
        &user,
        "--format=%i|%T|%N|%j|%r",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let text = run("squeue", &args)?;
    Ok(parse_squeue(&text))
}

/// Parses `%i|%T|%N|%j|%r` lines (the reason last: it is free text; temper's job names hold
/// no `|`).
pub fn parse_squeue(text: &str) -> Vec<(String, QueueState)> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.trim().splitn(5, '|');
            let id = f.next()?.trim().to_string();
            let state = f.next()?.trim().to_string();
            let nodes = f.next()?.trim().to_string();
            let name = f.next().unwrap_or("").trim().to_string();
            let reason = f.next().unwrap_or("").trim().to_string();
            if id.is_empty() || state.is_empty() {
                return None;
            }
            // `(null)` node lists and reasons are empty.
            let clean = |s: String| if s == "(null)" { String::new() } else { s };
            Some((
                id,
                QueueState {
                    state,
                    reason: clean(reason),
                    nodes: clean(nodes),
                    name,
                },
            ))
        })
        .collect()
}

/// The user name Slurm knows this process by.
pub fn whoami() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| {
            Command::new("id")
                .arg("-un")
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        })
        .unwrap_or_else(|| "root".into())
}

/// `scancel` the jobs (one call); jobs already gone are not an error.
pub fn scancel(ids: &[String], extra: &[&str]) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    args.extend(ids.iter().cloned());
    let out = output("scancel", &args, None)?;
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && !err.to_ascii_lowercase().contains("invalid job id") {
        bail!("{}", failure("scancel", &args, &out));
    }
    Ok(())
}

/// `scontrol show partition -o NAME` as `key=value` pairs; `None` when Slurm does not know it.
pub fn partition(name: &str) -> Result<Option<HashMap<String, String>>> {
    let args = vec!["show".into(), "partition".into(), "-o".into(), name.into()];
    let out = output("scontrol", &args, None)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || text.trim().is_empty() {
        // `Partition NAME not found` (on stdout or stderr, by version).
        let said = format!("{text} {err}").to_ascii_lowercase();
        if said.contains("not found") || said.contains("invalid partition") {
            return Ok(None);
        }
        bail!("{}", failure("scontrol", &args, &out));
    }
    Ok(Some(pairs(&text)))
}

/// `key=value key=value …` (one-liner `scontrol` output).
pub fn pairs(text: &str) -> HashMap<String, String> {
    text.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Every partition's name (`*` marks the default one, which is returned first, unmarked).
pub fn partitions() -> Result<Vec<String>> {
    let text = run("sinfo", &["--noheader".into(), "--format=%P".into()])?;
    let mut v: Vec<String> = Vec::new();
    for l in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let name = l.trim_end_matches('*').to_string();
        if v.contains(&name) {
            continue;
        }
        if l.ends_with('*') {
            v.insert(0, name);
        } else {
            v.push(name);
        }
    }
    Ok(v)
}

/// The default partition (the one `sinfo` marks with `*`).
pub fn default_partition() -> Result<Option<String>> {
    let text = run("sinfo", &["--noheader".into(), "--format=%P".into()])?;
    Ok(text
        .lines()
        .map(str::trim)
        .find(|l| l.ends_with('*'))
        .map(|l| l.trim_end_matches('*').to_string()))
}

/// `scontrol show hostnames LIST`: a host list (`n[01-03],gpu7`) expanded.
pub fn hostnames(list: &str) -> Result<Vec<String>> {
    if list.is_empty() || list == "(null)" {
        return Ok(Vec::new());
    }
    let text = run(
        "scontrol",
        &["show".into(), "hostnames".into(), list.into()],
    )?;
    Ok(text.split_whitespace().map(String::from).collect())
}

/// `scontrol requeue ID`.
pub fn requeue(id: &str) -> Result<()> {
    run("scontrol", &["requeue".into(), id.into()]).map(|_| ())
}

/// Lets a requeued job start now instead of after Slurm's requeue delay (about two minutes);
/// the update also wakes the scheduler. Call it a few seconds after the requeue, not at once:
/// slurmd refuses to launch a job whose new credential was made in the same second as the old
/// one was revoked ("Job credential revoked"), and the job fails.
pub fn start_now(id: &str) -> Result<()> {
    run(
        "scontrol",
        &[
            "update".into(),
            format!("JobId={id}"),
            "StartTime=now".into(),
        ],
    )
    .map(|_| ())
}

/// `scontrol show job ID` as pairs (`None` once Slurm has purged it).
pub fn show_job(id: &str) -> Result<Option<HashMap<String, String>>> {
    let args = vec!["show".into(), "job".into(), "-o".into(), id.into()];
    let out = output("scontrol", &args, None)?;
    if !out.status.success() {
        return Ok(None);
    }
    Ok(Some(pairs(&String::from_utf8_lossy(&out.stdout))))
}

/// Seconds left before job `id` hits its time limit (`None`: no limit, or unknown).
pub fn time_left(id: &str) -> Option<u64> {
    let text = run(
        "squeue",
        &[
            "--noheader".into(),
            "--jobs".into(),
            id.into(),
            "--format=%L".into(),
        ],
    )
    .ok()?;
    parse_duration(text.trim())
}

/// Slurm's durations: `MM`, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM`, `D-HH:MM:SS`; `None` for
/// `UNLIMITED`, `NOT_SET`, `INVALID`.
pub fn parse_duration(s: &str) -> Option<u64> {
    let s = s.trim();
    let (days, rest) = match s.split_once('-') {
        Some((d, r)) => (d.parse::<u64>().ok()?, r),
        None => (0, s),
    };
    let parts: Vec<u64> = rest
        .split(':')
        .map(|p| p.parse::<u64>())
        .collect::<std::result::Result<_, _>>()
        .ok()?;
    let secs = match (s.contains('-'), parts.as_slice()) {
        (false, [m]) => m * 60,
        (false, [m, sec]) => m * 60 + sec,
        (_, [h, m, sec]) => h * 3600 + m * 60 + sec,
        (true, [h]) => h * 3600,
        (true, [h, m]) => h * 3600 + m * 60,
        _ => return None,
    };
    Some(days * 86400 + secs)
}

/// A value of `scontrol show config` (`MaxArraySize`, `KillWait`, …).
pub fn config_value(name: &str) -> Result<Option<String>> {
    let text = run("scontrol", &["show".into(), "config".into()])?;
    Ok(text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == name).then(|| v.trim().to_string())
    }))
}

/// An error unless `sbatch`, `squeue`, `scontrol` and `scancel` are on `PATH`.
pub fn require_tools() -> Result<()> {
    let missing: Vec<&str> = ["sbatch", "squeue", "scontrol", "scancel", "sinfo"]
        .into_iter()
        .filter(|t| which(t).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(crate::text::UsageError(format!(
            "--executor slurm: {} not found on PATH\n  hint: run temper on a Slurm login node, \
             or add Slurm's bin directory to PATH (a one-machine test cluster: \
             scripts/slurm-up.sh)",
            missing
                .iter()
                .map(|t| format!("`{t}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squeue_lines_parse_with_free_text_reasons() {
        let text = "12|PENDING|(null)|temper:r:a|Dependency\n13|RUNNING|node07|b|None\n\
                    14|PENDING||c|DependencyNeverSatisfied\n15|FAILED|n[1-2]|d|NonZeroExitCode|x\n";
        let v = parse_squeue(text);
        assert_eq!(v.len(), 4);
        assert_eq!(v[0].1.nodes, "");
        assert_eq!(v[0].1.name, "temper:r:a");
        assert_eq!(v[1].1.nodes, "node07");
        assert!(v[1].1.active() && !v[3].1.active());
        assert!(v[2].1.never_runs());
        assert_eq!(v[3].1.reason, "NonZeroExitCode|x");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5"), Some(300));
        assert_eq!(parse_duration("4:58"), Some(298));
        assert_eq!(parse_duration("1:00:00"), Some(3600));
        assert_eq!(parse_duration("2-03"), Some(2 * 86400 + 3 * 3600));
        assert_eq!(parse_duration("1-00:00:10"), Some(86410));
        assert_eq!(parse_duration("UNLIMITED"), None);
    }

    #[test]
    fn inherited_variables() {
        assert!(inherited_slurm_var("SLURM_JOB_ID"));
        assert!(inherited_slurm_var("SBATCH_PARTITION"));
        assert!(!inherited_slurm_var("SLURM_CONF"));
        assert!(!inherited_slurm_var("PATH"));
        assert!(transient("sbatch: error: QOSMaxSubmitJobPerUserLimit"));
        assert!(!transient(
            "sbatch: error: invalid partition specified: nope"
        ));
    }
}
