//! Sweep blocks: `sweep { node.param v1 v2 …; zip { a.x 1 2; b.y 3 4 } }`.
//!
//! Each plain member is one axis; a `zip` group is one axis whose members vary together (equal
//! numbers of values). Axes combine as a grid. A member must name an existing node and one of
//! its *semantic* parameters (a non-semantic one would give identical variants), not a record —
//! but it may name one field of a record the node sets, `node.record.field` (`tuned.lora.rank`),
//! whose other fields then keep their values; each value is type-checked like a value in the
//! file (references and paths too); a value of a repeated or `List` parameter is a one-item list. A (node, param) may be swept once, and a
//! value listed once. A `--set` on the same node.param removes that member (and an axis left
//! empty).

use crate::diag::Diag;
use crate::limits::{self, MAX_AXIS_MEMBERS};
use crate::parse::value_span;
use crate::recipe::{Axis, AxisMember, Loc};
use crate::schema::ParamType;
use crate::suggest;
use crate::validate::Validator;
use crate::value::Value;
use kdl::KdlNode;
use std::collections::{BTreeMap, HashSet};

/// Splits `node.param` at its first dot.
fn split_member(s: &str) -> Option<(&str, &str)> {
    let (n, p) = s.split_once('.')?;
    (!n.is_empty() && !p.is_empty()).then_some((n, p))
}

impl Validator<'_> {
    /// Records which (node, param) the sweeps name, before nodes are validated (a required
    /// parameter may be given by a sweep).
    pub fn prescan_sweeps(&mut self) {
        let mut found = Vec::new();
        for (_, sw) in &self.s.sweeps {
            for c in sw.iter_children() {
                let members: Vec<&KdlNode> = if c.name().value() == "zip" {
                    c.iter_children().collect()
                } else {
                    vec![c]
                };
                for m in members {
                    if let Some((n, p)) = split_member(m.name().value()) {
                        found.push((n.to_string(), p.to_string()));
                    }
                }
            }
        }
        self.swept.extend(found);
    }

    /// Before any sweep value is checked or any node validated: the number of `node.param`
    /// members (at most [`MAX_AXIS_MEMBERS`]) and the number of variants, the product of the
    /// axis lengths as written (a `zip` group counts once, as its longest member; a member a
    /// `--set` replaces counts 1), saturating. Too many is an error at the sweep (members: at
    /// the first one over) and stops the load. Returns whether the sizes are within limits.
    pub fn sweep_sizes_ok(&mut self) -> bool {
        let max = self.s.opts.max_variants;
        let overridden = |label: &str| {
            self.overrides
                .iter()
                .any(|o| label.split_once('.') == Some((o.node.as_str(), o.param.as_str())))
        };
        let len_of = |m: &KdlNode| {
            if overridden(m.name().value()) {
                1
            } else {
                m.entries().len().max(1) as u128
            }
        };
        let mut total: u128 = 1;
        let mut members = 0usize;
        let mut over_at = None;
        let mut members_over = None;
        for (file, sw) in &self.s.sweeps {
            for c in sw.iter_children() {
                let (len, group): (u128, Vec<&KdlNode>) = if c.name().value() == "zip" {
                    let g: Vec<&KdlNode> = c.iter_children().collect();
                    (g.iter().map(|m| len_of(m)).max().unwrap_or(1), g)
                } else {
                    (len_of(c), vec![c])
                };
                for m in group {
                    members += 1;
                    if members > MAX_AXIS_MEMBERS && members_over.is_none() {
                        members_over = Some((*file, m.name().span()));
                    }
                }
                total = total.saturating_mul(len);
                if total > max as u128 && over_at.is_none() {
                    over_at = Some((*file, sw.name().span()));
                }
            }
        }
        if let Some((file, span)) = members_over {
            let d = Diag::at(
                &self.src(file),
                span,
                format!("the sweeps name more than {MAX_AXIS_MEMBERS} `node.param` axes"),
                "one too many",
            )
            .help("sweep fewer parameters at once, or split the study into several recipes");
            self.push(d);
        }
        if let Some((file, span)) = over_at {
            let n = if total == u128::MAX {
                "more than 10^38".to_string()
            } else {
                limits::count(total.min(usize::MAX as u128) as usize)
            };
            let d = Diag::at(
                &self.src(file),
                span,
                format!(
                    "the sweep has {n} variants, more than the limit of {}",
                    limits::count(max)
                ),
                "too many variants",
            )
            .help(format!(
                "each variant is expanded, keyed and planned; sweep fewer values, or raise the \
                 limit with `--max-variants {}` if you mean it",
                if total == u128::MAX {
                    "N".to_string()
                } else {
                    total.to_string()
                }
            ));
            self.push(d);
        }
        over_at.is_none() && members_over.is_none()
    }

    /// Validates all sweep blocks into axes.
    pub fn sweeps(&mut self) -> Vec<Axis> {
        let sweeps = std::mem::take(&mut self.s.sweeps);
        let mut axes = Vec::new();
        let mut seen: BTreeMap<(String, String), Loc> = BTreeMap::new();
        for (file, sw) in &sweeps {
            let src = self.src(*file);
            if !sw.entries().is_empty() {
                let d = Diag::at(&src, sw.name().span(), "`sweep` takes no arguments", "here")
                    .help("write the axes inside the block: `sweep { node.param v1 v2 }`");
                self.push(d);
            }
            let Some(children) = sw.children() else {
                let d = Diag::at(
                    &src,
                    sw.name().span(),
                    "`sweep` needs a block of axes",
                    "here",
                )
                .help("write `sweep { node.param v1 v2 }`");
                self.push(d);
                continue;
            };
            for c in children.nodes() {
                let loc = Loc {
                    file: *file,
                    span: c.name().span(),
                };
                if c.name().value() == "zip" {
                    let mut members = Vec::new();
                    let mut lens = Vec::new();
                    for m in c.iter_children() {
                        if m.name().value() == "zip" {
                            let d = Diag::at(
                                &src,
                                m.name().span(),
                                "`zip` groups cannot be nested",
                                "nested zip",
                            );
                            self.push(d);
                            continue;
                        }
                        if let Some(mem) = self.member(*file, m, &mut seen) {
                            lens.push((mem.node.clone(), mem.param.clone(), mem.values.len()));
                            members.push(mem);
                        }
                    }
                    if lens.iter().any(|l| l.2 != lens[0].2) {
                        let desc: Vec<String> = lens
                            .iter()
                            .map(|(n, p, l)| format!("{n}.{p} has {l}"))
                            .collect();
                        let d = Diag::at(
                            &src,
                            c.name().span(),
                            "members of a `zip` must have the same number of values",
                            "lengths differ",
                        )
                        .help(desc.join(", "));
                        self.push(d);
                        continue;
                    }
                    if !members.is_empty() {
                        axes.push(Axis { members, loc });
                    }
                } else if let Some(mem) = self.member(*file, c, &mut seen) {
                    axes.push(Axis {
                        members: vec![mem],
                        loc,
                    });
                }
            }
        }
        self.s.sweeps = sweeps;
        axes
    }

    /// One `node.param v1 v2 …` line; None when invalid or overridden by `--set`.
    fn member(
        &mut self,
        file: usize,
        m: &KdlNode,
        seen: &mut BTreeMap<(String, String), Loc>,
    ) -> Option<AxisMember> {
        let src = self.src(file);
        let text = src.inner().as_str();
        let label = m.name().value().to_string();
        let nspan = m.name().span();
        if let Some(c) = limits::forbidden_char(&label) {
            let d = Diag::at(
                &src,
                nspan,
                format!(
                    "sweep axis `{}` contains the control character {c}",
                    limits::printable(&label)
                ),
                "control character",
            )
            .help("axes are written `node.param` with printable characters");
            self.push(d);
            return None;
        }
        let Some((node, param)) = split_member(&label) else {
            let d = Diag::at(
                &src,
                nspan,
                format!("sweep axis `{label}` must be written `node.param`"),
                "not node.param",
            )
            .help("write `sweep { node.param v1 v2 }` or group axes that vary together in `zip { … }`");
            self.push(d);
            return None;
        };
        let Some(info) = self.names.get(node) else {
            let names: Vec<&str> = self.names.keys().map(String::as_str).collect();
            let hint = if self.s.diags.len() >= limits::MAX_SHOWN_ERRORS {
                String::new()
            } else {
                suggest::hint(node, &names)
                    .unwrap_or_else(|| format!("nodes: {}", suggest::list(&names)))
            };
            let d = Diag::at(
                &src,
                nspan,
                format!("sweep axis `{label}` names unknown node `{node}`"),
                "unknown node",
            )
            .help(hint);
            self.push(d);
            return None;
        };
        let schema = self.reg.get(info.kind?)?;
        if schema.name == crate::schema::SELECT_KIND {
            let d = Diag::at(
                &src,
                nspan,
                format!("cannot sweep `{label}`: `{node}` is a select node"),
                "select parameter",
            )
            .help("a select chooses among the variants of its `from` node; declare a second select to choose differently");
            self.push(d);
            return None;
        }
        let pnames: Vec<&str> = schema.params.iter().map(|p| p.name).collect();
        // `node.record.field`: one field of a record parameter the node sets.
        let field = match schema.find_param(param) {
            Some(_) => None,
            None => match self.record_field(file, node, schema, param, &label, nspan) {
                Ok(f) => f,
                Err(()) => return None,
            },
        };
        let Some(spec) = field
            .as_ref()
            .map(|(rec, _)| *rec)
            .or_else(|| schema.find_param(param))
        else {
            let mut hint = suggest::hint(param, &pnames).unwrap_or_default();
            if !hint.is_empty() {
                hint.push(' ');
            }
            hint.push_str(&format!(
                "`{}` parameters: {}",
                schema.name,
                suggest::list(&pnames)
            ));
            let d = Diag::at(
                &src,
                nspan,
                format!(
                    "sweep axis `{label}`: `{node}` (a `{}` node) has no parameter `{param}`",
                    schema.name
                ),
                "unknown parameter",
            )
            .help(hint);
            self.push(d);
            return None;
        };
        if !spec.semantic {
            let d = Diag::at(
                &src,
                nspan,
                format!("cannot sweep `{label}`: `{param}` does not change results"),
                "not a semantic parameter",
            )
            .help("the variants would be identical; sweep a parameter that enters the node's key");
            self.push(d);
            return None;
        }
        if field.is_none() && matches!(spec.ty, ParamType::Record { .. }) {
            let d = Diag::at(
                &src,
                nspan,
                format!("cannot sweep `{label}`: record parameters cannot be swept"),
                "record parameter",
            )
            .help(format!(
                "sweep one of its fields instead: `{node}.{}.FIELD v1 v2 …`",
                spec.name
            ));
            self.push(d);
            return None;
        }
        // What the values are checked against: the parameter, or the record's field.
        let (vspec, pname) = match &field {
            Some((_, f)) => (*f, param.to_string()),
            None => (spec, spec.name.to_string()),
        };
        let key = (node.to_string(), pname.clone());
        if let Some(prev) = seen.get(&key) {
            let d = Diag::at(
                &src,
                nspan,
                format!("`{label}` is swept twice"),
                "swept again here",
            )
            .also(&self.src(prev.file), prev.span, "first swept here")
            .help("merge the values into one axis");
            self.push(d);
            return None;
        }
        seen.insert(key, Loc { file, span: nspan });
        if self
            .overrides
            .iter()
            .any(|o| o.node == node && o.param == param)
        {
            return None; // --set replaces the axis member
        }
        if m.children().is_some() || m.entries().iter().any(|e| e.name().is_some()) {
            let d = Diag::at(
                &src,
                nspan,
                format!("sweep axis `{label}` takes only values"),
                "here",
            )
            .help(format!("write `{label} v1 v2 …`"));
            self.push(d);
            return None;
        }
        if m.entries().is_empty() {
            let d = Diag::at(
                &src,
                nspan,
                format!("sweep axis `{label}` has no values"),
                "here",
            )
            .help(format!("write `{label} v1 v2 …`"));
            self.push(d);
            return None;
        }
        let wrap = vspec.repeated || matches!(vspec.ty, ParamType::List(_));
        let mut values: Vec<Value> = Vec::new();
        // Canonical JSON of each value: a set, so checking for repeats is linear.
        let mut seen_values: HashSet<String> = HashSet::new();
        let mut ok = true;
        for e in m.entries() {
            let sp = value_span(text, e);
            let node_s = node.to_string();
            if let Some(c) = e.value().as_string().and_then(limits::forbidden_char) {
                let d = Diag::at(
                    &src,
                    sp,
                    format!("sweep value of `{label}` contains the control character {c}"),
                    "control character",
                )
                .help("swept values become instance ids; use printable characters");
                self.push(d);
                ok = false;
                continue;
            }
            match self.scalar(&node_s, &pname, e.value(), &vspec.ty, file, sp) {
                Some(v) => {
                    let v = if wrap { Value::List(vec![v]) } else { v };
                    if !seen_values.insert(v.to_canonical_json().to_string()) {
                        let d = Diag::at(
                            &src,
                            sp,
                            format!("sweep axis `{label}` lists `{}` twice", v.display()),
                            "repeated value",
                        );
                        self.push(d);
                        ok = false;
                    } else {
                        values.push(v);
                    }
                }
                None => ok = false,
            }
        }
        ok.then(|| AxisMember {
            node: node.to_string(),
            param: pname,
            values,
        })
    }

    /// For an axis `node.record.field`: the record's and the field's declarations, `Ok(None)`
    /// when `param` names no record field (the caller reports an unknown parameter), `Err` when
    /// it reported an error (an unknown field, a node that does not set the record).
    #[allow(clippy::type_complexity)]
    fn record_field<'s>(
        &mut self,
        file: usize,
        node: &str,
        schema: &'s crate::schema::KindSchema,
        param: &str,
        label: &str,
        nspan: miette::SourceSpan,
    ) -> Result<Option<(&'s crate::schema::ParamSpec, &'s crate::schema::ParamSpec)>, ()> {
        let Some((rec, fname)) = param.split_once('.') else {
            return Ok(None);
        };
        let Some(spec) = schema.find_param(rec) else {
            return Ok(None);
        };
        let ParamType::Record { fields, .. } = &spec.ty else {
            return Ok(None);
        };
        let src = self.src(file);
        let Some(f) = fields
            .iter()
            .find(|f| f.name == fname && !matches!(f.ty, ParamType::Record { .. }))
        else {
            let fnames: Vec<&str> = fields.iter().map(|f| f.name).collect();
            let hint = suggest::hint_then(
                fname,
                &fnames,
                &format!("`{rec}` fields: {}", suggest::list(&fnames)),
            );
            let d = Diag::at(
                &src,
                nspan,
                format!("sweep axis `{label}`: `{rec}` has no field `{fname}`"),
                "unknown field",
            )
            .help(hint);
            self.push(d);
            return Err(());
        };
        let set = self
            .decls
            .iter()
            .find(|d| d.name == node)
            .is_none_or(|d| matches!(d.params.get(rec), Some(Value::Record(_))));
        if !set {
            let d = Diag::at(
                &src,
                nspan,
                format!("sweep axis `{label}`: `{node}` does not set `{rec}`"),
                "record not set",
            )
            .help(format!(
                "add `{rec} …` to `{node}` (its other fields keep their values in every variant)"
            ));
            self.push(d);
            return Err(());
        }
        Ok(Some((spec, f)))
    }
}
