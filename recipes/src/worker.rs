//! The worker: runs node jobs ([`kinds::job::Job`]) one at a time and reports [`Event`]s, in
//! its own process (`temper-worker`, [`main`]) or, for tests, on a thread ([`InProcess`]).
//!
//! Per job: set libtorch's CPU threads (`threads` > 0) and log the count; run the kind's stage
//! with a [`StageCtx`] built from the job (panics become errors); on success publish into the
//! store ([`store::Store::complete`]); then write exactly one [`End`]. The stage's tracing
//! events, filtered by the job's directives, and its progress become `Log`/`Progress` events.
//!
//! A process worker:
//! - dies with its front (Linux `PR_SET_PDEATHSIG`: a `kill -9` of `temper run` leaves no
//!   orphan training into the same work dir);
//! - answers SIGINT/SIGTERM by cancelling the running stage (it checkpoints and stops; the
//!   worker then exits), and a second signal by exiting at once;
//! - keeps stdout for events only: anything else writing to fd 1 (libtorch, a stray print)
//!   goes to stderr.
//!
//! Test hooks: `TEMPER_PAUSE_AT=stage:<id>:<ms>` sleeps before that stage runs;
//! `TEMPER_CRASH_AT=stage:<id>` aborts the worker after it ran (before publishing).

use crate::stage::{CancelToken, Progress, Stage, StageCtx, StageError};
use kinds::job::{self, End, Event, Job, Launcher, WorkerConn, WorkerControl};
use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

/// The event stream: one JSON line per event, written whole and flushed.
#[derive(Clone)]
pub struct Events(Arc<Mutex<Box<dyn Write + Send>>>);

impl Events {
    pub fn new(w: Box<dyn Write + Send>) -> Self {
        Events(Arc::new(Mutex::new(w)))
    }
    /// Writes one event; a closed stream (the front is gone) is ignored.
    pub fn send(&self, e: &Event) {
        let mut line = e.to_line();
        line.push('\n');
        let mut w = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let _ = w.write_all(line.as_bytes()).and_then(|_| w.flush());
    }
}

/// A tracing layer that writes every event it sees as an [`Event::Log`].
pub(crate) struct LogLayer(pub(crate) Events);

impl<S: tracing::Subscriber> Layer<S> for LogLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let meta = event.metadata();
        self.0.send(&Event::Log {
            level: meta.level().as_str().to_string(),
            target: meta.target().to_string(),
            message: job::log_message(event),
        });
    }
}

/// The [`Progress`] a worker hands its stage: progress events.
struct EventProgress(Events);
impl Progress for EventProgress {
    fn set_length(&self, total: u64) {
        self.0
            .send(&Event::Progress(job::Progress::SetLength(total)));
    }
    fn set_position(&self, pos: u64) {
        self.0
            .send(&Event::Progress(job::Progress::SetPosition(pos)));
    }
    fn inc(&self, delta: u64) {
        self.0.send(&Event::Progress(job::Progress::Inc(delta)));
    }
    fn set_message(&self, msg: &str) {
        self.0
            .send(&Event::Progress(job::Progress::SetMessage(msg.to_string())));
    }
}

/// How a worker's log events reach its event stream.
pub(crate) enum Logging {
    /// The process-wide subscriber; its filter is swapped for each job's.
    Global(
        tracing_subscriber::reload::Handle<
            tracing_subscriber::EnvFilter,
            tracing_subscriber::Registry,
        >,
    ),
    /// A subscriber for this thread only, made per job (tests running workers on threads).
    Thread,
}

pub(crate) fn env_filter(directives: &str) -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_new(directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"))
}

/// The stages a worker can run, by kind name.
pub type StageMap = HashMap<String, Arc<dyn Stage>>;

/// Stages by kind name.
pub fn stage_map(stages: Vec<Box<dyn Stage>>) -> StageMap {
    stages
        .into_iter()
        .map(|s| (s.schema().name.to_string(), Arc::from(s)))
        .collect()
}

/// One worker: its stages, its event stream and its cancel token (set by a signal or by the
/// front; once set, the worker ends after reporting the running job).
pub(crate) struct Worker {
    pub(crate) stages: Arc<StageMap>,
    pub(crate) events: Events,
    pub(crate) cancel: CancelToken,
    pub(crate) logging: Logging,
    /// What to call this worker in its log (`worker pid 123`, `worker thread 2`).
    pub(crate) name: String,
    /// The ranks of a data-parallel node this process is one of ([`crate::dist::Solo`] for a
    /// plain worker).
    pub(crate) collective: Arc<dyn crate::dist::Collective>,
}

impl Worker {
    /// Serves the jobs of `jobs` (one JSON line each) until it closes or a job is cancelled.
    /// Returns the last job's end.
    pub(crate) fn serve(&self, jobs: impl BufRead) -> Option<End> {
        let mut last = None;
        for line in jobs.lines() {
            let Ok(line) = line else { break };
            if line.trim().is_empty() {
                continue;
            }
            let end = match serde_json::from_str::<Job>(&line) {
                Ok(job) => self.run(&job),
                Err(e) => End::Error {
                    message: format!("the worker could not read its job: {e}"),
                },
            };
            let stop = end == End::Cancelled;
            self.events.send(&Event::End(end.clone()));
            last = Some(end);
            if stop {
                break;
            }
        }
        last
    }

    /// Runs one job under its log filter.
    fn run(&self, job: &Job) -> End {
        match &self.logging {
            Logging::Global(handle) => {
                let _ = handle.reload(env_filter(&job.log_filter));
                self.run_logged(job)
            }
            Logging::Thread => {
                let sub = tracing_subscriber::registry()
                    .with(env_filter(&job.log_filter))
                    .with(LogLayer(self.events.clone()));
                tracing::subscriber::with_default(sub, || self.run_logged(job))
            }
        }
    }

    fn run_logged(&self, job: &Job) -> End {
        // libtorch's own default, read before any job changed it: `threads 0` on a reused
        // worker means that default again, not the previous job's count.
        static DEFAULT_THREADS: std::sync::OnceLock<i32> = std::sync::OnceLock::new();
        let default = *DEFAULT_THREADS.get_or_init(tch::get_num_threads);
        let want = if job.threads > 0 {
            job.threads as i32
        } else {
            default
        };
        if tch::get_num_threads() != want {
            tch::set_num_threads(want);
        }
        tracing::info!(
            target: job::NODE_LOG_TARGET,
            "{}: {} CPU threads",
            self.name,
            tch::get_num_threads()
        );
        tracing::info!("running {}", job.node);
        let Some(stage) = self.stages.get(&job.kind).cloned() else {
            return End::Error {
                message: format!("kind `{}` has no implementation in this worker", job.kind),
            };
        };
        test_pause(&job.node);
        if let Some((message, hint)) = damaged_input(job) {
            return End::UserError {
                message,
                hint: Some(hint),
            };
        }
        let mut job = job.clone();
        let lead = self.collective.rank() == 0;
        if !lead {
            // Ranks other than 0 write their copy of the output where nothing reads it.
            match scratch_out(&job, self.collective.rank()) {
                Ok(dir) => job.out_dir = dir,
                Err(e) => {
                    return End::Error {
                        message: format!("rank {}: {e:#}", self.collective.rank()),
                    }
                }
            }
        }
        let mut ctx = StageCtx::new(
            job.clone(),
            Arc::new(EventProgress(self.events.clone())),
            self.cancel.clone(),
        );
        ctx.collective = self.collective.clone();
        let result = if self.cancel.is_cancelled() {
            Err(StageError::Cancelled)
        } else {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| stage.run(&ctx)))
                .unwrap_or_else(|p| {
                    let msg = p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".into());
                    Err(StageError::Other(anyhow::anyhow!(
                        "the stage panicked: {msg}"
                    )))
                })
        };
        if std::env::var("TEMPER_CRASH_AT").is_ok_and(|v| v == format!("stage:{}", job.node)) {
            std::process::abort();
        }
        match result {
            Ok(summary) if !lead => {
                let _ = std::fs::remove_dir_all(job.out_dir.parent().unwrap_or(&job.out_dir));
                End::Done { summary }
            }
            Ok(summary) => match publish(&job, summary.clone()) {
                Ok(()) => End::Done { summary },
                Err(e) => End::Error {
                    message: format!("publishing failed: {e:#}"),
                },
            },
            Err(StageError::Cancelled) => End::Cancelled,
            Err(StageError::User { message, hint }) => End::UserError { message, hint },
            Err(StageError::Other(e)) => End::Error {
                message: format!("{e:#}"),
            },
        }
    }
}

/// `work_dir/rank-R/out`, empty: where rank R > 0 of a data-parallel node writes the output
/// rank 0 publishes.
fn scratch_out(job: &Job, rank: usize) -> anyhow::Result<std::path::PathBuf> {
    let dir = job.work_dir.join(format!("rank-{rank}")).join("out");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The first input of `job` (or base of an adapter input) whose artifact is damaged, as a user
/// error and a hint: nothing reads bytes the store cannot vouch for. `stat`s each file (see
/// `store`'s `damage.rs`); a store that cannot be read here is left to the stage to report.
fn damaged_input(job: &Job) -> Option<(String, String)> {
    let store = store::Store::open(&job.store).ok()?;
    let mut keys: Vec<(String, &str)> = Vec::new();
    for (param, input) in &job.inputs {
        keys.push((input.key.clone(), param));
        if crate::lora::is_adapter_dir(&input.dir) {
            if let Ok(l) = crate::lora::peft::read_lineage(&input.dir, &input.node) {
                keys.push((l.base.key, param));
                keys.extend(l.stack.into_iter().map(|r| (r.key, param.as_str())));
            }
        }
    }
    let all: Vec<String> = keys.iter().map(|(k, _)| k.clone()).collect();
    let damaged = store.damaged_inputs(&all).ok()?;
    let (key, param) = keys.iter().find(|(k, _)| damaged.contains_key(k))?;
    let d = &damaged[key];
    Some((
        format!(
            "input `{param}`: the artifact of {} ({}) is damaged: {d}",
            d.node,
            &key[..12.min(key.len())]
        ),
        "`temper plan` lists damaged artifacts; `temper run` moves them aside and rebuilds them"
            .into(),
    ))
}

/// Empties the staging dir of the job in `text` (a job file run without a front).
pub(crate) fn prepare_alone(text: &str) -> anyhow::Result<()> {
    let job: Job = serde_json::from_str(text.trim())?;
    store::Store::open(&job.store)?.prepare_staging(&job.key)?;
    Ok(())
}

/// Publishes a finished job's staging dir into its store.
fn publish(job: &Job, summary: serde_json::Value) -> anyhow::Result<()> {
    let store = store::Store::open(&job.store)?;
    store.complete(&job.key, &job.identity, &job.work_dir, summary)?;
    Ok(())
}

/// Test hook: `TEMPER_PAUSE_AT=stage:<instance id>:<ms>` sleeps before that stage runs, so
/// end-to-end tests can observe a run in progress (lock holder, read-only commands, kills).
fn test_pause(id: &str) {
    let Ok(v) = std::env::var("TEMPER_PAUSE_AT") else {
        return;
    };
    if let Some((target, ms)) = v.rsplit_once(':') {
        if target == format!("stage:{id}") {
            if let Ok(ms) = ms.parse::<u64>() {
                std::thread::sleep(std::time::Duration::from_millis(ms));
            }
        }
    }
}

/// The `temper-worker` process: `temper-worker` serves jobs from stdin; `temper-worker JOB`
/// runs the job in file `JOB` (exit 0 done, 1 failed, 130 cancelled).
pub fn main() -> std::process::ExitCode {
    use std::process::ExitCode;
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == FOLD_ARG) {
        return fold_main(&args[2..]);
    }
    die_with_parent();
    let events = Events::new(take_stdout());
    let cancel = CancelToken::new();
    let signals = AtomicUsize::new(0);
    let token = cancel.clone();
    // Under a cluster scheduler the same stop request can arrive twice (the scheduler signals
    // every process of the job, and the job's wrapper forwards it): there, every signal only
    // asks for a checkpoint and stop; the scheduler kills what does not stop.
    let once = std::env::var_os(job::SIGNALS_ONCE_ENV).is_some();
    let _ = ctrlc::set_handler(move || {
        if signals.fetch_add(1, Ordering::SeqCst) == 0 || once {
            token.cancel();
        } else {
            // SAFETY: `_exit` ends the process at once; nothing is left to run.
            unsafe { libc::_exit(130) }
        }
    });
    let (filter, handle) = tracing_subscriber::reload::Layer::new(env_filter("warn"));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(LogLayer(events.clone()))
        .try_init();
    let worker = Worker {
        stages: Arc::new(stage_map(crate::stages())),
        events,
        cancel,
        logging: Logging::Global(handle),
        name: format!("worker pid {}", std::process::id()),
        collective: Arc::new(crate::dist::Solo),
    };
    let code = match std::env::args_os().nth(1) {
        None => {
            worker.serve(std::io::stdin().lock());
            0
        }
        Some(path) => {
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t.replace('\n', " "),
                Err(e) => {
                    eprintln!("temper-worker: reading {}: {e}", path.to_string_lossy());
                    return ExitCode::from(2);
                }
            };
            // Alone (no front prepared this attempt): start from an empty staging dir, as the
            // front does, so nothing an interrupted attempt left there is published.
            if let Err(e) = prepare_alone(&text) {
                eprintln!("temper-worker: {}: {e:#}", path.to_string_lossy());
                return ExitCode::from(2);
            }
            match worker.serve(std::io::Cursor::new(text)) {
                Some(End::Done { .. }) => 0,
                Some(End::Cancelled) => 130,
                _ => 1,
            }
        }
    };
    // Everything is written and flushed (events line by line, the store durably): skip
    // libtorch's static destructors, which take ~0.2 s, so the front is not kept waiting.
    let _ = std::io::stderr().flush();
    // SAFETY: `_exit` ends the process; nothing of this process is left to run or to flush.
    unsafe { libc::_exit(code) }
}

/// `temper-worker --fold ADAPTER_DIR NODE KEY OUT`: writes adapter artifact `ADAPTER_DIR`
/// folded into its base as a full model in `OUT` (`temper export --merged`).
pub const FOLD_ARG: &str = "--fold";

fn fold_main(args: &[std::ffi::OsString]) -> std::process::ExitCode {
    let [dir, node, key, out] = args else {
        eprintln!("usage: temper-worker {FOLD_ARG} ADAPTER_DIR NODE KEY OUT");
        return std::process::ExitCode::from(2);
    };
    let (node, key) = (node.to_string_lossy(), key.to_string_lossy());
    match crate::lora::load::fold_to_dir(dir.as_ref(), &node, &key, out.as_ref()) {
        Ok(l) => {
            println!("{}", serde_json::json!({"base": l.base, "stack": l.stack}));
            std::process::ExitCode::SUCCESS
        }
        Err(StageError::User { message, hint }) => {
            eprintln!("error: {message}");
            if let Some(h) = hint {
                eprintln!("hint: {h}");
            }
            std::process::ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

/// Linux: the kernel SIGKILLs this process when the thread that spawned it (the front's
/// scheduler) ends, however it ends. `TEMPER_FRONT_PID` names the front: if it is already gone
/// (it died between fork and here), exit now.
pub(crate) fn die_with_parent() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain prctl/getppid calls without pointers.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if let Some(front) = std::env::var("TEMPER_FRONT_PID")
                .ok()
                .and_then(|p| p.parse::<i32>().ok())
            {
                if libc::getppid() != front {
                    libc::_exit(1);
                }
            }
        }
    }
}

/// The process's stdout as the event stream, with fd 1 itself pointed at stderr so nothing
/// else (libtorch, a stray print) can write into the protocol.
pub(crate) fn take_stdout() -> Box<dyn Write + Send> {
    use std::os::fd::FromRawFd;
    // SAFETY: dup/dup2 on the standard descriptors; the duplicate is owned by the File.
    unsafe {
        let fd = libc::dup(1);
        if fd < 0 {
            return Box::new(std::io::stdout());
        }
        libc::dup2(2, 1);
        Box::new(std::fs::File::from_raw_fd(fd))
    }
}

/// Runs workers on threads of this process, with the given stages: the same worker loop as
/// `temper-worker`, for tests whose kinds are not the built-in ones. Cancelling sets the
/// worker's token; a thread cannot be killed, so `kill` cancels too.
pub struct InProcess {
    stages: Arc<StageMap>,
    started: AtomicUsize,
}

impl InProcess {
    pub fn new(stages: Vec<Box<dyn Stage>>) -> InProcess {
        InProcess {
            stages: Arc::new(stage_map(stages)),
            started: AtomicUsize::new(0),
        }
    }
    /// The DSL registry of these stages.
    pub fn registry(&self) -> dsl::Registry {
        let mut r = dsl::Registry::new();
        let mut names: Vec<&String> = self.stages.keys().collect();
        names.sort();
        for n in names {
            r.register(self.stages[n].schema());
        }
        r
    }
}

impl Launcher for InProcess {
    fn start(&self) -> std::io::Result<WorkerConn> {
        let n = self.started.fetch_add(1, Ordering::SeqCst) + 1;
        let (jobs_r, jobs_w) = std::io::pipe()?;
        let (events_r, events_w) = std::io::pipe()?;
        let cancel = CancelToken::new();
        let ended = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            stages: self.stages.clone(),
            events: Events::new(Box::new(events_w)),
            cancel: cancel.clone(),
            logging: Logging::Thread,
            name: format!("worker thread {n}"),
            collective: Arc::new(crate::dist::Solo),
        };
        let flag = ended.clone();
        let handle = std::thread::Builder::new()
            .name(format!("worker {n}"))
            .spawn(move || {
                worker.serve(std::io::BufReader::new(jobs_r));
                flag.store(true, Ordering::SeqCst);
                // Dropping `worker` closes the event stream: the front sees EOF.
            })?;
        Ok(WorkerConn {
            jobs: Box::new(jobs_w),
            events: Box::new(std::io::BufReader::new(events_r)),
            control: Arc::new(ThreadWorker {
                n,
                cancel,
                ended,
                handle: Mutex::new(Some(handle)),
            }),
        })
    }
}

struct ThreadWorker {
    n: usize,
    cancel: CancelToken,
    ended: Arc<AtomicBool>,
    handle: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl WorkerControl for ThreadWorker {
    fn name(&self) -> String {
        format!("thread {}", self.n)
    }
    fn cancel(&self) {
        self.cancel.cancel();
    }
    fn kill(&self) {
        self.cancel.cancel();
    }
    fn wait(&self) -> String {
        let h = self.handle.lock().unwrap_or_else(|e| e.into_inner()).take();
        match h.map(|h| h.join()) {
            Some(Err(_)) => "panicked".into(),
            _ => "ended".into(),
        }
    }
    fn exited(&self) -> bool {
        self.ended.load(Ordering::SeqCst)
    }
}
