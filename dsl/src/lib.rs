//! temper's recipe language. Parses KDL 2.0 recipe files (with `include`s), validates every
//! node against the kind schemas registered in a [`Registry`], applies `--set` overrides and
//! expands sweep axes into shared instances. Reports all errors of a file at once, as miette
//! diagnostics with file:line:col. Knows nothing of torch or storage.
//!
//! Entry points: [`load`] / [`load_str`] (text → validated [`Recipe`]) and [`expand`]
//! (recipe → [`Expanded`] instances and variants).

mod defaults;
mod diag;
mod expand;
pub mod files;
mod overrides;
mod parse;
pub mod recipe;
mod record;
mod refs;
mod repeat;
pub mod schema;
pub mod suggest;
mod sweep;
mod typecheck;
mod validate;
pub mod value;

pub use diag::{Diag, Diagnostics};
pub use expand::expand;
pub use recipe::{
    Axis, AxisMember, Expanded, Instance, Loc, NodeDecl, Recipe, SourceFile, Variant,
};
pub use schema::{Default, KindSchema, ParamIssue, ParamSpec, ParamType, Registry};
pub use value::Value;

use std::path::{Path, PathBuf};

/// Loads and validates the recipe at `path` with `--set` overrides (`node.param=value`).
/// File names in diagnostics are `path` as given (includes joined onto it), so a relative
/// `path` gives relative names. `Recipe::root_dir` is `path`'s parent (`.` when none).
pub fn load(path: &Path, registry: &Registry, overrides: &[String]) -> Result<Recipe, Diagnostics> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Diagnostics::from_message(format!(
            "cannot read recipe `{}`: {e}",
            parse::show_path(path)
        ))
    })?;
    let root_dir = validate::parent_dir(path);
    load_inner(
        parse::show_path(path),
        path.to_path_buf(),
        text,
        root_dir,
        registry,
        overrides,
    )
}

/// Like [`load`] for a recipe held in memory: `name` is shown in diagnostics, `root_dir` is the
/// directory paths and includes are resolved against.
pub fn load_str(
    name: &str,
    text: &str,
    root_dir: &Path,
    registry: &Registry,
    overrides: &[String],
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
    )
}

fn load_inner(
    name: String,
    path: PathBuf,
    text: String,
    root_dir: PathBuf,
    registry: &Registry,
    overrides: &[String],
) -> Result<Recipe, Diagnostics> {
    let mut sources = parse::Sources::new();
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
    };
    if v.s.syntax_failed {
        return Err(finish(v));
    }
    for o in overrides {
        v.parse_override(o);
    }
    v.prescan_sweeps();
    let nodes = std::mem::take(&mut v.s.nodes);
    for (file, node) in &nodes {
        if let Some((schema, name)) = v.declare(*file, node) {
            v.node(*file, node, schema, &name);
        }
    }
    v.unknown_override_nodes();
    let axes = v.sweeps();
    let edges = v.resolve_refs();
    v.cycles(&edges);
    // A required parameter given only by a sweep takes the axis' first value as its base.
    for ax in &axes {
        for m in &ax.members {
            if let Some(d) = v.decls.iter_mut().find(|d| d.name == m.node) {
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
    Ok(Recipe {
        root_dir: v.root_dir,
        sources: v.s.files,
        nodes: v.decls,
        axes,
    })
}

/// Collects the diagnostics of a failed load, ordered by file then position.
fn finish(v: validate::Validator<'_>) -> Diagnostics {
    let srcs = v.s.srcs.clone();
    let mut diags = v.s.diags;
    diags.sort_by_key(|d| d.sort_key(&srcs));
    Diagnostics::new(diags)
}
