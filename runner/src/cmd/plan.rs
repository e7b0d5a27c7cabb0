//! `temper plan recipe.kdl [--json]`: each instance in topological order with its state, short
//! key and the reason it will run, then a summary line.
use super::{Global, RecipeArgs};
use anyhow::Result;
use clap::Args;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct PlanArgs {
    #[command(flatten)]
    pub recipe: RecipeArgs,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(g: &Global, a: PlanArgs) -> Result<ExitCode> {
    let kinds = crate::Kinds::builtin();
    let loaded = a.recipe.load(&kinds)?;
    let store = g.open_store()?;
    let plan = crate::plan::plan(&store, &kinds.registry, loaded)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&plan.to_json())?);
    } else {
        print!("{}", plan.render());
    }
    Ok(ExitCode::SUCCESS)
}
