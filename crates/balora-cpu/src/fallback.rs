//! The interface without the `flex` feature: every entry point hands its input back.

use burn::tensor::{backend::Backend, Tensor};

/// Unused without the `flex` feature.
#[derive(Clone, Debug, Default)]
pub struct FrozenCache;

/// Always `Err(x)`.
#[allow(clippy::result_large_err)]
pub fn lora_linear<B: Backend>(
    x: Tensor<B, 2>,
    _w: &Tensor<B, 2>,
    _bias: Option<&Tensor<B, 1>>,
    _adapter: Option<(&Tensor<B, 2>, &Tensor<B, 2>, f64)>,
    _cache: &FrozenCache,
) -> Result<Tensor<B, 2>, Tensor<B, 2>> {
    Err(x)
}

/// Always `Err(x)`.
#[allow(clippy::result_large_err)]
pub fn frozen_linear<B: Backend>(
    x: Tensor<B, 2>,
    _w: &Tensor<B, 2>,
    _wt: &Tensor<B, 2>,
) -> Result<Tensor<B, 2>, Tensor<B, 2>> {
    Err(x)
}

/// Always `Err(logits)`.
#[allow(clippy::result_large_err)]
pub fn token_nll_sum<B: Backend>(
    logits: Tensor<B, 2>,
    _targets: &[usize],
    _weights: &[f32],
) -> Result<Tensor<B, 1>, Tensor<B, 2>> {
    Err(logits)
}

/// Always `Err(x)`.
#[allow(clippy::result_large_err)]
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Result<Tensor<B, D>, Tensor<B, D>> {
    Err(x)
}

/// Always `Err((gate, up))`.
#[allow(clippy::result_large_err, clippy::type_complexity)]
pub fn swiglu<B: Backend, const D: usize>(
    gate: Tensor<B, D>,
    up: Tensor<B, D>,
) -> Result<Tensor<B, D>, (Tensor<B, D>, Tensor<B, D>)> {
    Err((gate, up))
}

/// Always `Err(x)`: a quantized base needs burn-flex.
#[allow(clippy::result_large_err)]
pub fn quant_lora_linear<B: Backend>(
    x: Tensor<B, 2>,
    _w: &crate::QuantMatrix,
    _bias: Option<&Tensor<B, 1>>,
    _adapter: Option<(&Tensor<B, 2>, &Tensor<B, 2>, f64)>,
) -> Result<Tensor<B, 2>, Tensor<B, 2>> {
    Err(x)
}

/// Always `false` without the `flex` feature.
pub fn is_flex<B: Backend>() -> bool {
    false
}
