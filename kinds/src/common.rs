//! The parameters every kind accepts (declared by [`dsl::schema::common_params`], appended to
//! each kind's schema by the registry); none of them enters a key.

use crate::params::{lookup, DecodeError, FromParam, ParamSet};
use dsl::device::Device;
use dsl::{ParamSpec, Value};
use std::collections::BTreeMap;

/// `device`, `threads`, `log-every`, typed.
#[derive(Clone, Debug)]
pub struct Common {
    pub device: Device,
    /// CPU threads of the node's worker process (0 = libtorch's default).
    pub threads: usize,
    pub log_every: u64,
}

impl ParamSet for Common {
    fn specs() -> Vec<ParamSpec> {
        dsl::schema::common_params()
    }
    fn decode(values: &BTreeMap<String, Value>) -> Result<Self, DecodeError> {
        let specs = Self::specs();
        let get = |name: &str| {
            let spec = specs
                .iter()
                .find(|s| s.name == name)
                .expect("a common parameter");
            lookup(values, spec)
        };
        Ok(Common {
            device: Device::from_param(get("device").as_ref(), "device")?,
            threads: usize::from_param(get("threads").as_ref(), "threads")?,
            log_every: u64::from_param(get("log-every").as_ref(), "log-every")?,
        })
    }
}

/// Whether node `n` runs on CUDA on `machine`: `device cpu` no, `cuda`/`cuda:N` yes, `auto`
/// where the machine has CUDA devices; `None` when that is unknown (`auto` on a machine the load
/// was not told of).
pub fn runs_on_cuda(n: &dsl::NodeDecl, machine: dsl::Machine) -> Option<bool> {
    let device = n
        .params
        .get("device")
        .and_then(Value::as_str)
        .and_then(Device::parse)?;
    match device {
        Device::Cpu => Some(false),
        Device::Cuda(_) => Some(true),
        Device::Auto => machine.cuda_devices.map(|g| g > 0),
    }
}
