//! `temper report recipe.kdl -o report.html [--set …]`: one self-contained HTML page of the
//! recipe against the store as it is now (see [`crate::html`]): the DAG with each instance's
//! state, a panel per instance, training curves with sweep variants overlaid, the results and
//! eval tables. Works during a run (states and curves as they are); rerun it to refresh. The
//! file is written to a temporary name and renamed, so a browser never reads half a page.
use super::{Global, RecipeArgs};
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct ReportArgs {
    #[command(flatten)]
    pub recipe: RecipeArgs,
    /// The HTML file to write.
    #[arg(
        short = 'o',
        long = "out",
        value_name = "FILE",
        default_value = "report.html"
    )]
    pub out: PathBuf,
    /// Log lines per node panel.
    #[arg(long, default_value_t = 30)]
    pub log_lines: usize,
}

pub fn run(g: &Global, a: ReportArgs) -> Result<ExitCode> {
    let kinds = crate::Kinds::builtin();
    let loaded = a.recipe.load_to_inspect(&kinds)?;
    let store = g.open_store()?;
    let plan = crate::plan::plan(&store, &kinds.registry, loaded)?;
    let page = crate::html::page(&store, &plan, a.log_lines)?;
    let name = a.out.file_name().map(|s| s.to_string_lossy().into_owned());
    let tmp = a
        .out
        .with_file_name(format!(".{}.tmp", name.as_deref().unwrap_or("report.html")));
    std::fs::write(&tmp, page.as_bytes()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &a.out).with_context(|| format!("writing {}", a.out.display()))?;
    println!(
        "wrote {} ({} instances; {})",
        a.out.display(),
        plan.entries.len(),
        plan.summary()
    );
    Ok(ExitCode::SUCCESS)
}
