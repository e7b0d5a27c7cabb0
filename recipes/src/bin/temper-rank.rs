//! `temper-rank`: one rank of a data-parallel node (see `recipes::dist::rank`).
//! - `temper-rank JOB` under `mpirun` or `srun --mpi=pmix`: a CPU rank summing over MPI
//!   (feature `mpi`);
//! - `temper-rank JOB` with `TEMPER_COLLECTIVE=nccl`: a CUDA rank summing over NCCL;
//! - `temper-rank --launch RANKS JOB`: starts the CUDA ranks of one host (`recipes::dist::launch`).
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--launch") {
        return recipes::dist::launch::main(&args[1..]);
    }
    if std::env::var("TEMPER_COLLECTIVE").as_deref() == Ok("nccl") {
        return recipes::dist::rank::main_nccl();
    }
    mpi_rank()
}

#[cfg(feature = "mpi")]
fn mpi_rank() -> ExitCode {
    match recipes::dist::mpi::Mpi::init() {
        Some(mpi) => recipes::dist::rank::main(std::sync::Arc::new(mpi)),
        None => {
            eprintln!("temper-rank: MPI could not be initialised (start it with mpirun)");
            ExitCode::from(2)
        }
    }
}

#[cfg(not(feature = "mpi"))]
fn mpi_rank() -> ExitCode {
    eprintln!(
        "temper-rank: built without MPI, so it runs CUDA ranks only (`temper-rank --launch`); \
         CPU ranks need Open MPI (`apt install openmpi-bin libopenmpi-dev libclang-dev`, then \
         `make build`)"
    );
    ExitCode::from(2)
}
