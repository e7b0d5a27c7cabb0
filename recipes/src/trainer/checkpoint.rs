//! What a training checkpoint holds and how it is restored.
//!
//! A checkpoint directory `step-NNNNNNNNN` (written atomically by
//! [`crate::stage::Checkpoints::save`]) contains:
//! - `model.safetensors`: every trained variable by checkpoint name, in its dtype (the whole
//!   model — its f32 masters under `bf16-mixed` —, or only the LoRA adapter when one is
//!   trained: the frozen base is reloaded from its artifact); under `shard gradients | full`
//!   one file per rank, `model.rank-R.safetensors`, of the variables rank R owns (a restore
//!   reads each variable from whichever file holds it, so any rank count resumes any
//!   checkpoint);
//! - `optimizer.safetensors` + `optimizer.json`: AdamW moments and per-parameter steps (one
//!   pair per rank, `optimizer.rank-R.*`, when the state is sharded: [`super::optim_io`]);
//! - `trainer.json` ([`TrainerState`]): step, tokens seen, first/last loss, the intra-op thread
//!   count, seed, total steps and the objective's data position (stream / packer / sampler
//!   state). The schedule is a pure function of the step; the only random numbers of torch's
//!   the loop draws (LoRA dropout) come from a generator seeded from (seed, step, micro-batch),
//!   so the seed is all the RNG state there is.
//!
//! Metrics are appended to `work_dir/metrics.jsonl` as the run goes; on start,
//! [`truncate_metrics`] drops every line of a step after the restored checkpoint (and any torn
//! last line), so the file of a resumed run has the lines of an uninterrupted one.

use super::{Objective, Progress};
use crate::trainer::optim::AdamW;
use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};
use serde_json::Value as J;
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use tch::Tensor;

pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const STATE_FILE: &str = "trainer.json";

/// `trainer.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainerState {
    pub progress: Progress,
    pub threads: usize,
    pub seed: u64,
    pub total_steps: u64,
    /// The objective's data position.
    pub data: J,
}

/// Writes a checkpoint of the trained variables `trained` into `dir` (a fresh temporary
/// directory).
pub fn write(
    dir: &Path,
    trained: &[(String, Tensor)],
    opt: &AdamW,
    st: &TrainerState,
) -> anyhow::Result<()> {
    write_weights(dir, trained, opt)?;
    opt.save(dir)?;
    let p = dir.join(STATE_FILE);
    fs::write(&p, serde_json::to_string_pretty(st)? + "\n")
        .with_context(|| format!("writing {}", p.display()))
}

/// Writes this rank's trained variables into `dir`: all of them into `model.safetensors`, or
/// under `shard gradients | full` those it owns into `model.rank-R.safetensors`.
pub fn write_weights(dir: &Path, trained: &[(String, Tensor)], opt: &AdamW) -> anyhow::Result<()> {
    let own = opt
        .shard
        .as_ref()
        .filter(|p| p.mode.hooked())
        .map(|p| p.rank());
    let vars: BTreeMap<&String, &Tensor> = trained
        .iter()
        .filter(|(k, _)| own.is_none() || opt.owns(k))
        .map(|(k, t)| (k, t))
        .collect();
    let cpu: Vec<(String, Tensor)> = vars
        .into_iter()
        .map(|(k, t)| (k.clone(), t.detach().to_device(tch::Device::Cpu)))
        .collect();
    let p = match own {
        Some(r) => dir.join(format!("model.rank-{r}.safetensors")),
        None => dir.join(WEIGHTS_FILE),
    };
    Tensor::write_safetensors(&cpu, &p).with_context(|| format!("writing {}", p.display()))
}

/// The weight files of checkpoint `dir`: `model.safetensors` and every `model.rank-R.*`.
fn weight_files(dir: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut out: Vec<std::path::PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n == WEIGHTS_FILE || (n.starts_with("model.rank-") && n.ends_with(".safetensors"))
            })
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Moves the optimizer shards other ranks wrote into `staging` into checkpoint directory `dir`
/// (still temporary: [`crate::stage::Checkpoints::save`] publishes it afterwards).
pub fn adopt_shards(staging: &Path, dir: &Path) -> anyhow::Result<()> {
    for e in fs::read_dir(staging).with_context(|| format!("listing {}", staging.display()))? {
        let p = e?.path();
        if let Some(name) = p.file_name() {
            fs::rename(&p, dir.join(name))
                .with_context(|| format!("moving {} into the checkpoint", p.display()))?;
        }
    }
    Ok(())
}

/// Restores the trained variables `trained`, the optimizer and the data position from `dir`;
/// returns the trainer state. Under `shard gradients | full` a rank restores the variables it
/// owns (the others reach it from their owners).
pub fn restore<O: Objective>(
    dir: &Path,
    trained: &[(String, Tensor)],
    opt: &mut AdamW,
    obj: &mut O,
) -> anyhow::Result<TrainerState> {
    let p = dir.join(STATE_FILE);
    let text = fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    let st: TrainerState =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))?;
    let hooked = opt.shard.as_ref().is_some_and(|p| p.mode.hooked());
    let vars: BTreeMap<&String, &Tensor> = trained
        .iter()
        .filter(|(k, _)| !hooked || opt.owns(k))
        .map(|(k, t)| (k, t))
        .collect();
    let files = weight_files(dir)?;
    let mut saved: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut total = 0;
    for f in &files {
        for (k, t) in
            Tensor::read_safetensors(f).with_context(|| format!("reading {}", f.display()))?
        {
            total += 1;
            if vars.contains_key(&k) {
                saved.insert(k, t);
            }
        }
    }
    let shown = dir.join(WEIGHTS_FILE);
    let p = shown.as_path();
    if total != trained.len() {
        bail!(
            "{}: {total} tensors, the model has {}",
            dir.display(),
            trained.len()
        );
    }
    tch::no_grad(|| -> anyhow::Result<()> {
        for (name, var) in &vars {
            let src = saved
                .get(*name)
                .ok_or_else(|| anyhow!("{}: no tensor `{name}`", p.display()))?;
            if src.size() != var.size() {
                bail!(
                    "{}: `{name}` has shape {:?}, the model {:?}",
                    p.display(),
                    src.size(),
                    var.size()
                );
            }
            let mut v = var.shallow_clone();
            v.f_copy_(&src.f_to_device(v.device())?.f_to_kind(v.kind())?)?;
        }
        Ok(())
    })?;
    opt.load(dir)?;
    obj.restore(&st.data)
        .with_context(|| format!("restoring the data position of {}", dir.display()))?;
    Ok(st)
}

/// Cuts `metrics.jsonl` before its first line that is torn, unparsable, or of a step after
/// `step` (lines are written in step order, so what remains is exactly the lines of steps up
/// to `step`). Truncates in place, so an open append handle keeps writing to the same file.
pub fn truncate_metrics(path: &Path, step: u64) -> anyhow::Result<()> {
    let Ok(text) = fs::read_to_string(path) else {
        return Ok(());
    };
    let mut keep = 0usize;
    for line in text.split_inclusive('\n') {
        let ok = line.ends_with('\n')
            && serde_json::from_str::<J>(line)
                .ok()
                .is_some_and(|v| v.get("step").and_then(J::as_u64).is_none_or(|s| s <= step));
        if !ok {
            break;
        }
        keep += line.len();
    }
    if keep == text.len() {
        return Ok(());
    }
    let f = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    f.set_len(keep as u64)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("truncating {}", path.display()))
}
