//! Where a recipe's nodes will run, as far as their keys care: whether `device auto` means CUDA
//! for a node. A node's `dtype auto` (and a training node's `precision auto`) resolve by that
//! device ([`crate::keys::resolve_auto_dtype`]), so the same recipe must be keyed for the machine
//! that builds it, not for the one that plans it: a recipe submitted with `--executor slurm`
//! from a login node without GPUs to a GPU partition is keyed as the GPU nodes will build it,
//! and gets the key a GPU workstation computes for it.
//!
//! - local runs (`plan`, `run`): this machine's CUDA devices, or `--cuda-devices N`;
//! - Slurm: per node, whether its settings ask for GPUs (`gpus-per-node` > 0, or a `--gres=gpu…`
//!   / `--gpus…` option in `extra`).

use std::collections::HashMap;
use std::sync::Arc;

/// The machines a recipe's nodes are keyed for (see the module docs).
#[derive(Clone)]
pub struct Target {
    /// How `plan` names it ("this machine (no CUDA device)", "Slurm").
    pub name: String,
    /// Default for nodes without an entry in `nodes`.
    cuda: bool,
    /// Per node name, where it differs by node (Slurm settings).
    nodes: Arc<HashMap<String, bool>>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("name", &self.name)
            .field("cuda", &self.cuda)
            .finish()
    }
}

impl Target {
    /// A local run on a machine with `cuda_devices` CUDA devices; `told` when the number came
    /// from `--cuda-devices` rather than from this machine.
    pub fn local(cuda_devices: usize, told: bool) -> Target {
        let what = match cuda_devices {
            0 => "no CUDA device".to_string(),
            1 => "1 CUDA device".to_string(),
            n => format!("{n} CUDA devices"),
        };
        let name = match told {
            true => format!("--cuda-devices: {what}"),
            false => format!("this machine: {what}"),
        };
        Target {
            name,
            cuda: cuda_devices > 0,
            nodes: Arc::new(HashMap::new()),
        }
    }

    /// Slurm jobs: `gpus[node]` says whether node's job asks for GPUs.
    pub fn slurm(gpus: HashMap<String, bool>) -> Target {
        Target {
            name: "Slurm job settings".into(),
            cuda: false,
            nodes: Arc::new(gpus),
        }
    }

    /// Whether `device auto` means CUDA for recipe node `node`.
    pub fn cuda_for(&self, node: &str) -> bool {
        self.nodes.get(node).copied().unwrap_or(self.cuda)
    }
}

/// Whether a Slurm job with these settings gets GPUs: `gpus-per-node` > 0, or an `extra` option
/// asking for them (`--gres=gpu…`, `--gpus…`, `-G`).
pub fn slurm_asks_for_gpus(gpus_per_node: Option<u32>, extra: &[String]) -> bool {
    gpus_per_node.is_some_and(|g| g > 0)
        || extra
            .iter()
            .any(|o| o.starts_with("--gres=gpu") || o.starts_with("--gpus") || o.starts_with("-G"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_says_per_node_whether_auto_means_cuda() {
        assert!(!Target::local(0, false).cuda_for("x"));
        assert!(Target::local(2, true).cuda_for("x"));
        assert!(Target::local(1, true).name.contains("--cuda-devices"));
        let s = Target::slurm(HashMap::from([("gpu".into(), true), ("cpu".into(), false)]));
        assert!(s.cuda_for("gpu") && !s.cuda_for("cpu") && !s.cuda_for("other"));
        assert!(slurm_asks_for_gpus(Some(8), &[]));
        assert!(!slurm_asks_for_gpus(Some(0), &[]));
        assert!(slurm_asks_for_gpus(None, &["--gres=gpu:h100:4".into()]));
        assert!(slurm_asks_for_gpus(None, &["--gpus-per-task=1".into()]));
        assert!(!slurm_asks_for_gpus(None, &["--constraint=h100".into()]));
    }
}
