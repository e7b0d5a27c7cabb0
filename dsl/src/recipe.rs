//! The validated recipe and its sweep expansion (types shared with the runner).

use crate::diag::Diag;
use crate::value::Value;
use miette::{NamedSource, SourceSpan};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// A place in a recipe source: which file (index into `Recipe::sources`) and where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    pub file: usize,
    pub span: SourceSpan,
}

/// One source file of a recipe (the root and its includes).
#[derive(Clone, Debug)]
pub struct SourceFile {
    /// Name to show in diagnostics: the path as the user gave it / relative to the root's dir.
    pub name: String,
    pub path: PathBuf,
    pub text: String,
}

/// A declared node after validation: every parameter of its schema present (defaults filled,
/// `Value::Null` for unset optionals), references checked, paths rebased on `Recipe::root_dir`.
#[derive(Clone, Debug)]
pub struct NodeDecl {
    pub name: String,
    pub kind: String,
    pub params: BTreeMap<String, Value>,
    /// Where each parameter that the recipe set explicitly was written; a record's fields
    /// also as `record.field`, at the value.
    pub param_locs: BTreeMap<String, Loc>,
    pub loc: Loc,
    /// The node's `resources { … }` settings for a cluster executor, in source order (empty
    /// when absent). Not parameters: they never enter `params`, so never a key.
    pub resources: Vec<Setting>,
}

/// One `name value…` line of an `executor` block, a `kind` rule or a node's `resources`.
/// The DSL checks only the form (one or more string, integer, float or boolean values; no
/// properties, no block; each name once per block): names and values are the executor's to
/// check, reporting at `loc` / `value_loc` with [`Recipe::diag_at`].
#[derive(Clone, Debug, PartialEq)]
pub struct Setting {
    /// The setting's name as written (`gpus-per-node`).
    pub name: String,
    /// Its values, in order (at least one). Strings stay `Value::Str`.
    pub values: Vec<Value>,
    /// The whole line: from the name to the end of the last value.
    pub loc: Loc,
    /// The first value.
    pub value_loc: Loc,
}

/// A `kind NAME { … }` rule inside an executor block: settings that override the block's for
/// every node of kind `kind`.
#[derive(Clone, Debug, PartialEq)]
pub struct KindRule {
    /// The kind name (a registered kind).
    pub kind: String,
    /// The rule's settings, in source order.
    pub settings: Vec<Setting>,
    /// The kind name argument.
    pub loc: Loc,
}

/// A top-level `executor NAME { … }` block: settings for one executor (e.g. `slurm`). Not
/// parameters: no executor setting enters a key.
#[derive(Clone, Debug, PartialEq)]
pub struct ExecutorBlock {
    /// The executor name (`slurm`); unique within a recipe and its includes.
    pub name: String,
    /// The block's settings (those that are not `kind` rules), in source order.
    pub settings: Vec<Setting>,
    /// The `kind` rules, in source order (one per kind).
    pub rules: Vec<KindRule>,
    /// The executor name argument.
    pub loc: Loc,
}

/// One sweep axis: a group of (node, param) that vary together (`zip`), each with the same
/// number of values. Axes combine as a grid.
#[derive(Clone, Debug)]
pub struct Axis {
    pub members: Vec<AxisMember>,
    pub loc: Loc,
}

#[derive(Clone, Debug)]
pub struct AxisMember {
    pub node: String,
    pub param: String,
    pub values: Vec<Value>,
}

/// A validated recipe.
#[derive(Clone, Debug)]
pub struct Recipe {
    /// Directory of the root recipe file; all `Value::Path`s are relative to it.
    pub root_dir: PathBuf,
    /// Root file first, then includes.
    pub sources: Vec<SourceFile>,
    /// Nodes in declaration order.
    pub nodes: Vec<NodeDecl>,
    pub axes: Vec<Axis>,
    /// `executor` blocks of the root file and its includes, in declaration order (names unique).
    pub executors: Vec<ExecutorBlock>,
    /// What the kinds' recipe-wide checks warn about (located, in declaration order): the
    /// caller shows them ([`crate::Diagnostics::render_warnings`]); they never fail a load.
    pub warnings: Vec<Diag>,
    /// What the kinds' recipe-wide checks say about a node for its plan (by node name, e.g. a
    /// training node's memory estimate).
    pub notes: std::collections::BTreeMap<String, Vec<String>>,
}

impl Recipe {
    /// The declared node called `name`.
    pub fn node(&self, name: &str) -> Option<&NodeDecl> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The `executor NAME { … }` block for executor `name`, if the recipe has one.
    pub fn executor(&self, name: &str) -> Option<&ExecutorBlock> {
        self.executors.iter().find(|e| e.name == name)
    }

    /// An error at `loc` in the style of the loader's: `file:line:col`, the source line with
    /// `label` under the span, and `help` when given. For problems found after loading (e.g.
    /// an executor rejecting a [`Setting`]); a `loc` whose file is not one of
    /// [`Recipe::sources`] gives an unlocated error. Wrap it with `Diagnostics::from(…)` to
    /// render it.
    pub fn diag_at(
        &self,
        loc: Loc,
        message: impl Into<String>,
        label: impl Into<String>,
        help: Option<String>,
    ) -> Diag {
        let Some(f) = self.sources.get(loc.file) else {
            return Diag::bare(message).help_opt(help);
        };
        let src = Arc::new(NamedSource::new(f.name.clone(), f.text.clone()));
        Diag::at(&src, loc.span, message, label).help_opt(help)
    }
}

/// A concrete node of the expanded graph: a declared node with the sweep assignments that
/// reach it (its own and its inputs'). Nodes no axis reaches appear once, shared by all variants.
#[derive(Clone, Debug)]
pub struct Instance {
    /// Stable readable id: `name` or `name[param=v,other.param=w]` (own params unqualified,
    /// upstream ones as `node.param`, in axis declaration order).
    pub id: String,
    pub node: String,
    pub kind: String,
    /// Parameters with this instance's sweep values applied; `Ref`s name *instance ids*.
    pub params: BTreeMap<String, Value>,
    /// (parameter path, input instance id) for every reference, at any depth
    /// (e.g. `("sources[1].name", "web")`), in parameter order.
    pub inputs: Vec<(String, String)>,
    /// The sweep assignments that reach this instance, as (`node.param`, value).
    pub assignments: Vec<(String, Value)>,
}

/// One point of the sweep grid.
#[derive(Clone, Debug)]
pub struct Variant {
    /// `beta=0.1,t=0.3` style name (empty when the recipe has no sweep).
    pub name: String,
    pub assignments: Vec<(String, Value)>,
    /// Instance ids that make up this variant (all nodes of the recipe, one instance each).
    pub instances: Vec<String>,
}

/// The recipe expanded over its sweep: instances in topological order (inputs first).
#[derive(Clone, Debug)]
pub struct Expanded {
    pub instances: Vec<Instance>,
    pub variants: Vec<Variant>,
}

impl Expanded {
    pub fn instance(&self, id: &str) -> Option<&Instance> {
        self.instances.iter().find(|i| i.id == id)
    }
}
