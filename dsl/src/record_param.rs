//! Record parameters: a child `name posarg… field=value…` whose positional arguments fill the
//! schema's `positional` fields in order and whose properties fill the rest; unset fields take
//! their default (`Value::Null` when optional); a required field left unset is an error.
//!
//! A record may also carry a block of field children, `name … { field v; list v1 v2 }`: a
//! scalar field takes one argument, a `List` field any number, and a repeated `List` child
//! appends to the list. A field set both ways, or twice as a scalar, is an error.

use crate::diag::Diag;
use crate::parse::{entry_span, value_span};
use crate::recipe::Loc;
use crate::schema::{Default, ParamSpec, ParamType};
use crate::suggest;
use crate::validate::Validator;
use crate::value::Value;
use kdl::KdlNode;
use miette::SourceSpan;
use std::collections::{BTreeMap, HashMap};

impl Validator<'_> {
    /// A record child: positional arguments fill `positional` fields in order, properties the rest.
    pub(crate) fn record(
        &mut self,
        owner: &str,
        spec: &ParamSpec,
        file: usize,
        c: &KdlNode,
    ) -> Option<Value> {
        let ParamType::Record { positional, fields } = &spec.ty else {
            return None;
        };
        let src = self.src(file);
        let text = src.inner().as_str();
        let pname = spec.name;
        let mut out: BTreeMap<String, Value> = BTreeMap::new();
        let mut seen: HashMap<&'static str, SourceSpan> = HashMap::new();
        let mut npos = 0;
        let fnames: Vec<&str> = fields.iter().map(|f| f.name).collect();
        let mut ok = true;
        for e in c.entries() {
            let (fname, span) = match e.name() {
                None => {
                    let sp = value_span(text, e);
                    let Some(f) = positional.get(npos) else {
                        let d = Diag::at(
                            &self.src(file),
                            sp,
                            format!(
                                "`{pname}` takes {} positional value{}",
                                positional.len(),
                                if positional.len() == 1 { "" } else { "s" }
                            ),
                            "extra value",
                        )
                        .help(format!("fields: {}", suggest::list(&fnames)));
                        self.push(d);
                        ok = false;
                        continue;
                    };
                    npos += 1;
                    (f.to_string(), sp)
                }
                Some(k) => (k.value().to_string(), entry_span(text, e)),
            };
            let Some(fspec) = fields.iter().find(|f| f.name == fname) else {
                let hint = suggest::hint_then(
                    &fname,
                    &fnames,
                    &format!("`{pname}` fields: {}", suggest::list(&fnames)),
                );
                let d = Diag::at(
                    &self.src(file),
                    span,
                    format!("unknown field `{fname}` in `{pname}`"),
                    "unknown field",
                )
                .help(hint);
                self.push(d);
                ok = false;
                continue;
            };
            if let Some(prev) = seen.get(fspec.name) {
                let d = Diag::at(
                    &self.src(file),
                    span,
                    format!("field `{fname}` of `{pname}` is set twice"),
                    "set again here",
                )
                .also(&self.src(file), *prev, "first set here");
                self.push(d);
                ok = false;
                continue;
            }
            seen.insert(fspec.name, span);
            let path = format!("{pname}.{fname}");
            let vspan = value_span(text, e);
            self.field_locs
                .push((path.clone(), Loc { file, span: vspan }));
            match self.scalar(owner, &path, e.value(), &fspec.ty, file, vspan) {
                Some(v) if matches!(fspec.ty, ParamType::List(_)) => {
                    out.insert(fname, Value::List(vec![v]));
                }
                Some(v) => {
                    out.insert(fname, v);
                }
                None => ok = false,
            }
        }
        if let Some(block) = c.children() {
            for child in block.nodes() {
                ok &= self.record_child(owner, spec, file, child, &mut out, &mut seen);
            }
        }
        for f in fields {
            if out.contains_key(f.name) {
                continue;
            }
            match &f.default {
                Default::Value(v) => {
                    out.insert(f.name.to_string(), v.clone());
                }
                Default::Optional => {
                    out.insert(f.name.to_string(), Value::Null);
                }
                Default::Required if !seen.contains_key(f.name) => {
                    let d = Diag::at(
                        &self.src(file),
                        c.name().span(),
                        format!("`{pname}` is missing field `{}`", f.name),
                        "here",
                    )
                    .help(format!(
                        "add `{}=…` ({})",
                        f.name,
                        crate::typecheck::type_name(&f.ty)
                    ));
                    self.push(d);
                    ok = false;
                }
                Default::Required => {}
            }
        }
        if !ok {
            self.failed.insert(owner.to_string());
            return None;
        }
        Some(Value::Record(out))
    }

    /// One child `field v…` of a record's block (see the module doc); false on error.
    fn record_child(
        &mut self,
        owner: &str,
        spec: &ParamSpec,
        file: usize,
        child: &KdlNode,
        out: &mut BTreeMap<String, Value>,
        seen: &mut HashMap<&'static str, SourceSpan>,
    ) -> bool {
        let ParamType::Record { fields, .. } = &spec.ty else {
            return false;
        };
        let src = self.src(file);
        let text = src.inner().as_str();
        let pname = spec.name;
        let fname = child.name().value();
        let span = child.name().span();
        let fnames: Vec<&str> = fields.iter().map(|f| f.name).collect();
        let Some(fspec) = fields.iter().find(|f| f.name == fname) else {
            let hint = suggest::hint_then(
                fname,
                &fnames,
                &format!("`{pname}` fields: {}", suggest::list(&fnames)),
            );
            let d = Diag::at(
                &src,
                span,
                format!("unknown field `{fname}` in `{pname}`"),
                "unknown field",
            )
            .help(hint);
            self.push(d);
            return false;
        };
        let list = matches!(fspec.ty, ParamType::List(_));
        let bad = |this: &mut Self, sp: SourceSpan, msg: String, label: &str| {
            let d = Diag::at(&this.src(file), sp, msg, label.to_string());
            this.push(d);
            false
        };
        if child.children().is_some() {
            return bad(
                self,
                span,
                format!("field `{fname}` of `{pname}` takes no children block"),
                "unexpected block",
            );
        }
        let mut vals = Vec::new();
        for e in child.entries() {
            if let Some(k) = e.name() {
                return bad(
                    self,
                    entry_span(text, e),
                    format!(
                        "field `{fname}` of `{pname}` takes no property `{}`",
                        k.value()
                    ),
                    "unexpected property",
                );
            }
            let path = format!("{pname}.{fname}");
            match self.scalar(
                owner,
                &path,
                e.value(),
                &fspec.ty,
                file,
                value_span(text, e),
            ) {
                Some(v) => vals.push(v),
                None => return false,
            }
        }
        if !list && vals.len() != 1 {
            return bad(
                self,
                span,
                format!(
                    "field `{fname}` of `{pname}` takes one value, found {}",
                    vals.len()
                ),
                "here",
            );
        }
        match (seen.get(fspec.name), out.get_mut(fspec.name)) {
            (Some(_), Some(Value::List(items))) if list => {
                items.extend(vals);
                return true;
            }
            (Some(prev), _) => {
                let d = Diag::at(
                    &src,
                    span,
                    format!("field `{fname}` of `{pname}` is set twice"),
                    "set again here",
                )
                .also(&src, *prev, "first set here");
                self.push(d);
                return false;
            }
            _ => {}
        }
        seen.insert(fspec.name, span);
        let at = child
            .entries()
            .first()
            .map_or(span, |e| value_span(text, e));
        self.field_locs
            .push((format!("{pname}.{fname}"), Loc { file, span: at }));
        let v = if list {
            Value::List(vals)
        } else {
            vals.pop().unwrap_or(Value::Null)
        };
        out.insert(fname.to_string(), v);
        true
    }
}
