//! Merkle keys of recipe instances.
//!
//! The key tree of an instance is the JSON object
//! `{"kind": K, "version": V, "params": {name: value, …}}` where `params` holds every *semantic*
//! parameter of the kind's schema with defaults filled in, except parameters marked
//! `added_later` whose value equals their default (so introducing a parameter never changes
//! existing keys). Values use [`dsl::Value::to_canonical_json`], except that
//! - a reference becomes `{"key": <key of the referenced instance>}` (Merkle propagation), and
//! - a path becomes `{"content": C}`: for a file its blake3, for a directory `{relative path:
//!   blake3}` over every file below it (entries whose name starts with `.` are skipped), for a glob
//!   `{path relative to the glob's non-glob prefix: blake3}` — the files of
//!   [`dsl::files::list`], the same enumeration the readers use (symlinks followed, dangling
//!   ones an error, an existing literal path before a glob).
//!
//! Neither absolute paths nor node names enter a tree, so renaming a node or moving the project
//! keeps every key. `key = blake3_hex(canonical(tree))` where `canonical` is compact JSON with
//! object fields sorted recursively (explicitly: serde_json's `preserve_order` is enabled in this
//! workspace, so insertion order would otherwise leak into the digest).

use crate::target::Target;
use anyhow::{anyhow, Context, Result};
use dsl::{Instance, KindSchema, Registry, Value};
use serde_json::Value as J;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Content hashing of one file (hex blake3). The store implements it with a cache keyed by
/// (path, size, mtime, inode); [`PlainHasher`] reads every time.
pub trait FileHasher {
    fn hash_file(&self, path: &Path) -> Result<String>;
    /// Hashes of many files, in order (implementations batch their cache lookups).
    fn hash_files(&self, paths: &[PathBuf]) -> Result<Vec<String>> {
        paths.iter().map(|p| self.hash_file(p)).collect()
    }
}

/// Hashes by reading the file, no cache.
pub struct PlainHasher;

impl FileHasher for PlainHasher {
    fn hash_file(&self, path: &Path) -> Result<String> {
        let mut h = blake3::Hasher::new();
        h.update_mmap(path)
            .with_context(|| format!("hashing {}", path.display()))?;
        Ok(h.finalize().to_hex().to_string())
    }
}

impl FileHasher for store::Store {
    fn hash_file(&self, path: &Path) -> Result<String> {
        store::Store::hash_file(self, path)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("hashing {}", path.display()))
    }
    fn hash_files(&self, paths: &[PathBuf]) -> Result<Vec<String>> {
        store::Store::hash_files(self, paths)
            .map_err(anyhow::Error::from)
            .context("hashing input files")
    }
}

/// Remembers every hash for the lifetime of one plan, so a file shared by many variants is
/// looked up once.
pub struct MemoHasher<'a> {
    inner: &'a dyn FileHasher,
    memo: RefCell<HashMap<PathBuf, String>>,
}

impl<'a> MemoHasher<'a> {
    pub fn new(inner: &'a dyn FileHasher) -> Self {
        MemoHasher {
            inner,
            memo: RefCell::new(HashMap::new()),
        }
    }
}

impl FileHasher for MemoHasher<'_> {
    fn hash_file(&self, path: &Path) -> Result<String> {
        if let Some(h) = self.memo.borrow().get(path) {
            return Ok(h.clone());
        }
        let h = self.inner.hash_file(path)?;
        self.memo.borrow_mut().insert(path.to_path_buf(), h.clone());
        Ok(h)
    }
    fn hash_files(&self, paths: &[PathBuf]) -> Result<Vec<String>> {
        let missing: Vec<PathBuf> = {
            let memo = self.memo.borrow();
            paths
                .iter()
                .filter(|p| !memo.contains_key(*p))
                .cloned()
                .collect()
        };
        if !missing.is_empty() {
            let hashes = self.inner.hash_files(&missing)?;
            let mut memo = self.memo.borrow_mut();
            for (p, h) in missing.into_iter().zip(hashes) {
                memo.insert(p, h);
            }
        }
        let memo = self.memo.borrow();
        paths
            .iter()
            .map(|p| {
                memo.get(p)
                    .cloned()
                    .ok_or_else(|| anyhow!("no hash for {}", p.display()))
            })
            .collect()
    }
}

/// An instance with its key and key tree.
#[derive(Clone, Debug)]
pub struct Keyed {
    pub id: String,
    pub key: String,
    pub tree: J,
    /// The key whose artifact a reference to this instance reads (and whose key enters the
    /// referrer's tree): the instance's own key, except for a `select` node, where it is the
    /// winner's.
    pub output: String,
    /// Why the key is provisional: a select upstream (or this one) still waits for its scores,
    /// so it cannot name its winner yet — or cannot resolve from them (`stuck`).
    pub waiting: Option<String>,
    /// The wait will not end by building more: a select's built scores lack the metric.
    pub stuck: bool,
    /// For a node whose key depends on its device (`dtype auto`): `cuda` or `cpu`, as keyed
    /// ([`crate::target`]).
    pub keyed_for: Option<&'static str>,
}

/// `cuda` or `cpu` when `inst`'s key depends on the device it runs on (its `dtype` is `auto`),
/// by `target`; `None` otherwise.
fn keyed_for(inst: &Instance, target: &Target) -> Option<&'static str> {
    let auto = inst.params.get("dtype").and_then(Value::as_str) == Some("auto");
    auto.then(|| match on_cuda(inst, target.cuda_for(&inst.node)) {
        true => "cuda",
        false => "cpu",
    })
}

/// A resolved `select` instance: the index of the winning candidate, every candidate's score
/// and whether another candidate had the winner's score (ties go to the first in sweep order).
#[derive(Clone, Debug, PartialEq)]
pub struct Chosen {
    pub winner: usize,
    pub values: Vec<f64>,
    pub tie: bool,
}

/// Resolves a select instance from its scores' keys: `None` while one is not built.
pub type SelectResolver<'a> = dyn Fn(&Instance, &[String]) -> Result<Option<Chosen>> + 'a;

/// A resolver for callers without a store: every select waits.
pub fn unresolved(_: &Instance, _: &[String]) -> Result<Option<Chosen>> {
    Ok(None)
}

/// Returns `v` with every object's fields in sorted order (recursively).
pub fn sorted(v: &J) -> J {
    match v {
        J::Object(m) => {
            let mut fields: Vec<(&String, &J)> = m.iter().collect();
            fields.sort_by(|a, b| a.0.cmp(b.0));
            let mut out = serde_json::Map::new();
            for (k, x) in fields {
                out.insert(k.clone(), sorted(x));
            }
            J::Object(out)
        }
        J::Array(a) => J::Array(a.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// Compact JSON with object fields sorted recursively: the byte string that is hashed.
pub fn canonical_string(v: &J) -> String {
    sorted(v).to_string()
}

/// `blake3_hex(canonical_string(tree))`.
pub fn digest(tree: &J) -> String {
    blake3::hash(canonical_string(tree).as_bytes())
        .to_hex()
        .to_string()
}

/// True when `v` is the declared default of `spec` (`Null` for optionals).
fn is_default(spec: &dsl::ParamSpec, v: &Value) -> bool {
    match &spec.default {
        dsl::Default::Value(d) => d == v,
        dsl::Default::Optional => *v == Value::Null,
        dsl::Default::Required => false,
    }
}

/// Builds the key tree of one instance. `input_key` maps an instance id to its (already
/// computed) key.
pub fn key_tree(
    schema: &KindSchema,
    inst: &Instance,
    root_dir: &Path,
    input_key: &dyn Fn(&str) -> Option<String>,
    (hasher, target): (&dyn FileHasher, &Target),
) -> Result<J> {
    let cuda = target.cuda_for(&inst.node);
    let mut params = serde_json::Map::new();
    for spec in schema.params.iter().filter(|p| p.semantic) {
        let v = inst.params.get(spec.name).unwrap_or(&Value::Null);
        let resolved;
        let v = if spec.name == "precision" {
            match resolve_precision(inst, cuda) {
                Some(p) => {
                    resolved = Value::Str(p.into());
                    &resolved
                }
                None => continue,
            }
        } else if spec.added_later && is_default(spec, v) {
            continue;
        } else if spec.name == "dtype" && v.as_str() == Some("auto") {
            resolved = Value::Str(resolve_auto_dtype(inst, cuda).into());
            &resolved
        } else {
            v
        };
        let j = value_json(v, root_dir, input_key, hasher)
            .with_context(|| format!("node {}: parameter `{}`", inst.id, spec.name))?;
        params.insert(spec.name.to_string(), j);
    }
    Ok(sorted(&serde_json::json!({
        "kind": schema.name,
        "version": schema.version,
        "params": J::Object(params),
    })))
}

/// The dtype a node's `dtype=auto` resolves to, which is what determines its result and so
/// what enters the key: [`dsl::device::Dtype::resolve`] (f32 on CPU, bf16 on CUDA) for the
/// device the node asks for (`auto` = CUDA when `auto_cuda`: the machine that builds it has one,
/// [`crate::target`]), the same rule the stages apply to the device they are given. The device
/// itself stays out of the key.
/// A training node's explicit `precision` names its compute dtype and wins over `dtype auto`
/// (`kinds::train::Precision::compute`).
pub fn resolve_auto_dtype(inst: &Instance, auto_cuda: bool) -> &'static str {
    use dsl::device::Dtype;
    let explicit = precision_of(inst).compute();
    match explicit {
        Dtype::Auto => Dtype::Auto.resolve(on_cuda(inst, auto_cuda)).name(),
        d => d.name(),
    }
}

/// What a training node's `precision` adds to its key: the resolved precision
/// ([`kinds::train::Precision::resolve`]) where it computes differently from what its key's
/// `dtype` alone meant before `precision` existed — only `bf16-mixed` (`dtype f32` meant f32,
/// `dtype bf16` pure bf16) —, else nothing, so every earlier key keeps its meaning: CPU nodes
/// (`auto` = f32) and explicit `dtype bf16` nodes keep their keys, a CUDA node with `dtype
/// auto` (pure bf16 before, bf16-mixed now) gets a new one.
pub fn resolve_precision(inst: &Instance, auto_cuda: bool) -> Option<&'static str> {
    use dsl::device::Dtype;
    use kinds::train::Precision;
    let dtype = inst
        .params
        .get("dtype")
        .and_then(|v| v.as_str())
        .and_then(Dtype::parse)
        .unwrap_or(Dtype::Auto);
    match precision_of(inst).resolve(dtype, on_cuda(inst, auto_cuda)) {
        Precision::Bf16Mixed => Some(Precision::Bf16Mixed.name()),
        _ => None,
    }
}

/// A node's `precision` (`auto` where it has none).
fn precision_of(inst: &Instance) -> kinds::train::Precision {
    use kinds::train::Precision;
    inst.params
        .get("precision")
        .and_then(|v| v.as_str())
        .and_then(Precision::parse)
        .unwrap_or(Precision::Auto)
}

/// Whether the node runs on CUDA: the device it asks for, `auto` = `auto_cuda` (the target has
/// CUDA for it).
pub fn on_cuda(inst: &Instance, auto_cuda: bool) -> bool {
    use dsl::device::Device;
    let device = inst
        .params
        .get("device")
        .and_then(|v| v.as_str())
        .and_then(Device::parse)
        .unwrap_or(Device::Auto);
    match device {
        Device::Auto => auto_cuda,
        d => d.is_cuda(0),
    }
}

fn value_json(
    v: &Value,
    root_dir: &Path,
    input_key: &dyn Fn(&str) -> Option<String>,
    hasher: &dyn FileHasher,
) -> Result<J> {
    Ok(match v {
        Value::Ref(id) => {
            let k = input_key(id)
                .ok_or_else(|| anyhow!("input `{id}` has no key yet (not planned before)"))?;
            serde_json::json!({ "key": k })
        }
        Value::Path(p) => serde_json::json!({ "content": path_content(root_dir, p, hasher)? }),
        Value::List(l) => J::Array(
            l.iter()
                .map(|x| value_json(x, root_dir, input_key, hasher))
                .collect::<Result<_>>()?,
        ),
        Value::Record(r) => {
            let mut m = serde_json::Map::new();
            for (k, x) in r {
                m.insert(k.clone(), value_json(x, root_dir, input_key, hasher)?);
            }
            J::Object(m)
        }
        other => other.to_canonical_json(),
    })
}

/// Content of a path parameter (see the module docs): a file's hash, or a map of relative
/// path → hash for a directory or glob, over exactly the files [`dsl::files::list`] gives the
/// readers. Errors name the path as written.
pub fn path_content(root_dir: &Path, p: &str, hasher: &dyn FileHasher) -> Result<J> {
    let listing = dsl::files::list(root_dir, p)
        .map_err(|e| anyhow!("{e} (relative to {})", root_dir.display()))?;
    let paths: Vec<PathBuf> = listing.paths().into_iter().map(Path::to_path_buf).collect();
    let hashes = hasher.hash_files(&paths)?;
    match listing {
        dsl::files::Listing::File(_) => {
            Ok(J::String(hashes.into_iter().next().unwrap_or_default()))
        }
        dsl::files::Listing::Many(files) => {
            let m: BTreeMap<String, String> =
                files.into_iter().map(|f| f.rel).zip(hashes).collect();
            Ok(J::Object(
                m.into_iter().map(|(k, h)| (k, J::String(h))).collect(),
            ))
        }
    }
}

/// Hashes, in one batch, every file that the instances' semantic path parameters name, so that
/// a recipe of N nodes reading files costs one file-hash cache lookup (and one cache write), not
/// N; with a memoising `hasher` ([`MemoHasher`]) the per-node pass then finds every hash. Errors
/// (a missing file, an unreadable one) are left to that pass, which reports them at the node.
fn prefetch_paths(
    instances: &[&Instance],
    registry: &Registry,
    root_dir: &Path,
    hasher: &dyn FileHasher,
) {
    fn walk<'v>(v: &'v Value, out: &mut Vec<&'v str>) {
        match v {
            Value::Path(p) => out.push(p),
            Value::List(l) => l.iter().for_each(|x| walk(x, out)),
            Value::Record(r) => r.values().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut written = Vec::new();
    for inst in instances {
        let Some(schema) = registry.get(&inst.kind) else {
            continue;
        };
        for spec in schema.params.iter().filter(|p| p.semantic) {
            if let Some(v) = inst.params.get(spec.name) {
                walk(v, &mut written);
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    let mut paths = Vec::new();
    for p in written {
        if !seen.insert(p) {
            continue;
        }
        if let Ok(listing) = dsl::files::list(root_dir, p) {
            paths.extend(listing.paths().into_iter().map(Path::to_path_buf));
        }
    }
    if paths.len() > 1 {
        let _ = hasher.hash_files(&paths);
    }
}

/// Computes keys of `instances`, which must be in topological order (inputs first). A reference
/// enters a tree as the referenced instance's [`Keyed::output`]; a select instance is keyed by
/// [`select_tree`] and resolved by `resolve`.
pub fn compute_keys(
    instances: &[&Instance],
    registry: &Registry,
    root_dir: &Path,
    (hasher, target): (&dyn FileHasher, &Target),
    resolve: &SelectResolver<'_>,
) -> Result<Vec<Keyed>> {
    prefetch_paths(instances, registry, root_dir, hasher);
    // id → (output key, waiting, stuck)
    let mut seen: HashMap<String, (String, Option<String>, bool)> =
        HashMap::with_capacity(instances.len());
    let mut out = Vec::with_capacity(instances.len());
    for inst in instances {
        let schema = registry
            .get(&inst.kind)
            .ok_or_else(|| anyhow!("node {}: unknown kind `{}`", inst.id, inst.kind))?;
        let lookup = |id: &str| seen.get(id).map(|(k, _, _)| k.clone());
        let (mut waiting, mut stuck) = inst
            .inputs
            .iter()
            .find_map(|(_, i)| {
                let (_, w, s) = seen.get(i)?;
                w.clone().map(|w| (Some(w), *s))
            })
            .unwrap_or((None, false));
        let (tree, key, output) = if inst.kind == dsl::schema::SELECT_KIND {
            let (tree, chosen) = select_tree(schema, inst, &lookup, resolve)?;
            let key = digest(&tree);
            let output = match &chosen {
                Ok(Some(c)) => lookup(&select_refs(inst, "from")[c.winner]).unwrap_or_default(),
                Ok(None) => {
                    waiting.get_or_insert_with(|| format!("waiting for the scores of {}", inst.id));
                    key.clone()
                }
                Err(e) => {
                    waiting = Some(format!("{} cannot select: {e:#}", inst.id));
                    stuck = true;
                    key.clone()
                }
            };
            (tree, key, output)
        } else {
            let tree = key_tree(schema, inst, root_dir, &lookup, (hasher, target))?;
            let key = digest(&tree);
            (tree, key.clone(), key)
        };
        seen.insert(inst.id.clone(), (output.clone(), waiting.clone(), stuck));
        out.push(Keyed {
            id: inst.id.clone(),
            key,
            tree,
            output,
            waiting,
            stuck,
            keyed_for: keyed_for(inst, target),
        });
    }
    Ok(out)
}

/// The instance ids a select instance's list parameter `param` (`from`, `scores`) refers to.
pub fn select_refs(inst: &Instance, param: &str) -> Vec<String> {
    inst.params
        .get(param)
        .and_then(Value::as_list)
        .unwrap_or(&[])
        .iter()
        .filter_map(|v| match v {
            Value::Ref(id) => Some(id.clone()),
            _ => None,
        })
        .collect()
}

/// The key tree of a select instance:
/// `{"kind": "select", "version": V, "params": {"from": [{"key": K}…], "scores": [{"key": K}…],
/// "by": B, "goal": G, "over": O?}, "values": [score…]}` — every candidate's key, every score's
/// key and, once every score is built, the scores' values (absent before: the key is then
/// provisional). Also returns the resolution (an error when the built scores lack the metric).
#[allow(clippy::type_complexity)]
pub fn select_tree(
    schema: &KindSchema,
    inst: &Instance,
    input_key: &dyn Fn(&str) -> Option<String>,
    resolve: &SelectResolver<'_>,
) -> Result<(J, Result<Option<Chosen>>)> {
    let keys_of = |param: &str| -> Result<Vec<String>> {
        select_refs(inst, param)
            .iter()
            .map(|id| {
                input_key(id)
                    .ok_or_else(|| anyhow!("node {}: input `{id}` has no key yet", inst.id))
            })
            .collect()
    };
    let (from, scores) = (keys_of("from")?, keys_of("scores")?);
    let as_keys =
        |ks: &[String]| J::Array(ks.iter().map(|k| serde_json::json!({ "key": k })).collect());
    let mut params = serde_json::Map::new();
    params.insert("from".into(), as_keys(&from));
    params.insert("scores".into(), as_keys(&scores));
    for p in ["by", "goal", "over"] {
        match inst.params.get(p) {
            Some(Value::Null) | None => {}
            Some(v) => {
                params.insert(p.into(), v.to_canonical_json());
            }
        }
    }
    let chosen = resolve(inst, &scores);
    let mut tree = serde_json::json!({
        "kind": schema.name,
        "version": schema.version,
        "params": J::Object(params),
    });
    if let Ok(Some(c)) = &chosen {
        tree["values"] = serde_json::json!(c.values);
    }
    Ok((sorted(&tree), chosen))
}
