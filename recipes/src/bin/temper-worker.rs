//! `temper-worker [JOB]`: runs node jobs for `temper run` (jobs on stdin, one JSON line each,
//! served one at a time) or the one job in the file `JOB`; events go to stdout as JSON lines.
//! Everything lives in `recipes::worker`.
fn main() -> std::process::ExitCode {
    recipes::worker::main()
}
