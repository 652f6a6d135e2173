//! Run-time backend choice, dispatching to code generic over burn's `AutodiffBackend`.
//!
//! Every command that computes takes `--backend` (and the config key `backend`) and runs its
//! generic code through [`dispatch!`]: one code path for all backends. A backend that is not
//! compiled into the binary, or whose device cannot start (no Vulkan driver for wgpu, no NVIDIA
//! driver for CUDA), is reported as one sentence saying how to get it, not as a panic.

use serde::{Deserialize, Serialize};

/// A compute backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// CPU, pure Rust (burn-flex: gemm-crate matmuls, AVX-512 where the CPU has it). The
    /// default. Feature `flex`.
    Flex,
    /// CPU, pure Rust (burn-ndarray). Feature `ndarray`.
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
            Self::Flex => "flex",
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
        BackendKind::Flex | BackendKind::Ndarray => "rebuild with the default features",
        BackendKind::Wgpu => {
            "rebuild with `cargo xtask build --backend wgpu` (the `wgpu` feature of balora-cli); \
             without a GPU it runs on Mesa's lavapipe: `apt-get install mesa-vulkan-drivers libvulkan1`"
        }
        BackendKind::Cuda => {
            "rebuild with `cargo xtask build --backend cuda` (the `cuda` feature; building needs no \
             CUDA toolkit, running needs an NVIDIA GPU and driver)"
        }
        BackendKind::Tch => {
            "run `cargo xtask setup tch` (PyTorch 2.9.0 from PyPI), then `cargo xtask build --backend tch`"
        }
    };
    anyhow::anyhow!("the {kind} backend is not compiled into this binary: {how}")
}

/// The sentence printed when a compiled-in backend cannot start its device.
pub fn unusable(kind: BackendKind, cause: &str) -> anyhow::Error {
    let cause: String = cause
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(200)
        .collect();
    let how = match kind {
        BackendKind::Flex | BackendKind::Ndarray => "this is a bug, please report it",
        BackendKind::Wgpu => {
            "install a Vulkan driver (without a GPU, Mesa's lavapipe: `apt-get install \
             mesa-vulkan-drivers libvulkan1`) or use `--backend flex` (CPU)"
        }
        BackendKind::Cuda => {
            "it needs an NVIDIA GPU with its driver (libcuda); use `--backend wgpu` or \
             `--backend flex` (CPU) on other machines"
        }
        BackendKind::Tch => {
            "check the PyTorch 2.9 install (`cargo xtask setup tch`) and that its `lib` folder \
             is on LD_LIBRARY_PATH"
        }
    };
    anyhow::anyhow!("the {kind} backend could not start its device ({cause}): {how}")
}

/// Runs one tiny computation on `device`. Backends panic when their driver is missing; that
/// panic is caught here (its default printout suppressed) and becomes [`unusable`].
pub fn probe<B: burn::tensor::backend::Backend>(
    kind: BackendKind,
    device: &B::Device,
) -> anyhow::Result<()> {
    use burn::tensor::{Tensor, TensorData};
    use std::sync::{Arc, Mutex};
    // The backend may panic on a worker thread (the main thread then sees a closed channel):
    // keep the first panic message of any thread as the cause.
    let first: Arc<Mutex<Option<String>>> = Arc::default();
    let seen = first.clone();
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let mut slot = seen.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(info.payload_as_str().unwrap_or("panic").to_string());
        }
    }));
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let t = Tensor::<B, 1>::from_data(TensorData::new(vec![1.0f32, 2.0], [2]), device);
        (t.clone() + t)
            .into_data()
            .iter::<f64>()
            .collect::<Vec<f64>>()
    }));
    std::panic::set_hook(hook);
    let cause = first.lock().unwrap_or_else(|e| e.into_inner()).take();
    match out {
        Ok(v) if v == [2.0, 4.0] => Ok(()),
        Ok(v) => Err(unusable(kind, &format!("1 + 1 gave {v:?}"))),
        Err(_) => Err(unusable(kind, cause.as_deref().unwrap_or("panic"))),
    }
}

/// `dispatch!(kind, |B, device| expr)` runs `expr` with `B` the autodiff backend type and
/// `device` its default device; evaluates to `Result<expr's type>`. The device is probed first
/// ([`probe`]), so a missing driver is an error, not a panic inside `expr`.
macro_rules! dispatch {
    ($kind:expr, |$b:ident, $dev:ident| $body:expr) => {{
        #[allow(unreachable_patterns)]
        match $kind {
            #[cfg(feature = "flex")]
            $crate::backend::BackendKind::Flex => {
                type $b = burn::backend::Autodiff<burn::backend::Flex>;
                let $dev = burn::backend::flex::FlexDevice;
                match $crate::backend::probe::<$b>($kind, &$dev) {
                    Ok(()) => Ok($body),
                    Err(e) => Err(e),
                }
            }
            #[cfg(feature = "ndarray")]
            $crate::backend::BackendKind::Ndarray => {
                type $b = burn::backend::Autodiff<burn::backend::NdArray>;
                let $dev = burn::backend::ndarray::NdArrayDevice::default();
                match $crate::backend::probe::<$b>($kind, &$dev) {
                    Ok(()) => Ok($body),
                    Err(e) => Err(e),
                }
            }
            #[cfg(feature = "wgpu")]
            $crate::backend::BackendKind::Wgpu => {
                type $b = burn::backend::Autodiff<burn::backend::Wgpu>;
                let $dev = burn::backend::wgpu::WgpuDevice::default();
                match $crate::backend::probe::<$b>($kind, &$dev) {
                    Ok(()) => Ok($body),
                    Err(e) => Err(e),
                }
            }
            #[cfg(feature = "cuda")]
            $crate::backend::BackendKind::Cuda => {
                type $b = burn::backend::Autodiff<burn::backend::Cuda>;
                let $dev = burn::backend::cuda::CudaDevice::default();
                match $crate::backend::probe::<$b>($kind, &$dev) {
                    Ok(()) => Ok($body),
                    Err(e) => Err(e),
                }
            }
            #[cfg(feature = "tch")]
            $crate::backend::BackendKind::Tch => {
                type $b = burn::backend::Autodiff<burn::backend::LibTorch>;
                let $dev = burn::backend::libtorch::LibTorchDevice::Cpu;
                match $crate::backend::probe::<$b>($kind, &$dev) {
                    Ok(()) => Ok($body),
                    Err(e) => Err(e),
                }
            }
            other => Err($crate::backend::missing(other)),
        }
    }};
}
pub(crate) use dispatch;

/// Every backend with whether this binary has it and whether its device starts
/// (`balora backends`).
pub fn report() -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    for kind in [
        BackendKind::Flex,
        BackendKind::Ndarray,
        BackendKind::Wgpu,
        BackendKind::Cuda,
        BackendKind::Tch,
    ] {
        let status = match dispatch!(kind, |B, _device| ()) {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("{e:#}"),
        };
        let _ = writeln!(s, "{:<8} {status}", kind.to_string());
    }
    s
}
