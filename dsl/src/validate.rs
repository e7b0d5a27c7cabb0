//! Validation of node declarations against their kind's schema.
//!
//! A parameter is written as a property (`lr=2e-5`) or a child with one argument (`lr 2e-5`);
//! a `List` parameter as a child with several arguments (`name v1 v2`); a `Record` parameter as
//! a child `name posarg… field=value…`. A `repeated` parameter may occur several times (as
//! properties or children; a child may carry several items) and its value is the `List` of all
//! items in source order; when absent it is its declared default, or the empty list when the
//! default is `Optional` (a `Required` repeated parameter needs at least one item). Any other
//! parameter set twice is an error. `--set` overrides replace whatever the files wrote.
//! A `resources { … }` child is not a parameter: it goes to `NodeDecl::resources`
//! (`executor.rs`).

use crate::diag::{Diag, Src};
use crate::executor::RESOURCES;
use crate::limits;
use crate::parse::{entry_span, value_span, Sources};
use crate::recipe::{Loc, NodeDecl};
use crate::schema::{Default, KindSchema, ParamSpec, ParamType, Registry};
use crate::suggest;
use crate::typecheck::{convert, PathCtx, TypeError};
use crate::value::Value;
use kdl::{KdlEntry, KdlNode, KdlValue};
use miette::SourceSpan;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What the validator knows of a declared name.
pub(crate) struct NameInfo {
    /// Kind name, `None` when the kind is unknown (errors about it are not cascaded).
    pub kind: Option<&'static str>,
    pub produces: Option<&'static str>,
    pub loc: Loc,
}

/// A reference written in the recipe, resolved once all names are known.
pub(crate) struct PendingRef {
    pub owner: String,
    pub param: String,
    pub target: String,
    pub allowed: &'static [&'static str],
    pub loc: Loc,
}

/// A parsed `--set node.param=value…`.
pub(crate) struct Override {
    pub node: String,
    pub param: String,
    pub file: usize,
    pub node_span: SourceSpan,
    pub param_span: SourceSpan,
    pub values: Vec<(KdlValue, SourceSpan)>,
}

/// One place a parameter is written.
enum Form<'n> {
    Prop(&'n KdlEntry),
    Child(&'n KdlNode),
    Set(&'n [(KdlValue, SourceSpan)]),
}

struct Occ<'n> {
    param: String,
    file: usize,
    span: SourceSpan,
    form: Form<'n>,
}

/// Shared state of one load.
pub(crate) struct Validator<'a> {
    pub reg: &'a Registry,
    pub s: Sources,
    pub root_dir: PathBuf,
    pub decls: Vec<NodeDecl>,
    pub names: BTreeMap<String, NameInfo>,
    pub refs: Vec<PendingRef>,
    /// Nodes with an error: their kind's `check` is not run (it would report cascades).
    pub failed: BTreeSet<String>,
    pub overrides: Vec<Override>,
    /// (node, param) named by a sweep axis: a required parameter may come from the sweep.
    pub swept: BTreeSet<(String, String)>,
    /// Where the fields of the record being read were written (`record.field`, at the value),
    /// moved into the node's `param_locs` once its parameters are read.
    pub field_locs: Vec<(String, Loc)>,
    /// Warnings of the kinds' recipe-wide checks (module `refs`).
    pub warnings: Vec<Diag>,
    /// Notes of the kinds' recipe-wide checks, by node ([`crate::Recipe::notes`]).
    pub notes: BTreeMap<String, Vec<String>>,
}

impl<'a> Validator<'a> {
    pub fn src(&self, file: usize) -> Src {
        self.s.srcs[file].clone()
    }

    pub fn push(&mut self, d: Diag) {
        self.s.diags.push(d);
    }

    fn type_error(&mut self, owner: &str, file: usize, span: SourceSpan, e: TypeError) {
        self.failed.insert(owner.to_string());
        let d = Diag::at(&self.s.srcs[file], span, e.message, e.label).help_opt(e.hint);
        self.push(d);
    }

    fn rel_dir(&self, file: usize) -> PathBuf {
        self.s.rel_dirs[file].clone()
    }

    /// Converts a scalar and records a reference when it is one.
    #[allow(clippy::too_many_arguments)]
    pub fn scalar(
        &mut self,
        owner: &str,
        param: &str,
        v: &KdlValue,
        ty: &ParamType,
        file: usize,
        span: SourceSpan,
    ) -> Option<Value> {
        let rel = self.rel_dir(file);
        let paths = PathCtx {
            root_dir: &self.root_dir,
            rel_dir: &rel,
            file_name: &self.s.files[file].name,
            untrusted: self.s.opts.untrusted.then_some(&self.s.repo),
            cuda_devices: self.s.opts.cuda_devices,
        };
        let ty = match ty {
            ParamType::List(inner) => inner.as_ref(),
            t => t,
        };
        let qualified = format!("{owner}.{param}");
        match convert(&qualified, v, ty, &paths) {
            Ok(val) => {
                if let (Value::Ref(t), ParamType::Ref(allowed)) = (&val, ty) {
                    self.refs.push(PendingRef {
                        owner: owner.to_string(),
                        param: param.to_string(),
                        target: t.clone(),
                        allowed,
                        loc: Loc { file, span },
                    });
                }
                Some(val)
            }
            Err(e) => {
                self.type_error(owner, file, span, e);
                None
            }
        }
    }

    /// Registers the node's name, reporting duplicates and unknown kinds. Returns the schema
    /// when the node should be validated.
    pub fn declare(&mut self, file: usize, node: &KdlNode) -> Option<(&'a KindSchema, String)> {
        let kind = node.name().value();
        let kind_shown = limits::printable(kind);
        let kspan = node.name().span();
        let src = self.src(file);
        let text = src.inner().as_str();
        let name_entry = node.entries().first().filter(|e| e.name().is_none());
        let name = match name_entry.map(|e| (e.value(), value_span(text, e))) {
            Some((KdlValue::String(s), sp)) => {
                if let Some(c) = limits::forbidden_char(s) {
                    let d = Diag::at(
                        &src,
                        sp,
                        format!(
                            "node name `{}` contains the control character {c}",
                            limits::printable(s)
                        ),
                        "invalid name",
                    )
                    .help("names become instance ids and file names: use printable characters");
                    self.push(d);
                    return None;
                }
                if s.is_empty() || s.contains(['.', '[', ']', '=', ',']) {
                    let d = Diag::at(
                        &self.src(file),
                        sp,
                        format!("invalid node name `{s}`"),
                        "invalid name",
                    )
                    .help("names may not be empty or contain `.`, `[`, `]`, `=` or `,`");
                    self.push(d);
                    return None;
                }
                (s.clone(), sp)
            }
            Some((v, sp)) => {
                let d = Diag::at(
                    &self.src(file),
                    sp,
                    format!("the name of a `{kind_shown}` node must be a string, found `{v}`"),
                    "not a name",
                );
                self.push(d);
                return None;
            }
            None => {
                let d = Diag::at(
                    &self.src(file),
                    kspan,
                    format!("`{kind_shown}` node has no name"),
                    "name missing",
                )
                .help(format!("write `{kind_shown} NAME key=value…`"));
                self.push(d);
                return None;
            }
        };
        let (name, nspan) = name;
        let schema = self.reg.get(kind);
        if let Some(prev) = self.names.get(&name) {
            let prev_loc = prev.loc;
            let d = Diag::at(
                &self.src(file),
                nspan,
                format!("duplicate node name `{name}`"),
                "declared again here",
            )
            .also(
                &self.src(prev_loc.file),
                prev_loc.span,
                "first declared here",
            )
            .help("node names must be unique across the recipe and its includes");
            self.push(d);
            return None;
        }
        self.names.insert(
            name.clone(),
            NameInfo {
                kind: schema.map(|s| s.name),
                produces: schema.map(|s| s.produces),
                loc: Loc { file, span: nspan },
            },
        );
        let Some(schema) = schema else {
            let kinds: Vec<&str> = self.reg.kinds().map(|k| k.name).collect();
            let mut hint = suggest::hint(kind, &kinds).unwrap_or_default();
            if !hint.is_empty() {
                hint.push(' ');
            }
            hint.push_str(&format!("known kinds: {}", suggest::list(&kinds)));
            let d = Diag::at(
                &self.src(file),
                kspan,
                format!("unknown node kind `{kind_shown}`"),
                "unknown kind",
            )
            .help(hint);
            self.push(d);
            return None;
        };
        Some((schema, name))
    }

    /// Validates a declared node: every parameter typed, defaults filled.
    pub fn node(&mut self, file: usize, node: &KdlNode, schema: &'a KindSchema, name: &str) {
        let src = self.src(file);
        let text = src.inner().as_str();
        let nloc = self.names[name].loc;
        let mut occs: Vec<Occ> = Vec::new();
        let resources = self.resources(file, node, name);
        for e in node.entries().iter().skip(1) {
            match e.name() {
                Some(k) if k.value() == RESOURCES => {}
                Some(k) => occs.push(Occ {
                    param: k.value().to_string(),
                    file,
                    span: entry_span(text, e),
                    form: Form::Prop(e),
                }),
                None if e
                    .value()
                    .as_string()
                    .is_some_and(|w| schema.words.iter().any(|(word, _)| *word == w)) =>
                {
                    let w = e.value().as_string().unwrap_or_default();
                    let param = schema.words.iter().find(|(word, _)| *word == w);
                    occs.push(Occ {
                        param: param.map_or(w, |p| p.1).to_string(),
                        file,
                        span: value_span(text, e),
                        form: Form::Prop(e),
                    });
                }
                None => {
                    let d = Diag::at(
                        &self.src(file),
                        value_span(text, e),
                        format!("unexpected argument after the name of `{name}`"),
                        "unexpected",
                    )
                    .help("parameters are written `key=value`");
                    self.push(d);
                    self.failed.insert(name.to_string());
                }
            }
        }
        for c in node
            .iter_children()
            .filter(|c| c.name().value() != RESOURCES)
        {
            occs.push(Occ {
                param: c.name().value().to_string(),
                file,
                span: c.name().span(),
                form: Form::Child(c),
            });
        }
        // Group by parameter, checking names and duplicates.
        let mut groups: BTreeMap<&'static str, Vec<Occ>> = BTreeMap::new();
        let pnames: Vec<&str> = schema.params.iter().map(|p| p.name).collect();
        for o in occs {
            let Some(spec) = schema.find_param(&o.param) else {
                self.unknown_param(name, schema, &pnames, o.file, o.span, &o.param);
                continue;
            };
            let g = groups.entry(spec.name).or_default();
            if let (false, Some(first)) = (spec.repeated, g.first()) {
                let d = Diag::at(
                    &self.src(o.file),
                    o.span,
                    format!("`{}` is set twice on `{name}`", spec.name),
                    "set again here",
                )
                .also(&self.src(first.file), first.span, "first set here")
                .help("remove one of them");
                self.push(d);
                self.failed.insert(name.to_string());
                continue;
            }
            g.push(o);
        }
        // --set overrides replace what the files wrote.
        let ovs: Vec<usize> = (0..self.overrides.len())
            .filter(|i| self.overrides[*i].node == name)
            .collect();
        let ov_store: Vec<(String, usize, SourceSpan)> = ovs
            .iter()
            .map(|i| {
                let o = &self.overrides[*i];
                (o.param.clone(), o.file, o.param_span)
            })
            .collect();
        let ov_values: Vec<Vec<(KdlValue, SourceSpan)>> = ovs
            .iter()
            .map(|i| self.overrides[*i].values.clone())
            .collect();
        for ((param, ofile, pspan), values) in ov_store.into_iter().zip(ov_values.iter()) {
            let Some(spec) = schema.find_param(&param) else {
                self.unknown_param(name, schema, &pnames, ofile, pspan, &param);
                continue;
            };
            groups.insert(
                spec.name,
                vec![Occ {
                    param,
                    file: ofile,
                    span: pspan,
                    form: Form::Set(values),
                }],
            );
        }
        let mut params = BTreeMap::new();
        let mut locs = BTreeMap::new();
        for spec in &schema.params {
            let Some(g) = groups.get(spec.name) else {
                let v = self.default_of(name, spec, nloc);
                params.insert(spec.name.to_string(), v);
                continue;
            };
            locs.insert(
                spec.name.to_string(),
                Loc {
                    file: g[0].file,
                    span: g[0].span,
                },
            );
            let mut items = Vec::new();
            for o in g {
                items.extend(self.occ_values(name, spec, o));
            }
            let v = if spec.repeated {
                Value::List(items)
            } else {
                items.pop().unwrap_or(Value::Null)
            };
            params.insert(spec.name.to_string(), v);
            for (field, loc) in self.field_locs.drain(..) {
                locs.entry(field).or_insert(loc);
            }
        }
        self.decls.push(NodeDecl {
            name: name.to_string(),
            kind: schema.name.to_string(),
            params,
            param_locs: locs,
            loc: nloc,
            resources,
        });
    }

    fn unknown_param(
        &mut self,
        node: &str,
        schema: &KindSchema,
        pnames: &[&str],
        file: usize,
        span: SourceSpan,
        param: &str,
    ) {
        let mut hint = suggest::hint(param, pnames).unwrap_or_default();
        if !hint.is_empty() {
            hint.push(' ');
        }
        hint.push_str(&format!(
            "`{}` parameters: {}",
            schema.name,
            suggest::list(pnames)
        ));
        let d = Diag::at(
            &self.src(file),
            span,
            format!(
                "unknown parameter `{param}` for `{node}` (a `{}` node)",
                schema.name
            ),
            "unknown parameter",
        )
        .help(hint);
        self.push(d);
        self.failed.insert(node.to_string());
    }

    fn default_of(&mut self, name: &str, spec: &ParamSpec, nloc: Loc) -> Value {
        match &spec.default {
            Default::Value(v) => v.clone(),
            Default::Optional if spec.repeated => Value::List(Vec::new()),
            Default::Optional => Value::Null,
            Default::Required => {
                if !self
                    .swept
                    .contains(&(name.to_string(), spec.name.to_string()))
                {
                    let form = match (&spec.ty, spec.repeated) {
                        (_, true) | (ParamType::Record { .. } | ParamType::List(_), _) => {
                            format!("add a child `{} …`", spec.name)
                        }
                        _ => format!("add `{}=…`", spec.name),
                    };
                    let d = Diag::at(
                        &self.src(nloc.file),
                        nloc.span,
                        format!("`{name}` is missing required parameter `{}`", spec.name),
                        "declared here",
                    )
                    .help(format!(
                        "{form} ({})",
                        crate::typecheck::type_name(&spec.ty)
                    ));
                    self.push(d);
                    self.failed.insert(name.to_string());
                }
                Value::Null
            }
        }
    }

    /// The items one occurrence contributes (one value unless repeated).
    fn occ_values(&mut self, owner: &str, spec: &ParamSpec, o: &Occ) -> Vec<Value> {
        let src = self.src(o.file);
        let text = src.inner().as_str();
        let pname = spec.name;
        let record = matches!(spec.ty, ParamType::Record { .. });
        let list = matches!(spec.ty, ParamType::List(_));
        let args: Vec<(KdlValue, SourceSpan)> = match &o.form {
            Form::Prop(e) => {
                if record {
                    let d = Diag::at(
                        &self.src(o.file),
                        o.span,
                        format!("`{pname}` is a record and cannot be written as a property"),
                        "write as a child",
                    )
                    .help(format!("write a child node `{pname} …` inside the block"));
                    self.push(d);
                    self.failed.insert(owner.to_string());
                    return Vec::new();
                }
                vec![(e.value().clone(), value_span(text, e))]
            }
            Form::Set(vals) => {
                if record {
                    let d = Diag::at(
                        &self.src(o.file),
                        o.span,
                        format!("`{pname}` is a record and cannot be set with --set"),
                        "record parameter",
                    );
                    self.push(d);
                    self.failed.insert(owner.to_string());
                    return Vec::new();
                }
                vals.to_vec()
            }
            Form::Child(c) => {
                if record {
                    return self.record(owner, spec, o.file, c).into_iter().collect();
                }
                if c.children().is_some() {
                    let d = Diag::at(
                        &self.src(o.file),
                        o.span,
                        format!("`{pname}` takes no children block"),
                        "unexpected block",
                    );
                    self.push(d);
                    self.failed.insert(owner.to_string());
                }
                let mut args = Vec::new();
                for e in c.entries() {
                    if let Some(k) = e.name() {
                        let d = Diag::at(
                            &self.src(o.file),
                            entry_span(text, e),
                            format!("`{pname}` takes no property `{}`", k.value()),
                            "unexpected property",
                        );
                        self.push(d);
                        self.failed.insert(owner.to_string());
                    } else {
                        args.push((e.value().clone(), value_span(text, e)));
                    }
                }
                args
            }
        };
        if !list && !spec.repeated && args.len() != 1 {
            let msg = if args.is_empty() {
                format!("`{pname}` needs a value")
            } else {
                format!("`{pname}` takes one value, found {}", args.len())
            };
            let d = Diag::at(&self.src(o.file), o.span, msg, "here").help(format!(
                "write `{pname} VALUE` or `{pname}=VALUE` ({})",
                crate::typecheck::type_name(&spec.ty)
            ));
            self.push(d);
            self.failed.insert(owner.to_string());
            return Vec::new();
        }
        let mut vals = Vec::new();
        for (v, sp) in &args {
            if let Some(x) = self.scalar(owner, pname, v, &spec.ty, o.file, *sp) {
                vals.push(x);
            }
        }
        if list {
            vec![Value::List(vals)]
        } else {
            vals
        }
    }
}

/// Root directory shown for a load: the parent of the root file, `.` when it has none.
pub(crate) fn parent_dir(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
