//! `--only`: which entries of a plan a run considers.

use crate::plan::{Plan, State};
use crate::text::UsageError;
use anyhow::Result;
use std::collections::HashMap;

/// Positions of the entries to consider: all, or the `only` ones plus their uncached upstream.
pub fn select(plan: &Plan, only: &[String]) -> Result<Vec<bool>> {
    let n = plan.entries.len();
    if only.is_empty() {
        return Ok(vec![true; n]);
    }
    let pos: HashMap<&str, usize> = plan
        .entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.id.as_str(), i))
        .collect();
    let mut sel = vec![false; n];
    let mut stack = Vec::new();
    for name in only {
        let hits: Vec<usize> = plan
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.node == *name || e.id == *name)
            .map(|(i, _)| i)
            .collect();
        if hits.is_empty() {
            let names: Vec<&str> = plan.entries.iter().map(|e| e.node.as_str()).collect();
            let mut names = names;
            names.dedup();
            return Err(UsageError(format!(
                "--only {name}: no node or instance of that name in {} (nodes: {})",
                plan.loaded.path.display(),
                names.join(", ")
            ))
            .into());
        }
        stack.extend(hits);
    }
    while let Some(i) = stack.pop() {
        if std::mem::replace(&mut sel[i], true) {
            continue;
        }
        for (_, input) in &plan.entries[i].inputs {
            if let Some(&j) = pos.get(input.as_str()) {
                if plan.entries[j].state != State::Cached && !sel[j] {
                    stack.push(j);
                }
            }
        }
    }
    Ok(sel)
}
