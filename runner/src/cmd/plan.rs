//! `temper plan recipe.kdl [--json] [--executor local|slurm]`: each instance in topological
//! order with its state, short key and the reason it will run, then a summary line. With
//! `--executor slurm` the nodes are keyed as their Slurm jobs will build them
//! ([`crate::target`]), devices checked for syntax only.
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
    /// Where the nodes will run, which decides what `dtype auto` is keyed as: here (`local`),
    /// or as Slurm jobs (`slurm`: bf16 where a job asks for GPUs).
    #[arg(long, value_enum, default_value_t = super::run::Executor::Local)]
    pub executor: super::run::Executor,
}

pub fn run(g: &Global, a: PlanArgs) -> Result<ExitCode> {
    let kinds = crate::Kinds::builtin();
    let loaded = match a.executor {
        super::run::Executor::Local => a.recipe.load(&kinds)?,
        super::run::Executor::Slurm => {
            let mut loaded = a.recipe.load_to_inspect(&kinds)?;
            loaded.target = crate::slurm::settings::Sources::read(&loaded.recipe)?.target()?;
            loaded
        }
    };
    let store = g.open_store()?;
    let plan = crate::plan::plan(&store, &kinds.registry, loaded)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&plan.to_json())?);
    } else {
        print!("{}", plan.render());
    }
    Ok(ExitCode::SUCCESS)
}
