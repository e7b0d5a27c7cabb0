//! `temper why recipe.kdl NODE`: the field-level difference between the node's current key tree
//! and the one it was last built with.
use super::{Global, RecipeArgs};
use anyhow::Result;
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
