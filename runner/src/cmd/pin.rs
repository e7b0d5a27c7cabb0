//! `temper pin NAME recipe.kdl [NODE…]`: keep the artifacts of a recipe (or some of its nodes)
//! from gc under NAME.
use super::{Global, RecipeArgs};
use anyhow::Result;
use clap::Args;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct PinArgs {
    /// Pin name.
    pub name: String,
    #[command(flatten)]
    pub recipe: RecipeArgs,
    /// Nodes (declared names or instance ids) to pin; default all.
    pub nodes: Vec<String>,
}

pub fn run(g: &Global, a: PinArgs) -> Result<ExitCode> {
    let kinds = crate::Kinds::builtin();
    let loaded = a.recipe.load_to_inspect(&kinds)?;
    let store = g.open_store()?;
    let crate::plan::KeyedGraph { order, keyed, .. } =
        crate::plan::keys_of(&loaded, &kinds.registry, &store, Some(&store))?;
    let mut keys = Vec::new();
    for (pos, k) in keyed.iter().enumerate() {
        let inst = &loaded.expanded.instances[order[pos]];
        if a.nodes.is_empty() || a.nodes.iter().any(|n| *n == inst.node || *n == inst.id) {
            keys.push(k.key.clone());
        }
    }
    for n in &a.nodes {
        if !loaded
            .expanded
            .instances
            .iter()
            .any(|i| i.node == *n || i.id == *n)
        {
            return Err(crate::text::UsageError(format!(
                "no node or instance `{n}` in the recipe"
            ))
            .into());
        }
    }
    store.pin(&a.name, &keys)?;
    println!("pinned {} key(s) as {}", keys.len(), a.name);
    Ok(ExitCode::SUCCESS)
}
