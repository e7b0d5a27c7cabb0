//! temper's recipe language. Parses KDL 2.0 recipe files (with `include`s), validates every
//! node against the kind schemas registered in a [`Registry`], applies `--set` overrides and
//! expands sweep axes into shared instances. Reports all errors of a file at once, as miette
//! diagnostics with file:line:col; the warnings of kinds' recipe-wide checks (which may consult
//! the machine the load is told of, module `context`) come back in [`Recipe::warnings`].
//! Knows nothing of torch or storage.
//!
//! Cluster settings (`executor` blocks, a node's `resources`) are read into
//! [`Recipe::executors`] and [`NodeDecl::resources`], never into parameters, so never into keys
//! (module `executor`).
//!
//! Entry points: [`load`] / [`load_str`] (text → validated [`Recipe`]), [`load_with`] (the same
//! with [`LoadOptions`]: resource limits and untrusted mode) and [`expand`] (recipe →
//! [`Expanded`] instances and variants).
//!
//! A recipe may be hostile: every load is bounded in bytes, nesting, nodes, sweep variants and
//! expansion size before the work is done ([`limits`]); the KDL parser runs on a stack sized
//! for the text (module `scan`); `include` reads recipe files only; untrusted mode confines every
//! path to the recipe's repository ([`LoadOptions`]).

mod context;
mod defaults;
pub mod device;
mod diag;
mod executor;
mod expand;
pub mod files;
mod include;
mod lexical;
pub mod limits;
mod overrides;
mod parse;
pub mod recipe;
mod recognize;
mod record_param;
mod refs;
mod repeat;
mod scan;
pub mod schema;
pub mod select;
pub mod suggest;
mod sweep;
mod typecheck;
mod untrusted;
mod validate;
pub mod value;
mod window;

pub use diag::{Diag, Diagnostics};
pub use expand::expand;
pub use limits::LoadOptions;
pub use recipe::{
    Axis, AxisMember, ExecutorBlock, Expanded, Instance, KindRule, Loc, NodeDecl, Recipe, Setting,
    SourceFile, Variant,
};
pub use schema::{
    CheckContext, Default, Findings, KindSchema, Machine, ParamIssue, ParamSpec, ParamType,
    RecipeCheck, Registry,
};
pub use value::Value;

use std::io::Read;
use std::path::{Path, PathBuf};

/// Loads and validates the recipe at `path` with `--set` overrides (`node.param=value`).
/// File names in diagnostics are `path` as given (includes joined onto it), so a relative
/// `path` gives relative names. `Recipe::root_dir` is `path`'s parent (`.` when none).
/// Default [`LoadOptions`].
pub fn load(path: &Path, registry: &Registry, overrides: &[String]) -> Result<Recipe, Diagnostics> {
    load_with(path, registry, overrides, &LoadOptions::default())
}

/// [`load`] with explicit limits and mode.
pub fn load_with(
    path: &Path,
    registry: &Registry,
    overrides: &[String],
    opts: &LoadOptions,
) -> Result<Recipe, Diagnostics> {
    let shown = parse::show_path(path);
    let text = read_root(path, &shown, opts)?;
    let root_dir = validate::parent_dir(path);
    load_inner(
        shown,
        path.to_path_buf(),
        text,
        root_dir,
        registry,
        overrides,
        opts,
    )
}

/// The root recipe's text, read up to the per-file limit (a larger file is refused with the
/// error at the byte where the limit is reached).
fn read_root(path: &Path, shown: &str, opts: &LoadOptions) -> Result<String, Diagnostics> {
    let cannot = |e: &dyn std::fmt::Display| {
        Diagnostics::from_message(format!("cannot read recipe `{shown}`: {e}"))
    };
    let f = std::fs::File::open(path).map_err(|e| cannot(&e))?;
    if f.metadata().is_ok_and(|m| m.is_dir()) {
        return Err(cannot(&"it is a directory"));
    }
    let limit = opts.max_file_bytes.min(opts.max_total_bytes);
    let mut bytes = Vec::new();
    f.take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| cannot(&e))?;
    if bytes.len() > limit {
        let head = String::from_utf8_lossy(&bytes[..limit]).into_owned();
        let at = head.len();
        let src = std::sync::Arc::new(miette::NamedSource::new(shown, head));
        let d = Diag::at(
            &src,
            miette::SourceSpan::new(at.into(), 0),
            format!(
                "recipe `{shown}` is larger than the limit of {} per file",
                limits::bytes(limit)
            ),
            "the limit is reached here",
        )
        .help("split it into files joined with `include`, or keep data in data files");
        return Err(Diagnostics::new(vec![d]));
    }
    String::from_utf8(bytes).map_err(|_| cannot(&"stream did not contain valid UTF-8"))
}

/// Like [`load`] for a recipe held in memory: `name` is shown in diagnostics, `root_dir` is the
/// directory paths and includes are resolved against. Default [`LoadOptions`].
pub fn load_str(
    name: &str,
    text: &str,
    root_dir: &Path,
    registry: &Registry,
    overrides: &[String],
) -> Result<Recipe, Diagnostics> {
    load_str_with(
        name,
        text,
        root_dir,
        registry,
        overrides,
        &LoadOptions::default(),
    )
}

/// [`load_str`] with explicit limits and mode (the text is not subject to the byte limits;
/// its includes are).
pub fn load_str_with(
    name: &str,
    text: &str,
    root_dir: &Path,
    registry: &Registry,
    overrides: &[String],
    opts: &LoadOptions,
) -> Result<Recipe, Diagnostics> {
    let file_name = Path::new(name)
        .file_name()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("recipe.kdl"));
    load_inner(
        name.to_string(),
        root_dir.join(file_name),
        text.to_string(),
        root_dir.to_path_buf(),
        registry,
        overrides,
        opts,
    )
}

fn load_inner(
    name: String,
    path: PathBuf,
    text: String,
    root_dir: PathBuf,
    registry: &Registry,
    overrides: &[String],
    opts: &LoadOptions,
) -> Result<Recipe, Diagnostics> {
    let repo = untrusted::find_repo(&root_dir);
    let mut sources = parse::Sources::new(opts.clone(), repo);
    sources.total_bytes = text.len();
    let root = sources.add(name, path, text, PathBuf::new());
    sources.load_file(root, &mut Vec::new());
    sources.apply_defaults();
    let mut v = validate::Validator {
        reg: registry,
        s: sources,
        root_dir,
        decls: Vec::new(),
        names: std::default::Default::default(),
        refs: Vec::new(),
        failed: std::default::Default::default(),
        overrides: Vec::new(),
        swept: std::default::Default::default(),
        field_locs: Vec::new(),
        warnings: Vec::new(),
        notes: std::collections::BTreeMap::new(),
    };
    if v.s.syntax_failed {
        return Err(finish(v));
    }
    for o in overrides {
        v.parse_override(o);
    }
    v.prescan_sweeps();
    if !v.sweep_sizes_ok() {
        return Err(finish(v));
    }
    let nodes = std::mem::take(&mut v.s.nodes);
    for (file, node) in &nodes {
        if let Some((schema, name)) = v.declare(*file, node) {
            v.node(*file, node, schema, &name);
        }
    }
    v.unknown_override_nodes();
    v.check_rule_kinds();
    let axes = v.sweeps();
    v.select_produces();
    let edges = v.resolve_refs();
    v.cycles(&edges);
    // A required parameter given only by a sweep takes the axis' first value as its base.
    let index: std::collections::HashMap<String, usize> = v
        .decls
        .iter()
        .enumerate()
        .map(|(i, d)| (d.name.clone(), i))
        .collect();
    for ax in &axes {
        for m in &ax.members {
            if let Some(d) = index
                .get(&m.node)
                .map(|i| &mut v.decls[*i])
                .filter(|_| !m.param.contains('.'))
            {
                if d.params.get(&m.param).is_none_or(|x| *x == Value::Null) {
                    if let Some(first) = m.values.first() {
                        d.params.insert(m.param.clone(), first.clone());
                    }
                }
            }
        }
    }
    v.run_checks();
    if !v.s.diags.is_empty() {
        return Err(finish(v));
    }
    let recipe = Recipe {
        root_dir: v.root_dir,
        sources: v.s.files,
        nodes: v.decls,
        axes,
        executors: v.s.executors,
        warnings: v.warnings,
        notes: v.notes,
    };
    let diags = select::check(&recipe, registry);
    if !diags.is_empty() {
        return Err(Diagnostics::new(diags));
    }
    if let Err(d) = expand::check_size(&recipe, opts, &v.s.srcs) {
        return Err(Diagnostics::new(vec![d]));
    }
    Ok(recipe)
}

/// Collects the diagnostics of a failed load, ordered by file then position; only the first
/// [`limits::MAX_SHOWN_ERRORS`] are kept, followed by a count of the others.
fn finish(v: validate::Validator<'_>) -> Diagnostics {
    let srcs = v.s.srcs.clone();
    let mut diags = v.s.diags;
    diags.sort_by_cached_key(|d| d.sort_key(&srcs));
    let n = diags.len();
    if n > limits::MAX_SHOWN_ERRORS {
        diags.truncate(limits::MAX_SHOWN_ERRORS);
        diags.push(Diag::bare(format!(
            "… and {} more errors (only the first {} are shown)",
            limits::count(n - limits::MAX_SHOWN_ERRORS),
            limits::MAX_SHOWN_ERRORS
        )));
    }
    Diagnostics::new(diags)
}

/// Test and fuzzing hooks; not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    /// Whether the pre-parse recogniser accepts `text` as KDL (module `scan`); the fuzzer
    /// checks that the `kdl` crate then parses it without error.
    pub fn recognizer_accepts(text: &str, max_depth: usize) -> bool {
        crate::recognize::recognize(text, max_depth).is_ok()
    }
}
