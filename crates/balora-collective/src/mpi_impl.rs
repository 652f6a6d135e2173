//! [`Mpi`]: `MPI_COMM_WORLD` through rsmpi.

use crate::{check_root, Collective, CollectiveError};
use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
use mpi::environment::Universe;
use mpi::topology::{Communicator, SimpleCommunicator};
use std::sync::Mutex;

/// Elements per MPI call: MPI counts are `int`, so longer buffers go in chunks.
const CHUNK: usize = 1 << 28;

/// `MPI_COMM_WORLD`. MPI is initialised by [`Mpi::init`] (thread level "funneled": only the
/// thread that initialised MPI calls it; the trainer's compute threads never do) and finalised
/// by [`crate::finalize`] (a rank that exits without it makes the launcher kill the others). MPI's default error handler (`MPI_ERRORS_ARE_FATAL`) stays: a
/// failing MPI call aborts the job; a rank that exits early (crash, error) makes the launcher
/// (Hydra, Slurm) kill the others.
pub struct Mpi {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    local_rank: usize,
    local_size: usize,
}

/// The MPI environment: dropping it calls `MPI_Finalize`.
static UNIVERSE: Mutex<Option<Universe>> = Mutex::new(None);

/// Finalises MPI if [`Mpi::init`] initialised it (collective: every rank must call it).
pub(crate) fn finalize() {
    let u = UNIVERSE.lock().map(|mut u| u.take());
    drop(u);
}

// SAFETY: MPI handles are plain integers (MPICH) or pointers to library objects (Open MPI) that
// the library allows to be used from any thread at the "funneled" level as long as one thread at
// a time calls MPI; the trainer calls every collective from the thread that initialised MPI.
unsafe impl Send for Mpi {}
// SAFETY: see `Send`: no interior state on the Rust side.
unsafe impl Sync for Mpi {}

impl std::fmt::Debug for Mpi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mpi")
            .field("rank", &self.rank)
            .field("size", &self.size)
            .field("local_rank", &self.local_rank)
            .finish()
    }
}

impl Mpi {
    /// Initialises MPI (once per process) and takes `MPI_COMM_WORLD`.
    pub fn init() -> Result<Self, CollectiveError> {
        let (universe, _level) = mpi::initialize_with_threading(mpi::Threading::Funneled)
            .ok_or_else(|| {
                CollectiveError::Init("MPI was already initialised in this process".into())
            })?;
        let world = universe.world();
        let rank = world.rank() as usize;
        let size = world.size() as usize;
        // The ranks that share this node's memory, ordered by world rank.
        let node = world.split_shared(world.rank());
        let (local_rank, local_size) = (node.rank() as usize, node.size() as usize);
        tracing::debug!(rank, size, local_rank, local_size, "MPI initialised");
        if let Ok(mut u) = UNIVERSE.lock() {
            *u = Some(universe);
        }
        Ok(Self {
            world,
            rank,
            size,
            local_rank,
            local_size,
        })
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.size
    }
    fn name(&self) -> &'static str {
        "mpi"
    }
    fn local_rank(&self) -> usize {
        self.local_rank
    }
    fn local_size(&self) -> usize {
        self.local_size
    }
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<(), CollectiveError> {
        for chunk in buf.chunks_mut(CHUNK) {
            let send = chunk.to_vec();
            self.world
                .all_reduce_into(&send[..], chunk, SystemOperation::sum());
        }
        Ok(())
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<(), CollectiveError> {
        for chunk in buf.chunks_mut(CHUNK) {
            let send = chunk.to_vec();
            self.world
                .all_reduce_into(&send[..], chunk, SystemOperation::sum());
        }
        Ok(())
    }
    fn broadcast_bytes(&self, root: usize, buf: &mut Vec<u8>) -> Result<(), CollectiveError> {
        check_root(root, self.size)?;
        let proc = self.world.process_at_rank(root as i32);
        let mut len = buf.len() as u64;
        proc.broadcast_into(&mut len);
        buf.resize(len as usize, 0);
        for chunk in buf.chunks_mut(CHUNK) {
            proc.broadcast_into(chunk);
        }
        Ok(())
    }
    fn barrier(&self) -> Result<(), CollectiveError> {
        self.world.barrier();
        Ok(())
    }
    fn all_gather_hash(&self, hash: [u8; 32]) -> Result<Vec<[u8; 32]>, CollectiveError> {
        let mut all = vec![0u8; 32 * self.size];
        self.world.all_gather_into(&hash[..], &mut all[..]);
        Ok(all
            .chunks_exact(32)
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(c);
                h
            })
            .collect())
    }
    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}
