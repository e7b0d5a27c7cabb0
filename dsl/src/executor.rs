//! Cluster settings that are not parameters: top-level `executor` blocks and a node's
//! `resources` block. Neither ever enters `NodeDecl::params`, so neither changes a key.
//!
//! ```kdl
//! executor slurm {
//!     partition "gpu"
//!     gpus-per-node 8
//!     extra "--constraint=h100" "--exclusive"
//!     kind sft { time "12:00:00" }      // overrides for every node of kind `sft`
//! }
//! node tuned kind=sft { resources { gpus-per-node 8; time "12:00:00" } }
//! ```
//!
//! The DSL checks the form only; which settings exist and what their values mean is the
//! executor's to check, reporting at the [`Setting`]'s locations. Rules:
//! - `executor NAME { … }` is a top-level item of the root file or an include (not inside
//!   `repeat`): one string argument, no properties, a block (may be empty). One block per
//!   executor name across the recipe and its includes.
//! - A setting is a child `name value…`: one or more string, integer, float or boolean values,
//!   no properties, no block; each name at most once per block.
//! - Inside an `executor` block, a child `kind KIND { settings }` is a rule for every node of a
//!   registered kind `KIND` (one rule per kind, rules not nested).
//! - A node's `resources { settings }` child (at most one, no arguments, no `kind` rules) holds
//!   that node's own settings. `resources` is therefore reserved: no kind may declare a
//!   parameter of that name.

use crate::diag::{Diag, Src};
use crate::limits;
use crate::parse::{entry_span, value_span, Sources};
use crate::recipe::{ExecutorBlock, KindRule, Loc, Setting};
use crate::suggest;
use crate::validate::Validator;
use crate::value::Value;
use kdl::{KdlNode, KdlValue};
use miette::SourceSpan;

/// The name of a node's settings block (reserved: never a parameter name).
pub(crate) const RESOURCES: &str = "resources";

/// Where a list of settings is written, for messages.
#[derive(Clone, Copy)]
enum Within<'a> {
    /// `executor NAME { … }`.
    Executor(&'a str),
    /// `kind KIND { … }` inside `executor NAME`.
    Rule(&'a str, &'a str),
    /// `resources { … }` of node NAME.
    Resources(&'a str),
}

impl Within<'_> {
    fn describe(self) -> String {
        match self {
            Within::Executor(e) => format!("`executor {e}`"),
            Within::Rule(e, k) => format!("`kind {k}` of `executor {e}`"),
            Within::Resources(n) => format!("the `resources` of `{n}`"),
        }
    }
}

/// A KDL value as a setting value (`Err`: message and label).
fn setting_value(v: &KdlValue) -> Result<Value, (String, &'static str)> {
    match v {
        KdlValue::String(s) => Ok(Value::Str(s.clone())),
        KdlValue::Integer(i) => i64::try_from(*i).map(Value::Int).map_err(|_| {
            (
                format!("{i} does not fit in a 64-bit integer"),
                "out of range",
            )
        }),
        KdlValue::Float(f) if f.is_finite() => Ok(Value::Float(*f)),
        KdlValue::Float(_) => Err((
            "a setting value must be a finite number".into(),
            "not finite",
        )),
        KdlValue::Bool(b) => Ok(Value::Bool(*b)),
        KdlValue::Null => Err(("`#null` is not a setting value".into(), "not a value")),
    }
}

/// Reads the children of a settings block: settings, and `kind` rules where `within` is an
/// executor block. Errors go to `diags`.
fn read_block(
    src: &Src,
    file: usize,
    children: &[KdlNode],
    within: Within,
    diags: &mut Vec<Diag>,
) -> (Vec<Setting>, Vec<KindRule>) {
    let mut settings: Vec<Setting> = Vec::new();
    let mut rules: Vec<KindRule> = Vec::new();
    let mut seen: Vec<(&str, SourceSpan)> = Vec::new();
    for c in children {
        let name = c.name().value();
        if name == "kind" {
            let Within::Executor(exec) = within else {
                let (msg, help) = match within {
                    Within::Rule(e, _) => (
                        "a `kind` rule cannot hold another `kind` rule".to_string(),
                        format!("rules are one level deep: write each rule directly inside `executor {e}`"),
                    ),
                    _ => (
                        format!("`kind` rules belong in an `executor` block, not in {}", within.describe()),
                        "a node's `resources` apply to that node only; for every node of a kind write `executor NAME { kind KIND { … } }`".to_string(),
                    ),
                };
                diags.push(Diag::at(src, c.name().span(), msg, "nested rule").help(help));
                continue;
            };
            if let Some(r) = rule(src, file, c, exec, diags) {
                if let Some(first) = rules.iter().find(|x| x.kind == r.kind) {
                    diags.push(
                        Diag::at(
                            src,
                            r.loc.span,
                            format!("`executor {exec}` has two rules for kind `{}`", r.kind),
                            format!("second `kind {}` rule", r.kind),
                        )
                        .also(src, first.loc.span, "first rule here")
                        .help(format!("merge them into one `kind {} {{ … }}`", r.kind)),
                    );
                } else {
                    rules.push(r);
                }
            }
            continue;
        }
        let span = c.name().span();
        if let Some((_, first)) = seen.iter().find(|(n, _)| *n == name) {
            diags.push(
                Diag::at(
                    src,
                    span,
                    format!(
                        "`{}` is set twice in {}",
                        limits::printable(name),
                        within.describe()
                    ),
                    "set again here",
                )
                .also(src, *first, "first set here")
                .help("remove one of them"),
            );
            continue;
        }
        seen.push((name, span));
        if let Some(s) = setting(src, file, c, within, diags) {
            settings.push(s);
        }
    }
    (settings, rules)
}

/// One setting line; `None` (errors pushed) when malformed.
fn setting(
    src: &Src,
    file: usize,
    node: &KdlNode,
    within: Within,
    diags: &mut Vec<Diag>,
) -> Option<Setting> {
    let text = src.inner().as_str();
    let name = node.name().value();
    let shown = limits::printable(name);
    let name_span = node.name().span();
    let usage = format!("write `{shown} VALUE…` (strings, numbers or #true/#false)");
    let mut ok = true;
    if node.children().is_some() {
        ok = false;
        diags.push(
            Diag::at(
                src,
                name_span,
                format!("setting `{shown}` in {} takes no block", within.describe()),
                "unexpected block",
            )
            .help(usage.clone()),
        );
    }
    let mut values = Vec::new();
    let mut first_span = None;
    let mut end = name_span.offset() + name_span.len();
    for e in node.entries() {
        let sp = entry_span(text, e);
        end = end.max(sp.offset() + sp.len());
        if let Some(k) = e.name() {
            ok = false;
            diags.push(
                Diag::at(
                    src,
                    sp,
                    format!(
                        "setting `{shown}` takes no property `{}`",
                        limits::printable(k.value())
                    ),
                    "unexpected property",
                )
                .help(format!("{usage}; settings are never `key=value`")),
            );
            continue;
        }
        let vsp = value_span(text, e);
        match setting_value(e.value()) {
            Ok(v) => {
                first_span.get_or_insert(vsp);
                values.push(v);
            }
            Err((msg, label)) => {
                ok = false;
                diags.push(Diag::at(src, vsp, msg, label).help(usage.clone()));
            }
        }
    }
    if ok && values.is_empty() {
        diags.push(
            Diag::at(
                src,
                name_span,
                format!("setting `{shown}` in {} needs a value", within.describe()),
                "no value",
            )
            .help(usage),
        );
        return None;
    }
    let first_value = first_span.filter(|_| ok)?;
    let start = name_span.offset();
    Some(Setting {
        name: name.to_string(),
        values,
        loc: Loc {
            file,
            span: SourceSpan::new(start.into(), end - start),
        },
        value_loc: Loc {
            file,
            span: first_value,
        },
    })
}

/// The one string argument of `node` (`executor NAME`, `kind KIND`); errors pushed for
/// anything else. `what` names the argument in messages.
fn name_arg(
    src: &Src,
    node: &KdlNode,
    what: &str,
    usage: &str,
    diags: &mut Vec<Diag>,
) -> Option<(String, SourceSpan)> {
    let text = src.inner().as_str();
    let head = node.name().value();
    let mut found: Option<(String, SourceSpan)> = None;
    let mut ok = true;
    for e in node.entries() {
        let (msg, label, sp) = match (e.name(), e.value()) {
            (Some(k), _) => (
                format!(
                    "`{head}` takes no property `{}`",
                    limits::printable(k.value())
                ),
                "unexpected property",
                entry_span(text, e),
            ),
            (None, _) if found.is_some() || !ok => (
                format!("`{head}` takes one {what}"),
                "unexpected argument",
                value_span(text, e),
            ),
            (None, KdlValue::String(s)) if !s.is_empty() => {
                found = Some((s.clone(), value_span(text, e)));
                continue;
            }
            (None, v) => (
                format!("the {what} of `{head}` must be a non-empty string, found `{v}`"),
                "not a name",
                value_span(text, e),
            ),
        };
        ok = false;
        diags.push(Diag::at(src, sp, msg, label).help(usage.to_string()));
    }
    if found.is_none() && ok {
        diags.push(
            Diag::at(
                src,
                node.name().span(),
                format!("`{head}` needs a {what}"),
                format!("{what} missing"),
            )
            .help(usage.to_string()),
        );
    }
    found.filter(|_| ok)
}

/// A `kind KIND { … }` rule of `executor exec`.
fn rule(
    src: &Src,
    file: usize,
    node: &KdlNode,
    exec: &str,
    diags: &mut Vec<Diag>,
) -> Option<KindRule> {
    let usage = "write `kind KIND { setting VALUE… }`, e.g. `kind sft { time \"12:00:00\" }`";
    let named = name_arg(src, node, "kind name", usage, diags);
    let kind = named.as_ref().map_or("?", |(k, _)| k.as_str());
    let Some(children) = node.children() else {
        if named.is_some() {
            diags.push(
                Diag::at(
                    src,
                    node.name().span(),
                    format!("`kind {kind}` needs a block of settings"),
                    "block missing",
                )
                .help(usage),
            );
        }
        return None;
    };
    let (settings, _) = read_block(src, file, children.nodes(), Within::Rule(exec, kind), diags);
    let (kind, span) = named?;
    Some(KindRule {
        kind,
        settings,
        loc: Loc { file, span },
    })
}

impl Sources {
    /// Reads a top-level `executor NAME { … }` block of file `file` (module docs).
    pub(crate) fn executor(&mut self, file: usize, node: &KdlNode) {
        let src = self.srcs[file].clone();
        let usage = "write `executor NAME { setting VALUE…; kind KIND { … } }`, e.g. `executor slurm { partition \"gpu\" }`";
        let named = name_arg(&src, node, "name", usage, &mut self.diags);
        let exec = named.as_ref().map_or("?", |(n, _)| n.as_str());
        let shown = limits::printable(exec);
        let Some(children) = node.children() else {
            if named.is_some() {
                let d = Diag::at(
                    &src,
                    node.name().span(),
                    format!("`executor {shown}` needs a block of settings"),
                    "block missing",
                )
                .help(format!(
                    "write `executor {shown} {{ … }}` (the block may be empty)"
                ));
                self.diags.push(d);
            }
            return;
        };
        let (settings, rules) = read_block(
            &src,
            file,
            children.nodes(),
            Within::Executor(&shown),
            &mut self.diags,
        );
        let Some((name, span)) = named else { return };
        if let Some(first) = self.executors.iter().find(|e| e.name == name) {
            let d = Diag::at(
                &src,
                span,
                format!("`executor {shown}` is declared twice"),
                format!("second `executor {shown}` block"),
            )
            .also(
                &self.srcs[first.loc.file],
                first.loc.span,
                format!("first `executor {shown}` block"),
            )
            .help(format!(
                "merge them into one `executor {shown} {{ … }}` block (includes count too)"
            ));
            self.diags.push(d);
            return;
        }
        self.executors.push(ExecutorBlock {
            name,
            settings,
            rules,
            loc: Loc { file, span },
        });
    }
}

impl Validator<'_> {
    /// The `resources { … }` settings of node `name` (module docs); reports a second block,
    /// a `resources=` property and malformed settings. The validator skips the `resources`
    /// child and property when it reads parameters.
    pub(crate) fn resources(&mut self, file: usize, node: &KdlNode, name: &str) -> Vec<Setting> {
        let src = self.src(file);
        let text = src.inner().as_str();
        let usage = "write `resources { setting VALUE… }`, e.g. `resources { gpus-per-node 8; time \"12:00:00\" }`";
        for e in node.entries() {
            if e.name().is_some_and(|k| k.value() == RESOURCES) {
                let d = Diag::at(
                    &src,
                    entry_span(text, e),
                    format!("`{RESOURCES}` of `{name}` is a block, not a property"),
                    "not a parameter",
                )
                .help(usage);
                self.push(d);
            }
        }
        let mut out = Vec::new();
        let mut first: Option<SourceSpan> = None;
        for c in node
            .iter_children()
            .filter(|c| c.name().value() == RESOURCES)
        {
            let span = c.name().span();
            if let Some(first) = first {
                let d = Diag::at(
                    &src,
                    span,
                    format!("`{RESOURCES}` is given twice on `{name}`"),
                    "second `resources` block",
                )
                .also(&src, first, "first `resources` block")
                .help("merge them into one `resources { … }` block");
                self.push(d);
                continue;
            }
            first = Some(span);
            if let Some(e) = c.entries().first() {
                let d = Diag::at(
                    &src,
                    entry_span(text, e),
                    format!("`{RESOURCES}` takes no arguments"),
                    "unexpected",
                )
                .help(usage);
                self.push(d);
            }
            let Some(children) = c.children() else {
                let d = Diag::at(
                    &src,
                    span,
                    format!("`{RESOURCES}` of `{name}` needs a block of settings"),
                    "block missing",
                )
                .help(usage);
                self.push(d);
                continue;
            };
            let (settings, _) = read_block(
                &src,
                file,
                children.nodes(),
                Within::Resources(name),
                &mut self.s.diags,
            );
            out = settings;
        }
        out
    }

    /// Reports `kind` rules of executor blocks that name no registered kind.
    pub(crate) fn check_rule_kinds(&mut self) {
        let kinds: Vec<&str> = self.reg.kinds().map(|k| k.name).collect();
        let mut diags = Vec::new();
        for ex in &self.s.executors {
            for r in ex.rules.iter().filter(|r| self.reg.get(&r.kind).is_none()) {
                let mut hint = suggest::hint(&r.kind, &kinds).unwrap_or_default();
                if !hint.is_empty() {
                    hint.push(' ');
                }
                hint.push_str(&format!("known kinds: {}", suggest::list(&kinds)));
                diags.push(
                    Diag::at(
                        &self.s.srcs[r.loc.file],
                        r.loc.span,
                        format!(
                            "unknown node kind `{}` in `executor {}`",
                            limits::printable(&r.kind),
                            limits::printable(&ex.name)
                        ),
                        "unknown kind",
                    )
                    .help(hint),
                );
            }
        }
        self.s.diags.extend(diags);
    }
}
