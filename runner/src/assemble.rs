//! What a node's job is made of, for either executor: the [`Job`] of a plan entry, the device
//! it asks for, and for a data-parallel node (`ranks R`) the launcher of its ranks, checked
//! before any rank starts.

use crate::exec::Control;
use crate::plan::Plan;
use crate::pool::{Assignment, Pool};
use crate::{launch, progress, Kinds};
use anyhow::{anyhow, bail, Result};
use kinds::job::{InputArtifact, Job};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The `ranks` a node's parameters ask for (1 for a kind without it).
pub(crate) fn ranks_in(params: &BTreeMap<String, dsl::Value>) -> usize {
    params
        .get("ranks")
        .and_then(|v| v.as_i64())
        .unwrap_or(1)
        .max(1) as usize
}

/// The `ranks` of plan entry `i`.
pub(crate) fn ranks_of(plan: &Plan, i: usize) -> usize {
    plan.loaded
        .expanded
        .instance(&plan.entries[i].id)
        .map_or(1, |inst| ranks_in(&inst.params))
}

/// Test hook: with this variable set, a training node of `ranks 1` runs through the rank
/// launcher too (a world of one; on CUDA that exercises the NCCL path on a single GPU).
pub const RANKED_ALWAYS_ENV: &str = "TEMPER_RANKED_ALWAYS";

/// Hands `job` to `pool`: to a worker, or for a data-parallel node to its ranks (`srun`: a step
/// of the Slurm job this runs in), which read it from `job_file` (written here).
pub(crate) fn hand_over(
    pool: &mut Pool,
    job: &Job,
    job_file: PathBuf,
    a: Assignment,
    control: &Control,
    srun: bool,
) -> Result<()> {
    let written = store::write_atomic(&job_file, (job.to_line() + "\n").as_bytes());
    let hook = std::env::var_os(RANKED_ALWAYS_ENV).is_some() && job.params.contains_key("ranks");
    match ranks_in(&job.params) {
        1 if !hook => pool.run(job, a, control),
        ranks => {
            written?;
            let l = ranks_launcher(ranks, &job.device, job_file, srun)?;
            pool.run_once(&l, job, a, control)
        }
    }
}

/// The launcher of the `ranks` ranks of a data-parallel job on `device` (`cpu`, `cuda:N`, or
/// `auto`/`cuda` in a Slurm allocation): an error, before anything starts, when `temper-rank`
/// (or, for CPU ranks, MPI) is missing or there are fewer CPU cores or CUDA devices than ranks.
/// CUDA ranks sum over NCCL and are started by `temper-rank --launch`; CPU ranks over MPI, by
/// `mpirun`. `srun`: the ranks are a step of the Slurm job this runs in (its tasks, maybe on
/// several nodes, which Slurm checked at submission).
pub(crate) fn ranks_launcher(
    ranks: usize,
    device: &str,
    job_file: PathBuf,
    srun: bool,
) -> Result<launch::Ranks> {
    launch::rank_exe()?;
    let cuda =
        device.starts_with("cuda") || (device == "auto" && crate::device::cuda_devices() > 0);
    let l = launch::Ranks {
        ranks,
        job_file,
        srun,
        nccl: cuda,
    };
    if srun {
        return Ok(l);
    }
    if cuda {
        let n = crate::device::cuda_devices();
        if ranks > n {
            bail!(
                "ranks {ranks} on CUDA, but {n} CUDA device(s) are visible here: one rank per GPU \
                 (NCCL cannot put two ranks on one GPU)"
            );
        }
    } else {
        launch::mpirun()?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if ranks > cores {
            bail!(
                "ranks {ranks} on the CPU, but this machine has {cores} core(s): lower `ranks`, \
                 or run the node where there are more cores (`--executor slurm`)"
            );
        }
    }
    Ok(l)
}

/// The device plan entry `i` asks for (`auto`, `cpu`, `cuda:N`; `auto` when unset).
pub(crate) fn wanted_device(plan: &Plan, i: usize) -> Result<String> {
    let id = &plan.entries[i].id;
    let inst = plan
        .loaded
        .expanded
        .instance(id)
        .ok_or_else(|| anyhow!("internal: instance {id} vanished from the plan"))?;
    Ok(inst
        .params
        .get("device")
        .and_then(|v| v.as_str())
        .unwrap_or("auto")
        .to_string())
}

/// The [`Job`] of plan entry `i` on `device`, for run `run_id`, writing into `out_dir`.
pub(crate) fn job_for(
    store: &store::Store,
    kinds: &Kinds,
    plan: &Plan,
    i: usize,
    device: &str,
    run_id: u64,
    out_dir: std::path::PathBuf,
) -> Result<Job> {
    let e = &plan.entries[i];
    let inst = plan
        .loaded
        .expanded
        .instance(&e.id)
        .ok_or_else(|| anyhow!("internal: instance {} vanished from the plan", e.id))?;
    let mut inputs = BTreeMap::new();
    for (param, input) in &inst.inputs {
        let ie = plan
            .entry(input)
            .ok_or_else(|| anyhow!("internal: input {input} of {} not planned", e.id))?;
        // A select hands on its winner's artifact: the input is the winning instance.
        let ie = plan
            .artifact_of(ie)
            .ok_or_else(|| anyhow!("internal: the winner of {input} is not planned"))?;
        let produces = kinds
            .registry
            .get(&ie.kind)
            .map(|s| s.produces.to_string())
            .unwrap_or_default();
        inputs.insert(
            param.clone(),
            InputArtifact {
                node: ie.id.clone(),
                kind: ie.kind.clone(),
                produces,
                key: ie.key.clone(),
                dir: store.artifact_dir(&ie.key),
            },
        );
    }
    Ok(Job {
        store: store.root().to_path_buf(),
        node: e.id.clone(),
        kind: e.kind.clone(),
        key: e.key.clone(),
        identity: e.identity.clone(),
        run_id,
        params: inst.params.clone(),
        // Absolute, so a job file run from elsewhere (`temper worker JOB`) finds the
        // recipe's relative paths.
        root_dir: std::path::absolute(&plan.loaded.recipe.root_dir)
            .unwrap_or_else(|_| plan.loaded.recipe.root_dir.clone()),
        inputs,
        out_dir,
        work_dir: store.work_dir(&e.key),
        device: device.to_string(),
        threads: inst
            .params
            .get("threads")
            .and_then(|v| v.as_i64())
            .unwrap_or(0),
        log_filter: progress::worker_log_filter(),
    })
}
