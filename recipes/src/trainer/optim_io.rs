//! AdamW's state on disk, in a checkpoint directory.
//!
//! - Unsharded: `optimizer.safetensors` (`exp_avg.NAME`, `exp_avg_sq.NAME` for every parameter)
//!   and `optimizer.json` (hyper-parameters and per-parameter steps).
//! - Sharded ([`super::shard`]): each rank R writes the moments and steps of the parameters it
//!   owns, with the same names, to `optimizer.rank-R.safetensors` / `optimizer.rank-R.json`.
//!
//! [`AdamW::load`] reads whichever of these files the directory holds, its own rank's first, and
//! takes each owned parameter's moments by name, bit for bit: a checkpoint written on R ranks,
//! sharded or not, resumes on any number of ranks.

use super::optim::AdamW;
use super::optim::AdamWConfig;
use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::Tensor;

pub const STATE_FILE: &str = "optimizer.safetensors";
pub const META_FILE: &str = "optimizer.json";

#[derive(Serialize, Deserialize)]
struct Meta {
    config: AdamWConfig,
    steps: BTreeMap<String, u64>,
}

/// The (state, meta) file names of rank `rank`'s shard.
pub fn shard_files(rank: usize) -> (String, String) {
    (
        format!("optimizer.rank-{rank}.safetensors"),
        format!("optimizer.rank-{rank}.json"),
    )
}

/// The optimizer files of `dir` as (state, meta) pairs: the unsharded pair, then every rank's,
/// rank `first` ahead of the others.
fn state_files(dir: &Path, first: usize) -> anyhow::Result<Vec<(PathBuf, PathBuf)>> {
    let mut out = Vec::new();
    if dir.join(STATE_FILE).is_file() {
        out.push((dir.join(STATE_FILE), dir.join(META_FILE)));
    }
    let mut ranks: Vec<usize> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_prefix("optimizer.rank-")?
                .strip_suffix(".safetensors")?
                .parse()
                .ok()
        })
        .collect();
    ranks.sort_by_key(|&r| (r != first, r));
    for r in ranks {
        let (s, m) = shard_files(r);
        out.push((dir.join(s), dir.join(m)));
    }
    Ok(out)
}

impl AdamW {
    /// Writes the state of the parameters this rank owns into `dir` (see the module docs).
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let (state, meta) = match &self.shard {
            Some(plan) => shard_files(plan.rank()),
            None => (STATE_FILE.into(), META_FILE.into()),
        };
        let owned = self.params.iter().filter(|p| p.owned);
        let mut tensors: Vec<(String, Tensor)> = Vec::with_capacity(2 * self.params.len());
        for p in owned.clone() {
            tensors.push((
                format!("exp_avg.{}", p.name),
                p.exp_avg.to_device(tch::Device::Cpu),
            ));
            tensors.push((
                format!("exp_avg_sq.{}", p.name),
                p.exp_avg_sq.to_device(tch::Device::Cpu),
            ));
        }
        let path = dir.join(state);
        Tensor::write_safetensors(&tensors, &path)
            .with_context(|| format!("writing {}", path.display()))?;
        let meta_value = Meta {
            config: self.cfg,
            steps: owned.map(|p| (p.name.clone(), p.step)).collect(),
        };
        let mpath = dir.join(meta);
        std::fs::write(&mpath, serde_json::to_string_pretty(&meta_value)? + "\n")
            .with_context(|| format!("writing {}", mpath.display()))
    }

    /// Restores the state of the parameters this rank owns from whichever optimizer files `dir`
    /// holds (see the module docs); every owned parameter must be present with its shape.
    pub fn load(&mut self, dir: &Path) -> anyhow::Result<()> {
        let rank = self.shard.as_ref().map_or(0, |p| p.rank());
        let mut want: BTreeMap<String, usize> = BTreeMap::new();
        for (i, p) in self.params.iter().enumerate() {
            if p.owned {
                want.insert(format!("exp_avg.{}", p.name), i);
                want.insert(format!("exp_avg_sq.{}", p.name), i);
            }
        }
        let mut found: BTreeMap<String, Tensor> = BTreeMap::new();
        let mut steps: BTreeMap<String, u64> = BTreeMap::new();
        let mut config = None;
        let files = state_files(dir, rank)?;
        if files.is_empty() {
            bail!("{}: no optimizer state ({STATE_FILE})", dir.display());
        }
        for (state, mpath) in files {
            if found.len() == want.len() {
                break;
            }
            let text = std::fs::read_to_string(&mpath)
                .with_context(|| format!("reading {}", mpath.display()))?;
            let meta: Meta = serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", mpath.display()))?;
            config.get_or_insert(meta.config);
            steps.extend(meta.steps);
            for (k, t) in Tensor::read_safetensors(&state)
                .with_context(|| format!("reading {}", state.display()))?
            {
                if want.contains_key(&k) {
                    found.insert(k, t);
                }
            }
        }
        let shown = dir.display();
        tch::no_grad(|| -> anyhow::Result<()> {
            for (key, &i) in &want {
                let src = found
                    .get(key)
                    .ok_or_else(|| anyhow!("{shown}: no optimizer tensor `{key}`"))?;
                let p = &mut self.params[i];
                let dst = if key.starts_with("exp_avg_sq.") {
                    &mut p.exp_avg_sq
                } else {
                    &mut p.exp_avg
                };
                if src.size() != dst.size() {
                    bail!(
                        "{shown}: `{key}` has shape {:?}, the parameter has {:?}",
                        src.size(),
                        dst.size()
                    );
                }
                dst.f_copy_(&src.f_to_device(dst.device())?.f_to_kind(dst.kind())?)?;
            }
            for p in self.params.iter_mut().filter(|p| p.owned) {
                p.step = *steps
                    .get(&p.name)
                    .ok_or_else(|| anyhow!("{shown}: no optimizer step for `{}`", p.name))?;
                let _ = p.step_t.f_fill_(p.step as f64)?;
            }
            Ok(())
        })?;
        if let Some(c) = config {
            self.cfg = c;
        }
        Ok(())
    }
}
