//! The executor's workers: a pool of `temper-worker`s (or in-process workers in tests) started
//! through the [`Launcher`], and one reader thread per worker that turns its [`Event`] lines
//! into node-log lines, terminal lines, progress and, at the end of each job, a [`Finished`]
//! message for the scheduler.

use crate::exec::{Control, Finished};
use crate::{nodelog, progress};
use anyhow::{anyhow, Context, Result};
use kinds::job::{Event, Job, Launcher, WorkerControl};
use std::io::{BufRead, Write};
use std::sync::{mpsc, Arc};

/// What a worker's reader thread needs to know about the job it reports on.
pub(crate) struct Assignment {
    pub(crate) pos: usize,
    /// Instance id (whose node log the worker's node-log-only lines go to).
    pub(crate) node: String,
    /// The node's span: the worker's log events are re-emitted inside it.
    pub(crate) span: tracing::Span,
}

/// A started worker, as the scheduler sees it.
struct Slot {
    id: usize,
    jobs: Box<dyn Write + Send>,
    assign: mpsc::Sender<Assignment>,
    control: Arc<dyn WorkerControl>,
    busy: bool,
    /// The device of its last job (a worker keeps a CUDA context and cached memory there).
    last_device: Option<String>,
    /// Started for one job only (the ranks of a data-parallel node): retired when it ends.
    once: bool,
}

/// The workers of a run: an idle one takes the next job (one whose last job ran on the same
/// device, or on the CPU, first); a new one starts when none fits; the executor keeps at most
/// `jobs` busy, so at most `jobs` live. A worker that died, or whose job was cancelled, is
/// retired. Dropping the pool closes every worker's job stream (idle workers exit), kills
/// the busy ones (only when the run stopped on an error) and reaps them all.
pub(crate) struct Pool {
    launcher: Arc<dyn Launcher>,
    tx: mpsc::Sender<Finished>,
    slots: Vec<Slot>,
    retired: Vec<Arc<dyn WorkerControl>>,
    next: usize,
}

impl Pool {
    pub(crate) fn new(launcher: Arc<dyn Launcher>, tx: mpsc::Sender<Finished>) -> Pool {
        Pool {
            launcher,
            tx,
            slots: Vec::new(),
            retired: Vec::new(),
            next: 0,
        }
    }

    /// Hands `job` to a worker (an idle one, else a new one) and registers it with `control`.
    pub(crate) fn run(&mut self, job: &Job, a: Assignment, control: &Control) -> Result<()> {
        let line = job.to_line() + "\n";
        let mut a = Some(a);
        for _attempt in 0..2 {
            let k = match self.pick(&job.device) {
                Some(k) => k,
                None => {
                    if let Some(k) = self.slots.iter().position(|s| !s.busy) {
                        // Idle, but on another device: replace it by a fresh worker.
                        self.retire(k);
                    }
                    self.spawn()?
                }
            };
            let slot = &mut self.slots[k];
            control.register(&job.node, slot.control.clone());
            if slot
                .jobs
                .write_all(line.as_bytes())
                .and_then(|_| slot.jobs.flush())
                .is_err()
            {
                // It died while idle: replace it and try once more.
                control.unregister(&job.node);
                self.retire(k);
                continue;
            }
            slot.busy = true;
            slot.last_device = Some(job.device.clone());
            let _ = slot.assign.send(a.take().expect("assigned once"));
            return Ok(());
        }
        Err(anyhow!("the worker process died before it took the job"))
    }

    /// Runs `job` on workers of its own from `launcher` (`mpirun` and the ranks of a
    /// data-parallel node, which read the job from its file), retired when the job ends.
    pub(crate) fn run_once(
        &mut self,
        launcher: &dyn Launcher,
        job: &Job,
        a: Assignment,
        control: &Control,
    ) -> Result<()> {
        let k = self.spawn_from(launcher)?;
        let slot = &mut self.slots[k];
        control.register(&job.node, slot.control.clone());
        slot.busy = true;
        slot.once = true;
        let _ = slot.assign.send(a);
        Ok(())
    }

    /// An idle live worker for `device`: same device first, then one that only used the CPU.
    fn pick(&mut self, device: &str) -> Option<usize> {
        let dead: Vec<usize> = (0..self.slots.len())
            .filter(|&k| !self.slots[k].busy && self.slots[k].control.exited())
            .collect();
        for k in dead.into_iter().rev() {
            self.retire(k);
        }
        let idle = |k: &usize| !self.slots[*k].busy && !self.slots[*k].once;
        let same = (0..self.slots.len())
            .filter(idle)
            .find(|&k| self.slots[k].last_device.as_deref() == Some(device));
        same.or_else(|| {
            (0..self.slots.len())
                .filter(idle)
                .find(|&k| matches!(self.slots[k].last_device.as_deref(), None | Some("cpu")))
        })
    }

    /// Starts a worker and its reader thread; returns its slot.
    fn spawn(&mut self) -> Result<usize> {
        let launcher = self.launcher.clone();
        self.spawn_from(&*launcher)
    }

    /// Starts a worker of `launcher` and its reader thread; returns its slot.
    fn spawn_from(&mut self, launcher: &dyn Launcher) -> Result<usize> {
        let conn = launcher.start().context("starting a worker")?;
        self.next += 1;
        let id = self.next;
        let (assign, assigned) = mpsc::channel::<Assignment>();
        let tx = self.tx.clone();
        let control = conn.control.clone();
        let events = conn.events;
        std::thread::Builder::new()
            .name(format!("worker {} events", control.name()))
            .spawn(move || read_events(events, assigned, control, id, tx))
            .context("starting a worker's reader thread")?;
        self.slots.push(Slot {
            id,
            jobs: conn.jobs,
            assign,
            control: conn.control,
            busy: false,
            last_device: None,
            once: false,
        });
        Ok(self.slots.len() - 1)
    }

    fn position(&self, id: usize) -> Option<usize> {
        self.slots.iter().position(|s| s.id == id)
    }

    /// Worker `id` ended its job: idle again, or retired after a cancellation (it exits).
    pub(crate) fn done(&mut self, id: usize, cancelled: bool) {
        if let Some(k) = self.position(id) {
            self.slots[k].busy = false;
            if cancelled || self.slots[k].once {
                self.retire(k);
            }
        }
    }

    /// Worker `id` died (its reader thread has reaped it).
    pub(crate) fn died(&mut self, id: usize) {
        if let Some(k) = self.position(id) {
            self.slots.remove(k);
        }
    }

    /// Closes slot `k`'s job stream (an idle worker exits) and keeps it to reap.
    fn retire(&mut self, k: usize) {
        let slot = self.slots.remove(k);
        self.retired.push(slot.control);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for slot in self.slots.drain(..) {
            if slot.busy {
                slot.control.kill();
            }
            self.retired.push(slot.control);
        }
        for w in self.retired.drain(..) {
            w.wait();
        }
    }
}

/// A worker's reader thread: for each job assigned, re-emits the worker's events inside the
/// node's span until the job's end event, then reports it; at EOF (the worker died) reaps the
/// worker and reports how it ended. Ends when the pool drops the worker or it dies.
fn read_events(
    mut events: Box<dyn BufRead + Send>,
    assigned: mpsc::Receiver<Assignment>,
    control: Arc<dyn WorkerControl>,
    worker: usize,
    tx: mpsc::Sender<Finished>,
) {
    let mut buf = Vec::new();
    while let Ok(a) = assigned.recv() {
        let progress = progress::NodeProgress::new(a.span.clone());
        let end = {
            let _enter = a.span.enter();
            loop {
                buf.clear();
                match events.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break None,
                    Ok(_) => {}
                }
                let line = String::from_utf8_lossy(&buf);
                match Event::parse(&line) {
                    Some(Event::Log {
                        level,
                        target,
                        message,
                    }) if target == kinds::job::NODE_LOG_TARGET => {
                        nodelog::line(&a.node, &level, &message)
                    }
                    Some(Event::Log {
                        level,
                        target,
                        message,
                    }) => progress::forward(&level, &target, &message),
                    Some(Event::Progress(p)) => progress.apply(p),
                    Some(Event::End(end)) => break Some(end),
                    None if line.trim().is_empty() => {}
                    None => tracing::warn!("worker {}: {}", control.name(), line.trim_end()),
                }
            }
        };
        let end = match end {
            Some(end) => Ok(end),
            None => Err(control.wait()),
        };
        let dead = end.is_err();
        if tx
            .send(Finished {
                pos: a.pos,
                worker,
                end,
            })
            .is_err()
            || dead
        {
            return;
        }
    }
}
