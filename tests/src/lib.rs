//! Cross-backend conformance suite for balora.
//!
//! The same generic checks ([`checks`]) run on every burn backend compiled in (ndarray and flex always;
//! wgpu, cuda, tch behind cargo features of the same names), each compared with an f64 reference
//! computed on the host ([`reference`](mod@reference), written from the math, not calling the code under test).
//! Tolerances come from a per-backend floating-point model ([`Precision`]) and are justified
//! where each check states them.
//!
//! Run it as `cargo xtask conformance --backend ndarray,wgpu` (matrix + JSON), directly as
//! `cargo run -p balora-conformance --features wgpu -- --backend wgpu`, or, for ndarray only,
//! through `cargo test -p balora-conformance`.

pub mod checks;
pub mod reference;

// Every plugin under plugins/ (optimizers and manifolds), so that the per-registered-plugin
// checks run each of them on every backend.
extern crate balora_plugins;

use serde::Serialize;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

/// A backend the suite knows about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// burn-ndarray (CPU), the reference backend, always compiled.
    Ndarray,
    /// burn-flex (CPU; gemm-crate matmuls), balora's default CPU backend, always compiled.
    Flex,
    /// burn-wgpu (Vulkan/Metal/DX12, or CPU through Mesa's lavapipe). Feature `wgpu`.
    Wgpu,
    /// burn-cuda. Feature `cuda`.
    Cuda,
    /// burn-tch (LibTorch, CPU device). Feature `tch`.
    Tch,
}

impl BackendKind {
    /// All backends, in matrix order.
    pub const ALL: [BackendKind; 5] =
        [Self::Ndarray, Self::Flex, Self::Wgpu, Self::Cuda, Self::Tch];

    /// Lower-case name (also the cargo feature).
    pub fn name(self) -> &'static str {
        match self {
            Self::Ndarray => "ndarray",
            Self::Flex => "flex",
            Self::Wgpu => "wgpu",
            Self::Cuda => "cuda",
            Self::Tch => "tch",
        }
    }

    /// Parses a lower-case name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == s.trim())
    }

    /// Whether this binary was built with the backend.
    pub fn compiled_in(self) -> bool {
        match self {
            Self::Ndarray | Self::Flex => true,
            Self::Wgpu => cfg!(feature = "wgpu"),
            Self::Cuda => cfg!(feature = "cuda"),
            Self::Tch => cfg!(feature = "tch"),
        }
    }

    /// The floating-point model the checks' tolerances are derived from.
    pub fn precision(self) -> Precision {
        const U: f64 = 1.0 / 16_777_216.0; // 2^-24, unit roundoff of f32
        match self {
            // IEEE-754 f32 arithmetic on the CPU: +, −, ×, ÷, √ correctly rounded (error ≤ u);
            // matmuls (matrixmultiply / gemm / MKL / OpenBLAS sgemm) accumulate in f32.
            Self::Ndarray | Self::Flex | Self::Tch => Precision {
                dtype: "f32",
                u: U,
                u_in: 0.0,
                op_u: 1.0,
            },
            // WGSL allows 2.5 ULP for f32 division and sqrt is specified through inverseSqrt
            // (2 ULP) — ≤ 5u per such op; matmuls accumulate in f32 (no reduced-precision inputs).
            Self::Wgpu => Precision {
                dtype: "f32",
                u: U,
                u_in: 0.0,
                op_u: 5.0,
            },
            // cubecl may route f32 matmuls through TF32 tensor cores (inputs rounded to 10-bit
            // mantissas, u_in = 2^-11, accumulation in f32) on sm_80+; fast-math division and
            // sqrt are ≤ 2 ULP.
            Self::Cuda => Precision {
                dtype: "f32 (TF32 matmul inputs allowed)",
                u: U,
                u_in: 1.0 / 2048.0,
                op_u: 5.0,
            },
        }
    }
}

/// Floating-point model of a backend, from which each check derives its tolerance.
///
/// A dot product of depth K computed in floating point (any summation order, with or without
/// FMA) has error ≤ γ_K·Σ|aᵢbᵢ| with γ_K ≈ K·u (Higham, *Accuracy and Stability of Numerical
/// Algorithms*, §3.1); inputs rounded before the multiply (TF32) add 2·u_in per matmul stage.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Precision {
    /// Element type the checks run in.
    pub dtype: &'static str,
    /// Unit roundoff of storage and accumulation.
    pub u: f64,
    /// Extra relative rounding of matmul inputs (0 unless the backend uses reduced-precision
    /// matmul inputs).
    pub u_in: f64,
    /// Error of one element-wise ÷ or √, in units of `u`.
    pub op_u: f64,
}

impl Precision {
    /// Relative (to the absolute-value computation) error bound of a chain of matmuls of total
    /// depth `depth` over `stages` matmul stages; the factor 2 covers γ_K's denominator and the
    /// few scalar multiplies/adds around the products.
    pub fn matmul_bound(&self, depth: usize, stages: usize) -> f64 {
        2.0 * (depth as f64 * self.u + 2.0 * stages as f64 * self.u_in)
    }

    /// Relative error bound of `ops` element-wise operations (each ≤ `op_u`·u), factor 2 margin.
    pub fn elementwise_bound(&self, ops: usize) -> f64 {
        2.0 * ops as f64 * self.op_u * self.u
    }
}

/// Outcome of one check.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", content = "detail", rename_all = "lowercase")]
pub enum Status {
    /// Within tolerance; the detail says by how much.
    Pass(String),
    /// Out of tolerance, an error, or a panic.
    Fail(String),
    /// Not run; the reason (never counts as a pass).
    Skip(String),
}

/// One row of a backend's report.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    /// Check name (matrix row).
    pub check: String,
    /// Outcome.
    #[serde(flatten)]
    pub status: Status,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// All checks of one backend.
#[derive(Debug, Clone, Serialize)]
pub struct BackendReport {
    /// Backend.
    pub backend: BackendKind,
    /// Floating-point model used for tolerances.
    pub precision: Precision,
    /// Results in check order.
    pub checks: Vec<CheckResult>,
}

/// How to get a backend that is not compiled into this binary.
pub fn not_compiled_reason(kind: BackendKind) -> String {
    match kind {
        BackendKind::Tch => "not compiled in: run `cargo xtask setup tch`, then \
            `cargo xtask conformance --backend tch`"
            .into(),
        k => format!(
            "not compiled in: build with `--features {0}` (`cargo xtask conformance --backend {0}`)",
            k.name()
        ),
    }
}

/// Runs `f`, turning a panic into `Err(message at file:line)`; `quiet` suppresses the default
/// panic printout. A backend may panic on one of its worker threads first (the calling thread
/// then only sees a closed channel), so the first panic of any thread is the one reported.
pub fn catch<T>(quiet: bool, f: impl FnOnce() -> T) -> Result<T, String> {
    use std::sync::{Arc, Mutex};
    let first: Arc<Mutex<Option<String>>> = Arc::default();
    let seen = first.clone();
    let prev = Arc::new(std::panic::take_hook());
    let chained = prev.clone();
    std::panic::set_hook(Box::new(move |info| {
        {
            let mut slot = seen.lock().unwrap_or_else(|e| e.into_inner());
            if slot.is_none() {
                let msg = info
                    .payload_as_str()
                    .unwrap_or("panic with a non-string payload");
                *slot = Some(match info.location() {
                    Some(l) => format!("{msg} (at {l})"),
                    None => msg.to_string(),
                });
            }
        }
        if !quiet {
            chained(info);
        }
    }));
    let out = catch_unwind(AssertUnwindSafe(f));
    let _ = std::panic::take_hook();
    match Arc::try_unwrap(prev) {
        Ok(p) => std::panic::set_hook(p),
        Err(shared) => std::panic::set_hook(Box::new(move |info| shared(info))),
    }
    let recorded = first.lock().unwrap_or_else(|e| e.into_inner()).take();
    out.map_err(|_| recorded.unwrap_or_else(|| "panic".into()))
}

/// The names of every check, in order (the matrix rows).
pub fn check_names() -> Vec<String> {
    checks::names()
}

/// Runs the checks whose names contain `filter` (all when `None`) on `kind`.
pub fn run_backend(kind: BackendKind, filter: Option<&str>) -> BackendReport {
    let names: Vec<String> = check_names()
        .into_iter()
        .filter(|n| filter.is_none_or(|f| n.contains(f)))
        .collect();
    let skip_all = |reason: String| BackendReport {
        backend: kind,
        precision: kind.precision(),
        checks: names
            .iter()
            .map(|n| CheckResult {
                check: n.clone(),
                status: Status::Skip(reason.clone()),
                seconds: 0.0,
            })
            .collect(),
    };
    macro_rules! on {
        ($ty:ty, $dev:expr) => {{
            type B = burn::backend::Autodiff<$ty>;
            let device = $dev;
            if let Err(why) = checks::probe::<B>(&device) {
                return skip_all(format!("no usable device: {why}"));
            }
            let ctx = checks::Ctx::<B> {
                device,
                precision: kind.precision(),
                kind,
            };
            let mut out = Vec::new();
            for (name, f) in checks::all::<B>() {
                if !names.contains(&name) {
                    continue;
                }
                let start = Instant::now();
                let status = match catch(true, || f(&ctx)) {
                    Ok(Ok(detail)) => Status::Pass(detail),
                    Ok(Err(why)) => Status::Fail(why),
                    Err(panic) => Status::Fail(format!("panicked: {panic}")),
                };
                out.push(CheckResult {
                    check: name,
                    status,
                    seconds: start.elapsed().as_secs_f64(),
                });
            }
            BackendReport {
                backend: kind,
                precision: kind.precision(),
                checks: out,
            }
        }};
    }
    match kind {
        BackendKind::Ndarray => on!(
            burn::backend::NdArray,
            burn::backend::ndarray::NdArrayDevice::default()
        ),
        BackendKind::Flex => on!(burn::backend::Flex, burn::backend::flex::FlexDevice),
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => on!(
            burn::backend::Wgpu,
            burn::backend::wgpu::WgpuDevice::default()
        ),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => on!(
            burn::backend::Cuda,
            burn::backend::cuda::CudaDevice::default()
        ),
        #[cfg(feature = "tch")]
        BackendKind::Tch => on!(
            burn::backend::LibTorch,
            burn::backend::libtorch::LibTorchDevice::Cpu
        ),
        #[allow(unreachable_patterns)]
        other => skip_all(not_compiled_reason(other)),
    }
}
