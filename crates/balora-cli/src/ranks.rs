//! The process's part in a data-parallel job (`mpiexec -n N balora train`, docs/distributed.md):
//! which collective sums the gradients (`trainer.collective`), which GPU this rank uses, and what
//! a cross-rank fingerprint mismatch does.

use crate::backend::BackendKind;
use anyhow::{bail, Result};
use balora_collective::{device_for_local_rank, Collective};
use balora_config::{parse_device, CollectiveName, JobConfig};
use balora_train::distributed::Mismatch;
use burn::tensor::backend::{Backend, Device as _, DeviceId};

/// `trainer.devices`: one device per process (data parallelism is one process per device under
/// MPI: docs/distributed.md).
pub fn check_devices(cfg: &JobConfig) -> Result<()> {
    if cfg.trainer.devices.len() > 1 {
        bail!(
            "trainer.devices = {:?}: one device per process. For data-parallel training run one \
             process per device under MPI (`mpiexec -n N balora train …`, a binary built with \
             `--features mpi`; docs/distributed.md) and give each a single device.",
            cfg.trainer.devices
        );
    }
    Ok(())
}

/// Whether a multi-rank job sums gradients with NCCL: `trainer.collective = "nccl"` (which needs
/// the cuda backend), or `"auto"` with the cuda backend in a binary built with the `nccl`
/// feature. Without the feature, `auto` is MPI and `nccl` is an error when the job has several
/// ranks (from the collective, naming the feature).
pub fn use_nccl(cfg: &JobConfig, backend: BackendKind) -> Result<bool> {
    match cfg.trainer.collective {
        CollectiveName::Mpi => Ok(false),
        CollectiveName::Auto => Ok(backend == BackendKind::Cuda && cfg!(feature = "nccl")),
        CollectiveName::Nccl if backend != BackendKind::Cuda => bail!(
            "trainer.collective = \"nccl\" needs backend = \"cuda\" (this job's backend is \
             {backend}); use \"mpi\" or \"auto\""
        ),
        CollectiveName::Nccl => Ok(true),
    }
}

/// On GPU backends a fingerprint mismatch re-sends rank 0's state with a warning (GPU kernels need
/// not be bit-reproducible across devices); on CPU backends it is an error.
pub fn on_mismatch(backend: BackendKind) -> Mismatch {
    match backend {
        BackendKind::Cuda | BackendKind::Wgpu => Mismatch::Rebroadcast,
        _ => Mismatch::Error,
    }
}

/// The device of this process. CPU backends: `default`. cuda and wgpu: in a job of several ranks
/// the GPU of the rank's local rank ([`device_for_local_rank`]: local rank modulo the visible
/// devices, the same rule the NCCL collective uses; wgpu counts discrete GPUs and keeps its
/// default adapter when it sees none); in a single process the index of the `trainer.devices`
/// entry (`cuda:1`; for wgpu a nonzero index picks that discrete GPU, `wgpu`/`wgpu:0` the default
/// adapter).
pub fn rank_device<B: Backend>(
    kind: BackendKind,
    default: B::Device,
    cfg: &JobConfig,
    world: &dyn Collective,
) -> Result<B::Device> {
    if !matches!(kind, BackendKind::Cuda | BackendKind::Wgpu) {
        return Ok(default);
    }
    // CUDA devices and wgpu's discrete GPUs are both device type 0.
    let count = B::device_count(0);
    let index = if world.world_size() > 1 {
        match device_for_local_rank(world.local_rank(), count) {
            Some(i) => i,
            None => return Ok(default),
        }
    } else {
        let entry = cfg.trainer.devices.first().map_or("cpu", String::as_str);
        let (_, index) = parse_device(entry).map_err(anyhow::Error::msg)?;
        if kind == BackendKind::Wgpu && index == 0 {
            return Ok(default);
        }
        if index >= count {
            bail!(
                "trainer.devices = [\"{entry}\"]: the {kind} backend sees {count} device(s) \
                 (indices from 0)"
            );
        }
        index
    };
    if world.world_size() > 1 {
        tracing::info!(
            rank = world.rank(),
            local_rank = world.local_rank(),
            device = index,
            "{kind} device of this rank"
        );
    }
    Ok(B::Device::from_id(DeviceId::new(0, index as u16)))
}
