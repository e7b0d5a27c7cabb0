//! Devices, without libtorch: how many CUDA devices this machine has ([`cuda_devices`], asked
//! of the CUDA driver, so `check`/`plan` never load libtorch) and CPU cores ([`cpu_cores`]),
//! and the pool that hands devices to running nodes ([`Devices`]).
//!
//! Assignment, for the typed [`dsl::device::Device`] a node asks for:
//! - `cpu` → the CPU;
//! - `cuda:N` → that device, *reserved* while the node runs (another node asking for it, or an
//!   `auto` node, waits or takes another);
//! - `auto` / `cuda` → a free CUDA device (a node waits when all are taken); `auto` without CUDA
//!   is the CPU, `cuda` without CUDA an error (reported at `check` already).

use dsl::device::Device;
use std::sync::OnceLock;

/// CUDA devices visible to this process (honours `CUDA_VISIBLE_DEVICES`, as libtorch does):
/// `cuInit` + `cuDeviceGetCount` of the driver library `libcuda.so.1`, loaded with `dlopen` and
/// never unloaded; 0 when there is no driver or it fails. Asked once per process.
pub fn cuda_devices() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| {
        if let Some(n) = std::env::var("TEMPER_CUDA_DEVICES")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            return n; // test hook: pretend this machine has n CUDA devices
        }
        probe_driver().unwrap_or(0)
    })
}

/// CPU cores this process may use (its affinity and cgroup quota, as
/// `std::thread::available_parallelism` reads them; 1 when unknown): what CPU ranks are
/// checked against.
pub fn cpu_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Memory of this machine's first CUDA device in MiB (the driver's `cuDeviceTotalMem`), `None`
/// without one: what training nodes' memory estimates are checked against
/// (`--cuda-memory` overrides it). `TEMPER_CUDA_MEMORY_MIB` pretends (tests).
pub fn cuda_memory_mib() -> Option<u64> {
    static M: OnceLock<Option<u64>> = OnceLock::new();
    *M.get_or_init(|| {
        if let Some(m) = std::env::var("TEMPER_CUDA_MEMORY_MIB")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            return Some(m);
        }
        if cuda_devices() == 0 {
            return None;
        }
        probe_memory()
    })
}

/// The CUDA driver's symbols `names` (`libcuda.so.1`, loaded once per call), `None` without the
/// driver or one of them.
fn driver_symbols<const N: usize>(names: [&std::ffi::CStr; N]) -> Option<[*mut libc::c_void; N]> {
    // SAFETY: dlopen/dlsym with NUL-terminated names; the handle is never closed (the driver
    // stays loaded, as libtorch keeps it).
    unsafe {
        let lib = libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        if lib.is_null() {
            return None;
        }
        let syms = names.map(|n| libc::dlsym(lib, n.as_ptr()));
        syms.iter().all(|p| !p.is_null()).then_some(syms)
    }
}

fn probe_memory() -> Option<u64> {
    type CuDeviceGet = unsafe extern "C" fn(*mut i32, i32) -> i32;
    type CuTotalMem = unsafe extern "C" fn(*mut usize, i32) -> i32;
    let [get, total] = driver_symbols([c"cuDeviceGet", c"cuDeviceTotalMem_v2"])?;
    // SAFETY: called after `probe_driver` initialised the driver; the symbols have the driver
    // API's signatures (CUresult cuDeviceGet(CUdevice*, int), CUresult
    // cuDeviceTotalMem_v2(size_t*, CUdevice)).
    unsafe {
        let get: CuDeviceGet = std::mem::transmute(get);
        let total: CuTotalMem = std::mem::transmute(total);
        let mut dev = 0i32;
        let mut bytes = 0usize;
        (get(&mut dev, 0) == 0 && total(&mut bytes, dev) == 0).then_some(bytes as u64 >> 20)
    }
}

fn probe_driver() -> Option<usize> {
    type CuInit = unsafe extern "C" fn(u32) -> i32;
    type CuCount = unsafe extern "C" fn(*mut i32) -> i32;
    let [init, count] = driver_symbols([c"cuInit", c"cuDeviceGetCount"])?;
    // SAFETY: the symbols have the CUDA driver API's documented signatures (CUresult
    // cuInit(unsigned), CUresult cuDeviceGetCount(int*)).
    unsafe {
        let init: CuInit = std::mem::transmute(init);
        let count: CuCount = std::mem::transmute(count);
        if init(0) != 0 {
            return None;
        }
        let mut n: i32 = 0;
        (count(&mut n) == 0).then_some(n.max(0) as usize)
    }
}

/// Devices handed to running nodes (see the module docs).
pub(crate) struct Devices {
    busy: Vec<bool>,
}

/// What [`Devices::take`] gives a node: the device string for the stage and the pool slot to
/// give back.
pub(crate) type Taken = (String, Option<usize>);

impl Devices {
    pub(crate) fn new() -> Devices {
        Devices::with(cuda_devices())
    }
    pub(crate) fn with(cuda: usize) -> Devices {
        Devices {
            busy: vec![false; cuda],
        }
    }
    /// `Ok(Some(taken))`, `Ok(None)` = wait for a device, `Err` = impossible on this machine.
    /// `want` is the node's validated `device` parameter.
    pub(crate) fn take(&mut self, want: &str) -> Result<Option<Taken>, String> {
        let want = Device::parse(want)
            .ok_or_else(|| format!("unknown device `{want}`; use {}", Device::SYNTAX))?;
        if let Some(why) = want.unavailable(self.busy.len()) {
            return Err(why);
        }
        let slot = match want {
            Device::Cpu => return Ok(Some(("cpu".into(), None))),
            Device::Auto if self.busy.is_empty() => return Ok(Some(("cpu".into(), None))),
            Device::Auto | Device::Cuda(None) => self.busy.iter().position(|b| !b),
            Device::Cuda(Some(n)) => (!self.busy[n]).then_some(n),
        };
        Ok(slot.map(|i| {
            self.busy[i] = true;
            (format!("cuda:{i}"), Some(i))
        }))
    }
    pub(crate) fn give(&mut self, i: Option<usize>) {
        if let Some(i) = i {
            self.busy[i] = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_cuda_devices_are_reserved() {
        let mut d = Devices::with(2);
        let a = d.take("cuda:0").unwrap().unwrap();
        assert_eq!(a, ("cuda:0".into(), Some(0)));
        // auto skips the reserved device; a second cuda:0 waits.
        assert_eq!(d.take("auto").unwrap().unwrap().0, "cuda:1");
        assert_eq!(d.take("cuda:0").unwrap(), None);
        assert_eq!(d.take("auto").unwrap(), None);
        d.give(a.1);
        assert_eq!(d.take("auto").unwrap().unwrap().0, "cuda:0");
    }

    #[test]
    fn without_cuda() {
        let mut d = Devices::with(0);
        assert_eq!(d.take("auto").unwrap().unwrap().0, "cpu");
        assert!(d.take("cuda:9").unwrap_err().contains("cuda:9"));
        assert!(d.take("cuda").is_err());
        assert_eq!(d.take("cpu").unwrap().unwrap().0, "cpu");
    }
}
