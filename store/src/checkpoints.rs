//! Step-numbered checkpoints in a node's work directory (`Store::work_dir(key)/checkpoints`):
//! written by the training stages (in the worker), read by the planner to say where an
//! incomplete node will resume. A checkpoint becomes visible by rename only once complete.

use std::fs;
use std::path::{Path, PathBuf};

/// Step-numbered checkpoints in a work directory. A checkpoint is a directory `step-NNNNNNNNN`
/// that becomes visible (by rename) only once complete and fsynced, so `latest` never returns a
/// half-written one.
pub struct Checkpoints {
    dir: PathBuf,
}

impl Checkpoints {
    pub fn new(dir: PathBuf) -> Self {
        Checkpoints { dir }
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The latest complete checkpoint: (step, directory).
    pub fn latest(&self) -> Option<(u64, PathBuf)> {
        let rd = fs::read_dir(&self.dir).ok()?;
        rd.filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let step = name.strip_prefix("step-")?.parse::<u64>().ok()?;
                Some((step, e.path()))
            })
            .max_by_key(|(s, _)| *s)
    }

    /// Writes checkpoint `step`: `write` fills a temporary directory, which is fsynced and renamed
    /// into place; then all but the newest `keep` checkpoints are removed.
    pub fn save(
        &self,
        step: u64,
        keep: usize,
        write: impl FnOnce(&Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<PathBuf> {
        fs::create_dir_all(&self.dir)?;
        let tmp = self.dir.join(format!(".tmp-step-{step:09}"));
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::create_dir_all(&tmp)?;
        write(&tmp)?;
        for entry in fs::read_dir(&tmp)? {
            let p = entry?.path();
            if p.is_file() {
                fs::File::open(&p)?.sync_all()?;
            }
        }
        fs::File::open(&tmp)?.sync_all()?;
        let dst = self.dir.join(format!("step-{step:09}"));
        if dst.exists() {
            fs::remove_dir_all(&dst)?;
        }
        fs::rename(&tmp, &dst)?;
        fs::File::open(&self.dir)?.sync_all()?;
        let mut all: Vec<_> = fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let s = name.strip_prefix("step-")?.parse::<u64>().ok()?;
                Some((s, e.path()))
            })
            .collect();
        all.sort_by_key(|(s, _)| *s);
        let n = all.len();
        for (_, p) in all.into_iter().take(n.saturating_sub(keep.max(1))) {
            let _ = fs::remove_dir_all(p);
        }
        Ok(dst)
    }
}
