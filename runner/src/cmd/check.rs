//! `temper check recipe.kdl`: parse, validate and expand; check the cluster settings (recipe
//! `executor` blocks, nodes' `resources`, `temper.toml`), without asking any cluster; print a
//! one-line summary.
use super::{Global, RecipeArgs};
use anyhow::Result;
use clap::Args;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    pub recipe: RecipeArgs,
}

pub fn run(_g: &Global, a: CheckArgs) -> Result<ExitCode> {
    let kinds = crate::Kinds::builtin();
    let loaded = a.recipe.load(&kinds)?;
    crate::slurm::settings::Sources::read(&loaded.recipe)?;
    println!("{}", summary(&loaded));
    Ok(ExitCode::SUCCESS)
}

/// `ok: N nodes, M instances, V variants`.
pub fn summary(l: &crate::plan::Loaded) -> String {
    format!(
        "ok: {} nodes, {} instances, {} variants",
        l.recipe.nodes.len(),
        l.expanded.instances.len(),
        l.expanded.variants.len().max(1)
    )
}
