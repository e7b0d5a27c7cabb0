//! `temper unpin NAME`.
use super::Global;
use anyhow::Result;
use clap::Args;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct UnpinArgs {
    pub name: String,
}

pub fn run(g: &Global, a: UnpinArgs) -> Result<ExitCode> {
    let store = g.open_store()?;
    if store.unpin(&a.name)? {
        println!("removed pin {}", a.name);
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("no pin named {}", a.name);
        Ok(ExitCode::from(1))
    }
}
