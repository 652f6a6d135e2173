//! The two products of a frozen linear layer whose weight is kept as quantization blocks
//! ([`QuantMatrix`], `W` `[out, in]`), dequantised tile by tile into a per-thread f32 buffer
//! and multiplied with the `gemm` crate's kernels:
//!
//! ```text
//! forward   y  (+)= x·Wᵀ     tiles of TILE_OUT rows of W, dequantised transposed ([in, t]),
//!                            one tile a task: tasks write disjoint column ranges of y
//! backward  dx   = dy·W      column ranges of dx a task; each runs over W's rows in tiles of
//!                            TILE_OUT, dequantising W[rows, its columns] row-major
//! ```
//!
//! No f32 copy of `W` outlives a product: a layer holds its blocks only, and each product reads
//! every block once per call (the dequantisation is `O(in·out)` against the product's
//! `O(rows·in·out)`). The values multiplied are exactly the dequantised weights, so the layer
//! computes what an f32 layer holding `dequantize(W)` computes up to the order of the sums.

use crate::linear::{
    autodiff_forward, cast, flex_prim, flex_tensor, forward_values, is_f32, prim, same, Ad,
};
use crate::qblocks::{QuantMatrix, QK};
use burn::backend::Flex;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};
use gemm::Parallelism;
use rayon::prelude::*;

/// A frozen weight as the kernels read it: f32 (`W` `[in, out]` in the forward, its row-major
/// transpose in the backward's state) or quantization blocks (`[out, in]`, both directions).
#[derive(Clone, Debug)]
pub(crate) enum Frozen {
    Dense(burn::backend::flex::FlexTensor),
    Quant(QuantMatrix),
}

/// Rows of `W` dequantised at a time.
const TILE_OUT: usize = 64;

/// `dst[m×n] (+)= lhs[m×k] · rhs[k×n]` with row strides and unit column strides.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_rows(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: *const f32,
    lhs_rs: usize,
    rhs: *const f32,
    rhs_rs: usize,
) {
    // SAFETY: the caller bounds every index by its strides.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs,
            1,
            lhs_rs as isize,
            rhs,
            1,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

/// `y[rows×out] = (accumulate ? y : 0) + x[rows×in] · Wᵀ`.
pub(crate) fn forward(rows: usize, x: &[f32], w: &QuantMatrix, y: &mut [f32], accumulate: bool) {
    let (dout, din) = (w.rows(), w.cols());
    assert!(x.len() >= rows * din && y.len() >= rows * dout);
    if rows == 0 {
        return;
    }
    let (xp, yp) = (x.as_ptr() as usize, y.as_mut_ptr() as usize);
    (0..dout.div_ceil(TILE_OUT)).into_par_iter().for_each(|t| {
        let (o0, o1) = (t * TILE_OUT, ((t + 1) * TILE_OUT).min(dout));
        let nt = o1 - o0;
        let mut buf = vec![0f32; din * nt];
        w.dequantize_tile((o0, o1), (0, din), &mut buf, true);
        // SAFETY: x is [rows, din] and y [rows, dout] (asserted); this task writes y's columns
        // o0..o1 only, which no other task touches.
        unsafe {
            gemm_rows(
                rows,
                nt,
                din,
                (yp as *mut f32).add(o0),
                dout,
                accumulate,
                xp as *const f32,
                din,
                buf.as_ptr(),
                nt,
            );
        }
    });
}

/// `dx[rows×in] = dy[rows×out] · W`.
pub(crate) fn dx(rows: usize, dy: &[f32], w: &QuantMatrix, dx: &mut [f32]) {
    let (dout, din) = (w.rows(), w.cols());
    assert!(dy.len() >= rows * dout && dx.len() >= rows * din);
    if rows == 0 {
        return;
    }
    let threads = rayon::current_num_threads().max(1);
    // Column ranges of whole blocks, about two a thread.
    let per = din.div_ceil(2 * threads).next_multiple_of(QK).max(2 * QK);
    let (dyp, dxp) = (dy.as_ptr() as usize, dx.as_mut_ptr() as usize);
    (0..din.div_ceil(per)).into_par_iter().for_each(|c| {
        let (c0, c1) = (c * per, ((c + 1) * per).min(din));
        let nc = c1 - c0;
        let mut buf = vec![0f32; TILE_OUT * nc];
        for o0 in (0..dout).step_by(TILE_OUT) {
            let o1 = (o0 + TILE_OUT).min(dout);
            w.dequantize_tile((o0, o1), (c0, c1), &mut buf, false);
            // SAFETY: dy is [rows, dout], dx [rows, din] (asserted); this task writes dx's
            // columns c0..c1 only.
            unsafe {
                gemm_rows(
                    rows,
                    nc,
                    o1 - o0,
                    (dxp as *mut f32).add(c0),
                    din,
                    o0 > 0,
                    (dyp as *const f32).add(o0),
                    dout,
                    buf.as_ptr(),
                    nc,
                );
            }
        }
    });
}

/// balora-adapter's `LoraLinear` forward for a base kept as blocks, on burn-flex (`Flex` or
/// `Autodiff<Flex>`, f32 `x` `[rows, in]`): `x·Wᵀ + b + s·(x·Aᵀ)·Bᵀ` with `W` = `w`
/// dequantised, and in the backward `dx = dy·W + s·(dy·B)·A`, `dA`, `dB` (no gradient for the
/// frozen `W` or bias). `Err(x)` on any other backend or dtype: a quantized base needs burn-flex.
#[allow(clippy::result_large_err)]
pub fn quant_lora_linear<B: Backend>(
    x: Tensor<B, 2>,
    w: &QuantMatrix,
    bias: Option<&Tensor<B, 1>>,
    adapter: Option<(&Tensor<B, 2>, &Tensor<B, 2>, f64)>,
) -> Result<Tensor<B, 2>, Tensor<B, 2>> {
    let frozen = Frozen::Quant(w.clone());
    let x = match cast::<B, Ad, 2>(x) {
        Ok(x) => x,
        Err(x) => {
            let x = cast::<B, Flex, 2>(x)?;
            let xp = flex_prim(x.clone());
            if !is_f32(&xp) || xp.layout().shape()[1] != w.cols() {
                return Err(same::<Flex, B, 2>(x));
            }
            let f = |t: &Tensor<B, 2>| flex_prim(same::<B, Flex, 2>(t.clone()));
            let bias = bias.map(|b| same::<B, Flex, 1>(b.clone()).into_primitive().tensor());
            let ad = adapter.map(|(a, b, s)| (f(a), f(b), s));
            let ad = ad.as_ref().map(|(a, b, s)| (a, b, *s));
            let y = forward_values(&xp, &frozen, bias.as_ref(), ad);
            return Ok(same::<Flex, B, 2>(flex_tensor(y.0)));
        }
    };
    let xp = prim(x.clone());
    let bp = bias.map(|b| prim(same::<B, Ad, 1>(b.clone())));
    if bp.as_ref().is_some_and(|b| b.is_tracked())
        || !is_f32(&xp.primitive)
        || xp.primitive.layout().shape()[1] != w.cols()
    {
        return Err(same::<Ad, B, 2>(x));
    }
    let adapter =
        adapter.map(|(a, b, s)| (same::<B, Ad, 2>(a.clone()), same::<B, Ad, 2>(b.clone()), s));
    let out = autodiff_forward(xp, frozen.clone(), frozen, bp.map(|b| b.primitive), adapter);
    Ok(same::<Ad, B, 2>(Tensor::from_primitive(
        TensorPrimitive::Float(out),
    )))
}

/// Whether `B` is burn-flex (`Flex` or `Autodiff<Flex>`): the backends a quantized base runs on.
pub fn is_flex<B: Backend>() -> bool {
    use std::any::TypeId;
    let b = TypeId::of::<B>();
    b == TypeId::of::<Flex>() || b == TypeId::of::<Ad>()
}
