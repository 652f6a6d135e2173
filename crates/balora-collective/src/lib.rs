//! Collective communication for data-parallel training.
//!
//! A [`Collective`] is the group of processes ("ranks") of one training job. The trainer needs
//! only a handful of operations from it: a sum all-reduce of the flattened gradients (f32) and of
//! counts and losses (f64), a byte broadcast (the checkpoint a resumed job starts from), a
//! barrier, and an all-gather of 32-byte fingerprints (to check that every rank holds the same
//! model and optimizer state).
//!
//! Implementations:
//! * [`Single`]: one process, every operation is the identity. The default, no dependency.
//! * `Mpi` (cargo feature `mpi`): MPI's `MPI_COMM_WORLD` through rsmpi, for jobs launched with
//!   `mpiexec`/`srun`.
//!
//! [`world`] returns the process-wide collective, chosen once from the environment
//! ([`detect_launcher`]): MPI when the process was started by an MPI launcher with more than one
//! rank, else [`Single`]. MPI can be initialised only once per process, hence one shared value.
//!
//! Extension point: a GPU backend (NCCL for CUDA) would be another implementation of
//! [`Collective`] whose all-reduce works on device buffers; the trainer only sees the trait.
//! It is not built yet (see docs/distributed.md).

use std::sync::{Arc, OnceLock};

#[cfg(feature = "mpi")]
mod mpi_impl;
#[cfg(feature = "mpi")]
pub use mpi_impl::Mpi;

/// Errors of collective operations and of choosing one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CollectiveError {
    /// Started by an MPI launcher with several ranks, but this binary has no MPI support.
    #[error(
        "this process was started by an MPI launcher ({var}={value}: {size} ranks) but was built \
         without MPI support; rebuild with the `mpi` cargo feature (e.g. `cargo build -p \
         balora-cli --features mpi`, needs `apt-get install mpich libmpich-dev libclang-dev`), or \
         run one process without mpiexec/srun"
    )]
    NotBuiltWithMpi {
        /// The environment variable that gave the launcher away.
        var: String,
        /// Its value.
        value: String,
        /// Number of ranks the launcher announced.
        size: usize,
    },
    /// MPI could not be initialised (already initialised by someone else, or finalised).
    #[error("MPI initialisation failed: {0}")]
    Init(String),
    /// A root rank outside `0..world_size`.
    #[error("rank {root} is not in this job of {world} ranks")]
    BadRoot {
        /// The root asked for.
        root: usize,
        /// The job's size.
        world: usize,
    },
    /// The ranks disagree about the shape of a collective (a bug: e.g. different models).
    #[error("collective {op}: {message}")]
    Mismatch {
        /// The operation.
        op: &'static str,
        /// What differed.
        message: String,
    },
}

/// The processes of one data-parallel job. Every method is collective: all ranks call it in the
/// same order with buffers of the same length (except where noted), or the job hangs or aborts.
pub trait Collective: Send + Sync + std::fmt::Debug {
    /// This process's rank, `0..world_size()`.
    fn rank(&self) -> usize;
    /// Number of processes.
    fn world_size(&self) -> usize;
    /// A short name for logs (`single`, `mpi`).
    fn name(&self) -> &'static str;
    /// Replaces `buf` on every rank by the element-wise sum over ranks.
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<(), CollectiveError>;
    /// Replaces `buf` on every rank by the element-wise sum over ranks.
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<(), CollectiveError>;
    /// Replaces `buf` on every rank by `root`'s bytes (the other ranks' lengths do not matter).
    fn broadcast_bytes(&self, root: usize, buf: &mut Vec<u8>) -> Result<(), CollectiveError>;
    /// Returns when every rank has called it.
    fn barrier(&self) -> Result<(), CollectiveError>;
    /// Every rank's `hash`, indexed by rank.
    fn all_gather_hash(&self, hash: [u8; 32]) -> Result<Vec<[u8; 32]>, CollectiveError>;
    /// Ends the whole job with exit status `code` (MPI: `MPI_Abort`, which kills every rank).
    /// Call it on any error once ranks may be inside a collective, so that no rank waits forever.
    fn abort(&self, code: i32) -> !;
}

/// One process: rank 0 of 1; reductions and broadcasts leave the buffers as they are.
#[derive(Debug, Clone, Copy, Default)]
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn name(&self) -> &'static str {
        "single"
    }
    fn all_reduce_sum_f32(&self, _buf: &mut [f32]) -> Result<(), CollectiveError> {
        Ok(())
    }
    fn all_reduce_sum_f64(&self, _buf: &mut [f64]) -> Result<(), CollectiveError> {
        Ok(())
    }
    fn broadcast_bytes(&self, root: usize, _buf: &mut Vec<u8>) -> Result<(), CollectiveError> {
        check_root(root, 1)
    }
    fn barrier(&self) -> Result<(), CollectiveError> {
        Ok(())
    }
    fn all_gather_hash(&self, hash: [u8; 32]) -> Result<Vec<[u8; 32]>, CollectiveError> {
        Ok(vec![hash])
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

pub(crate) fn check_root(root: usize, world: usize) -> Result<(), CollectiveError> {
    if root < world {
        Ok(())
    } else {
        Err(CollectiveError::BadRoot { root, world })
    }
}

/// How this process was launched, read from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// The variable that tells the number of ranks (e.g. `PMI_SIZE`).
    pub var: String,
    /// Its value.
    pub value: String,
    /// Number of ranks.
    pub size: usize,
}

/// The MPI launcher this process was started by, if any: MPICH/Intel MPI's Hydra (`PMI_SIZE`),
/// Open MPI (`OMPI_COMM_WORLD_SIZE`), or a Slurm job step (`srun`: `SLURM_STEP_NUM_TASKS`, only
/// when `SLURM_PROCID` is set too; a batch script itself is not a multi-rank step).
/// `vars` is the environment (a function, for tests).
pub fn detect_launcher(vars: impl Fn(&str) -> Option<String>) -> Option<Launch> {
    let candidates: [(&str, Option<&str>); 3] = [
        ("PMI_SIZE", None),
        ("OMPI_COMM_WORLD_SIZE", None),
        ("SLURM_STEP_NUM_TASKS", Some("SLURM_PROCID")),
    ];
    for (var, needs) in candidates {
        if needs.is_some_and(|n| vars(n).is_none()) {
            continue;
        }
        if let Some(value) = vars(var) {
            let size = value.trim().parse().unwrap_or(0);
            return Some(Launch {
                var: var.into(),
                value,
                size,
            });
        }
    }
    None
}

/// Chooses the collective for this process from its environment: MPI when [`detect_launcher`]
/// finds a launcher with more than one rank, else [`Single`].
/// A multi-rank launch without the `mpi` feature is [`CollectiveError::NotBuiltWithMpi`].
/// Initialises MPI: call it once per process (or use [`world`]).
pub fn from_env() -> Result<Arc<dyn Collective>, CollectiveError> {
    let env = |k: &str| std::env::var(k).ok();
    let Some(launch) = detect_launcher(env).filter(|l| l.size > 1) else {
        return Ok(Arc::new(Single));
    };
    #[cfg(feature = "mpi")]
    {
        let mpi = Mpi::init()?;
        if mpi.world_size() != launch.size {
            tracing::warn!(
                "{}={} but MPI_COMM_WORLD has {} ranks",
                launch.var,
                launch.value,
                mpi.world_size()
            );
        }
        Ok(Arc::new(mpi))
    }
    #[cfg(not(feature = "mpi"))]
    {
        Err(CollectiveError::NotBuiltWithMpi {
            var: launch.var,
            value: launch.value,
            size: launch.size,
        })
    }
}

/// Ends the process's participation in the job: `MPI_Finalize` when [`world`] initialised MPI
/// (collective: every rank calls it, after its last collective operation; the collective must
/// not be used afterwards), nothing otherwise. A rank that exits without it, even with status 0,
/// makes MPI launchers kill the ranks still running.
pub fn finalize() {
    #[cfg(feature = "mpi")]
    mpi_impl::finalize();
}

/// The process-wide collective: [`from_env`] on the first call, the same value afterwards (an
/// error is returned again on every call).
pub fn world() -> Result<Arc<dyn Collective>, CollectiveError> {
    static WORLD: OnceLock<Result<Arc<dyn Collective>, CollectiveError>> = OnceLock::new();
    WORLD.get_or_init(from_env).clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn detects_launchers() {
        assert_eq!(detect_launcher(env(&[])), None);
        let l = detect_launcher(env(&[("PMI_RANK", "1"), ("PMI_SIZE", "2")])).unwrap();
        assert_eq!((l.var.as_str(), l.size), ("PMI_SIZE", 2));
        let l = detect_launcher(env(&[("OMPI_COMM_WORLD_SIZE", "4")])).unwrap();
        assert_eq!(l.size, 4);
        // A Slurm batch script (no job step) is not a launch.
        assert_eq!(detect_launcher(env(&[("SLURM_STEP_NUM_TASKS", "8")])), None);
        let l =
            detect_launcher(env(&[("SLURM_STEP_NUM_TASKS", "8"), ("SLURM_PROCID", "3")])).unwrap();
        assert_eq!(l.size, 8);
    }

    #[test]
    fn single_is_identity() {
        let s = Single;
        let mut a = vec![1.5f32, -2.0];
        s.all_reduce_sum_f32(&mut a).unwrap();
        assert_eq!(a, [1.5, -2.0]);
        let mut b = vec![3u8];
        s.broadcast_bytes(0, &mut b).unwrap();
        assert_eq!(b, [3]);
        assert!(matches!(
            s.broadcast_bytes(1, &mut b),
            Err(CollectiveError::BadRoot { root: 1, world: 1 })
        ));
        assert_eq!(s.all_gather_hash([7; 32]).unwrap(), vec![[7; 32]]);
        assert_eq!((s.rank(), s.world_size()), (0, 1));
    }
}
