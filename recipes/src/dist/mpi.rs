//! [`Collective`] over MPI (the `mpi` crate, rsmpi, on the system's Open MPI): the ranks of a
//! data-parallel node are the processes of `MPI_COMM_WORLD`, started by `mpirun` (locally, or
//! inside a Slurm allocation, where Open MPI's launcher uses Slurm's nodes).

use super::Collective;
use anyhow::Result;
use mpi::collective::SystemOperation;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives};
use std::sync::Mutex;

/// MPI's world communicator. MPI is initialised with `MPI_THREAD_SERIALIZED` and every call
/// goes through the mutex, so the handle may be shared between threads.
pub struct Mpi {
    world: Mutex<SimpleCommunicator>,
    rank: usize,
    size: usize,
    /// Keeps MPI initialised; `MPI_Finalize` runs when it drops.
    _universe: mpi::environment::Universe,
}

// SAFETY: the communicator is only used under `world`'s mutex (MPI_THREAD_SERIALIZED allows
// calls from any thread, one at a time), and the universe is only dropped with `Mpi`.
unsafe impl Send for Mpi {}
unsafe impl Sync for Mpi {}

impl Mpi {
    /// Initialises MPI; `None` when this process was not started as an MPI rank or MPI fails.
    pub fn init() -> Option<Mpi> {
        let (universe, _level) =
            mpi::initialize_with_threading(mpi::environment::Threading::Serialized)?;
        let world = universe.world();
        Some(Mpi {
            rank: world.rank() as usize,
            size: world.size() as usize,
            world: Mutex::new(world),
            _universe: universe,
        })
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.size
    }
    fn all_reduce_f32(&self, buf: &mut [f32]) -> Result<()> {
        let send = buf.to_vec();
        let w = self.world.lock().unwrap_or_else(|e| e.into_inner());
        w.all_reduce_into(&send[..], buf, SystemOperation::sum());
        Ok(())
    }
    fn all_reduce_f64(&self, buf: &mut [f64]) -> Result<()> {
        let send = buf.to_vec();
        let w = self.world.lock().unwrap_or_else(|e| e.into_inner());
        w.all_reduce_into(&send[..], buf, SystemOperation::sum());
        Ok(())
    }
    fn all_gather_f32(&self, mine: &[f32], out: &mut [f32]) -> Result<()> {
        anyhow::ensure!(
            out.len() == mine.len() * self.size,
            "internal: all-gather into {} floats of {} × {}",
            out.len(),
            self.size,
            mine.len()
        );
        let w = self.world.lock().unwrap_or_else(|e| e.into_inner());
        w.all_gather_into(mine, out);
        Ok(())
    }
    fn reduce_scatter_f32(&self, buf: &[f32], out: &mut [f32]) -> Result<()> {
        anyhow::ensure!(
            buf.len() == out.len() * self.size,
            "internal: reduce-scatter of {} floats into {} × {}",
            buf.len(),
            self.size,
            out.len()
        );
        let w = self.world.lock().unwrap_or_else(|e| e.into_inner());
        w.reduce_scatter_block_into(buf, out, SystemOperation::sum());
        Ok(())
    }
}
