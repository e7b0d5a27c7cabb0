//! `temper gc [recipe.kdl…] [--dry-run]`: delete artifacts not reachable from the named recipes
//! (all their instances) or the pins; print what is freed.
use super::{human_bytes, Global};
use anyhow::{Context, Result};
use clap::Args;
use std::collections::HashSet;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct GcArgs {
    /// Recipes whose artifacts to keep.
    pub recipes: Vec<PathBuf>,
    /// Only print what would be deleted.
    #[arg(long)]
    pub dry_run: bool,
    /// `--set` overrides applied to every recipe.
    #[arg(long = "set", value_name = "NODE.PARAM=VALUE")]
    pub set: Vec<String>,
}

pub fn run(g: &Global, a: GcArgs) -> Result<ExitCode> {
    let kinds = crate::Kinds::builtin();
    let store = g.open_store()?;
    let mut keep = HashSet::new();
    for r in &a.recipes {
        let loaded = crate::plan::load(r, &kinds.registry, &a.set)?;
        let keyed = crate::plan::keys_of(&loaded, &kinds.registry, &store)
            .with_context(|| format!("computing the keys of {}", r.display()))?;
        keep.extend(keyed.keyed.into_iter().map(|k| k.key));
    }
    let _lock = store
        .lock_run(true, "temper gc")
        .context("taking the store's run lock")?;
    let report = store.gc(&keep, a.dry_run)?;
    let verb = if a.dry_run { "would free" } else { "freed" };
    for (key, bytes) in &report.removed {
        println!("{verb} {key} ({})", human_bytes(*bytes));
    }
    println!(
        "{verb} {} in {} artifact(s); kept {} key(s) of {} recipe(s) and the pins",
        human_bytes(report.freed_bytes),
        report.removed.len(),
        keep.len(),
        a.recipes.len()
    );
    Ok(ExitCode::SUCCESS)
}
