//! Node-kind schemas: the typed declaration each kind registers, and the registry the
//! validator reads. Adding a kind never touches the parser: it registers a [`KindSchema`].

use crate::recipe::NodeDecl;
use crate::value::Value;
use std::collections::BTreeMap;

/// The type of a parameter.
#[derive(Clone, Debug)]
pub enum ParamType {
    Bool,
    Int {
        min: Option<i64>,
        max: Option<i64>,
    },
    Float {
        min: Option<f64>,
        max: Option<f64>,
    },
    Str,
    /// One of a fixed set of words.
    Enum(&'static [&'static str]),
    /// A local file, directory or glob, relative to the recipe file. Its *content* enters the key.
    Path,
    /// A compute device (`auto | cpu | cuda | cuda:N`, [`crate::device::Device`]): the syntax
    /// is checked with the recipe, and `cuda:N` against the machine when
    /// [`crate::LoadOptions::cuda_devices`] is known.
    Device,
    /// A reference to another node whose kind produces one of these artifact types
    /// (`KindSchema::produces`); empty = any.
    Ref(&'static [&'static str]),
    /// Several values of one type (`child v1 v2 v3` or a repeated child).
    List(Box<ParamType>),
    /// A child node `name arg… key=value…`: positional arguments fill `positional` fields in order,
    /// properties fill the rest.
    Record {
        positional: &'static [&'static str],
        fields: Vec<ParamSpec>,
    },
}

/// How a parameter gets its value when the recipe does not set it.
#[derive(Clone, Debug)]
pub enum Default {
    /// The recipe must set it.
    Required,
    /// Absent means `Value::Null`.
    Optional,
    /// This value.
    Value(Value),
}

/// A declared parameter of a kind.
#[derive(Clone, Debug)]
pub struct ParamSpec {
    pub name: &'static str,
    pub ty: ParamType,
    pub default: Default,
    /// Semantic parameters determine the result and enter the key; others (device, threads,
    /// logging) do not.
    pub semantic: bool,
    /// May appear several times as a child node; the value is then a `List` of the items.
    pub repeated: bool,
    /// Added after the kind's first release: while equal to its default it is left out of the
    /// key, so existing keys do not change when the parameter is introduced.
    pub added_later: bool,
    pub doc: &'static str,
}

impl ParamSpec {
    pub fn new(name: &'static str, ty: ParamType) -> Self {
        ParamSpec {
            name,
            ty,
            default: Default::Required,
            semantic: true,
            repeated: false,
            added_later: false,
            doc: "",
        }
    }
    pub fn default(mut self, v: Value) -> Self {
        self.default = Default::Value(v);
        self
    }
    pub fn optional(mut self) -> Self {
        self.default = Default::Optional;
        self
    }
    pub fn non_semantic(mut self) -> Self {
        self.semantic = false;
        self
    }
    pub fn repeated(mut self) -> Self {
        self.repeated = true;
        self
    }
    pub fn added_later(mut self) -> Self {
        self.added_later = true;
        self
    }
    pub fn doc(mut self, d: &'static str) -> Self {
        self.doc = d;
        self
    }
}

/// The declaration of a node kind.
#[derive(Clone, Debug)]
pub struct KindSchema {
    pub name: &'static str,
    /// Implementation version: bump when the kind's results change for the same parameters.
    pub version: u32,
    /// Artifact type this kind produces (`dataset`, `tokenizer`, `model`, …), matched by `Ref`.
    pub produces: &'static str,
    pub params: Vec<ParamSpec>,
    pub doc: &'static str,
    /// Cross-parameter validation run after types and references are checked (e.g. "exactly one
    /// of `path` or `tokenizer`"). Gets the declared node (defaults filled; `param_locs` tells
    /// which parameters the recipe set explicitly).
    pub check: Option<fn(&NodeDecl) -> Vec<ParamIssue>>,
    /// Validation that needs more than the node: the nodes it references, files they name,
    /// the machine ([`CheckContext`]). Run after every node's `check`, on nodes without
    /// errors; it may also warn ([`Findings`]).
    pub check_in_recipe: Option<RecipeCheck>,
    /// Bare words accepted after the node's name, each standing for `param=word`
    /// (`select best … max` is `goal=max`).
    pub words: &'static [(&'static str, &'static str)],
    /// Set by a kind whose result rows a `select` can rank (`by="NODE:DATA.METRIC"`): what the
    /// select check asks of the node `by` names. The language knows no particular kind.
    pub scores: Option<Scores>,
}

/// [`Scores::check`]: `(node, data, metric, recipe)` → `Ok`, or `(message, help)`.
pub type ScoresCheck = fn(&NodeDecl, &str, &str, &crate::Recipe) -> Result<(), (String, String)>;

/// What a kind whose results `select` ranks tells the select check ([`KindSchema::scores`]).
/// Errors are `(message, help)`; the message follows "`by` of `SELECT`: ".
#[derive(Clone, Copy, Debug)]
pub struct Scores {
    /// Node `node` of this kind scores dataset `data`, and its rows there carry `metric`.
    pub check: ScoresCheck,
    /// The models node `node` scores (a select's variants must be among them, or it scores one).
    pub models: fn(node: &NodeDecl) -> Vec<String>,
}

/// The kind the DSL expands specially: a `select` node collapses the variants of its `from` node
/// (module `select`).
pub const SELECT_KIND: &str = "select";

/// What a `select` kind declares it produces: a stand-in, since a select node produces whatever
/// its `from` node produces (references to it are checked against that).
pub const SELECT_PRODUCES: &str = "(the selected node's)";

/// A kind's recipe-wide check ([`KindSchema::check_in_recipe`]).
pub type RecipeCheck = fn(&NodeDecl, &CheckContext<'_>, &mut Findings);

pub use crate::context::{CheckContext, Findings, Machine, ParamIssue};

impl KindSchema {
    pub fn new(name: &'static str, version: u32, produces: &'static str) -> Self {
        KindSchema {
            name,
            version,
            produces,
            params: Vec::new(),
            doc: "",
            check: None,
            check_in_recipe: None,
            words: &[],
            scores: None,
        }
    }
    /// Lets `select` rank this kind's result rows ([`Scores`]).
    pub fn scores(mut self, s: Scores) -> Self {
        self.scores = Some(s);
        self
    }
    /// Bare words accepted after the name, as `(word, param)`: the word is the parameter's value.
    pub fn words(mut self, w: &'static [(&'static str, &'static str)]) -> Self {
        self.words = w;
        self
    }
    pub fn doc(mut self, d: &'static str) -> Self {
        self.doc = d;
        self
    }
    pub fn param(mut self, p: ParamSpec) -> Self {
        self.params.push(p);
        self
    }
    /// Declares several parameters at once (e.g. a family's shared training parameters).
    pub fn params(mut self, ps: impl IntoIterator<Item = ParamSpec>) -> Self {
        self.params.extend(ps);
        self
    }
    pub fn check(mut self, f: fn(&NodeDecl) -> Vec<ParamIssue>) -> Self {
        self.check = Some(f);
        self
    }
    pub fn check_in_recipe(mut self, f: RecipeCheck) -> Self {
        self.check_in_recipe = Some(f);
        self
    }
    pub fn find_param(&self, name: &str) -> Option<&ParamSpec> {
        self.params.iter().find(|p| p.name == name)
    }
}

/// Parameters every kind accepts; none of them is semantic.
pub fn common_params() -> Vec<ParamSpec> {
    vec![
        ParamSpec::new("device", ParamType::Device)
            .default(Value::Str("auto".into()))
            .non_semantic()
            .doc("auto | cpu | cuda | cuda:N"),
        ParamSpec::new(
            "threads",
            ParamType::Int {
                min: Some(0),
                max: None,
            },
        )
        .default(Value::Int(0))
        .non_semantic()
        .doc("CPU threads for this node (0 = libtorch default)"),
        ParamSpec::new(
            "log-every",
            ParamType::Int {
                min: Some(1),
                max: None,
            },
        )
        .default(Value::Int(10))
        .non_semantic()
        .doc("log metrics every N steps"),
    ]
}

/// All kinds known to the validator, by name.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    kinds: BTreeMap<&'static str, KindSchema>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }
    /// Registers a kind; the common parameters are appended unless the kind declares them.
    ///
    /// # Panics
    /// When the kind declares a parameter `resources`: that name is a node's cluster settings
    /// block, never a parameter.
    pub fn register(&mut self, mut schema: KindSchema) {
        assert!(
            schema.find_param(crate::executor::RESOURCES).is_none(),
            "kind `{}` declares a parameter `resources`, a name reserved for a node's cluster settings",
            schema.name
        );
        for p in common_params() {
            if schema.find_param(p.name).is_none() {
                schema.params.push(p);
            }
        }
        self.kinds.insert(schema.name, schema);
    }
    pub fn get(&self, kind: &str) -> Option<&KindSchema> {
        self.kinds.get(kind)
    }
    pub fn kinds(&self) -> impl Iterator<Item = &KindSchema> {
        self.kinds.values()
    }
}
