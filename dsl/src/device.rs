//! The `device` and `dtype` parameter values, parsed once and resolved by one function that the
//! planner (keys) and the stages both call, so "what `auto` means" has a single definition.
//!
//! - `device`: `auto` (a free CUDA device when there is one, else the CPU), `cpu`, `cuda` (any
//!   free CUDA device, an error without CUDA) or `cuda:N` (that device, reserved while the node
//!   runs). The syntax is checked when the recipe is validated; whether `cuda:N` exists is
//!   checked at validation too when the caller knows how many CUDA devices there are
//!   ([`crate::LoadOptions::cuda_devices`]).
//! - `dtype`: `auto` resolves to `f32` on the CPU and `bf16` on CUDA ([`Dtype::resolve`]); the
//!   resolved dtype, never `auto`, determines a result and so enters its key.

use std::fmt;

/// A `device` parameter as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Device {
    Auto,
    Cpu,
    /// `cuda` (`None`: any free device) or `cuda:N`.
    Cuda(Option<usize>),
}

impl Device {
    /// The words of the syntax, for hints.
    pub const SYNTAX: &'static str = "auto | cpu | cuda | cuda:N";

    pub fn parse(s: &str) -> Option<Device> {
        match s {
            "auto" => Some(Device::Auto),
            "cpu" => Some(Device::Cpu),
            "cuda" => Some(Device::Cuda(None)),
            _ => {
                let n = s.strip_prefix("cuda:")?;
                if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) || n.len() > 6 {
                    return None;
                }
                n.parse().ok().map(|n| Device::Cuda(Some(n)))
            }
        }
    }

    /// Whether a node on this device computes on CUDA, given how many CUDA devices there are.
    pub fn is_cuda(self, cuda_devices: usize) -> bool {
        match self {
            Device::Cpu => false,
            Device::Cuda(_) => true,
            Device::Auto => cuda_devices > 0,
        }
    }

    /// Why this device cannot be used on a machine with `cuda_devices` CUDA devices, if so.
    pub fn unavailable(self, cuda_devices: usize) -> Option<String> {
        match self {
            Device::Cuda(None) if cuda_devices == 0 => {
                Some("device `cuda` requested but this machine has no CUDA device".into())
            }
            Device::Cuda(Some(n)) if n >= cuda_devices => Some(if cuda_devices == 0 {
                format!("device `cuda:{n}` requested but this machine has no CUDA device")
            } else {
                format!(
                    "device `cuda:{n}` requested but this machine has {cuda_devices} CUDA device(s): cuda:0…cuda:{}",
                    cuda_devices - 1
                )
            }),
            _ => None,
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Auto => f.write_str("auto"),
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(None) => f.write_str("cuda"),
            Device::Cuda(Some(n)) => write!(f, "cuda:{n}"),
        }
    }
}

/// A `dtype` parameter as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    Auto,
    F32,
    Bf16,
}

impl Dtype {
    pub const NAMES: &'static [&'static str] = &["auto", "f32", "bf16"];

    pub fn parse(s: &str) -> Option<Dtype> {
        match s {
            "auto" => Some(Dtype::Auto),
            "f32" => Some(Dtype::F32),
            "bf16" => Some(Dtype::Bf16),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Dtype::Auto => "auto",
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
        }
    }
    /// The dtype a node computes in: `auto` is `bf16` on CUDA and `f32` on the CPU. The one
    /// rule used for keys (with the device the node asks for) and by stages (with the device
    /// it was given).
    pub fn resolve(self, on_cuda: bool) -> Dtype {
        match self {
            Dtype::Auto if on_cuda => Dtype::Bf16,
            Dtype::Auto => Dtype::F32,
            d => d,
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_syntax() {
        assert_eq!(Device::parse("cuda:3"), Some(Device::Cuda(Some(3))));
        assert_eq!(Device::parse("cuda"), Some(Device::Cuda(None)));
        for bad in [
            "gpu", "cuda:", "cuda:x", "cuda:-1", "CPU", "cuda:1:2", "cuda: 1",
        ] {
            assert_eq!(Device::parse(bad), None, "{bad}");
        }
        assert_eq!(Device::Cuda(Some(9)).to_string(), "cuda:9");
    }

    #[test]
    fn availability_and_dtype() {
        assert!(Device::Cuda(Some(9)).unavailable(0).is_some());
        assert!(Device::Cuda(Some(1)).unavailable(2).is_none());
        assert!(Device::Auto.unavailable(0).is_none());
        assert_eq!(Dtype::Auto.resolve(Device::Auto.is_cuda(0)), Dtype::F32);
        assert_eq!(Dtype::Auto.resolve(Device::Auto.is_cuda(1)), Dtype::Bf16);
        assert_eq!(Dtype::F32.resolve(true), Dtype::F32);
    }
}
