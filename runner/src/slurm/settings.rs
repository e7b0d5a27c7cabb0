//! Cluster settings: where they come from and what `sbatch` options they make. None of them
//! is a parameter, so none enters a node key: moving a recipe from a laptop to Slurm, or
//! changing its partition, reuses every cached node.
//!
//! Layers, later ones win, setting by setting:
//! 1. the user file `$TEMPER_CONFIG`, else `$XDG_CONFIG_HOME/temper/temper.toml` (else
//!    `~/.config/temper/temper.toml`);
//! 2. the project file: the nearest `temper.toml` from the recipe's directory up to its
//!    repository root (the nearest directory with `.git`);
//! 3. the recipe's `executor slurm { … }` block;
//! 4. rules by kind: `[slurm.kind.<kind>]` in the files, `kind <kind> { … }` in the block;
//! 5. the node's own `resources { … }`.
//!
//! In the TOML files the same names are keys of a `[slurm]` table (`extra` is an array).

use anyhow::{anyhow, Context, Result};
use dsl::{Loc, Recipe, Value};
use std::path::{Path, PathBuf};

/// The settings of one node's job.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    /// Time limit in Slurm's syntax (`12:00:00`, `2-00`).
    pub time: Option<String>,
    pub gpus_per_node: Option<u32>,
    pub cpus_per_task: Option<u32>,
    /// Memory per node (`64G`).
    pub mem: Option<String>,
    /// Options passed to `sbatch` verbatim, after temper's own.
    pub extra: Vec<String>,
    /// The warning signal before the time limit (not `USR1`, which NCCL uses).
    pub signal: String,
    /// Seconds before the time limit the warning signal comes.
    pub signal_lead: u64,
    /// `--requeue` (Slurm may requeue it after preemption or a node failure) or `--no-requeue`.
    pub requeue: bool,
    /// Time-outs a node may checkpoint and requeue after before it fails.
    pub max_timeouts: u32,
    /// The user says the store is on a file system every node sees (skips temper's check).
    pub shared_store: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            partition: None,
            account: None,
            qos: None,
            time: None,
            gpus_per_node: None,
            cpus_per_task: None,
            mem: None,
            extra: Vec::new(),
            signal: "USR2".into(),
            signal_lead: 300,
            requeue: true,
            max_timeouts: 3,
            shared_store: false,
        }
    }
}

/// The setting names, for messages and suggestions.
pub const NAMES: &[&str] = &[
    "partition",
    "account",
    "qos",
    "time",
    "gpus-per-node",
    "cpus-per-task",
    "mem",
    "extra",
    "signal",
    "signal-lead",
    "requeue",
    "max-timeouts",
    "shared-store",
];

/// Signals a job may be warned with.
const SIGNALS: &[&str] = &["USR2", "USR1", "HUP", "INT", "TERM", "URG", "XCPU"];

/// One value as the layers give it.
#[derive(Clone, Debug)]
enum Raw {
    Str(String),
    Int(i64),
    Bool(bool),
    Other(String),
}

impl Raw {
    fn describe(&self) -> String {
        match self {
            Raw::Str(s) => format!("{s:?}"),
            Raw::Int(i) => i.to_string(),
            Raw::Bool(b) => format!("#{b}"),
            Raw::Other(s) => s.clone(),
        }
    }
}

/// Applies one setting; the error is a sentence without location.
fn apply(s: &mut Settings, name: &str, values: &[Raw]) -> std::result::Result<(), String> {
    let one = || -> std::result::Result<&Raw, String> {
        match values {
            [v] => Ok(v),
            _ => Err(format!("`{name}` takes one value, got {}", values.len())),
        }
    };
    let string = || -> std::result::Result<String, String> {
        match one()? {
            Raw::Str(v) if !v.trim().is_empty() => Ok(v.clone()),
            v => Err(format!("`{name}` takes a string, got {}", v.describe())),
        }
    };
    let int = |min: i64| -> std::result::Result<i64, String> {
        match one()? {
            Raw::Int(i) if *i >= min => Ok(*i),
            v => Err(format!(
                "`{name}` takes an integer ≥ {min}, got {}",
                v.describe()
            )),
        }
    };
    let boolean = || -> std::result::Result<bool, String> {
        match one()? {
            Raw::Bool(b) => Ok(*b),
            v => Err(format!(
                "`{name}` takes #true or #false, got {}",
                v.describe()
            )),
        }
    };
    match name {
        "partition" => s.partition = Some(string()?),
        "account" => s.account = Some(string()?),
        "qos" => s.qos = Some(string()?),
        "time" => {
            let t = string()?;
            let unlimited = matches!(t.to_ascii_lowercase().as_str(), "unlimited" | "infinite");
            if !unlimited && super::cli::parse_duration(&t).is_none() {
                return Err(format!(
                    "`time {t:?}` is not a Slurm time limit (MM, MM:SS, HH:MM:SS, D-HH, \
                     D-HH:MM, D-HH:MM:SS)"
                ));
            }
            s.time = Some(t);
        }
        "gpus-per-node" => s.gpus_per_node = Some(int(0)? as u32),
        "cpus-per-task" => s.cpus_per_task = Some(int(1)? as u32),
        "mem" => {
            let m = string()?;
            let digits = m.trim_end_matches(|c: char| "KMGTkmgt".contains(c));
            if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
                return Err(format!("`mem {m:?}` is not a Slurm size (e.g. 64G, 500M)"));
            }
            s.mem = Some(m);
        }
        "extra" => {
            if values.is_empty() {
                return Err("`extra` takes one or more sbatch options".into());
            }
            let mut v = Vec::new();
            for x in values {
                match x {
                    Raw::Str(o) if o.starts_with('-') => v.push(o.clone()),
                    x => {
                        return Err(format!(
                            "`extra` takes sbatch options such as \"--constraint=h100\", got {}",
                            x.describe()
                        ))
                    }
                }
            }
            s.extra = v;
        }
        "signal" => {
            let sig = string()?;
            let sig = sig.trim_start_matches("SIG").to_ascii_uppercase();
            if !SIGNALS.contains(&sig.as_str()) {
                return Err(format!(
                    "`signal {sig:?}`: use one of {} (USR2 by default; NCCL uses USR1)",
                    SIGNALS.join(", ")
                ));
            }
            s.signal = sig;
        }
        "signal-lead" => s.signal_lead = int(1)? as u64,
        "requeue" => s.requeue = boolean()?,
        "max-timeouts" => s.max_timeouts = int(0)? as u32,
        "shared-store" => s.shared_store = boolean()?,
        other => {
            let hint = dsl::suggest::did_you_mean(other, NAMES.iter().copied())
                .map(|c| format!(" (did you mean `{c}`?)"))
                .unwrap_or_default();
            return Err(format!(
                "unknown Slurm setting `{other}`{hint}; settings: {}",
                NAMES.join(", ")
            ));
        }
    }
    Ok(())
}

fn raw_of(v: &Value) -> Raw {
    match v {
        Value::Str(s) => Raw::Str(s.clone()),
        Value::Int(i) => Raw::Int(*i),
        Value::Bool(b) => Raw::Bool(*b),
        other => Raw::Other(format!("{other:?}")),
    }
}

fn raw_of_toml(v: &toml::Value) -> Vec<Raw> {
    match v {
        toml::Value::String(s) => vec![Raw::Str(s.clone())],
        toml::Value::Integer(i) => vec![Raw::Int(*i)],
        toml::Value::Boolean(b) => vec![Raw::Bool(*b)],
        toml::Value::Array(a) => a.iter().flat_map(raw_of_toml).collect(),
        other => vec![Raw::Other(other.to_string())],
    }
}

/// Settings as a file gives them: (name, values).
type FileSettings = Vec<(String, Vec<Raw>)>;

/// A `[slurm]` table of one file, with its `kind` sub-tables.
#[derive(Clone, Debug, Default)]
struct FileLayer {
    path: PathBuf,
    settings: FileSettings,
    kinds: Vec<(String, FileSettings)>,
}

fn read_file(path: &Path) -> Result<Option<FileLayer>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let doc: toml::Table =
        toml::from_str(&text).with_context(|| format!("{}: not valid TOML", path.display()))?;
    let mut layer = FileLayer {
        path: path.to_path_buf(),
        ..FileLayer::default()
    };
    let Some(slurm) = doc.get("slurm") else {
        return Ok(Some(layer));
    };
    let table = slurm
        .as_table()
        .ok_or_else(|| anyhow!("{}: `slurm` must be a table ([slurm])", path.display()))?;
    for (k, v) in table {
        if k == "kind" {
            let kinds = v.as_table().ok_or_else(|| {
                anyhow!(
                    "{}: `slurm.kind` must hold tables ([slurm.kind.sft])",
                    path.display()
                )
            })?;
            for (kind, t) in kinds {
                let t = t.as_table().ok_or_else(|| {
                    anyhow!("{}: `slurm.kind.{kind}` must be a table", path.display())
                })?;
                let rules = t.iter().map(|(k, v)| (k.clone(), raw_of_toml(v))).collect();
                layer.kinds.push((kind.clone(), rules));
            }
        } else {
            layer.settings.push((k.clone(), raw_of_toml(v)));
        }
    }
    Ok(Some(layer))
}

/// The user's file.
fn user_file() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TEMPER_CONFIG") {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("temper").join("temper.toml"))
}

/// The nearest `temper.toml` from `dir` up to the repository root.
fn project_file(dir: &Path) -> Option<PathBuf> {
    let dir = std::path::absolute(dir).ok()?;
    for d in dir.ancestors() {
        let p = d.join("temper.toml");
        if p.is_file() {
            return Some(p);
        }
        if d.join(".git").exists() {
            break;
        }
    }
    None
}

/// Everything that decides the settings of a recipe's nodes, read once.
pub struct Sources {
    recipe: Recipe,
    files: Vec<FileLayer>,
}

impl Sources {
    /// Reads the user and project files of `recipe` and checks every layer (unknown names,
    /// wrong values: errors naming the file or pointing into the recipe).
    pub fn read(recipe: &Recipe) -> Result<Sources> {
        Self::with_user_file(recipe, user_file())
    }

    /// [`Sources::read`] with `user` as the user's file (`None`: no user file).
    pub fn with_user_file(recipe: &Recipe, user: Option<PathBuf>) -> Result<Sources> {
        let mut files = Vec::new();
        if let Some(p) = &user {
            files.extend(read_file(p)?);
        }
        if let Some(p) = project_file(&recipe.root_dir) {
            if Some(&p) != user.as_ref() {
                files.extend(read_file(&p)?);
            }
        }
        let src = Sources {
            recipe: recipe.clone(),
            files,
        };
        src.check()?;
        Ok(src)
    }

    fn check(&self) -> Result<()> {
        let mut scratch = Settings::default();
        for f in &self.files {
            for (name, values) in f
                .settings
                .iter()
                .chain(f.kinds.iter().flat_map(|(_, r)| r.iter()))
            {
                apply(&mut scratch, name, values)
                    .map_err(|m| anyhow!("{}: [slurm] {m}", f.path.display()))?;
            }
        }
        for block in &self.recipe.executors {
            if block.name != "slurm" {
                return Err(self.located(
                    block.loc,
                    format!("unknown executor `{}`", block.name),
                    "not an executor",
                    Some("the executors are `slurm` (and the default, local)".into()),
                ));
            }
            for set in block
                .settings
                .iter()
                .chain(block.rules.iter().flat_map(|r| r.settings.iter()))
            {
                self.apply_located(&mut scratch, set)?;
            }
        }
        for n in &self.recipe.nodes {
            for set in &n.resources {
                self.apply_located(&mut scratch, set)?;
            }
        }
        Ok(())
    }

    fn apply_located(&self, s: &mut Settings, set: &dsl::Setting) -> Result<()> {
        if !NAMES.contains(&set.name.as_str()) {
            let guess = dsl::suggest::did_you_mean(&set.name, NAMES.iter().copied())
                .map(|c| format!("did you mean `{c}`? "))
                .unwrap_or_default();
            return Err(self.located(
                set.loc,
                format!("unknown Slurm setting `{}`", set.name),
                "not a setting",
                Some(format!("{guess}settings: {}", NAMES.join(", "))),
            ));
        }
        let values: Vec<Raw> = set.values.iter().map(raw_of).collect();
        apply(s, &set.name, &values).map_err(|m| {
            let at = if NAMES.contains(&set.name.as_str()) {
                set.value_loc
            } else {
                set.loc
            };
            self.located(at, m, "here", None)
        })
    }

    fn located(
        &self,
        loc: Loc,
        msg: impl Into<String>,
        label: &str,
        help: Option<String>,
    ) -> anyhow::Error {
        let d = self.recipe.diag_at(loc, msg, label, help);
        anyhow::Error::new(crate::plan::RecipeError(dsl::Diagnostics::from(d).render()))
    }

    /// The settings of declared node `node` of kind `kind`.
    /// The machines the recipe's nodes are keyed for when they run as Slurm jobs: per node,
    /// whether its job asks for GPUs ([`crate::target`]).
    pub fn target(&self) -> Result<crate::target::Target> {
        let mut gpus = std::collections::HashMap::new();
        for n in &self.recipe.nodes {
            let s = self.for_node(&n.name, &n.kind)?;
            let on = crate::target::slurm_asks_for_gpus(s.gpus_per_node, &s.extra);
            gpus.insert(n.name.clone(), on);
        }
        Ok(crate::target::Target::slurm(gpus))
    }

    pub fn for_node(&self, node: &str, kind: &str) -> Result<Settings> {
        let mut s = Settings::default();
        let fail = |m: String| anyhow!("{m}");
        for f in &self.files {
            for (name, values) in &f.settings {
                apply(&mut s, name, values).map_err(fail)?;
            }
        }
        let blocks: Vec<&dsl::ExecutorBlock> = self
            .recipe
            .executors
            .iter()
            .filter(|b| b.name == "slurm")
            .collect();
        for b in &blocks {
            for set in &b.settings {
                self.apply_located(&mut s, set)?;
            }
        }
        for f in &self.files {
            for (k, rules) in &f.kinds {
                if k == kind {
                    for (name, values) in rules {
                        apply(&mut s, name, values).map_err(fail)?;
                    }
                }
            }
        }
        for b in &blocks {
            for r in b.rules.iter().filter(|r| r.kind == kind) {
                for set in &r.settings {
                    self.apply_located(&mut s, set)?;
                }
            }
        }
        if let Some(decl) = self.recipe.node(node) {
            for set in &decl.resources {
                self.apply_located(&mut s, set)?;
            }
        }
        Ok(s)
    }
}

impl Settings {
    /// The `sbatch` options these settings make (job-specific ones, such as the name, the log
    /// and the dependencies, are added by the submitter).
    pub fn sbatch_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        let mut opt = |flag: &str, v: &Option<String>| {
            if let Some(v) = v {
                a.push(format!("--{flag}={v}"));
            }
        };
        opt("partition", &self.partition);
        opt("account", &self.account);
        opt("qos", &self.qos);
        opt("time", &self.time);
        opt("mem", &self.mem);
        if let Some(g) = self.gpus_per_node.filter(|g| *g > 0) {
            a.push(format!("--gpus-per-node={g}"));
        }
        if let Some(c) = self.cpus_per_task {
            a.push(format!("--cpus-per-task={c}"));
        }
        // `B:` sends the warning to the batch shell only; the script forwards it.
        a.push(format!("--signal=B:{}@{}", self.signal, self.signal_lead));
        a.push(
            if self.requeue {
                "--requeue"
            } else {
                "--no-requeue"
            }
            .into(),
        );
        a.extend(self.extra.iter().cloned());
        a
    }
}
