//! [`Nccl`]: the gradient all-reduce through NCCL on the rank's CUDA device (cudarc), every other
//! operation over MPI.

use crate::{device_for_local_rank, Collective, CollectiveError, Mpi};
use cudarc::driver::{CudaContext, CudaStream};
use cudarc::nccl::{Comm, Id, ReduceOp};
use std::sync::{Arc, Mutex};

/// Bytes of an NCCL unique id (`ncclUniqueId`).
const ID_BYTES: usize = 128;

/// The ranks of an MPI job, each with one CUDA device (local rank modulo the visible devices,
/// [`device_for_local_rank`]) and one NCCL communicator over all of them.
///
/// [`Collective::all_reduce_sum_f32`] (the flattened gradients) runs on the device: copy to the
/// device, `ncclAllReduce` (sum), copy back. The trainer's gradient buffer lives on the host today
/// (it is flattened from burn tensors), so each step pays two small copies of an adapter-sized
/// buffer on top of the reduction; a device-side flattening would remove them. The f64 sums
/// (token counts, losses), broadcasts, the barrier and the fingerprint all-gather stay on MPI:
/// they are a few bytes, and MPI is what starts the job and carries the NCCL unique id.
pub struct Nccl {
    mpi: Mpi,
    ordinal: usize,
    dev: Mutex<Device>,
}

struct Device {
    comm: Comm,
    stream: Arc<CudaStream>,
}

// SAFETY: the communicator and stream are handles of the CUDA/NCCL libraries, which may be used
// from any thread as long as one thread at a time does; the mutex serialises every use.
unsafe impl Send for Device {}

impl std::fmt::Debug for Nccl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nccl")
            .field("mpi", &self.mpi)
            .field("device", &self.ordinal)
            .finish()
    }
}

/// How to get the NCCL library (named in errors).
const NCCL_HOW: &str = "the NCCL library was not found (looked for libnccl.so, \
     libnccl.so.12 and similar names; cudarc does not try libnccl.so.2): install NCCL (the \
     distribution's libnccl-dev, or `pip install nvidia-nccl-cu12` and a link `libnccl.so -> \
     libnccl.so.2` in a folder on LD_LIBRARY_PATH), or set trainer.collective = \"mpi\"";

/// Checks that this rank can use NCCL on a CUDA device and opens the device: the ordinal and
/// the context, or what is missing.
fn open_device(local_rank: usize) -> Result<(usize, Arc<CudaContext>), String> {
    // SAFETY: only tries to load the shared libraries (dlopen); no symbol is called.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(
            "the NVIDIA driver library libcuda.so was not found: NCCL needs a CUDA \
                    device and its driver (or set trainer.collective = \"mpi\")"
                .into(),
        );
    }
    // SAFETY: as above.
    if !unsafe { cudarc::nccl::sys::is_culib_present() } {
        return Err(NCCL_HOW.into());
    }
    let count =
        CudaContext::device_count().map_err(|e| format!("cannot count the CUDA devices: {e}"))?;
    let ordinal = device_for_local_rank(local_rank, count.max(0) as usize).ok_or_else(|| {
        "no CUDA device is visible to this process (check the driver and \
         CUDA_VISIBLE_DEVICES)"
            .to_string()
    })?;
    let ctx =
        CudaContext::new(ordinal).map_err(|e| format!("cannot open CUDA device {ordinal}: {e}"))?;
    Ok((ordinal, ctx))
}

impl Nccl {
    /// Opens this rank's CUDA device and the NCCL communicator of all ranks of `mpi`
    /// (collective). Rank 0 creates the NCCL unique id and broadcasts it over MPI. If any rank
    /// cannot (no libcuda, no libnccl, no device), every rank returns an error, the failing ones
    /// naming what is missing, so no rank waits for the others in `ncclCommInitRank`.
    pub fn init(mpi: Mpi) -> Result<Self, CollectiveError> {
        let (rank, size) = (mpi.rank(), mpi.world_size());
        let opened = open_device(mpi.local_rank());
        // Rank 0 also needs the id; an empty broadcast tells the others it failed.
        let id = match (&opened, rank) {
            (Ok(_), 0) => Some(Id::new().map_err(|e| format!("ncclGetUniqueId failed: {e:?}"))),
            _ => None,
        };
        let mut failed = [f64::from(u8::from(
            opened.is_err() || matches!(id, Some(Err(_))),
        ))];
        mpi.all_reduce_sum_f64(&mut failed)?;
        let (ordinal, ctx) = match opened {
            Err(e) => {
                return Err(CollectiveError::Unavailable(format!(
                    "rank {rank}: cannot use NCCL: {e}"
                )))
            }
            Ok(_) if failed[0] > 0.0 => {
                return Err(CollectiveError::Unavailable(format!(
                    "rank {rank}: NCCL is unavailable on {} of the {size} ranks (their errors \
                     name what is missing)",
                    failed[0]
                )))
            }
            Ok(o) => o,
        };
        let mut bytes = match id {
            Some(Ok(id)) => id.internal().iter().map(|&c| c as u8).collect(),
            Some(Err(e)) => return Err(CollectiveError::Unavailable(e)),
            None => Vec::new(),
        };
        mpi.broadcast_bytes(0, &mut bytes)?;
        if bytes.len() != ID_BYTES {
            return Err(CollectiveError::Mismatch {
                op: "nccl init",
                message: format!(
                    "the NCCL unique id has {} bytes, not {ID_BYTES}",
                    bytes.len()
                ),
            });
        }
        let mut internal = [0 as std::ffi::c_char; ID_BYTES];
        for (d, &b) in internal.iter_mut().zip(&bytes) {
            *d = b as std::ffi::c_char;
        }
        let stream = ctx
            .new_stream()
            .map_err(|e| CollectiveError::Device(format!("CUDA device {ordinal}: {e}")))?;
        let comm =
            Comm::from_rank(stream.clone(), rank, size, Id::uninit(internal)).map_err(|e| {
                CollectiveError::Device(format!(
                    "ncclCommInitRank (rank {rank} of {size}, CUDA device {ordinal}) failed: \
                     {e:?}; several ranks on one device need NCCL_HOSTID set per rank"
                ))
            })?;
        tracing::info!(
            rank,
            size,
            local_rank = mpi.local_rank(),
            device = ordinal,
            "NCCL communicator ready"
        );
        Ok(Self {
            mpi,
            ordinal,
            dev: Mutex::new(Device { comm, stream }),
        })
    }

    /// The CUDA device ordinal this rank reduces on.
    pub fn device(&self) -> usize {
        self.ordinal
    }
}

fn dev_err(what: &'static str) -> impl Fn(cudarc::driver::DriverError) -> CollectiveError {
    move |e| CollectiveError::Device(format!("{what}: {e}"))
}

impl Collective for Nccl {
    fn rank(&self) -> usize {
        self.mpi.rank()
    }
    fn world_size(&self) -> usize {
        self.mpi.world_size()
    }
    fn name(&self) -> &'static str {
        "nccl"
    }
    fn local_rank(&self) -> usize {
        self.mpi.local_rank()
    }
    fn local_size(&self) -> usize {
        self.mpi.local_size()
    }
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<(), CollectiveError> {
        if buf.is_empty() {
            return Ok(());
        }
        let dev = self
            .dev
            .lock()
            .map_err(|_| CollectiveError::Device("the NCCL communicator was poisoned".into()))?;
        let mut d = dev
            .stream
            .clone_htod(&*buf)
            .map_err(dev_err("copy to the device"))?;
        dev.comm
            .all_reduce_in_place(&mut d, &ReduceOp::Sum)
            .map_err(|e| CollectiveError::Device(format!("ncclAllReduce failed: {e:?}")))?;
        dev.stream
            .memcpy_dtoh(&d, buf)
            .map_err(dev_err("copy to the host"))?;
        dev.stream
            .synchronize()
            .map_err(dev_err("synchronising the stream"))
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<(), CollectiveError> {
        self.mpi.all_reduce_sum_f64(buf)
    }
    fn broadcast_bytes(&self, root: usize, buf: &mut Vec<u8>) -> Result<(), CollectiveError> {
        self.mpi.broadcast_bytes(root, buf)
    }
    fn barrier(&self) -> Result<(), CollectiveError> {
        self.mpi.barrier()
    }
    fn all_gather_hash(&self, hash: [u8; 32]) -> Result<Vec<[u8; 32]>, CollectiveError> {
        self.mpi.all_gather_hash(hash)
    }
    fn abort(&self, code: i32) -> ! {
        self.mpi.abort(code)
    }
}
