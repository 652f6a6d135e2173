//! Collective communication for data-parallel training.
//!
//! A [`Collective`] is the group of processes ("ranks") of one training job. The trainer needs
//! only a handful of operations from it: a sum all-reduce of the flattened gradients (f32) and of
//! counts and losses (f64), a byte broadcast (the checkpoint a resumed job starts from, the state
//! rank 0 re-sends to ranks that drifted), a barrier, and an all-gather of 32-byte fingerprints
//! (to check that every rank holds the same model and optimizer state).
//!
//! Implementations:
//! * [`Single`]: one process, every operation is the identity. The default, no dependency.
//! * `Mpi` (cargo feature `mpi`): MPI's `MPI_COMM_WORLD` through rsmpi, for jobs launched with
//!   `mpiexec`/`srun`.
//! * `Nccl` (cargo feature `nccl`, implies `mpi`): the f32 gradient all-reduce through NCCL on
//!   the rank's CUDA device (cudarc), everything else over MPI. For ranks on CUDA devices.
//!
//! [`world`] returns the process-wide collective, chosen once from the environment
//! ([`detect_launcher`]): MPI (or NCCL, see [`init_world`]) when the process was started by an
//! MPI launcher with more than one rank, else [`Single`]. MPI can be initialised only once per
//! process, hence one shared value.

use std::sync::{Arc, OnceLock};

#[cfg(feature = "mpi")]
mod mpi_impl;
#[cfg(feature = "mpi")]
pub use mpi_impl::Mpi;
#[cfg(feature = "nccl")]
mod nccl_impl;
#[cfg(feature = "nccl")]
pub use nccl_impl::Nccl;

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
    /// NCCL was asked for (`trainer.collective = "nccl"`, or a CUDA backend) in a multi-rank
    /// job, but this binary was built without it.
    #[error(
        "this job of {size} ranks asked for NCCL (trainer.collective = \"nccl\", or \"auto\" \
         with the cuda backend) but the binary was built without it; rebuild with the `nccl` \
         cargo feature (`cargo build -p balora-cli --features cuda,nccl`), or set \
         trainer.collective = \"mpi\" to sum the gradients over MPI on the host"
    )]
    NotBuiltWithNccl {
        /// Number of ranks.
        size: usize,
    },
    /// A library or device the collective needs is missing (e.g. libnccl, the NVIDIA driver).
    #[error("{0}")]
    Unavailable(String),
    /// A CUDA or NCCL call failed.
    #[error("{0}")]
    Device(String),
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
    /// A short name for logs (`single`, `mpi`, `nccl`).
    fn name(&self) -> &'static str;
    /// This process's rank among the ranks of its node (`0..local_size()`): the index of the
    /// accelerator it uses (see [`device_for_local_rank`]). MPI: from `MPI_Comm_split_type`
    /// (shared memory), so it holds for every launcher.
    fn local_rank(&self) -> usize {
        0
    }
    /// Number of ranks on this process's node.
    fn local_size(&self) -> usize {
        1
    }
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
/// finds a launcher with more than one rank, else [`Single`]. Same as [`from_env_with`]`(false)`.
/// Initialises MPI: call it once per process (or use [`world`]).
pub fn from_env() -> Result<Arc<dyn Collective>, CollectiveError> {
    from_env_with(false)
}

/// [`from_env`], with `nccl`: the gradient all-reduce of a multi-rank job goes through NCCL on
/// the rank's CUDA device (`Nccl`, feature `nccl`) instead of MPI on the host. A multi-rank
/// launch without the `mpi` feature is [`CollectiveError::NotBuiltWithMpi`]; with `nccl` but
/// without the `nccl` feature, [`CollectiveError::NotBuiltWithNccl`]. One rank never needs
/// either.
pub fn from_env_with(nccl: bool) -> Result<Arc<dyn Collective>, CollectiveError> {
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
        if let Some(l) = env_local_rank(env).filter(|&l| l != mpi.local_rank()) {
            tracing::warn!(
                "the launcher says local rank {l}, MPI's shared-memory split says {}; using MPI's",
                mpi.local_rank()
            );
        }
        if nccl {
            #[cfg(feature = "nccl")]
            return match Nccl::init(mpi) {
                Ok(n) => Ok(Arc::new(n)),
                Err(e) => {
                    // Every rank returns this error together (see `Nccl::init`): end MPI
                    // cleanly, so that the launcher reports each rank's message.
                    if matches!(e, CollectiveError::Unavailable(_)) {
                        finalize();
                    }
                    Err(e)
                }
            };
            #[cfg(not(feature = "nccl"))]
            {
                // Every rank gets here: end MPI cleanly before the error is reported.
                drop(mpi);
                finalize();
                return Err(CollectiveError::NotBuiltWithNccl { size: launch.size });
            }
        }
        Ok(Arc::new(mpi))
    }
    #[cfg(not(feature = "mpi"))]
    {
        let _ = nccl;
        Err(CollectiveError::NotBuiltWithMpi {
            var: launch.var,
            value: launch.value,
            size: launch.size,
        })
    }
}

/// The local rank a launcher announces in the environment: `MPI_LOCALRANKID` (MPICH Hydra),
/// `OMPI_COMM_WORLD_LOCAL_RANK` (Open MPI) or `SLURM_LOCALID` (`srun`). Only a cross-check:
/// [`Collective::local_rank`] comes from MPI itself. `vars` is the environment.
pub fn env_local_rank(vars: impl Fn(&str) -> Option<String>) -> Option<usize> {
    [
        "MPI_LOCALRANKID",
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "SLURM_LOCALID",
    ]
    .iter()
    .find_map(|k| vars(k).and_then(|v| v.trim().parse().ok()))
}

/// The accelerator a rank uses: its local rank modulo the number of devices it sees (`count`,
/// after `CUDA_VISIBLE_DEVICES`), so `N` ranks on a node with `N` devices get one each and more
/// ranks than devices share them round-robin. `None` when no device is visible.
pub fn device_for_local_rank(local_rank: usize, count: usize) -> Option<usize> {
    (count > 0).then(|| local_rank % count)
}

/// Ends the process's participation in the job: `MPI_Finalize` when [`world`] initialised MPI
/// (collective: every rank calls it, after its last collective operation; the collective must
/// not be used afterwards), nothing otherwise. A rank that exits without it, even with status 0,
/// makes MPI launchers kill the ranks still running.
pub fn finalize() {
    #[cfg(feature = "mpi")]
    mpi_impl::finalize();
}

static WORLD: OnceLock<Result<Arc<dyn Collective>, CollectiveError>> = OnceLock::new();

/// The process-wide collective: [`from_env`] on the first call (unless [`init_world`] came
/// first), the same value afterwards (an error is returned again on every call).
pub fn world() -> Result<Arc<dyn Collective>, CollectiveError> {
    WORLD.get_or_init(from_env).clone()
}

/// Initialises the process-wide collective with [`from_env_with`]`(nccl)` and returns it. Call it
/// before the first [`world`]; once the world exists, asking for NCCL in a multi-rank job that
/// runs without it is an error (MPI cannot be initialised twice).
pub fn init_world(nccl: bool) -> Result<Arc<dyn Collective>, CollectiveError> {
    let w = WORLD.get_or_init(|| from_env_with(nccl)).clone()?;
    if nccl && w.world_size() > 1 && w.name() != "nccl" {
        return Err(CollectiveError::Init(format!(
            "NCCL was asked for after the collective was initialised as `{}`",
            w.name()
        )));
    }
    Ok(w)
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
    fn local_rank_from_the_launchers_variables() {
        assert_eq!(env_local_rank(env(&[])), None);
        assert_eq!(env_local_rank(env(&[("MPI_LOCALRANKID", "3")])), Some(3));
        assert_eq!(
            env_local_rank(env(&[("OMPI_COMM_WORLD_LOCAL_RANK", "1")])),
            Some(1)
        );
        assert_eq!(env_local_rank(env(&[("SLURM_LOCALID", " 2 ")])), Some(2));
        assert_eq!(env_local_rank(env(&[("SLURM_LOCALID", "x")])), None);
    }

    #[test]
    fn devices_by_local_rank() {
        // One rank per device, then round-robin; no device: none.
        let got: Vec<_> = (0..5).map(|l| device_for_local_rank(l, 4)).collect();
        assert_eq!(got, [Some(0), Some(1), Some(2), Some(3), Some(0)]);
        assert_eq!(device_for_local_rank(1, 1), Some(0));
        assert_eq!(device_for_local_rank(0, 0), None);
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
        assert_eq!((s.local_rank(), s.local_size()), (0, 1));
    }
}
