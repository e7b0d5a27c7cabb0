//! The batch script of one node's job.
//!
//! Slurm delivers the warning signal (`--signal=B:SIG@lead`) to the batch shell only, and a
//! shell runs its traps only once its foreground child has exited. So the script starts
//! `temper worker --slurm JOB` in the background, forwards the warning signal and `TERM` to
//! it, and waits until it really ended (a `wait` cut short by a trap is repeated). The worker
//! checkpoints and, after a warning, requeues the job itself. Before anything, the script
//! checks that the job file is readable here: a node that does not see the store fails with a
//! message saying so instead of a confusing error later.

use std::path::Path;

/// Quotes `s` for a POSIX shell.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The script of a node (`node`, key `key`) whose job file is `job`, run by `temper`.
pub fn batch_script(
    node: &str,
    key: &str,
    job: &Path,
    temper: &Path,
    store: &Path,
    signal: &str,
) -> String {
    let job = quote(&job.to_string_lossy());
    let temper_q = quote(&temper.to_string_lossy());
    let store = store.to_string_lossy();
    let node_comment = node.replace('\n', " ");
    format!(
        r#"#!/bin/bash
# temper: node {node_comment} (key {key}), submitted by `temper run --executor slurm`.
job={job}
temper={temper_q}
if [ ! -r "$job" ]; then
  echo "temper: the store {store} is not visible on $(hostname): it must be on a file system every node of the partition sees (see README, Running on a Slurm cluster)" >&2
  exit 2
fi
if [ ! -x "$temper" ]; then
  echo "temper: $temper is not executable on $(hostname): install temper on a file system every node sees" >&2
  exit 2
fi
if [ -n "${{SLURM_CPUS_PER_TASK:-}}" ]; then export SRUN_CPUS_PER_TASK="$SLURM_CPUS_PER_TASK"; fi
"$temper" worker --slurm "$job" &
pid=$!
trap 'kill -s {signal} "$pid" 2>/dev/null' {signal}
trap 'kill -s TERM "$pid" 2>/dev/null' TERM
rc=0
while :; do
  wait "$pid"; rc=$?
  if ! kill -0 "$pid" 2>/dev/null; then
    wait "$pid" 2>/dev/null; r=$?
    if [ "$r" -ne 127 ]; then rc=$r; fi
    break
  fi
done
exit "$rc"
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_quotes_and_spaces() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn the_script_forwards_the_warning_signal_and_waits_for_the_worker() {
        let s = batch_script(
            "tuned[lr=0.1]",
            "abc",
            Path::new("/s/work/abc/job.json"),
            Path::new("/opt/temper"),
            Path::new("/s"),
            "USR2",
        );
        assert!(s.starts_with("#!/bin/bash\n"));
        assert!(s.contains("\"$temper\" worker --slurm \"$job\" &"));
        assert!(s.contains("trap 'kill -s USR2 \"$pid\" 2>/dev/null' USR2"));
        assert!(s.contains("job='/s/work/abc/job.json'"));
    }
}
