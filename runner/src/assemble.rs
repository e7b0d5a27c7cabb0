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
/// `auto`/`cuda` in a Slurm allocation): an error, before any rank starts, when `temper-rank`
/// (or, for CPU ranks, MPI) is missing or there are fewer CPU cores or CUDA devices than ranks
/// (`kinds::train::ranks_problem`, which `check` already applied where the machine is known).
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
    if !cuda {
        launch::mpirun()?;
    }
    let (cores, gpus) = (crate::device::cpu_cores(), crate::device::cuda_devices());
    if let Some((message, hint)) = kinds::train::ranks_problem(ranks, cuda, cores, gpus) {
        bail!("{message}: {hint}");
    }
    Ok(l)
}

/// Plan entry `i`'s ranks against the GPUs of its Slurm job ([`slurm_cuda_ranks_problem`]
/// with the job's `gpus-per-node` and `extra` sbatch options), as a recipe error located at
/// the node's `ranks`. Checked before anything is submitted.
pub(crate) fn check_slurm_ranks(
    plan: &Plan,
    i: usize,
    gpus_per_node: Option<u32>,
    extra: &[String],
) -> Result<()> {
    let ranks = ranks_of(plan, i);
    let cuda = wanted_device(plan, i)?.starts_with("cuda");
    let gpus = gpus_per_node.unwrap_or(0) as usize;
    let Some((message, hint)) = slurm_cuda_ranks_problem(ranks, cuda, gpus, extra) else {
        return Ok(());
    };
    let e = &plan.entries[i];
    let recipe = &plan.loaded.recipe;
    let message = format!("`{}`: {message}", e.node);
    let rendered = match recipe.node(&e.node).and_then(|d| d.param_locs.get("ranks")) {
        Some(loc) => {
            dsl::Diagnostics::from(recipe.diag_at(*loc, message, "here", Some(hint))).render()
        }
        None => format!("{message}\n  hint: {hint}\n"),
    };
    Err(crate::plan::RecipeError(rendered).into())
}

/// Why `ranks` ranks cannot run as one Slurm job with `gpus` GPUs per node (`gpus-per-node`)
/// and the `extra` sbatch options, as (message, hint). CUDA ranks (`device cuda`/`cuda:N`,
/// or `auto` when the job gets GPUs: `cuda` says the former) take one GPU each on their node,
/// so the ranks one node holds — `--ntasks-per-node` in `extra`, else all of them, since Slurm
/// may pack the tasks — must not outnumber its GPUs. CPU ranks, and GPUs asked for otherwise
/// (`--gres`, `--gpus…` in `extra`), are left to Slurm.
pub(crate) fn slurm_cuda_ranks_problem(
    ranks: usize,
    cuda: bool,
    gpus: usize,
    extra: &[String],
) -> Option<(String, String)> {
    if ranks <= 1 || (!cuda && gpus == 0) || extra.iter().any(|o| asks_gpus_otherwise(o)) {
        return None;
    }
    let per_node = extra
        .iter()
        .enumerate()
        .find_map(|(k, o)| match o.strip_prefix("--ntasks-per-node") {
            Some(v) if v.starts_with('=') => v[1..].parse::<usize>().ok(),
            Some("") => extra.get(k + 1)?.parse::<usize>().ok(),
            _ => None,
        })
        .unwrap_or(ranks)
        .min(ranks);
    if per_node <= gpus {
        return None;
    }
    let message = if gpus == 0 {
        format!(
            "ranks {ranks} on CUDA, but its Slurm job asks for no GPU (`gpus-per-node` is unset)"
        )
    } else {
        format!(
            "ranks {ranks} on CUDA, {per_node} of them on one node, but its Slurm job asks for \
             {gpus} GPU(s) per node: one rank per GPU (NCCL cannot put two ranks on one GPU)"
        )
    };
    let hint = format!(
        "set `gpus-per-node {per_node}` in `executor slurm` or the node's `resources`, or spread \
         the ranks over nodes: `extra \"--nodes=N\" \"--ntasks-per-node={}\"`",
        gpus.max(1)
    );
    Some((message, hint))
}

/// Whether sbatch option `o` asks for GPUs in a way `gpus-per-node` does not describe.
fn asks_gpus_otherwise(o: &str) -> bool {
    let name = o.split('=').next().unwrap_or(o);
    matches!(
        name,
        "--gres" | "--gpus" | "-G" | "--gpus-per-task" | "--gpus-per-socket"
    )
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

#[cfg(test)]
mod tests {
    use super::slurm_cuda_ranks_problem as problem;

    fn extra(o: &[&str]) -> Vec<String> {
        o.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn cuda_ranks_need_a_gpu_each_on_their_node_of_the_slurm_job() {
        // No GPU asked for: explicit CUDA ranks cannot run; `auto` runs on the CPU.
        let (m, h) = problem(2, true, 0, &[]).unwrap();
        assert!(m.contains("asks for no GPU"), "{m}");
        assert!(h.contains("gpus-per-node 2"), "{h}");
        assert_eq!(problem(2, false, 0, &[]), None);
        // All ranks may land on one node.
        assert!(problem(8, false, 4, &[])
            .unwrap()
            .0
            .contains("8 of them on one node"));
        assert_eq!(problem(4, true, 4, &[]), None);
        // Spread by --ntasks-per-node (either spelling).
        assert_eq!(
            problem(8, true, 4, &extra(&["--nodes=2", "--ntasks-per-node=4"])),
            None
        );
        assert_eq!(
            problem(8, true, 4, &extra(&["--ntasks-per-node", "4"])),
            None
        );
        assert!(problem(8, true, 2, &extra(&["--ntasks-per-node=4"])).is_some());
        // GPUs asked for another way are Slurm's to place.
        assert_eq!(problem(8, true, 0, &extra(&["--gres=gpu:8"])), None);
        assert_eq!(problem(1, true, 0, &[]), None);
    }
}
