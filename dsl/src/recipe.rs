//! The validated recipe and its sweep expansion (types shared with the runner).

use crate::value::Value;
use miette::SourceSpan;
use std::collections::BTreeMap;
use std::path::PathBuf;

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
    /// Where each parameter that the recipe set explicitly was written.
    pub param_locs: BTreeMap<String, Loc>,
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
}

impl Recipe {
    pub fn node(&self, name: &str) -> Option<&NodeDecl> {
        self.nodes.iter().find(|n| n.name == name)
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
