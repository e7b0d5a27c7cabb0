//! `temper why recipe.kdl NODE`: the field-level difference between the node's current key tree
//! and the one it was last built with.
use super::{Global, RecipeArgs};
use crate::diff::{self, Change};
use crate::plan::{Plan, State};
use anyhow::{anyhow, Result};
use clap::Args;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct WhyArgs {
    #[command(flatten)]
    pub recipe: RecipeArgs,
    /// Declared node name or instance id (a node with several instances shows each).
    pub node: String,
}

pub fn run(g: &Global, a: WhyArgs) -> Result<ExitCode> {
    let kinds = crate::Kinds::builtin();
    let loaded = a.recipe.load_to_inspect(&kinds)?;
    let store = g.open_store()?;
    let plan = crate::plan::plan(&store, &kinds.registry, loaded)?;
    let ids: Vec<String> = plan
        .entries
        .iter()
        .filter(|e| e.id == a.node || e.node == a.node)
        .map(|e| e.id.clone())
        .collect();
    if ids.is_empty() {
        return Err(crate::text::UsageError(format!(
            "no node or instance `{}` in {}",
            a.node,
            a.recipe.recipe.display()
        ))
        .into());
    }
    for id in ids {
        println!("{}", crate::plan::why_text(&store, &plan, &id)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// `why`: the field-level changes between the current tree of `id` and the tree it was last
/// built with; `Ok(None)` when it was never built.
pub fn why(store: &store::Store, plan: &Plan, id: &str) -> Result<Option<Vec<Change>>> {
    let e = plan
        .entry(id)
        .ok_or_else(|| anyhow!("no instance `{id}` in {}", plan.loaded.path.display()))?;
    let old = store.with_index(|ix| match ix.last_key(&e.identity)? {
        Some(lk) => ix.record(&lk),
        None => Ok(None),
    })?;
    let Some(old) = old else {
        return Ok(None);
    };
    Ok(Some(diff::diff(&old.key_tree, &e.tree)))
}

/// The text `temper why` prints for instance `id`.
pub fn why_text(store: &store::Store, plan: &Plan, id: &str) -> Result<String> {
    let e = plan
        .entry(id)
        .ok_or_else(|| anyhow!("no instance `{id}` in {}", plan.loaded.path.display()))?;
    Ok(match why(store, plan, id)? {
        None => format!("{id}: never built (key {})", e.short_key()),
        Some(changes) if changes.is_empty() => {
            if e.state == State::Cached {
                format!("{id}: up to date (key {})", e.short_key())
            } else {
                format!(
                    "{id}: same key as the last build ({}), state {}: {}",
                    e.short_key(),
                    e.state.word(),
                    e.reason_text()
                )
            }
        }
        Some(changes) => {
            let mut s = format!("{id}: changed since the last build:\n");
            for c in changes {
                s += &format!("  {}\n", c.describe());
            }
            s.trim_end().to_string()
        }
    })
}
