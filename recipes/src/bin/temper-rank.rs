//! `temper-rank JOB`: one rank of a data-parallel node, started by `mpirun` (see
//! `recipes::dist::rank`).
fn main() -> std::process::ExitCode {
    match recipes::dist::mpi::Mpi::init() {
        Some(mpi) => recipes::dist::rank::main(std::sync::Arc::new(mpi)),
        None => {
            eprintln!("temper-rank: MPI could not be initialised (start it with mpirun)");
            std::process::ExitCode::from(2)
        }
    }
}
