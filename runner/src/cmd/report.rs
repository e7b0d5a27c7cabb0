//! `temper report recipe.kdl -o report.html [--set …]`: one self-contained HTML page of the
//! recipe against the store as it is now (see [`crate::html`]): the DAG with each instance's
//! state, a panel per instance, training curves with sweep variants overlaid, the results and
//! eval tables. Works during a run (states and curves as they are). The file is written to a
//! temporary name and renamed, so a browser never reads half a page.
//!
//! `--serve ADDR` serves the same page over HTTP instead (`127.0.0.1:8080`; port 0 picks one):
//! every request re-reads the recipe and the store, and the page reloads itself every
//! `--refresh` seconds, so it follows a run as it goes. Plain `std::net`, one request at a
//! time, `GET /` only; bind it to a local address (nothing is authenticated).
use super::{Global, RecipeArgs};
use anyhow::{Context, Result};
use clap::Args;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
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

fn serve(g: &Global, a: &ReportArgs, addr: &str) -> Result<ExitCode> {
    // Fail before listening if the recipe does not load.
    render(g, a, Some(a.refresh))?;
    let listener = TcpListener::bind(addr).with_context(|| format!("listening on {addr}"))?;
    println!(
        "serving the report of {} at http://{}/ (Ctrl-C to stop)",
        a.recipe.recipe.display(),
        listener.local_addr()?
    );
    std::io::stdout().flush().ok();
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if let Err(e) = answer(g, a, stream) {
            tracing::warn!("report: a request failed: {e:#}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads one request and answers it: `GET /` (any query) → the page, anything else → 404.
fn answer(g: &Global, a: &ReportArgs, mut stream: TcpStream) -> Result<()> {
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    // Drain the headers.
    let mut h = String::new();
    while reader.read_line(&mut h)? > 2 {
        h.clear();
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let root = path == "/" || path.starts_with("/?") || path.starts_with("/#");
    let (status, kind, body) = if method != "GET" || !root {
        ("404 Not Found", "text/plain", "not found\n".to_string())
    } else {
        match render(g, a, Some(a.refresh)) {
            Ok((page, _)) => ("200 OK", "text/html; charset=utf-8", page),
            Err(e) => (
                "500 Internal Server Error",
                "text/plain; charset=utf-8",
                format!("{e:#}\n"),
            ),
        }
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()?;
    Ok(())
}
