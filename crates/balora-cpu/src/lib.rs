//! CPU fast paths for balora on burn-flex, behind a small interface.
//!
//! burn runs one generic code path for every backend; on the CPU a few patterns of fine-tuning
//! a frozen model dominate the time and burn's op-by-op execution leaves most of the machine
//! idle there. Each entry point here takes burn tensors of any backend `B`, runs a fused kernel
//! when `B` is burn-flex (`Flex` or `Autodiff<Flex>`, f32) and returns `Err(input)` otherwise,
//! so the caller runs its generic code unchanged:
//!
//! * [`lora_linear`] / [`frozen_linear`] — a frozen linear layer with an optional LoRA pair,
//!   forward and backward (no gradient for the frozen weight; large products split over the
//!   cores; `dy·Wᵀ` from a row-major copy of `Wᵀ` kept in a [`FrozenCache`]).
//! * [`token_nll_sum`] — the summed, weighted next-token cross-entropy and its gradient in one
//!   pass over the logits, rows spread over the cores.
//! * [`gelu`] — exact (erf) GELU and its gradient, element blocks spread over the cores.
//! * [`swiglu`] — `silu(gate)·up` and both gradients in one pass each.
//! * [`quant_lora_linear`] — the frozen linear layer with its weight kept as ggml blocks
//!   ([`QuantMatrix`]: `Q8_0`, `Q4_0`, `Q4_1`), dequantised tile by tile inside each product.
//!
//! Without the `flex` feature every entry point returns `Err(input)`.
//!
//! ```
//! use burn::backend::NdArray;
//! use burn::tensor::Tensor;
//!
//! // Not burn-flex: the input comes back and the caller uses burn's ops.
//! let dev = Default::default();
//! let x = Tensor::<NdArray, 2>::ones([2, 3], &dev);
//! let w = Tensor::<NdArray, 2>::ones([3, 4], &dev);
//! let wt = w.clone().transpose();
//! assert!(balora_cpu::frozen_linear(x, &w, &wt).is_err());
//! ```

#[cfg(feature = "flex")]
mod gelu;
#[cfg(feature = "flex")]
mod gemm;
#[cfg(feature = "flex")]
mod linear;
#[cfg(feature = "flex")]
mod math;
pub mod qblocks;
#[cfg(feature = "flex")]
mod qlinear;
#[cfg(feature = "flex")]
mod swiglu;
#[cfg(feature = "flex")]
mod xent;

#[cfg(feature = "flex")]
pub use gelu::gelu;
#[cfg(feature = "flex")]
pub use linear::{frozen_linear, lora_linear, FrozenCache};
#[cfg(feature = "flex")]
pub use qlinear::{is_flex, quant_lora_linear};
#[cfg(feature = "flex")]
pub use swiglu::swiglu;
#[cfg(feature = "flex")]
pub use xent::token_nll_sum;

#[cfg(not(feature = "flex"))]
mod fallback;
#[cfg(not(feature = "flex"))]
pub use fallback::{
    frozen_linear, gelu, is_flex, lora_linear, quant_lora_linear, swiglu, token_nll_sum,
    FrozenCache,
};
pub use qblocks::{QuantKind, QuantMatrix};
