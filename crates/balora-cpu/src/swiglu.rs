//! SwiGLU's gate on burn-flex, forward and backward in one pass each, element blocks on every
//! core:
//!
//! ```text
//! forward    y  = silu(g)·u = g·σ(g)·u
//! backward   dg = dy·u·σ(g)·(1 + g·(1 − σ(g)))      du = dy·g·σ(g)
//! ```
//!
//! burn runs `silu(g) * u` as sigmoid, two products and their backwards: five passes over the
//! `[rows, intermediate]` activations on one thread, with libm's scalar `expf`. The exponential
//! here is the closed form of `crate::math` (≤ 2 ulp, vectorised for AVX2 + FMA).

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

const BLOCK: usize = 1 << 14;

/// `silu(gate) · up` for same-shaped `gate` and `up`, or both back when they are not f32
/// burn-flex tensors of one shape.
#[allow(clippy::result_large_err, clippy::type_complexity)]
pub fn swiglu<B: Backend, const D: usize>(
    gate: Tensor<B, D>,
    up: Tensor<B, D>,
) -> Result<Tensor<B, D>, (Tensor<B, D>, Tensor<B, D>)> {
    if gate.dims() != up.dims() {
        return Err((gate, up));
    }
    let (g, u) = match (cast::<B, Ad, D>(gate), cast::<B, Ad, D>(up)) {
        (Ok(g), Ok(u)) => (g, u),
        (g, u) => {
            let back =
                |t: Result<Tensor<Ad, D>, Tensor<B, D>>| t.map_or_else(|t| t, same::<Ad, B, D>);
            let (g, u) = (back(g), back(u));
            return inner(g, u);
        }
    };
    let (gp, up_) = (
        g.clone().into_primitive().tensor(),
        u.clone().into_primitive().tensor(),
    );
    if gp.primitive.dtype() != DType::F32 || up_.primitive.dtype() != DType::F32 {
        return Err((same::<Ad, B, D>(g), same::<Ad, B, D>(u)));
    }
    let (gc, uc) = (gp.primitive.to_contiguous(), up_.primitive.to_contiguous());
    let y = forward(&gc, &uc);
    let out = match SwigluBackward
        .prepare::<NoCheckpointing>([gp.node.clone(), up_.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((gc, uc), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Ok(same::<Ad, B, D>(Tensor::from_primitive(
        TensorPrimitive::Float(out),
    )))
}

/// Plain burn-flex (inference).
#[allow(clippy::result_large_err, clippy::type_complexity)]
fn inner<B: Backend, const D: usize>(
    g: Tensor<B, D>,
    u: Tensor<B, D>,
) -> Result<Tensor<B, D>, (Tensor<B, D>, Tensor<B, D>)> {
    let (g, u) = match (cast::<B, Flex, D>(g), cast::<B, Flex, D>(u)) {
        (Ok(g), Ok(u)) => (g, u),
        (g, u) => {
            let back =
                |t: Result<Tensor<Flex, D>, Tensor<B, D>>| t.map_or_else(|t| t, same::<Flex, B, D>);
            return Err((back(g), back(u)));
        }
    };
    let (gp, up): (FlexTensor, FlexTensor) = (
        g.clone().into_primitive().tensor(),
        u.clone().into_primitive().tensor(),
    );
    if gp.dtype() != DType::F32 || up.dtype() != DType::F32 {
        return Err((same::<Flex, B, D>(g), same::<Flex, B, D>(u)));
    }
    let y = forward(&gp.to_contiguous(), &up.to_contiguous());
    Ok(same::<Flex, B, D>(Tensor::from_primitive(
        TensorPrimitive::Float(y),
    )))
}

#[inline(always)]
fn sigmoid<N: Normal>(g: f32) -> f32 {
    1.0 / (1.0 + N::exp(-g))
}

/// `y = silu(g)·u` (`grad` off) or `(dg, du)` from `dy` (`grad` on), vectorised for AVX2 + FMA
/// when the CPU has them.
fn apply(g: &[f32], u: &[f32], dy: Option<&[f32]>, out: &mut [f32], out2: &mut [f32]) {
    #[inline(always)]
    fn body<N: Normal>(
        g: &[f32],
        u: &[f32],
        dy: Option<&[f32]>,
        out: &mut [f32],
        out2: &mut [f32],
    ) {
        match dy {
            None => {
                for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
                    *o = g * sigmoid::<N>(g) * u;
                }
            }
            Some(dy) => {
                for i in 0..out
                    .len()
                    .min(g.len())
                    .min(u.len())
                    .min(dy.len())
                    .min(out2.len())
                {
                    let (g, u, d) = (g[i], u[i], dy[i]);
                    let s = sigmoid::<N>(g);
                    out[i] = d * u * s * (1.0 + g * (1.0 - s));
                    out2[i] = d * g * s;
                }
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(
            g: &[f32],
            u: &[f32],
            dy: Option<&[f32]>,
            out: &mut [f32],
            out2: &mut [f32],
        ) {
            body::<Closed>(g, u, dy, out, out2)
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the features were just detected.
            return unsafe { avx2(g, u, dy, out, out2) };
        }
    }
    body::<Libm>(g, u, dy, out, out2)
}

fn forward(g: &FlexTensor, u: &FlexTensor) -> FlexTensor {
    let (gs, us): (&[f32], &[f32]) = (g.storage(), u.storage());
    let mut y = vec![0f32; gs.len()];
    y.par_chunks_mut(BLOCK)
        .zip(gs.par_chunks(BLOCK).zip(us.par_chunks(BLOCK)))
        .for_each(|(o, (g, u))| apply(g, u, None, o, &mut []));
    FlexTensor::from_data(TensorData::new(y, g.layout().shape().clone()))
}

#[derive(Debug)]
struct SwigluBackward;

impl Backward<Flex, 2> for SwigluBackward {
    /// `(gate, up)`, contiguous.
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<Flex>(&ops.node).to_contiguous();
        let (g, u) = &ops.state;
        let (gs, us, ds): (&[f32], &[f32], &[f32]) = (g.storage(), u.storage(), dy.storage());
        let mut dg = vec![0f32; gs.len()];
        let mut du = vec![0f32; gs.len()];
        dg.par_chunks_mut(BLOCK)
            .zip(du.par_chunks_mut(BLOCK))
            .zip(
                gs.par_chunks(BLOCK)
                    .zip(us.par_chunks(BLOCK))
                    .zip(ds.par_chunks(BLOCK)),
            )
            .for_each(|((a, b), ((g, u), d))| apply(g, u, Some(d), a, b));
        let shape = g.layout().shape().clone();
        let [pg, pu] = &ops.parents;
        if let Some(p) = pg {
            grads.register::<Flex>(
                p.id,
                FlexTensor::from_data(TensorData::new(dg, shape.clone())),
            );
        }
        if let Some(p) = pu {
            grads.register::<Flex>(p.id, FlexTensor::from_data(TensorData::new(du, shape)));
        }
    }
}
