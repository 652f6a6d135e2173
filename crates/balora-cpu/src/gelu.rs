//! GELU on burn-flex, forward and backward, element blocks spread over the cores:
//!
//! ```text
//! forward    y  = x·Φ(x) = ½·x·(1 + erf(x/√2))
//! backward   dx = dy·(Φ(x) + x·φ(x)),   φ(x) = exp(−x²/2)/√(2π)
//! ```
//!
//! burn-flex evaluates GELU on one thread with libm's scalar `erff` and `expf` (19 % of a MiniLM
//! training step). Here blocks of elements run on every core, and on CPUs with AVX2 + FMA the
//! loop is compiled for them with the closed forms of `crate::math` (erf ≤ 1.5e-7 absolute,
//! exp ≤ 2 ulp; what PyTorch's vectorised CPU kernels use too); elsewhere with libm
//! (bit-identical to burn-flex). Tests compare both with an f64 reference.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
use rayon::prelude::*;

use crate::linear::{cast, same};
use crate::math::{Closed, Libm, Normal};

type Ad = Autodiff<Flex>;

/// Elements per parallel block.
const BLOCK: usize = 1 << 14;

/// `gelu(x)` (exact, erf-based), or `Err(x)` when `x` is not an f32 burn-flex tensor.
#[allow(clippy::result_large_err)]
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Result<Tensor<B, D>, Tensor<B, D>> {
    match cast::<B, Ad, D>(x) {
        Ok(x) => {
            let p = x.clone().into_primitive().tensor();
            if p.primitive.dtype() != DType::F32 {
                return Err(same::<Ad, B, D>(x));
            }
            let input = p.primitive.to_contiguous();
            let y = forward(&input);
            let out = match GeluBackward
                .prepare::<NoCheckpointing>([p.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish(input, y),
                OpsKind::UnTracked(prep) => prep.finish(y),
            };
            Ok(same::<Ad, B, D>(Tensor::from_primitive(
                TensorPrimitive::Float(out),
            )))
        }
        Err(x) => {
            let x = cast::<B, Flex, D>(x)?;
            let p: FlexTensor = x.clone().into_primitive().tensor();
            if p.dtype() != DType::F32 {
                return Err(same::<Flex, B, D>(x));
            }
            let y = forward(&p.to_contiguous());
            Ok(same::<Flex, B, D>(Tensor::from_primitive(
                TensorPrimitive::Float(y),
            )))
        }
    }
}

/// `gelu` of a contiguous f32 tensor, blocks in parallel.
fn forward(x: &FlexTensor) -> FlexTensor {
    let src: &[f32] = x.storage();
    let mut out = vec![0f32; src.len()];
    out.par_chunks_mut(BLOCK)
        .zip(src.par_chunks(BLOCK))
        .for_each(|(o, i)| apply(i, None, o, false));
    FlexTensor::from_data(TensorData::new(out, x.layout().shape().clone()))
}

/// `gelu(x)` with `N`'s functions.
#[inline(always)]
pub(crate) fn gelu_of<N: Normal>(x: f32) -> f32 {
    0.5 * x * (1.0 + N::erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `gelu'(x)` with `N`'s functions.
#[inline(always)]
pub(crate) fn gelu_grad_of<N: Normal>(x: f32) -> f32 {
    let cdf = 0.5 * (1.0 + N::erf(x * std::f32::consts::FRAC_1_SQRT_2));
    let inv_sqrt_2pi = 0.398_942_3;
    cdf + x * inv_sqrt_2pi * N::exp(-0.5 * x * x)
}

/// `out[i] = f(x[i])` (forward) or `g[i]·f(x[i])` (backward), vectorised for AVX2 + FMA when
/// the CPU has them.
fn apply(x: &[f32], g: Option<&[f32]>, out: &mut [f32], grad: bool) {
    #[inline(always)]
    fn body<N: Normal>(x: &[f32], g: Option<&[f32]>, out: &mut [f32], grad: bool) {
        match (grad, g) {
            (false, _) => out
                .iter_mut()
                .zip(x)
                .for_each(|(o, &x)| *o = gelu_of::<N>(x)),
            (true, Some(g)) => {
                for ((o, &x), &g) in out.iter_mut().zip(x).zip(g) {
                    *o = g * gelu_grad_of::<N>(x);
                }
            }
            (true, None) => out
                .iter_mut()
                .zip(x)
                .for_each(|(o, &x)| *o = gelu_grad_of::<N>(x)),
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(x: &[f32], g: Option<&[f32]>, out: &mut [f32], grad: bool) {
            body::<Closed>(x, g, out, grad)
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the features were just detected.
            return unsafe { avx2(x, g, out, grad) };
        }
    }
    body::<Libm>(x, g, out, grad)
}

#[derive(Debug)]
struct GeluBackward;

impl Backward<Flex, 1> for GeluBackward {
    /// The input `x` (contiguous).
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<Flex>(&ops.node).to_contiguous();
        let [Some(parent)] = &ops.parents else {
            return;
        };
        let x: &[f32] = ops.state.storage();
        let g: &[f32] = dy.storage();
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(BLOCK)
            .zip(x.par_chunks(BLOCK).zip(g.par_chunks(BLOCK)))
            .for_each(|(o, (x, g))| apply(x, Some(g), o, true));
        let dx = FlexTensor::from_data(TensorData::new(dx, ops.state.layout().shape().clone()));
        grads.register::<Flex>(parent.id, dx);
    }
}
