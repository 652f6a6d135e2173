//! Host ↔ device helpers, the tolerance comparisons and the small LoRA layers the checks share.

use crate::reference::{self as r, M};
use balora_adapter::{LoraAdapter, LoraLinear};
use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};

/// The non-autodiff backend under `B`.
pub(crate) type I<B> = <B as AutodiffBackend>::InnerBackend;

/// Uploads a host matrix as an f32 tensor (row-major).
pub fn dev<B: Backend>(m: &M, device: &B::Device) -> Tensor<B, 2> {
    let v: Vec<f32> = r::row_major(m).iter().map(|&x| x as f32).collect();
    Tensor::from_data(TensorData::new(v, [m.nrows(), m.ncols()]), device)
}

pub(crate) fn dev1<B: Backend>(v: &[f64], device: &B::Device) -> Tensor<B, 1> {
    let v32: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    Tensor::from_data(TensorData::new(v32, [v.len()]), device)
}

/// Downloads a 2-D tensor to an f64 host matrix.
pub fn host<B: Backend>(t: Tensor<B, 2>) -> M {
    let [rows, cols] = t.dims();
    let v: Vec<f64> = t.into_data().iter::<f64>().collect();
    M::from_row_slice(rows, cols, &v)
}

pub(crate) fn host1<B: Backend>(t: Tensor<B, 1>) -> Vec<f64> {
    t.into_data().iter::<f64>().collect()
}

/// Worst `|got − want| / (bound·scale)` over the entries; ≤ 1 passes. An entry whose scale is 0
/// (every term of its computation is exactly 0) must come out exactly 0.
pub(crate) fn within(what: &str, got: &M, want: &M, scale: &M, bound: f64) -> Result<f64, String> {
    if got.shape() != want.shape() {
        return Err(format!(
            "{what}: shape {:?}, expected {:?}",
            got.shape(),
            want.shape()
        ));
    }
    if got.iter().any(|v| !v.is_finite()) {
        return Err(format!("{what}: non-finite values"));
    }
    let worst = got
        .iter()
        .zip(want.iter())
        .zip(scale.iter())
        .map(|((g, w), s)| (g - w).abs() / (bound * s + f64::MIN_POSITIVE))
        .fold(0.0, f64::max);
    if worst <= 1.0 {
        Ok(worst)
    } else {
        Err(format!(
            "{what}: worst |error| is {worst:.2}× its bound ({bound:.2e} × the |·| scale)"
        ))
    }
}

/// `‖got − want‖/‖want‖ ≤ tol`, returning the ratio to `tol`.
pub(crate) fn rel_within(what: &str, got: &M, want: &M, tol: f64) -> Result<f64, String> {
    if got.iter().any(|v| !v.is_finite()) {
        return Err(format!("{what}: non-finite values"));
    }
    let e = r::rel(got, want);
    if e <= tol {
        Ok(e / tol)
    } else {
        Err(format!(
            "{what}: relative error {e:.2e} exceeds tolerance {tol:.1e}"
        ))
    }
}

pub(crate) fn lora_layer<B: Backend>(
    w: &M,
    bias: Option<&[f64]>,
    a: &M,
    b: &M,
    s: f64,
    device: &B::Device,
) -> LoraLinear<B> {
    let base = Linear {
        weight: Param::from_tensor(dev::<B>(w, device)),
        bias: bias.map(|v| Param::from_tensor(dev1::<B>(v, device))),
    };
    let mut layer = LoraLinear::from_base(base);
    layer.adapter = Some(LoraAdapter::from_tensors(
        dev::<B>(a, device),
        dev::<B>(b, device),
        s,
        0.0,
    ));
    layer
}

pub(crate) fn adapter_of<B: Backend>(layer: &LoraLinear<B>) -> Result<&LoraAdapter<B>, String> {
    layer
        .adapter
        .as_ref()
        .ok_or_else(|| "the layer lost its adapter".to_string())
}
