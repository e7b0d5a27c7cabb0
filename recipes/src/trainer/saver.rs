//! Writing a run's checkpoints ([`Saver`]): the weights checked finite first (on every rank
//! of a sharded run, which all stop if one finds a bad value), the shards of a sharded state
//! staged by ranks 1.. and moved in by rank 0, which publishes the checkpoint.

use super::step::first_names;
use super::{checkpoint, Objective, Progress, TrainSpec};
use crate::stage::{Checkpoints, StageCtx, StageError};
use crate::trainer::host;
use crate::trainer::optim::AdamW;
use std::path::PathBuf;
use tch::Tensor;

/// Writes checkpoints of a run (after checking the weights are finite).
pub(super) struct Saver<'a> {
    pub ctx: &'a StageCtx,
    pub ckpts: &'a Checkpoints,
    pub spec: &'a TrainSpec,
    pub threads: usize,
    /// The variables training updates (the f32 masters under `bf16-mixed`).
    pub trained: &'a [(String, Tensor)],
    /// Device→host reads made by the saves so far (the weights check, the objective's state).
    pub reads: std::cell::Cell<u64>,
}

impl Saver<'_> {
    pub fn save<O: Objective>(
        &self,
        prog: &Progress,
        opt: &AdamW,
        obj: &O,
        last_good: Option<u64>,
    ) -> Result<PathBuf, StageError> {
        let before = host::count();
        let saved = self.save_counted((prog, opt, obj), last_good);
        self.reads.set(self.reads.get() + host::count() - before);
        saved
    }

    fn save_counted<O: Objective>(
        &self,
        (prog, opt, obj): (&Progress, &AdamW, &O),
        last_good: Option<u64>,
    ) -> Result<PathBuf, StageError> {
        let checked = check_weights(opt, prog.step, last_good);
        if opt.shard_mode().is_some() && self.ctx.collective.world() > 1 {
            // Each rank checks the tensors it owns; all stop if any finds one bad.
            let c = &*self.ctx.collective;
            let failed = crate::dist::any(c, checked.is_err()).map_err(StageError::Other)?;
            checked?;
            if failed {
                return Err(StageError::user(
                    format!(
                        "non-finite weights after step {} (found by another rank, on the                          node's stderr); nothing is published",
                        prog.step
                    ),
                    Some("lower `lr`, keep `adam-eps` well above 0, set `max-grad-norm`".into()),
                ));
            }
        } else {
            checked?;
        }
        let staging = self.stage_shards(prog.step, opt)?;
        if !self.ctx.lead() {
            // Rank 0 writes the checkpoint every rank resumes from.
            return Ok(self.ckpts.dir().to_path_buf());
        }
        let st = checkpoint::TrainerState {
            progress: prog.clone(),
            threads: self.threads,
            seed: self.spec.seed,
            total_steps: self.spec.total_steps,
            data: obj.state(),
        };
        let saved = self
            .ckpts
            .save(prog.step, self.spec.keep_checkpoints.max(1), |d| {
                checkpoint::write(d, self.trained, opt, &st)?;
                if let Some(dir) = &staging {
                    checkpoint::adopt_shards(dir, d)?;
                }
                Ok(())
            })
            .map_err(|e| {
                StageError::Other(e.context(format!(
                    "node {}: writing checkpoint at step {}",
                    self.ctx.node, prog.step
                )))
            });
        if let Some(dir) = &staging {
            let _ = std::fs::remove_dir_all(dir);
        }
        saved
    }

    /// A sharded optimizer on several ranks: every rank but 0 writes its shard of the state
    /// into a staging directory beside the checkpoints, and all wait for each other (rank 0
    /// then moves the shards into the checkpoint it publishes). Returns that directory, or
    /// `None` when the state is not sharded.
    fn stage_shards(&self, step: u64, opt: &AdamW) -> Result<Option<PathBuf>, StageError> {
        let c = &*self.ctx.collective;
        if opt.shard_mode().is_none() || c.world() < 2 {
            return Ok(None);
        }
        let dir = self.ckpts.dir().join(format!(".shards-step-{step:09}"));
        let mine = if self.ctx.lead() {
            Ok(())
        } else {
            std::fs::create_dir_all(&dir)
                .map_err(anyhow::Error::from)
                .and_then(|()| opt.save(&dir))
                .and_then(|()| checkpoint::write_weights(&dir, self.trained, opt))
        };
        let fail = |e: anyhow::Error| {
            StageError::Other(e.context(format!(
                "node {}: writing the optimizer shards of checkpoint {step}",
                self.ctx.node
            )))
        };
        let failed = crate::dist::any(c, mine.is_err()).map_err(fail)?;
        mine.map_err(|e| fail(e.context(format!("rank {}", c.rank()))))?;
        if failed {
            return Err(fail(anyhow::anyhow!(
                "another rank failed (its error is on the node's stderr)"
            )));
        }
        Ok(Some(dir))
    }
}

/// Fails with a user error naming the tensors when a trained weight is NaN or infinite after
/// `step` steps (checked before anything is written from them).
fn check_weights(opt: &AdamW, step: u64, last_good: Option<u64>) -> Result<(), StageError> {
    let bad = opt.non_finite_params().map_err(StageError::Other)?;
    if bad.is_empty() {
        return Ok(());
    }
    let kept = match last_good {
        Some(s) => format!("the last good checkpoint (step {s}) is kept"),
        None => "no checkpoint was written".into(),
    };
    Err(StageError::user(
        format!(
            "non-finite weights in {} after step {step}; {kept}, nothing is published",
            first_names(&bad)
        ),
        Some("lower `lr`, keep `adam-eps` well above 0, set `max-grad-norm`".into()),
    ))
}
