//! Device assignment: `auto` takes a free CUDA device when libtorch sees CUDA (one per
//! concurrently running node; a node waits when all are taken), else `cpu`; `cpu` and `cuda:N`
//! are used as given; `cuda` without CUDA, a missing `cuda:N` or an unknown name is an error.

use anyhow::Result;

/// Devices handed to running nodes: `auto` takes a free CUDA device when CUDA is available
/// (one per concurrently running node), else `cpu`.
pub(crate) struct Devices {
    cuda: usize,
    busy: Vec<bool>,
}

impl Devices {
    pub(crate) fn new() -> Devices {
        let cuda = if tch::Cuda::is_available() {
            tch::Cuda::device_count().max(0) as usize
        } else {
            0
        };
        Devices {
            cuda,
            busy: vec![false; cuda],
        }
    }
    /// `Ok(Some(dev, pooled index))`, `Ok(None)` = wait for a device, `Err` = impossible request.
    pub(crate) fn take(&mut self, want: &str) -> Result<Option<(String, Option<usize>)>, String> {
        match want {
            "cpu" => Ok(Some(("cpu".into(), None))),
            "auto" | "cuda" => {
                if self.cuda == 0 {
                    return if want == "auto" {
                        Ok(Some(("cpu".into(), None)))
                    } else {
                        Err("device `cuda` requested but CUDA is not available (libtorch sees no GPU)".into())
                    };
                }
                match self.busy.iter().position(|b| !b) {
                    Some(i) => {
                        self.busy[i] = true;
                        Ok(Some((format!("cuda:{i}"), Some(i))))
                    }
                    None => Ok(None),
                }
            }
            other => match other.strip_prefix("cuda:").map(|n| n.parse::<usize>()) {
                Some(Ok(n)) if n < self.cuda => Ok(Some((other.into(), None))),
                Some(Ok(n)) => Err(format!(
                    "device `{other}` requested but {} CUDA device(s) are available{}",
                    self.cuda,
                    if n > 0 {
                        ""
                    } else {
                        " (CUDA is not available)"
                    }
                )),
                _ => Err(format!(
                    "unknown device `{other}`; use auto, cpu, cuda or cuda:N"
                )),
            },
        }
    }
    pub(crate) fn give(&mut self, i: Option<usize>) {
        if let Some(i) = i {
            self.busy[i] = false;
        }
    }
}
