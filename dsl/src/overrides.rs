//! `--set node.param=VALUE…` overrides. The text after `=` uses the value grammar of the file
//! (parsed as the KDL node `x VALUE…`): `0.2`, `cosine`, `"a b"`, `#true`, or several values for
//! a list. Each override is its own pseudo-source named `--set`, so errors show its text. An
//! override replaces the parameter's value (the last `--set` of a node.param wins) and removes
//! a sweep axis member on the same node.param; relative paths are relative to the root
//! recipe's directory.

use crate::diag::Diag;
use crate::parse::value_span;
use crate::validate::{Override, Validator};
use miette::SourceSpan;
use std::path::PathBuf;

fn span(off: usize, len: usize) -> SourceSpan {
    SourceSpan::new(off.into(), len)
}

impl Validator<'_> {
    /// Parses one override; errors go to the diagnostics.
    pub fn parse_override(&mut self, text: &str) {
        let file = self.s.add(
            "--set".into(),
            PathBuf::new(),
            text.to_string(),
            PathBuf::new(),
        );
        let src = self.src(file);
        let whole = span(0, text.len());
        let Some((lhs, rhs)) = text.split_once('=') else {
            self.push(
                Diag::at(&src, whole, format!("bad override `{text}`"), "no `=`")
                    .help("write `--set node.param=value`"),
            );
            return;
        };
        if let Some(c) = crate::limits::forbidden_char(lhs) {
            self.push(
                Diag::at(
                    &src,
                    span(0, lhs.len()),
                    format!(
                        "override target `{}` contains the control character {c}",
                        crate::limits::printable(lhs)
                    ),
                    "control character",
                )
                .help("write `--set node.param=value` with printable characters"),
            );
            return;
        }
        let Some((node, param)) = lhs
            .split_once('.')
            .filter(|(n, p)| !n.is_empty() && !p.is_empty())
        else {
            self.push(
                Diag::at(
                    &src,
                    span(0, lhs.len()),
                    format!("bad override target `{lhs}`"),
                    "expected node.param",
                )
                .help("write `--set node.param=value`"),
            );
            return;
        };
        let base = lhs.len() + 1;
        if rhs.trim().is_empty() {
            self.push(
                Diag::at(
                    &src,
                    span(lhs.len(), 1),
                    format!("override of `{lhs}` has no value"),
                    "value missing",
                )
                .help("write `--set node.param=value`; quote strings with spaces"),
            );
            return;
        }
        // Parse `x VALUE…` and map spans back: offset in the override = offset - 2 + base.
        let doc_text = format!("x {rhs}");
        let back = |s: SourceSpan| {
            let off = s.offset().saturating_sub(2) + base;
            let off = off.min(text.len());
            span(off, s.len().min(text.len() - off))
        };
        let doc = match crate::scan::parse(&doc_text, self.s.opts.max_depth) {
            crate::scan::Parsed::Doc(Ok(d), _) => d,
            crate::scan::Parsed::Refused(r) => {
                self.push(
                    Diag::at(
                        &src,
                        back(r.span),
                        format!("bad value in override of `{lhs}`: {}", r.message),
                        r.label,
                    )
                    .help(r.hint),
                );
                return;
            }
            crate::scan::Parsed::Doc(Err(e), _) => {
                for d in &e.diagnostics {
                    let msg = d.message.clone().unwrap_or_else(|| "syntax error".into());
                    let word = rhs.trim();
                    let help = if matches!(word, "true" | "false" | "null") {
                        Some(format!("KDL 2.0 keywords start with `#`: write `#{word}`"))
                    } else {
                        d.help.clone()
                    };
                    self.push(
                        Diag::at(
                            &src,
                            back(d.span),
                            format!(
                                "bad value in override of `{lhs}`: {}",
                                msg.trim_end_matches('.')
                            ),
                            d.label.clone().unwrap_or_else(|| "here".into()),
                        )
                        .help_opt(help),
                    );
                }
                return;
            }
        };
        let bad_shape = doc.nodes().len() != 1
            || doc.nodes()[0].children().is_some()
            || doc.nodes()[0].entries().iter().any(|e| e.name().is_some());
        if bad_shape {
            self.push(
                Diag::at(
                    &src,
                    span(base, rhs.len()),
                    format!("override of `{lhs}` must be one or more plain values"),
                    "not a value",
                )
                .help("e.g. `--set n.lr=2e-5`, `--set n.schedule=cosine`, `--set n.name=\"a b\"`"),
            );
            return;
        }
        let values = doc.nodes()[0]
            .entries()
            .iter()
            .map(|e| (e.value().clone(), back(value_span(&doc_text, e))))
            .collect();
        // A later override of the same node.param wins.
        self.overrides
            .retain(|o| !(o.node == node && o.param == param));
        self.overrides.push(Override {
            node: node.to_string(),
            param: param.to_string(),
            file,
            node_span: span(0, node.len()),
            param_span: span(node.len() + 1, param.len()),
            values,
        });
    }

    /// Reports overrides naming a node the recipe does not declare.
    pub fn unknown_override_nodes(&mut self) {
        let names: Vec<String> = self.names.keys().cloned().collect();
        let mut out = Vec::new();
        for o in &self.overrides {
            if self.names.contains_key(&o.node) {
                continue;
            }
            let hint = crate::suggest::did_you_mean(&o.node, names.iter().map(String::as_str))
                .map(|c| format!("did you mean `{c}`?"))
                .unwrap_or_else(|| {
                    format!(
                        "nodes: {}",
                        crate::suggest::list(&names.iter().map(String::as_str).collect::<Vec<_>>())
                    )
                });
            out.push(
                Diag::at(
                    &self.src(o.file),
                    o.node_span,
                    format!("--set names unknown node `{}`", o.node),
                    "unknown node",
                )
                .help(hint),
            );
        }
        for d in out {
            self.push(d);
        }
    }
}
