//! `repeat`: N copies of a block of nodes, for chains such as CPT phases whose mixture comes
//! from a `reweight` of the previous phase — ordinary nodes after expansion, so each phase is
//! cached on its own and changing phase k reruns only phases ≥ k.
//!
//! ```kdl
//! repeat 3 phase-0=base mix-0=start-mix {
//!     reweight "mix-{i}" model="phase-{prev}" mixture="mix-{prev}" { target med-val }
//!     cpt "phase-{i}" model="phase-{prev}" data="mix-{i}" { steps 20 }
//! }
//! ```
//!
//! Rules: the one argument `N` is an integer in `1..=1000`. For `i = 1..=N` every node of the
//! block is copied, and in every string of the copy (arguments, properties, children, at any
//! depth) `{i}` becomes `i`, `{prev}` becomes `i − 1` and `{n}` becomes `N`. Then a string that
//! as a whole equals an alias (a property of `repeat`, e.g. `phase-0=base`) is replaced by the
//! alias' value — how the first iteration refers to nodes outside the chain. Copies keep the
//! spans of the block, so diagnostics point at the template. A block may not hold `include`,
//! `sweep`, `executor` or another `repeat`; any other `{word}` placeholder is an error.

use crate::diag::Diag;
use crate::parse::{value_span, Sources};
use kdl::{KdlDocument, KdlNode, KdlValue};
use std::collections::BTreeMap;

/// Largest repeat count.
pub const MAX_REPEAT: i128 = 1000;

/// `{i}`, `{prev}`, `{n}` substituted; `Err(word)` for an unknown `{word}`.
pub fn substitute(s: &str, i: usize, n: usize) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close)
                if !after[..close].is_empty()
                    && after[..close]
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') =>
            {
                let word = &after[..close];
                match word {
                    "i" => out.push_str(&i.to_string()),
                    "prev" => out.push_str(&(i - 1).to_string()),
                    "n" => out.push_str(&n.to_string()),
                    _ => return Err(word.to_string()),
                }
                rest = &after[close + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Substitutes into every string entry of `node` and its children; returns the first unknown
/// placeholder with the span of its entry.
fn rewrite(
    node: &mut KdlNode,
    text: &str,
    i: usize,
    n: usize,
    aliases: &BTreeMap<String, String>,
) -> Result<(), (String, miette::SourceSpan)> {
    for e in node.entries_mut().iter_mut() {
        if let KdlValue::String(s) = e.value() {
            let sp = value_span(text, e);
            let mut v = substitute(s, i, n).map_err(|w| (w, sp))?;
            if let Some(a) = aliases.get(&v) {
                v = a.clone();
            }
            e.set_value(KdlValue::String(v));
        }
    }
    if let Some(children) = node.children_mut().as_mut() {
        for c in children.nodes_mut().iter_mut() {
            rewrite(c, text, i, n, aliases)?;
        }
    }
    Ok(())
}

/// `node` and every node below it (iteratively).
fn count_nodes(node: &KdlNode) -> usize {
    let mut stack = vec![node];
    let mut n = 0;
    while let Some(x) = stack.pop() {
        n += 1;
        stack.extend(x.iter_children());
    }
    n
}

impl Sources {
    /// Expands a top-level `repeat` node of file `file` into `self.nodes` (module docs).
    pub(crate) fn repeat(&mut self, file: usize, node: &KdlNode) {
        let src = self.srcs[file].clone();
        let text = src.inner().as_str();
        let name_span = node.name().span();
        let usage = "write `repeat N ALIAS=NAME… { nodes using {i} and {prev} }`";
        let mut count = None;
        let mut count_span = name_span;
        let mut aliases = BTreeMap::new();
        let mut ok = true;
        for e in node.entries() {
            let sp = value_span(text, e);
            match (e.name(), e.value()) {
                (None, KdlValue::Integer(k)) if count.is_none() && (1..=MAX_REPEAT).contains(k) => {
                    count = Some(*k as usize);
                    count_span = sp;
                }
                (None, v) => {
                    ok = false;
                    let msg = if count.is_some() {
                        "`repeat` takes one count".to_string()
                    } else {
                        format!("the repeat count must be an integer from 1 to {MAX_REPEAT}, found `{v}`")
                    };
                    self.diags.push(Diag::at(&src, sp, msg, "here").help(usage));
                }
                (Some(k), KdlValue::String(v)) => {
                    aliases.insert(k.value().to_string(), v.clone());
                }
                (Some(k), v) => {
                    ok = false;
                    self.diags.push(
                        Diag::at(&src, sp, format!("alias `{}` must name a node, found `{v}`", k.value()), "not a name")
                            .help("aliases map a name of the first iteration to an existing node: `phase-0=base`"),
                    );
                }
            }
        }
        let body = node.children().map(KdlDocument::nodes).unwrap_or(&[]);
        if count.is_none() && ok {
            ok = false;
            self.diags
                .push(Diag::at(&src, name_span, "`repeat` needs a count", "here").help(usage));
        }
        if body.is_empty() {
            ok = false;
            self.diags.push(
                Diag::at(&src, name_span, "`repeat` needs a block of nodes", "here").help(usage),
            );
        }
        for b in body {
            let k = b.name().value();
            if matches!(k, "include" | "sweep" | "repeat" | "executor") {
                ok = false;
                self.diags.push(
                    Diag::at(
                        &src,
                        b.name().span(),
                        format!("`{k}` is not allowed inside `repeat`"),
                        "here",
                    )
                    .help(format!("move the `{k}` to the top level of the file")),
                );
            }
        }
        let Some(n) = count.filter(|_| ok) else {
            return;
        };
        let per_copy: usize = body.iter().map(count_nodes).sum();
        let adding = per_copy.saturating_mul(n);
        if adding > self.opts.max_nodes.saturating_sub(self.total_nodes) {
            self.syntax_failed = true;
            self.diags.push(
                Diag::at(
                    &src,
                    count_span,
                    format!(
                        "this `repeat` makes {} nodes; a recipe may have at most {}",
                        crate::limits::count(adding),
                        crate::limits::count(self.opts.max_nodes)
                    ),
                    "too many copies",
                )
                .help("repeat fewer times, or split the work into several recipes"),
            );
            return;
        }
        self.total_nodes += adding;
        for i in 1..=n {
            for b in body {
                let mut copy = b.clone();
                if let Err((word, sp)) = rewrite(&mut copy, text, i, n, &aliases) {
                    self.diags.push(
                        Diag::at(
                            &src,
                            sp,
                            format!("unknown placeholder `{{{word}}}` in a `repeat` block"),
                            "unknown placeholder",
                        )
                        .help("the placeholders are {i} (1..N), {prev} (i − 1) and {n} (N)"),
                    );
                    return;
                }
                self.nodes.push((file, copy));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::substitute;
    #[test]
    fn placeholders() {
        assert_eq!(substitute("p-{i}/{prev}/{n}", 2, 3).unwrap(), "p-2/1/3");
        assert_eq!(substitute("{ x }{", 1, 1).unwrap(), "{ x }{");
        assert_eq!(substitute("{j}", 1, 1).unwrap_err(), "j");
    }
}
