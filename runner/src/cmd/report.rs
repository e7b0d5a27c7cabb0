//! `temper report recipe.kdl -o report.html [--set …]`: one self-contained HTML page of the
//! recipe against the store as it is now (see [`crate::html`]): the DAG with each instance's
//! state, a panel per instance, training curves with sweep variants overlaid, the results and
//! eval tables. Works during a run (states and curves as they are). The file is written to a
//! temporary name and renamed, so a browser never reads half a page.
//!
//! `--serve ADDR` serves the same page over HTTP instead (`127.0.0.1:8080`; port 0 picks one):
//! every request re-reads the recipe and the store, and the page reloads itself every
//! `--refresh` seconds, so it follows a run as it goes. Connections are served concurrently
//! within bounds ([`crate::html::serve`]); bind it to a local address (nothing is
//! authenticated).
use super::{Global, RecipeArgs};
use anyhow::{Context, Result};
use clap::Args;
use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Args, Debug, Clone)]
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
    /// Serve the page at this address instead of writing a file (e.g. 127.0.0.1:8080).
    #[arg(long, value_name = "ADDR", conflicts_with = "out")]
    pub serve: Option<String>,
    /// With --serve: seconds between the page's reloads.
    #[arg(long, default_value_t = 5)]
    pub refresh: u32,
    /// Log lines per node panel.
    #[arg(long, default_value_t = 30)]
    pub log_lines: usize,
}

/// The page for the recipe and store as they are now.
fn render(g: &Global, a: &ReportArgs, refresh: Option<u32>) -> Result<(String, String)> {
    let kinds = crate::Kinds::builtin();
    let loaded = a.recipe.load_to_inspect(&kinds)?;
    let store = g.open_store()?;
    let plan = crate::plan::plan(&store, &kinds.registry, loaded)?;
    let page = crate::html::page(&store, &plan, a.log_lines, refresh)?;
    Ok((page, plan.summary()))
}

pub fn run(g: &Global, a: ReportArgs) -> Result<ExitCode> {
    if let Some(addr) = &a.serve {
        return serve(g, &a, addr);
    }
    let (page, summary) = render(g, &a, None)?;
    let name = a.out.file_name().map(|s| s.to_string_lossy().into_owned());
    let tmp = a
        .out
        .with_file_name(format!(".{}.tmp", name.as_deref().unwrap_or("report.html")));
    std::fs::write(&tmp, page.as_bytes()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &a.out).with_context(|| format!("writing {}", a.out.display()))?;
    println!("wrote {} ({summary})", a.out.display());
    Ok(ExitCode::SUCCESS)
}

/// Renders once (a recipe that does not load fails before anything listens), binds, prints the
/// address line (the end-to-end tests read the port from it), then serves until killed.
fn serve(g: &Global, a: &ReportArgs, addr: &str) -> Result<ExitCode> {
    render(g, a, Some(a.refresh))?;
    let listener = TcpListener::bind(addr).with_context(|| format!("listening on {addr}"))?;
    println!(
        "serving the report of {} at http://{}/ (Ctrl-C to stop)",
        a.recipe.recipe.display(),
        listener.local_addr()?
    );
    std::io::stdout().flush().ok();
    let (g, a) = (g.clone(), a.clone());
    let page = move || render(&g, &a, Some(a.refresh)).map(|(page, _)| page);
    crate::html::serve::serve(listener, crate::html::serve::LIMITS, Arc::new(page))?;
    Ok(ExitCode::SUCCESS)
}
