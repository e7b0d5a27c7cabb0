//! `temper export recipe.kdl NODE DIR`: copy a node's artifact out of the store.
use super::{Global, RecipeArgs};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    pub recipe: RecipeArgs,
    /// Instance id (or a declared node with a single instance).
    pub node: String,
    /// Destination directory (created; must be empty if it exists).
    pub dir: PathBuf,
}

pub fn run(g: &Global, a: ExportArgs) -> Result<ExitCode> {
    let kinds = crate::Kinds::builtin();
    let loaded = a.recipe.load_to_inspect(&kinds)?;
    let store = g.open_store()?;
    let plan = crate::plan::plan(&store, &kinds.registry, loaded)?;
    let e = super::show::pick_one(&plan, &a.node)?;
    if e.state != crate::plan::State::Cached {
        bail!(
            "node {} is not built ({}); run the recipe first",
            e.id,
            e.state.word()
        );
    }
    let n = export(&store, &e.key, &a.dir)?;
    println!("exported {} ({} files) to {}", e.id, n, a.dir.display());
    Ok(ExitCode::SUCCESS)
}

/// Copies artifact `key` (without its manifest) into `dir`; returns the number of files.
pub fn export(store: &store::Store, key: &str, dir: &Path) -> Result<usize> {
    let src = store.artifact_dir(key);
    if dir.exists()
        && std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .next()
            .is_some()
    {
        bail!("{} exists and is not empty", dir.display());
    }
    let mut n = 0;
    for entry in walkdir::WalkDir::new(&src).sort_by_file_name() {
        let entry = entry.with_context(|| format!("listing {}", src.display()))?;
        let rel = entry.path().strip_prefix(&src).unwrap_or(entry.path());
        if rel.as_os_str() == store::MANIFEST_FILE {
            continue;
        }
        let to = dir.join(rel);
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&to).with_context(|| format!("creating {}", to.display()))?;
        } else {
            std::fs::copy(entry.path(), &to).with_context(|| {
                format!("copying {} to {}", entry.path().display(), to.display())
            })?;
            n += 1;
        }
    }
    Ok(n)
}
