//! Run-time backend choice, dispatching to code generic over burn's `AutodiffBackend`.

use serde::{Deserialize, Serialize};

/// A compute backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// CPU, pure Rust (burn-ndarray). Always compiled.
    Ndarray,
    /// wgpu (Vulkan/Metal/DX12; CPU through Mesa lavapipe). Feature `wgpu`.
    Wgpu,
    /// CUDA (burn-cuda). Feature `cuda`.
    Cuda,
    /// LibTorch (burn-tch). Feature `tch`.
    Tch,
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Ndarray => "ndarray",
            Self::Wgpu => "wgpu",
            Self::Cuda => "cuda",
            Self::Tch => "tch",
        })
    }
}

/// The sentence printed when a backend was not compiled in.
pub fn missing(kind: BackendKind) -> anyhow::Error {
    let how = match kind {
        BackendKind::Ndarray => "rebuild with the default features",
        BackendKind::Wgpu => {
            "rebuild with `cargo build -p balora-cli --features wgpu` (`cargo xtask build --backend wgpu`); \
             without a GPU install Mesa's lavapipe: `apt-get install mesa-vulkan-drivers libvulkan1`"
        }
        BackendKind::Cuda => {
            "rebuild with `cargo build -p balora-cli --features cuda` on a machine with an NVIDIA driver"
        }
        BackendKind::Tch => {
            "run `cargo xtask setup tch` (installs the PyTorch 2.9 wheel) and rebuild with \
             `LIBTORCH_USE_PYTORCH=1 cargo build -p balora-cli --features tch`"
        }
    };
    anyhow::anyhow!("the {kind} backend is not compiled into this binary: {how}")
}

/// `dispatch!(kind, |B, device| expr)` runs `expr` with `B` the autodiff backend type and
/// `device` its default device; evaluates to `Result<expr's type>`.
macro_rules! dispatch {
    ($kind:expr, |$b:ident, $dev:ident| $body:expr) => {{
        #[allow(unreachable_patterns)]
        match $kind {
            #[cfg(feature = "ndarray")]
            $crate::backend::BackendKind::Ndarray => {
                type $b = burn::backend::Autodiff<burn::backend::NdArray>;
                let $dev = burn::backend::ndarray::NdArrayDevice::default();
                Ok($body)
            }
            #[cfg(feature = "wgpu")]
            $crate::backend::BackendKind::Wgpu => {
                type $b = burn::backend::Autodiff<burn::backend::Wgpu>;
                let $dev = burn::backend::wgpu::WgpuDevice::default();
                Ok($body)
            }
            #[cfg(feature = "cuda")]
            $crate::backend::BackendKind::Cuda => {
                type $b = burn::backend::Autodiff<burn::backend::Cuda>;
                let $dev = burn::backend::cuda::CudaDevice::default();
                Ok($body)
            }
            #[cfg(feature = "tch")]
            $crate::backend::BackendKind::Tch => {
                type $b = burn::backend::Autodiff<burn::backend::LibTorch>;
                let $dev = burn::backend::libtorch::LibTorchDevice::Cpu;
                Ok($body)
            }
            other => Err($crate::backend::missing(other)),
        }
    }};
}
pub(crate) use dispatch;
