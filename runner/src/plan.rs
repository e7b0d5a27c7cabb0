//! The plan: the expanded recipe as a petgraph DAG of instances in topological order, each
//! with its key, its state in the store and the reasons it will run.
//!
//! State of an instance with key `k` (from the record of `k`, the work directory and the pid):
//! `cached` (record Done), `running elsewhere` (record Running, pid alive and not ours),
//! `failed before` (record Failed), `incomplete` (record Cancelled, Running with a dead pid, or a
//! checkpoint in `work_dir(k)`), else `to run`; a built instance whose artifact changed since it
//! was published is `damaged` (see `store`'s `damage.rs`): it needs a run, which rebuilds it.
//! Reasons come from diffing the current key tree with the tree last built for the same identity
//! `<recipe file stem>/<instance id>` (see [`crate::diff`]): `new`, `parameter X changed from a to
//! b`, `input Y changed`, `file of parameter P changed`, `kind version changed 1 → 2`.

pub use crate::cmd::why::{why, why_text};
use crate::keys::{self, FileHasher, Keyed, MemoHasher};
pub use crate::reason::{reasons_from_diff, Reason};
use anyhow::{anyhow, Context, Result};
use dsl::{Expanded, Instance, Recipe, Registry};
use petgraph::graph::{DiGraph, NodeIndex};
use serde_json::Value as J;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

/// A recipe that failed to load or validate: the rendered diagnostics (printed to stderr,
/// exit code 2).
#[derive(Debug)]
pub struct RecipeError(pub String);

impl fmt::Display for RecipeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for RecipeError {}

/// A loaded, validated and expanded recipe.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub path: PathBuf,
    /// File stem of the recipe: the first half of every instance identity.
    pub stem: String,
    pub recipe: Recipe,
    pub expanded: Expanded,
    /// The machines its nodes are keyed for ([`crate::target`]): the local one (this
    /// machine's CUDA devices, or the load options' `cuda_devices`) unless an executor sets it.
    pub target: crate::target::Target,
}

/// Parses, validates and expands `path` with `--set` overrides (default limits, trusted).
pub fn load(path: &Path, registry: &Registry, overrides: &[String]) -> Result<Loaded> {
    load_with(path, registry, overrides, &dsl::LoadOptions::default())
}

/// [`load`] with the dsl's limits and untrusted mode. A recipe that breaks them is an error
/// here, before any key is computed, so an untrusted recipe never makes the runner read or
/// hash a file outside its repository.
pub fn load_with(
    path: &Path,
    registry: &Registry,
    overrides: &[String],
    opts: &dsl::LoadOptions,
) -> Result<Loaded> {
    let recipe =
        dsl::load_with(path, registry, overrides, opts).map_err(|d| RecipeError(d.render()))?;
    let expanded = dsl::expand(&recipe).map_err(|d| RecipeError(d.render()))?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "recipe".into());
    let target = match opts.cuda_devices {
        Some(n) => crate::target::Target::local(n, n != crate::device::cuda_devices()),
        None => crate::target::Target::local(crate::device::cuda_devices(), false),
    };
    Ok(Loaded {
        path: path.to_path_buf(),
        stem,
        recipe,
        expanded,
        target,
    })
}

/// Where an instance stands in the store.
#[derive(Clone, Debug, PartialEq)]
pub enum State {
    Cached,
    ToRun,
    RunningElsewhere {
        pid: u32,
    },
    /// A live Slurm job builds it; `what` is its phase (`queued (slurm job 12)`).
    OnSlurm {
        job: String,
        what: String,
    },
    FailedBefore {
        error: String,
    },
    Incomplete {
        why: String,
    },
    /// Built, but its artifact is damaged (`damage` says which file and how): never read; a
    /// run moves it aside and rebuilds it.
    Damaged {
        damage: store::Damage,
    },
    /// Downstream of (or itself) a `select` whose scores are not all built: its key is
    /// provisional until they are, and a run builds it after re-planning. `stuck`: the scores
    /// are built but the select cannot resolve from them (`why` says what is missing).
    Waiting {
        why: String,
        stuck: bool,
    },
}

impl State {
    pub fn word(&self) -> &'static str {
        match self {
            State::Cached => "cached",
            State::ToRun => "to run",
            State::RunningElsewhere { .. } => "running elsewhere",
            State::OnSlurm { .. } => "on slurm",
            State::FailedBefore { .. } => "failed before",
            State::Incomplete { .. } => "incomplete",
            State::Damaged { .. } => "damaged",
            State::Waiting { stuck: true, .. } => "cannot select",
            State::Waiting { .. } => "waiting",
        }
    }
    /// Whether a run would execute it (everything but cached and running elsewhere).
    pub fn needs_run(&self) -> bool {
        !matches!(
            self,
            State::Cached | State::RunningElsewhere { .. } | State::OnSlurm { .. }
        )
    }
}

/// One planned instance.
#[derive(Clone, Debug)]
pub struct Entry {
    pub id: String,
    pub node: String,
    pub kind: String,
    pub key: String,
    pub tree: J,
    /// The key whose artifact nodes downstream read: `key`, or a select's winner's key.
    pub output: String,
    /// `<recipe stem>/<instance id>`.
    pub identity: String,
    /// (parameter path, input instance id).
    pub inputs: Vec<(String, String)>,
    pub state: State,
    /// Empty for cached instances.
    pub reasons: Vec<Reason>,
    /// `cuda` or `cpu` for a node whose key depends on its device (`dtype auto`).
    pub keyed_for: Option<&'static str>,
}

impl Entry {
    pub fn short_key(&self) -> &str {
        &self.key[..12.min(self.key.len())]
    }
    pub fn reason_text(&self) -> String {
        self.reasons
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The planned DAG.
pub struct Plan {
    pub loaded: Loaded,
    /// Instances in topological order (inputs first).
    pub entries: Vec<Entry>,
    /// Edges input → dependent; node weights index `entries`.
    pub graph: DiGraph<usize, ()>,
    pub variants: usize,
}

impl Plan {
    pub fn entry(&self, id: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.id == id)
    }
    /// The entry whose artifact `e` hands on: `e` itself, or a select's winner (`None` when the
    /// winner is not in the plan, which would be a bug).
    pub fn artifact_of<'a>(&'a self, e: &'a Entry) -> Option<&'a Entry> {
        if e.output == e.key {
            return Some(e);
        }
        self.entries.iter().find(|w| w.key == e.output)
    }
    /// `N cached, M to run; I instances shared by V variants` (+ other states when present).
    pub fn summary(&self) -> String {
        let count =
            |f: &dyn Fn(&State) -> bool| self.entries.iter().filter(|e| f(&e.state)).count();
        let cached = count(&|s| *s == State::Cached);
        let elsewhere = count(&|s| matches!(s, State::RunningElsewhere { .. }));
        let slurm = count(&|s| matches!(s, State::OnSlurm { .. }));
        let run = count(&|s| s.needs_run());
        let waiting = count(&|s| matches!(s, State::Waiting { stuck: false, .. }));
        let stuck = count(&|s| matches!(s, State::Waiting { stuck: true, .. }));
        let mut s = format!("{cached} cached, {run} to run");
        match (waiting, stuck) {
            (0, 0) => {}
            (w, 0) => s += &format!(" ({w} waiting for scores)"),
            (0, b) => s += &format!(" ({b} after a select that cannot choose)"),
            (w, b) => {
                s += &format!(" ({w} waiting for scores, {b} after a select that cannot choose)")
            }
        }
        if elsewhere > 0 {
            s += &format!(", {elsewhere} running elsewhere");
        }
        if slurm > 0 {
            s += &format!(", {slurm} on Slurm");
        }
        s += &format!(
            "; {} instances shared by {} variant{}",
            self.entries.len(),
            self.variants,
            if self.variants == 1 { "" } else { "s" }
        );
        s
    }
    /// One line per instance: state, id, short key, reason.
    pub fn render(&self) -> String {
        let w = self.entries.iter().map(|e| e.id.len()).max().unwrap_or(0);
        let mut out = String::new();
        for e in &self.entries {
            let why = match &e.state {
                State::OnSlurm { what, .. } => what.clone(),
                State::Waiting { why, .. } => why.clone(),
                _ => e.reason_text(),
            };
            let line = format!(
                "{:<17} {:<w$} {} {}",
                e.state.word(),
                e.id,
                e.short_key(),
                why
            );
            out += line.trim_end();
            out.push('\n');
            // What the kinds say about a node that will build (a training node's memory), and
            // which device its `dtype auto` was keyed for.
            if !matches!(e.state, State::Cached) {
                if let Some(d) = e.keyed_for {
                    out += &format!(
                        "{:17}   dtype auto keyed for {d} ({})\n",
                        "", self.loaded.target.name
                    );
                }
                for note in self.loaded.recipe.notes.get(&e.node).into_iter().flatten() {
                    out += &format!("{:17}   {note}\n", "");
                }
            }
        }
        out += &self.summary();
        out.push('\n');
        out
    }
    /// The plan as JSON (for `plan --json`).
    pub fn to_json(&self) -> J {
        J::Array(
            self.entries
                .iter()
                .map(|e| {
                    serde_json::json!({
                        "id": e.id, "node": e.node, "kind": e.kind, "key": e.key,
                        "state": e.state.word(),
                        "inputs": e.inputs.iter().map(|(_, i)| i.clone()).collect::<Vec<_>>(),
                        "reasons": e.reasons.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
                        "notes": self.loaded.recipe.notes.get(&e.node).cloned().unwrap_or_default(),
                        "keyed_for": e.keyed_for,
                    })
                })
                .collect(),
        )
    }
}

/// Instances of `expanded` in topological order, with the graph (input → dependent).
pub fn graph(expanded: &Expanded) -> Result<(Vec<usize>, DiGraph<usize, ()>)> {
    let mut g = DiGraph::with_capacity(expanded.instances.len(), expanded.instances.len());
    let mut idx: HashMap<&str, NodeIndex> = HashMap::with_capacity(expanded.instances.len());
    for (i, inst) in expanded.instances.iter().enumerate() {
        idx.insert(inst.id.as_str(), g.add_node(i));
    }
    for inst in &expanded.instances {
        for (param, input) in &inst.inputs {
            let from = idx.get(input.as_str()).ok_or_else(|| {
                anyhow!(
                    "node {}: input `{input}` of `{param}` is not an instance",
                    inst.id
                )
            })?;
            g.add_edge(*from, idx[inst.id.as_str()], ());
        }
    }
    // Kahn's algorithm, always taking the ready instance that comes first in the expansion
    // (declaration order), so the order is stable and readable.
    let n = g.node_count();
    let mut indeg: Vec<usize> = (0..n)
        .map(|i| {
            g.neighbors_directed(NodeIndex::new(i), petgraph::Direction::Incoming)
                .count()
        })
        .collect();
    let mut ready: BinaryHeap<Reverse<usize>> =
        (0..n).filter(|&i| indeg[i] == 0).map(Reverse).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        for d in g.neighbors_directed(NodeIndex::new(i), petgraph::Direction::Outgoing) {
            indeg[d.index()] -= 1;
            if indeg[d.index()] == 0 {
                ready.push(Reverse(d.index()));
            }
        }
    }
    if order.len() != n {
        let stuck = (0..n).find(|&i| indeg[i] > 0).unwrap_or(0);
        return Err(anyhow!(
            "the recipe graph has a cycle through {}",
            expanded.instances[stuck].id
        ));
    }
    Ok((order.into_iter().map(|i| g[NodeIndex::new(i)]).collect(), g))
}

/// The keys of a recipe: topological order (indices into `Expanded::instances`), the graph
/// (weights are those indices) and one [`Keyed`] per position of `order`.
pub struct KeyedGraph {
    pub order: Vec<usize>,
    pub graph: DiGraph<usize, ()>,
    pub keyed: Vec<Keyed>,
}

/// Keys of every instance, in topological order, hashing each file once. `store` resolves
/// select nodes from their built scores; without one (or before the scores are built), keys
/// downstream of a select are provisional ([`keys::Keyed::waiting`]).
pub fn keys_of(
    loaded: &Loaded,
    registry: &Registry,
    hasher: &dyn FileHasher,
    store: Option<&store::Store>,
) -> Result<KeyedGraph> {
    let (order, g) = graph(&loaded.expanded)?;
    let insts: Vec<&Instance> = order
        .iter()
        .map(|&i| &loaded.expanded.instances[i])
        .collect();
    let memo = MemoHasher::new(hasher);
    let resolve = |inst: &Instance, scores: &[String]| match store {
        Some(st) => crate::select::resolve(st, inst, scores),
        None => keys::unresolved(inst, scores),
    };
    let keyed = keys::compute_keys(
        &insts,
        registry,
        &loaded.recipe.root_dir,
        (&memo, &loaded.target),
        &resolve,
    )?;
    Ok(KeyedGraph {
        order,
        graph: g,
        keyed,
    })
}

/// Plans `loaded` against `store`: keys, states and reasons.
pub fn plan(store: &store::Store, registry: &Registry, loaded: Loaded) -> Result<Plan> {
    let KeyedGraph {
        order,
        graph: g,
        keyed,
    } = keys_of(&loaded, registry, store, Some(store))?;
    let identities: Vec<String> = order
        .iter()
        .map(|&i| format!("{}/{}", loaded.stem, loaded.expanded.instances[i].id))
        .collect();
    // One index open for every lookup: current records, last keys, trees of the last builds.
    let (records, last_keys, old_records) = store
        .with_index(|ix| {
            // A Done record counts only with its artifact in place (else: artifact missing).
            let mut records = Vec::with_capacity(keyed.len());
            for k in &keyed {
                records.push(match store.lookup_done_in(ix, &k.key)? {
                    Some(done) => Some(done),
                    None => ix
                        .record(&k.key)?
                        .filter(|r| r.status != store::Status::Done),
                });
            }
            let last_keys = identities
                .iter()
                .map(|id| ix.last_key(id))
                .collect::<store::Result<Vec<_>>>()?;
            let mut old = HashMap::new();
            for (lk, k) in last_keys.iter().zip(&keyed) {
                if let Some(lk) = lk.as_ref().filter(|lk| **lk != k.key) {
                    if let Some(r) = ix.record(lk)? {
                        old.insert(lk.clone(), r);
                    }
                }
            }
            Ok((records, last_keys, old))
        })
        .context("reading the store index")?;
    // Built artifacts are checked before anything is said to be cached: a `stat` per file, a
    // hash only where a file's time moved.
    let done: Vec<&store::NodeRecord> = records
        .iter()
        .flatten()
        .filter(|r| r.status == store::Status::Done)
        .collect();
    let damaged = store
        .damage_of(&done)
        .context("checking the built artifacts")?;
    let me = std::process::id();
    let mut entries = Vec::with_capacity(keyed.len());
    for (pos, k) in keyed.into_iter().enumerate() {
        let inst = &loaded.expanded.instances[order[pos]];
        let rec = records[pos].as_ref();
        let has_ckpt = || {
            store::Checkpoints::new(store.work_dir(&k.key).join("checkpoints"))
                .latest()
                .is_some()
        };
        let state = match rec.map(|r| (r.status, r)) {
            _ if k.waiting.is_some() => State::Waiting {
                why: k.waiting.clone().unwrap_or_default(),
                stuck: k.stuck,
            },
            Some((store::Status::Done, _)) => match damaged.get(&k.key) {
                Some(d) => State::Damaged { damage: d.clone() },
                None => State::Cached,
            },
            // A cluster job's pid means nothing here; a live job is marked below (`annotate`).
            Some((store::Status::Running, r)) if r.scheduler_job.is_some() => State::Incomplete {
                why: format!(
                    "{} ended while running it",
                    r.scheduler_job.as_deref().unwrap_or("its job")
                ),
            },
            Some((store::Status::Running, r))
                if r.pid.is_some_and(|p| p != me && store::pid_alive(p)) =>
            {
                State::RunningElsewhere {
                    pid: r.pid.unwrap_or(0),
                }
            }
            Some((store::Status::Running, r)) => State::Incomplete {
                why: match r.pid {
                    Some(p) => format!("pid {p} died while running it"),
                    None => "its process died while running it".into(),
                },
            },
            Some((store::Status::Cancelled, _)) => State::Incomplete {
                why: "cancelled".into(),
            },
            Some((store::Status::Failed, r)) => State::FailedBefore {
                error: r.error.clone().unwrap_or_else(|| "unknown error".into()),
            },
            None if has_ckpt() => State::Incomplete {
                why: "checkpoint in work dir".into(),
            },
            None => State::ToRun,
        };
        let mut reasons = Vec::new();
        if state.needs_run() && !matches!(state, State::Waiting { .. }) {
            match &state {
                State::FailedBefore { error } => reasons.push(Reason::PreviousFailed {
                    error: error.clone(),
                }),
                State::Incomplete { why } => {
                    reasons.push(Reason::PreviousIncomplete { why: why.clone() })
                }
                State::Damaged { damage } => reasons.push(Reason::Damaged {
                    what: damage.to_string(),
                }),
                _ => {}
            }
            match &last_keys[pos] {
                None => {
                    if reasons.is_empty() {
                        reasons.push(Reason::New)
                    }
                }
                Some(lk) if *lk == k.key => {
                    if reasons.is_empty() {
                        reasons.push(Reason::ArtifactMissing)
                    }
                }
                Some(lk) => match old_records.get(lk) {
                    Some(old) => {
                        reasons.extend(reasons_from_diff(&old.key_tree, &k.tree, &inst.inputs))
                    }
                    None => reasons.push(Reason::New),
                },
            }
        }
        entries.push(Entry {
            id: inst.id.clone(),
            node: inst.node.clone(),
            kind: inst.kind.clone(),
            key: k.key,
            tree: k.tree,
            output: k.output,
            identity: identities[pos].clone(),
            inputs: inst.inputs.clone(),
            state,
            reasons,
            keyed_for: k.keyed_for,
        });
    }
    // Re-index the graph's weights by position in `entries`.
    let mut pos_of = vec![0usize; order.len()];
    for (pos, &i) in order.iter().enumerate() {
        pos_of[i] = pos;
    }
    let graph = g.map(|_, &i| pos_of[i], |_, _| ());
    let variants = loaded.expanded.variants.len().max(1);
    crate::slurm::observe::annotate(store, &mut entries).context("asking Slurm about its jobs")?;
    Ok(Plan {
        loaded,
        entries,
        graph,
        variants,
    })
}
