//! `temper ls`: every finished artifact: key, kind, node, size, date.
use super::{human_bytes, human_time, Global};
use anyhow::Result;
use clap::Args;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct LsArgs {}

pub fn run(g: &Global, _a: LsArgs) -> Result<ExitCode> {
    let store = g.open_store()?;
    let done = store.list_done()?;
    if done.is_empty() {
        println!("no artifacts in {}", store.root().display());
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<12}  {:<10} {:<10} {:>10}  {:<19}  node",
        "key", "kind", "recipe", "size", "date"
    );
    for r in done {
        let size = store
            .read_manifest(&r.key)?
            .map(|m| m.total_bytes())
            .unwrap_or(0);
        println!(
            "{:<12}  {:<10} {:<10} {:>10}  {:<19}  {}",
            &r.key[..12.min(r.key.len())],
            r.kind,
            r.recipe,
            human_bytes(size),
            r.finished_at.map(human_time).unwrap_or_default(),
            r.node
        );
    }
    Ok(ExitCode::SUCCESS)
}
