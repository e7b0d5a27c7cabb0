//! `temper gc [recipe.kdl…] [--dry-run] [--yes]`: delete artifacts not reachable from the named
//! recipes (all their instances) or the pins; print what is freed. With no recipe every
//! unpinned artifact goes, so that asks first on a terminal and needs `--yes` otherwise.
//! Works on a full disk (the store writes nothing before deleting). A kept or pinned LoRA adapter
//! keeps the artifacts it is applied on (its base and lower adapters, named by key in its
//! `temper_adapter.json`), since it is unusable without them. Damaged copies that runs moved
//! aside (`damaged/`) are never deleted by a plain gc; `--damaged` deletes them.
use super::{human_bytes, Global};
use anyhow::{Context, Result};
use clap::Args;
use std::collections::HashSet;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct GcArgs {
    /// Recipes whose artifacts to keep.
    pub recipes: Vec<PathBuf>,
    /// Only print what would be deleted.
    #[arg(long)]
    pub dry_run: bool,
    /// With no recipe: delete every unpinned artifact without asking.
    #[arg(short = 'y', long)]
    pub yes: bool,
    /// `--set` overrides applied to every recipe.
    #[arg(long = "set", value_name = "NODE.PARAM=VALUE")]
    pub set: Vec<String>,
    /// Also delete the damaged copies runs moved aside (`damaged/` in the store).
    #[arg(long)]
    pub damaged: bool,
}

pub fn run(g: &Global, a: GcArgs) -> Result<ExitCode> {
    let kinds = crate::Kinds::builtin();
    let store = g.open_store()?;
    let mut keep = HashSet::new();
    for r in &a.recipes {
        let loaded = crate::plan::load(r, &kinds.registry, &a.set)?;
        let keyed = crate::plan::keys_of(&loaded, &kinds.registry, &store, Some(&store))
            .with_context(|| format!("computing the keys of {}", r.display()))?;
        keep.extend(keyed.keyed.into_iter().map(|k| k.key));
    }
    let pinned: Vec<String> = store.pins()?.into_values().flatten().collect();
    let mut below = HashSet::new();
    for k in keep.iter().chain(&pinned) {
        let lineage = crate::lineage::adapter_lineage(&store.artifact_dir(k));
        below.extend(lineage.into_iter().map(|(_, key)| key));
    }
    keep.extend(below);
    let _lock = store
        .lock_run(true, "temper gc")
        .context("taking the store's run lock")?;
    if a.recipes.is_empty() && !a.dry_run && !a.yes {
        let preview = store.gc(&keep, true)?;
        if !preview.removed.is_empty() && !confirm_delete_all(&preview)? {
            println!("nothing deleted");
            return Ok(ExitCode::from(1));
        }
    }
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
    let copies = store.damaged_copies()?;
    if !copies.is_empty() {
        let bytes: u64 = copies.iter().map(|c| c.bytes).sum();
        if a.damaged && !a.dry_run {
            let (n, freed) = store.remove_damaged_copies()?;
            println!("freed {} in {n} damaged cop(ies)", human_bytes(freed));
        } else {
            println!(
                "{} {} in {} damaged cop(ies) under {}{}",
                if a.damaged { "would free" } else { "kept" },
                human_bytes(bytes),
                copies.len(),
                store.root().join(store::DAMAGED_DIR).display(),
                if a.damaged {
                    ""
                } else {
                    " (--damaged deletes them)"
                }
            );
        }
    }
    if let Some(e) = &report.index_error {
        eprintln!(
            "warning: the deleted artifacts count as absent, but their records stay in the index \
             until the next `temper gc`: {e}"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks on the terminal whether to delete everything `preview` lists; off a terminal, refuses
/// with a usage error that says how to confirm.
fn confirm_delete_all(preview: &store::GcReport) -> Result<bool> {
    let what = format!(
        "{} artifact(s), {}",
        preview.removed.len(),
        human_bytes(preview.freed_bytes)
    );
    if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
        return Err(crate::text::UsageError(format!(
            "`temper gc` with no recipe deletes every unpinned artifact ({what}); pass --yes to \
             confirm, name the recipes whose artifacts to keep, or see the list with --dry-run"
        ))
        .into());
    }
    let mut err = std::io::stderr();
    write!(
        err,
        "`temper gc` with no recipe deletes every unpinned artifact: {what}. Delete them? [y/N] "
    )?;
    err.flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}
