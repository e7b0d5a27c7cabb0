//! `temper export recipe.kdl NODE DIR [--merged]`: copy a node's artifact out of the store.
//!
//! An adapter node (LoRA) exports as it is stored: a PEFT adapter directory
//! (`adapter_config.json`, `adapter_model.safetensors`) with the tokenizer files. `--merged`
//! writes instead a full Hugging Face model: the base with the adapter (and any below it) folded
//! in, computed by `temper-worker --fold` (this binary does not link libtorch).
use super::{Global, RecipeArgs};
use crate::lineage::adapter_lineage;
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
    /// For an adapter node: write a full model with the adapter folded into its base.
    #[arg(long)]
    pub merged: bool,
}

/// The file that marks an adapter artifact (PEFT's).
const ADAPTER_CONFIG: &str = "adapter_config.json";

pub fn run(g: &Global, a: ExportArgs) -> Result<ExitCode> {
    let kinds = crate::Kinds::builtin();
    let loaded = a.recipe.load_to_inspect(&kinds)?;
    let store = g.open_store()?;
    let plan = crate::plan::plan(&store, &kinds.registry, loaded)?;
    let e = super::show::pick_one(&plan, &a.node)?;
    if let crate::plan::State::Damaged { damage } = &e.state {
        bail!(
            "node {}: its artifact is damaged ({damage}); `temper run` moves it aside and \
             rebuilds it, then export",
            e.id
        );
    }
    if e.state != crate::plan::State::Cached {
        bail!(
            "node {} is not built ({}); run the recipe first",
            e.id,
            e.state.word()
        );
    }
    // A select exports the variant it chose.
    let chosen = plan
        .artifact_of(e)
        .ok_or_else(|| anyhow::anyhow!("internal: the winner of {} is not planned", e.id))?;
    if chosen.id != e.id {
        println!("{} selected {}: exporting it", e.id, chosen.id);
    }
    let e = chosen;
    // Nothing leaves the store that it cannot vouch for: the winner, and what an adapter
    // folds in.
    let mut keys = vec![e.key.clone()];
    keys.extend(
        adapter_lineage(&store.artifact_dir(&e.key))
            .into_iter()
            .map(|(_, k)| k),
    );
    if let Some(d) = store.damaged_inputs(&keys)?.into_values().next() {
        bail!(
            "the artifact of {} is damaged ({d}); `temper run` moves it aside and rebuilds it, \
             then export",
            d.node
        );
    }
    let adapter = store.artifact_dir(&e.key).join(ADAPTER_CONFIG).is_file();
    if a.merged && adapter {
        check_empty(&a.dir)?;
        fold(&store.artifact_dir(&e.key), &e.id, &e.key, &a.dir)?;
        let n = walkdir::WalkDir::new(&a.dir)
            .into_iter()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_file())
            .count();
        println!(
            "exported {} merged into its base ({n} files) to {}",
            e.id,
            a.dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    if a.merged {
        eprintln!(
            "note: {} is a full model, not an adapter: exporting it as it is",
            e.id
        );
    }
    let n = export(&store, &e.key, &a.dir)?;
    let below: Vec<String> = adapter_lineage(&store.artifact_dir(&e.key))
        .into_iter()
        .skip(1)
        .map(|(node, _)| node)
        .collect();
    if !below.is_empty() {
        eprintln!(
            "note: adapter {} was trained on its base with {} folded in; PEFT applies it to the \
             model in `base_model_name_or_path` only, so load it on `temper export --merged` of \
             {}, or export this node with --merged",
            e.id,
            below.join(", "),
            below.last().map(String::as_str).unwrap_or_default()
        );
    }
    let what = if adapter { "adapter " } else { "" };
    println!(
        "exported {what}{} ({} files) to {}",
        e.id,
        n,
        a.dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Runs `temper-worker --fold` to write adapter artifact `src` folded into its base in `dir`.
fn fold(src: &Path, node: &str, key: &str, dir: &Path) -> Result<()> {
    let exe = crate::launch::worker_exe()?;
    let out = std::process::Command::new(&exe)
        .arg("--fold")
        .arg(src)
        .arg(node)
        .arg(key)
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .status()
        .with_context(|| format!("running {}", exe.display()))?;
    if !out.success() {
        bail!("folding adapter {node} into its base failed (see above)");
    }
    Ok(())
}

fn check_empty(dir: &Path) -> Result<()> {
    if dir.exists()
        && std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .next()
            .is_some()
    {
        bail!("{} exists and is not empty", dir.display());
    }
    Ok(())
}

/// Copies artifact `key` (without its manifest) into `dir`; returns the number of files.
pub fn export(store: &store::Store, key: &str, dir: &Path) -> Result<usize> {
    let src = store.artifact_dir(key);
    check_empty(dir)?;
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
