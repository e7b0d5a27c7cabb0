//! [`Collective`] over NCCL for CUDA ranks: gradients are summed on the GPUs, with no copy to
//! the host.
//!
//! NCCL is the `libnccl.so.2` that the pinned torch wheel installs (`nvidia/nccl/lib`) and that
//! libtorch_cuda already loads into this process; its entry points are looked up with `dlsym`,
//! so nothing links NCCL at build time and a machine without it gets a clear error when a CUDA
//! rank starts. The few calls used here (`ncclGetUniqueId`, `ncclCommInitRank`,
//! `ncclAllReduce`, `ncclAllGather`, `ncclReduceScatter`, `ncclCommDestroy`, `ncclCommAbort`, `ncclGetErrorString`, `ncclGetVersion`)
//! have kept their C ABI since NCCL 2.0.
//!
//! Rendezvous: rank 0 makes the communicator's unique id and publishes it in a file beside the
//! job file (`nccl-TAG.id`, written atomically); the other ranks wait for it. The tag is unique
//! per launch (the local launcher's, or Slurm's job, step and restart count), so a file left by
//! an earlier attempt is never read. The rank and world size come from temper's launcher
//! (`TEMPER_DP_RANK`, `TEMPER_DP_WORLD`, `TEMPER_DP_LOCAL_RANK`) or from `srun`
//! (`SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`); rank r uses `cuda:LOCAL`.
//!
//! Every collective runs on the CUDA default stream, the stream libtorch's kernels run on, so it
//! is ordered after the backward pass that produced the gradients and before the optimizer step
//! that reads them, without an explicit synchronisation.

use super::Collective;
use anyhow::{anyhow, bail, Context, Result};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

/// `ncclUniqueId`: 128 opaque bytes.
#[repr(C)]
#[derive(Clone, Copy)]
struct UniqueId([u8; 128]);

type Comm = *mut c_void;
/// `ncclDataType_t` values (nccl.h): `ncclFloat32`, `ncclFloat64`.
const NCCL_FLOAT32: c_int = 7;
const NCCL_FLOAT64: c_int = 8;
/// `ncclRedOp_t`: `ncclSum`.
const NCCL_SUM: c_int = 0;

type GetUniqueId = unsafe extern "C" fn(*mut UniqueId) -> c_int;
type CommInitRank = unsafe extern "C" fn(*mut Comm, c_int, UniqueId, c_int) -> c_int;
type AllReduce = unsafe extern "C" fn(
    *const c_void,
    *mut c_void,
    usize,
    c_int,
    c_int,
    Comm,
    *mut c_void,
) -> c_int;
type AllGather =
    unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, Comm, *mut c_void) -> c_int;
type ReduceScatter = AllReduce;
type CommFn = unsafe extern "C" fn(Comm) -> c_int;
type ErrorString = unsafe extern "C" fn(c_int) -> *const c_char;
type IntOut = unsafe extern "C" fn(*mut c_int) -> c_int;
type SetDevice = unsafe extern "C" fn(c_int) -> c_int;

/// The NCCL entry points, resolved once.
struct Api {
    get_unique_id: GetUniqueId,
    comm_init_rank: CommInitRank,
    all_reduce: AllReduce,
    all_gather: AllGather,
    reduce_scatter: ReduceScatter,
    comm_destroy: CommFn,
    comm_abort: CommFn,
    error_string: ErrorString,
    version: IntOut,
    /// `cudaSetDevice` of the CUDA runtime libtorch loaded: NCCL binds a communicator to the
    /// calling thread's current device.
    set_device: SetDevice,
}

/// Looks `name` up in the libraries already loaded, then in `lib` (opened on demand).
unsafe fn symbol(lib: &mut *mut c_void, lib_name: &CStr, name: &CStr) -> Result<*mut c_void> {
    let s = libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr());
    if !s.is_null() {
        return Ok(s);
    }
    if lib.is_null() {
        *lib = libc::dlopen(lib_name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL);
        if lib.is_null() {
            let why = CStr::from_ptr(libc::dlerror())
                .to_string_lossy()
                .into_owned();
            bail!(
                "{} could not be loaded ({why}): CUDA ranks sum their gradients with NCCL, which \
                 the torch wheel installs (nvidia-nccl); use the `torch==2.11.0` CUDA wheel, or \
                 put the directory of {} on LD_LIBRARY_PATH",
                lib_name.to_string_lossy(),
                lib_name.to_string_lossy()
            );
        }
    }
    let s = libc::dlsym(*lib, name.as_ptr());
    if s.is_null() {
        bail!(
            "{} has no `{}`",
            lib_name.to_string_lossy(),
            name.to_string_lossy()
        );
    }
    Ok(s)
}

impl Api {
    fn load() -> Result<Api> {
        let mut nccl = std::ptr::null_mut();
        let mut cudart = std::ptr::null_mut();
        let n = c"libnccl.so.2";
        let c = c"libcudart.so.13";
        // SAFETY: each symbol is transmuted to the signature nccl.h / cuda_runtime_api.h give it.
        unsafe {
            Ok(Api {
                get_unique_id: std::mem::transmute::<*mut c_void, GetUniqueId>(symbol(
                    &mut nccl,
                    n,
                    c"ncclGetUniqueId",
                )?),
                comm_init_rank: std::mem::transmute::<*mut c_void, CommInitRank>(symbol(
                    &mut nccl,
                    n,
                    c"ncclCommInitRank",
                )?),
                all_reduce: std::mem::transmute::<*mut c_void, AllReduce>(symbol(
                    &mut nccl,
                    n,
                    c"ncclAllReduce",
                )?),
                all_gather: std::mem::transmute::<*mut c_void, AllGather>(symbol(
                    &mut nccl,
                    n,
                    c"ncclAllGather",
                )?),
                reduce_scatter: std::mem::transmute::<*mut c_void, ReduceScatter>(symbol(
                    &mut nccl,
                    n,
                    c"ncclReduceScatter",
                )?),
                comm_destroy: std::mem::transmute::<*mut c_void, CommFn>(symbol(
                    &mut nccl,
                    n,
                    c"ncclCommDestroy",
                )?),
                comm_abort: std::mem::transmute::<*mut c_void, CommFn>(symbol(
                    &mut nccl,
                    n,
                    c"ncclCommAbort",
                )?),
                error_string: std::mem::transmute::<*mut c_void, ErrorString>(symbol(
                    &mut nccl,
                    n,
                    c"ncclGetErrorString",
                )?),
                version: std::mem::transmute::<*mut c_void, IntOut>(symbol(
                    &mut nccl,
                    n,
                    c"ncclGetVersion",
                )?),
                set_device: std::mem::transmute::<*mut c_void, SetDevice>(symbol(
                    &mut cudart,
                    c,
                    c"cudaSetDevice",
                )?),
            })
        }
    }

    fn check(&self, what: &str, code: c_int) -> Result<()> {
        if code == 0 {
            return Ok(());
        }
        // SAFETY: ncclGetErrorString returns a static NUL-terminated string for any code.
        let why = unsafe { CStr::from_ptr((self.error_string)(code)) };
        bail!("{what}: NCCL error {code}: {}", why.to_string_lossy())
    }
}

/// Where this process sits among the ranks, read from the launcher's environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub rank: usize,
    pub world: usize,
    /// Index among the ranks of this host: the CUDA device it uses.
    pub local: usize,
    /// Unique per launch: names the rendezvous file.
    pub tag: String,
}

impl Placement {
    /// From temper's launcher (`TEMPER_DP_RANK`, `TEMPER_DP_WORLD`, `TEMPER_DP_LOCAL_RANK`,
    /// `TEMPER_DP_RENDEZVOUS`), else from `srun` (`SLURM_PROCID`, `SLURM_NTASKS`,
    /// `SLURM_LOCALID`, tagged by job, step and restart count); `None` when neither set it.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Option<Result<Placement>> {
        let num = |k: &str| -> Result<usize> {
            let v = var(k).ok_or_else(|| anyhow!("{k} is not set"))?;
            v.trim()
                .parse()
                .map_err(|_| anyhow!("{k}={v} is not a number"))
        };
        let placed = if var("TEMPER_DP_RANK").is_some() {
            (|| {
                Ok(Placement {
                    rank: num("TEMPER_DP_RANK")?,
                    world: num("TEMPER_DP_WORLD")?,
                    local: num("TEMPER_DP_LOCAL_RANK")?,
                    tag: var("TEMPER_DP_RENDEZVOUS")
                        .ok_or_else(|| anyhow!("TEMPER_DP_RENDEZVOUS is not set"))?,
                })
            })()
        } else if var("SLURM_PROCID").is_some() {
            (|| {
                Ok(Placement {
                    rank: num("SLURM_PROCID")?,
                    world: num("SLURM_NTASKS")?,
                    local: num("SLURM_LOCALID")?,
                    tag: format!(
                        "slurm-{}.{}.r{}",
                        var("SLURM_JOB_ID").unwrap_or_default(),
                        var("SLURM_STEP_ID").unwrap_or_default(),
                        var("SLURM_RESTART_COUNT").unwrap_or_else(|| "0".into())
                    ),
                })
            })()
        } else {
            return None;
        };
        Some(placed.and_then(|p| {
            if p.world == 0 || p.rank >= p.world {
                bail!("rank {} of a world of {} ranks", p.rank, p.world);
            }
            Ok(p)
        }))
    }

    /// The rendezvous file of this launch, beside the job file.
    pub fn rendezvous_file(&self, job_file: &Path) -> PathBuf {
        let dir = job_file.parent().unwrap_or(Path::new("."));
        let tag: String = self
            .tag
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        dir.join(format!("nccl-{tag}.id"))
    }
}

/// How long ranks wait for rank 0's rendezvous file.
const RENDEZVOUS_WAIT: Duration = Duration::from_secs(300);

/// Rank 0 writes `id` to `file` (atomically); the others wait for it.
fn exchange_id(api: &Api, p: &Placement, file: &Path) -> Result<UniqueId> {
    if p.rank == 0 {
        let mut id = UniqueId([0; 128]);
        // SAFETY: `id` is a valid ncclUniqueId to fill.
        api.check("ncclGetUniqueId", unsafe { (api.get_unique_id)(&mut id) })?;
        store::write_atomic(file, &id.0)
            .with_context(|| format!("writing the NCCL rendezvous file {}", file.display()))?;
        return Ok(id);
    }
    let start = Instant::now();
    loop {
        if let Ok(bytes) = std::fs::read(file) {
            if let Ok(b) = <[u8; 128]>::try_from(bytes.as_slice()) {
                return Ok(UniqueId(b));
            }
        }
        if start.elapsed() > RENDEZVOUS_WAIT {
            bail!(
                "rank {}: rank 0 did not publish NCCL's id in {} within {} s",
                p.rank,
                file.display(),
                RENDEZVOUS_WAIT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An NCCL communicator over the ranks of one data-parallel CUDA node.
pub struct Nccl {
    api: Api,
    /// Serialises the calls (the trainer calls from one thread; the mutex makes sharing safe).
    comm: Mutex<Comm>,
    rank: usize,
    world: usize,
    device: Device,
    /// `major.minor.patch` of the NCCL in use.
    pub version: String,
}

// SAFETY: the communicator is only used under `comm`'s mutex; NCCL allows a communicator to be
// used from any thread, one call at a time.
unsafe impl Send for Nccl {}
unsafe impl Sync for Nccl {}

impl Nccl {
    /// Joins the communicator of placement `p`, whose job file is `job_file` (the rendezvous
    /// file goes beside it); rank 0 removes the file once every rank has joined.
    pub fn init(p: &Placement, job_file: &Path) -> Result<Nccl> {
        let api = Api::load()?;
        let mut v: c_int = 0;
        // SAFETY: ncclGetVersion fills an int.
        api.check("ncclGetVersion", unsafe { (api.version)(&mut v) })?;
        let version = if v >= 10000 {
            format!("{}.{}.{}", v / 10000, (v % 10000) / 100, v % 100)
        } else {
            format!("{}.{}.{}", v / 1000, (v % 1000) / 100, v % 100)
        };
        // SAFETY: cudaSetDevice takes any int and reports an error code.
        let code = unsafe { (api.set_device)(p.local as c_int) };
        match code {
            0 => {}
            100 => bail!("rank {}: no CUDA device is visible to this process", p.rank),
            35 => bail!(
                "rank {}: the CUDA driver is missing or older than the CUDA runtime (error 35)",
                p.rank
            ),
            _ => bail!(
                "rank {}: cudaSetDevice({}) failed (CUDA error {code}): fewer GPUs on this host \
                 than ranks placed on it",
                p.rank,
                p.local
            ),
        }
        let file = p.rendezvous_file(job_file);
        let id = exchange_id(&api, p, &file)?;
        let mut comm: Comm = std::ptr::null_mut();
        // SAFETY: `comm` receives the communicator; the id is the one every rank shares.
        let code =
            unsafe { (api.comm_init_rank)(&mut comm, p.world as c_int, id, p.rank as c_int) };
        api.check(
            &format!("ncclCommInitRank (rank {} of {})", p.rank, p.world),
            code,
        )?;
        if p.rank == 0 {
            // Every rank has joined (the init is collective): the id is no longer needed.
            let _ = std::fs::remove_file(&file);
        }
        Ok(Nccl {
            api,
            comm: Mutex::new(comm),
            rank: p.rank,
            world: p.world,
            device: Device::Cuda(p.local),
            version,
        })
    }

    /// Sums the contiguous f32 or f64 CUDA tensor `t` over the ranks, in place.
    fn reduce(&self, t: &Tensor) -> Result<()> {
        let dtype = match t.kind() {
            Kind::Float => NCCL_FLOAT32,
            Kind::Double => NCCL_FLOAT64,
            k => bail!("internal: NCCL all-reduce of {k:?}"),
        };
        if !t.is_contiguous() || t.device() != self.device {
            bail!("internal: NCCL all-reduce of a non-contiguous tensor or on another device");
        }
        let ptr = t.data_ptr();
        let comm = self.comm.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: `ptr` addresses `numel` elements of `dtype` on this rank's device, alive for
        // the call and the default-stream work it enqueues (the tensor outlives the stream
        // work because every later use of it is on the same stream).
        let code = unsafe {
            (self.api.all_reduce)(
                ptr,
                ptr,
                t.numel(),
                dtype,
                NCCL_SUM,
                *comm,
                std::ptr::null_mut(),
            )
        };
        self.api.check("ncclAllReduce", code)
    }

    /// `ncclAllGather` (`scatter` false: `send` `[k]` → `recv` `[world · k]`) or
    /// `ncclReduceScatter` with sum (`scatter` true: `send` `[world · k]` → `recv` `[k]`) of
    /// host f32 buffers, through this rank's device.
    fn gather_or_scatter(&self, send: &[f32], recv: &mut [f32], scatter: bool) -> Result<()> {
        let s = Tensor::from_slice(send).f_to_device(self.device)?;
        let r = Tensor::f_zeros([recv.len() as i64], (Kind::Float, self.device))?;
        let comm = self.comm.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: `s` and `r` are contiguous f32 tensors on this rank's device, alive until the
        // copy back below, which runs on the same stream after the collective.
        let (what, code) = unsafe {
            if scatter {
                let f = self.api.reduce_scatter;
                let code = f(
                    s.data_ptr(),
                    r.data_ptr(),
                    recv.len(),
                    NCCL_FLOAT32,
                    NCCL_SUM,
                    *comm,
                    std::ptr::null_mut(),
                );
                ("ncclReduceScatter", code)
            } else {
                let f = self.api.all_gather;
                let code = f(
                    s.data_ptr(),
                    r.data_ptr(),
                    send.len(),
                    NCCL_FLOAT32,
                    *comm,
                    std::ptr::null_mut(),
                );
                ("ncclAllGather", code)
            }
        };
        drop(comm);
        self.api.check(what, code)?;
        r.f_to_device(Device::Cpu)?
            .f_copy_data(recv, recv.len())
            .with_context(|| format!("reading the result of {what}"))?;
        Ok(())
    }

    fn reduce_host<T: tch::kind::Element + Copy>(&self, buf: &mut [T]) -> Result<()> {
        let t = Tensor::from_slice(buf).f_to_device(self.device)?;
        self.reduce(&t)?;
        t.f_to_device(Device::Cpu)?
            .f_copy_data(buf, buf.len())
            .context("reading the all-reduced values")?;
        Ok(())
    }
}

impl Drop for Nccl {
    fn drop(&mut self) {
        let comm = *self.comm.lock().unwrap_or_else(|e| e.into_inner());
        if !comm.is_null() {
            // SAFETY: the communicator was made by ncclCommInitRank and is not used after this.
            unsafe {
                if (self.api.comm_destroy)(comm) != 0 {
                    (self.api.comm_abort)(comm);
                }
            }
        }
    }
}

impl Collective for Nccl {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.world
    }
    fn all_reduce_f32(&self, buf: &mut [f32]) -> Result<()> {
        self.reduce_host(buf)
    }
    fn all_reduce_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.reduce_host(buf)
    }
    fn all_gather_f32(&self, mine: &[f32], out: &mut [f32]) -> Result<()> {
        anyhow::ensure!(
            out.len() == mine.len() * self.world,
            "internal: all-gather into {} floats of {} × {}",
            out.len(),
            self.world,
            mine.len()
        );
        self.gather_or_scatter(mine, out, false)
    }
    fn reduce_scatter_f32(&self, buf: &[f32], out: &mut [f32]) -> Result<()> {
        anyhow::ensure!(
            buf.len() == out.len() * self.world,
            "internal: reduce-scatter of {} floats into {} × {}",
            buf.len(),
            self.world,
            out.len()
        );
        self.gather_or_scatter(buf, out, true)
    }
    fn reduces(&self) -> bool {
        true
    }
    fn all_reduce_device(&self, flat: &Tensor) -> Result<bool> {
        if flat.device() != self.device {
            return Ok(false);
        }
        self.reduce(flat)?;
        Ok(true)
    }
    fn describe(&self) -> String {
        format!("NCCL {} on cuda:{}", self.version, self.device_index())
    }
}

impl Nccl {
    fn device_index(&self) -> usize {
        match self.device {
            Device::Cuda(i) => i,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn placement_from_temper_launcher_then_srun() {
        let p = Placement::from_env(env(&[
            ("TEMPER_DP_RANK", "1"),
            ("TEMPER_DP_WORLD", "2"),
            ("TEMPER_DP_LOCAL_RANK", "1"),
            ("TEMPER_DP_RENDEZVOUS", "77-123"),
            ("SLURM_PROCID", "5"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            (p.rank, p.world, p.local, p.tag.as_str()),
            (1, 2, 1, "77-123")
        );
        let p = Placement::from_env(env(&[
            ("SLURM_PROCID", "3"),
            ("SLURM_NTASKS", "4"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_JOB_ID", "42"),
            ("SLURM_STEP_ID", "0"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!((p.rank, p.world, p.local), (3, 4, 1));
        assert_eq!(
            p.rendezvous_file(Path::new("/s/work/k/job.json")),
            PathBuf::from("/s/work/k/nccl-slurm-42.0.r0.id")
        );
        assert!(Placement::from_env(env(&[])).is_none());
        let bad = Placement::from_env(env(&[
            ("TEMPER_DP_RANK", "2"),
            ("TEMPER_DP_WORLD", "2"),
            ("TEMPER_DP_LOCAL_RANK", "0"),
            ("TEMPER_DP_RENDEZVOUS", "x"),
        ]))
        .unwrap();
        assert!(format!("{:#}", bad.unwrap_err()).contains("rank 2 of a world of 2"));
    }
}
