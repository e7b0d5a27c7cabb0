//! Record parameters: a child `name posarg… field=value…` whose positional arguments fill the
//! schema's `positional` fields in order and whose properties fill the rest; unset fields take
//! their default (`Value::Null` when optional); a required field left unset is an error.

use crate::diag::Diag;
use crate::parse::{entry_span, value_span};
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
                let mut hint = suggest::hint(&fname, &fnames).unwrap_or_default();
                if !hint.is_empty() {
                    hint.push(' ');
                }
                hint.push_str(&format!("`{pname}` fields: {}", suggest::list(&fnames)));
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
        if c.children().is_some() {
            let d = Diag::at(
                &self.src(file),
                c.name().span(),
                format!("`{pname}` takes no children block"),
                "unexpected block",
            )
            .help("write its fields as properties: `field=value`");
            self.push(d);
            ok = false;
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
}
