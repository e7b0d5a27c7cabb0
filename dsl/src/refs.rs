//! Resolving references, finding reference cycles and running each kind's `check`, then its
//! recipe-wide `check_in_recipe` on the nodes without errors.
//!
//! A reference must name a node of the recipe whose kind `produces` one of the artifact types
//! the parameter allows. References of sweep values count too (a swept `Ref` may point at any
//! of its values), so a cycle through any of them is reported: once per back edge found by a
//! depth-first walk in declaration order, with the whole path `a → b → c → a`.

use crate::diag::Diag;
use crate::limits;
use crate::recipe::{Loc, NodeDecl};
use crate::schema::{CheckContext, Findings, ParamIssue};
use crate::suggest;
use crate::validate::Validator;
use std::collections::{BTreeMap, BTreeSet};

impl Validator<'_> {
    /// Checks every pending reference; returns the valid edges (owner → target, where written).
    pub fn resolve_refs(&mut self) -> BTreeMap<String, Vec<(String, Loc)>> {
        let refs = std::mem::take(&mut self.refs);
        let mut edges: BTreeMap<String, Vec<(String, Loc)>> = BTreeMap::new();
        let names: Vec<String> = self.names.keys().cloned().collect();
        for r in &refs {
            let src = self.src(r.loc.file);
            let Some(info) = self.names.get(&r.target) else {
                // Past the errors that are shown, skip the (quadratic) suggestions.
                let cheap = self.s.diags.len() >= limits::MAX_SHOWN_ERRORS;
                let mut hint = (!cheap)
                    .then(|| suggest::did_you_mean(&r.target, names.iter().map(String::as_str)))
                    .flatten()
                    .map(|c| format!("did you mean `{c}`?"))
                    .unwrap_or_default();
                if hint.is_empty() && !cheap {
                    let fit: Vec<&str> = self
                        .names
                        .iter()
                        .filter(|(_, i)| {
                            r.allowed.is_empty()
                                || i.produces.is_some_and(|p| r.allowed.contains(&p))
                        })
                        .map(|(n, _)| n.as_str())
                        .collect();
                    hint = if fit.is_empty() {
                        format!("the recipe declares no {} node", r.allowed.join(" or "))
                    } else {
                        format!("nodes that fit: {}", suggest::list(&fit))
                    };
                }
                let d = Diag::at(
                    &src,
                    r.loc.span,
                    format!(
                        "`{}` of `{}` refers to unknown node `{}`",
                        r.param, r.owner, r.target
                    ),
                    "no node of this name",
                )
                .help(hint);
                self.push(d);
                self.failed.insert(r.owner.clone());
                continue;
            };
            let (Some(kind), Some(produces)) = (info.kind, info.produces) else {
                continue; // unknown kind: already reported
            };
            if !r.allowed.is_empty() && !r.allowed.contains(&produces) {
                let decl_loc = info.loc;
                let d = Diag::at(
                    &src,
                    r.loc.span,
                    format!(
                        "`{}` of `{}` expects a {} node, but `{}` is a `{kind}` node",
                        r.param,
                        r.owner,
                        r.allowed.join(" or "),
                        r.target
                    ),
                    "wrong kind of node",
                )
                .also(&self.src(decl_loc.file), decl_loc.span, "declared here");
                self.push(d);
                self.failed.insert(r.owner.clone());
                continue;
            }
            edges
                .entry(r.owner.clone())
                .or_default()
                .push((r.target.clone(), r.loc));
        }
        self.refs = refs;
        edges
    }

    /// Reports every reference cycle (one error per cycle, at the reference closing it).
    pub fn cycles(&mut self, edges: &BTreeMap<String, Vec<(String, Loc)>>) {
        let order: Vec<String> = self.decls.iter().map(|d| d.name.clone()).collect();
        let mut state: BTreeMap<&str, u8> = BTreeMap::new(); // 1 = on stack, 2 = done
        let mut found: Vec<(Vec<String>, Loc)> = Vec::new();
        let mut stack: Vec<String> = Vec::new();
        for n in &order {
            if !state.contains_key(n.as_str()) {
                dfs(n, edges, &mut state, &mut stack, &mut found);
            }
        }
        let mut reported: BTreeSet<Vec<String>> = BTreeSet::new();
        for (cycle, loc) in found {
            let mut key = cycle.clone();
            key.sort();
            if !reported.insert(key) {
                continue;
            }
            let mut path = cycle.clone();
            path.push(cycle[0].clone());
            for n in &cycle {
                self.failed.insert(n.clone());
            }
            let d = Diag::at(
                &self.src(loc.file),
                loc.span,
                format!("reference cycle: {}", path.join(" → ")),
                "this reference closes the cycle",
            )
            .help("a node cannot depend on itself, even through other nodes");
            self.push(d);
        }
    }

    /// Runs each valid node's kind `check`, then the recipe-wide checks of the nodes still
    /// without errors, reporting issues at the named parameter (warnings kept apart).
    pub fn run_checks(&mut self) {
        let mut out = Vec::new();
        let mut bad = BTreeSet::new();
        for d in &self.decls {
            if self.failed.contains(&d.name) {
                continue;
            }
            let Some(check) = self.reg.get(&d.kind).and_then(|k| k.check) else {
                continue;
            };
            for issue in check(d) {
                bad.insert(d.name.as_str());
                out.push(self.issue_diag(d, issue));
            }
        }
        let ok: Vec<&NodeDecl> = self
            .decls
            .iter()
            .filter(|d| !self.failed.contains(&d.name) && !bad.contains(d.name.as_str()))
            .collect();
        let cx = CheckContext::new(&ok, &self.root_dir, self.s.opts.machine());
        let mut warnings = Vec::new();
        for d in &ok {
            let Some(check) = self.reg.get(&d.kind).and_then(|k| k.check_in_recipe) else {
                continue;
            };
            let mut f = Findings::default();
            check(d, &cx, &mut f);
            if !f.notes.is_empty() {
                self.notes
                    .entry(d.name.clone())
                    .or_default()
                    .append(&mut f.notes);
            }
            out.extend(f.errors.into_iter().map(|i| self.issue_diag(d, i)));
            warnings.extend(
                f.warnings
                    .into_iter()
                    .map(|i| self.issue_diag(d, i).warning()),
            );
        }
        for d in out {
            self.push(d);
        }
        self.warnings.extend(warnings);
    }

    /// An issue of node `d` as a diagnostic at its parameter (a record's field: at the field,
    /// else at the record), else at the node.
    fn issue_diag(&self, d: &NodeDecl, issue: ParamIssue) -> Diag {
        let at = |p: &str| d.param_locs.get(p).copied();
        let loc = issue
            .param
            .as_deref()
            .and_then(|p| at(p).or_else(|| p.split_once('.').and_then(|(r, _)| at(r))))
            .unwrap_or(d.loc);
        Diag::at(
            &self.src(loc.file),
            loc.span,
            format!("`{}`: {}", d.name, issue.message),
            "here",
        )
        .help_opt(issue.hint)
    }
}

/// Depth-first search from `root` without recursion (a chain of thousands of references must
/// not exhaust the stack): `stack` holds the current path, `iters` the next edge of each.
fn dfs<'e>(
    root: &'e str,
    edges: &'e BTreeMap<String, Vec<(String, Loc)>>,
    state: &mut BTreeMap<&'e str, u8>,
    stack: &mut Vec<String>,
    found: &mut Vec<(Vec<String>, Loc)>,
) {
    let mut iters: Vec<(&'e str, usize)> = vec![(root, 0)];
    state.insert(root, 1);
    stack.push(root.to_string());
    while let Some((n, k)) = iters.last_mut() {
        let out = edges.get(*n).map_or(&[][..], Vec::as_slice);
        let Some((t, loc)) = out.get(*k) else {
            state.insert(*n, 2);
            stack.pop();
            iters.pop();
            continue;
        };
        *k += 1;
        match state.get(t.as_str()) {
            // Each cycle costs its length; past the errors shown, only the walk goes on.
            Some(1) if found.len() < limits::MAX_SHOWN_ERRORS => {
                if let Some(pos) = stack.iter().position(|s| s == t) {
                    found.push((stack[pos..].to_vec(), *loc));
                }
            }
            Some(_) => {}
            None => {
                state.insert(t.as_str(), 1);
                stack.push(t.clone());
                iters.push((t.as_str(), 0));
            }
        }
    }
}
