//! What a kind's recipe-wide check (`KindSchema::check_in_recipe`) sees beyond its node: the
//! other nodes, the machine the load was told of, and small JSON files the recipe names (a
//! model's `config.json`), read within bounds.
//!
//! A recipe is untrusted input, so what a check may read is bounded here, once: a JSON file is
//! read only when it is a regular file (never a FIFO or a device) of at most
//! [`MAX_JSON_BYTES`], and at most once per load whatever the number of nodes asking; node
//! lookups are by name in constant time. Paths are those the recipe's `Path` parameters hold,
//! already confined to the repository in untrusted mode.

use crate::recipe::NodeDecl;
use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Largest JSON file a check reads.
pub const MAX_JSON_BYTES: u64 = 1 << 20;

/// What the load knows of the machine that will run the recipe
/// ([`crate::LoadOptions::machine`]); `None` where it does not know (the recipe may run
/// elsewhere, e.g. on a cluster).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Machine {
    pub cpu_cores: Option<usize>,
    pub cuda_devices: Option<usize>,
    /// Memory of each CUDA device, MiB.
    pub cuda_memory_mib: Option<u64>,
}

/// What a recipe-wide check may consult beyond its own node (module docs).
pub struct CheckContext<'a> {
    /// The declared nodes without errors (defaults filled, references checked), in order.
    pub nodes: &'a [&'a NodeDecl],
    /// The directory `Value::Path`s are relative to ([`crate::Recipe::root_dir`]).
    pub root_dir: &'a Path,
    pub machine: Machine,
    by_name: HashMap<&'a str, &'a NodeDecl>,
    json: RefCell<HashMap<PathBuf, Option<Rc<serde_json::Value>>>>,
}

impl<'a> CheckContext<'a> {
    pub(crate) fn new(nodes: &'a [&'a NodeDecl], root_dir: &'a Path, machine: Machine) -> Self {
        CheckContext {
            nodes,
            root_dir,
            machine,
            by_name: nodes.iter().map(|n| (n.name.as_str(), *n)).collect(),
            json: RefCell::new(HashMap::new()),
        }
    }

    /// The node called `name`, if it loaded without errors.
    pub fn node(&self, name: &str) -> Option<&'a NodeDecl> {
        self.by_name.get(name).copied()
    }

    /// The JSON document at `path` (relative to [`CheckContext::root_dir`], as a `Path`
    /// parameter holds it): `None` unless it is a regular file of at most 1 MiB (`MAX_JSON_BYTES`)
    /// holding valid JSON. Read once per load.
    pub fn json_file(&self, path: &Path) -> Option<Rc<serde_json::Value>> {
        let path = self.root_dir.join(path);
        if let Some(known) = self.json.borrow().get(&path) {
            return known.clone();
        }
        let read = read_json(&path).map(Rc::new);
        self.json.borrow_mut().insert(path, read.clone());
        read
    }
}

fn read_json(path: &Path) -> Option<serde_json::Value> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() || meta.len() > MAX_JSON_BYTES {
        return None;
    }
    let mut text = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_JSON_BYTES)
        .read_to_string(&mut text)
        .ok()?;
    serde_json::from_str(&text).ok()
}

/// What a recipe-wide check found: errors fail the load; warnings are located like errors,
/// kept in [`crate::Recipe::warnings`] and shown by the caller, and the load goes on.
#[derive(Clone, Debug, Default)]
pub struct Findings {
    pub errors: Vec<ParamIssue>,
    pub warnings: Vec<ParamIssue>,
    /// What the node's planner should show about it (e.g. a training node's memory estimate):
    /// neither an error nor a warning ([`crate::Recipe::notes`]).
    pub notes: Vec<String>,
}

/// A problem found by a kind's `check`: which parameter (None = the node itself; a record's
/// field as `record.field`), what, and a hint.
#[derive(Clone, Debug)]
pub struct ParamIssue {
    pub param: Option<String>,
    pub message: String,
    pub hint: Option<String>,
}

impl ParamIssue {
    /// An issue with `param` (`None`: the node itself), with an optional hint.
    pub fn new(param: Option<&str>, message: String, hint: Option<&str>) -> Self {
        ParamIssue {
            param: param.map(str::to_string),
            message,
            hint: hint.map(str::to_string),
        }
    }
}
