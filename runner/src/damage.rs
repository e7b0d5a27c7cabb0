//! A run's side of damaged artifacts (the store's `damage.rs` finds them): before a pass runs
//! anything, `--verify-inputs` re-hashes every built artifact the pass will read, and every
//! damaged instance the pass will rebuild is moved aside ([`store::Store::set_aside`]), so its
//! key is absent and it runs like a new node. Its key does not change, so on CPU the rebuilt
//! bytes are the published ones and nothing downstream of it reruns.

use crate::lineage::adapter_lineage;
use crate::plan::{self, Plan, State};
use anyhow::{Context, Result};
use dsl::Registry;
use std::collections::{BTreeSet, HashMap};

/// Prepares `plan` for a pass: with `verify_inputs`, re-hashes the inputs the pass reads and,
/// when some are damaged, plans again (they are now marked, so the plan says `damaged`); then
/// moves every damaged instance the pass will run aside. Returns the plan to run.
pub fn before_pass(
    store: &store::Store,
    registry: &Registry,
    plan: Plan,
    only: &[String],
    verify_inputs: bool,
) -> Result<Plan> {
    let mut plan = plan;
    if verify_inputs {
        let selected = crate::only::select(&plan, only)?;
        let found = verify_read(store, &plan, &selected)?;
        if found > 0 {
            plan = plan::plan(store, registry, plan.loaded.clone())?;
        }
    }
    let selected = crate::only::select(&plan, only)?;
    for (i, e) in plan.entries.iter().enumerate() {
        let State::Damaged { damage } = &e.state else {
            continue;
        };
        if !selected[i] {
            continue;
        }
        let aside = store
            .set_aside(damage)
            .with_context(|| format!("node {}: moving its damaged artifact aside", e.id))?;
        tracing::warn!(
            "{}: artifact damaged ({damage}); moved aside to {} and rebuilding it",
            e.id,
            aside.display()
        );
    }
    Ok(plan)
}

/// Re-hashes (no cache) every built artifact that a node the pass runs reads: its inputs, a
/// select's winner, and the base and lower adapters an adapter input folds in. Returns how
/// many were found damaged (each is marked in the store, see
/// [`store::Store::verify_content`]).
fn verify_read(store: &store::Store, plan: &Plan, selected: &[bool]) -> Result<usize> {
    let by_id: HashMap<&str, &plan::Entry> =
        plan.entries.iter().map(|e| (e.id.as_str(), e)).collect();
    let mut keys: BTreeSet<String> = BTreeSet::new();
    for (i, e) in plan.entries.iter().enumerate() {
        if !selected[i] || !e.state.needs_run() {
            continue;
        }
        for (_, input) in &e.inputs {
            let Some(ie) = by_id
                .get(input.as_str())
                .and_then(|ie| plan.artifact_of(ie))
            else {
                continue;
            };
            if ie.state == State::Cached {
                keys.insert(ie.key.clone());
                keys.extend(
                    adapter_lineage(&store.artifact_dir(&ie.key))
                        .into_iter()
                        .map(|(_, k)| k),
                );
            }
        }
    }
    let mut found = 0;
    for key in &keys {
        if let Some(d) = store
            .verify_content(key)
            .with_context(|| format!("re-hashing artifact {key}"))?
        {
            tracing::warn!(
                "--verify-inputs: artifact {key} of {} is damaged: {d}",
                d.node
            );
            found += 1;
        }
    }
    tracing::info!(
        "--verify-inputs: re-hashed {} input artifact(s), {found} damaged",
        keys.len()
    );
    Ok(found)
}
