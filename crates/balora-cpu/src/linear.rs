//! The CPU fast path of a frozen linear layer with an optional LoRA adapter, on burn-flex
//! (feature `flex`), forward and backward:
//!
//! ```text
//! forward    y  = x·W + b + s·(x·Aᵀ)·Bᵀ            (x [rows, in], W [in, out], A [r, in], B [out, r])
//! backward   dx = dy·Wᵀ + s·(dy·B)·A
//!            dA = s·(dy·B)ᵀ·x        dB = s·dyᵀ·(x·Aᵀ)
//! ```
//!
//! Why a fused op instead of burn's generic `linear`: with `rows` = batch × seq ≈ 128, the frozen
//! weight is the large operand of every product. burn-flex hands each product to one `gemm` call
//! whose packing of that weight runs on the calling thread before the parallel part, and
//! `dy·Wᵀ` reads `W` column-major, which the gemm crate's kernels handle at a third of their
//! row-major speed for deep products (measured on a 2-core Zen 5 with SmolLM2's shapes, 128
//! rows: 280–370 GFLOP/s row-major split over both cores, 64–195 GFLOP/s for `dy·Wᵀ` read
//! column-major, 180–290 GFLOP/s for one multi-threaded call). Here every large product is split by output columns over the cores (each thread packs
//! its own slice of the weight), and `dx` reads a row-major copy of `Wᵀ` made once per weight
//! ([`FrozenCache`]); the adapter's thin products ride along. No weight gradient is ever formed
//! for the frozen `W`.
//!
//! The path is taken only when it computes exactly what the generic one does: f32, a frozen
//! weight and bias, no adapter dropout; otherwise callers fall back to burn's ops. Tests compare
//! both paths and an f64 reference (`tests/linear.rs`).

pub(crate) use crate::qlinear::Frozen;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Shape, Tensor, TensorPrimitive};
use std::any::Any;
use std::sync::{Arc, Mutex};

pub(crate) type Ad = Autodiff<Flex>;
pub(crate) type AdPrim = <Ad as burn::tensor::backend::BackendTypes>::FloatTensorPrimitive;

/// A row-major copy of a frozen weight's transpose, made on first use by the CPU path and
/// remade when the weight changes. Cloning shares it.
///
/// It keeps a clone of the weight it was made from and serves the copy only for that same
/// storage with the same layout; holding the clone also stops burn-flex from updating the
/// weight in place (its copy-on-write writes into a buffer only while it is uniquely held).
#[derive(Clone, Debug, Default)]
pub struct FrozenCache(Arc<Mutex<Option<(FlexTensor, FlexTensor)>>>);

impl FrozenCache {
    /// `Wᵀ` of `w` (`[in, out]` → `[out, in]`, contiguous).
    fn transpose_of(&self, w: &FlexTensor) -> FlexTensor {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((src, t)) = slot.as_ref() {
            let (a, b) = (src.layout(), w.layout());
            if Arc::ptr_eq(&src.data_arc(), &w.data_arc())
                && a.shape() == b.shape()
                && a.strides() == b.strides()
                && a.start_offset() == b.start_offset()
                && src.dtype() == w.dtype()
            {
                return t.clone();
            }
        }
        let t = transpose(w);
        *slot = Some((w.clone(), t.clone()));
        t
    }
}

/// `wᵀ` of an f32 matrix, contiguous: 64×64 tiles, blocks of output rows spread over the cores
/// (a one-time copy per frozen weight; a strided element-by-element copy took ~0.5 s for
/// SmolLM2's 210 weights).
fn transpose(w: &FlexTensor) -> FlexTensor {
    use rayon::prelude::*;
    const T: usize = 64;
    let w = w.to_contiguous();
    let (rows, cols) = dims2(&w);
    let src: &[f32] = w.storage();
    let mut out = vec![0f32; rows * cols];
    if rows > 0 {
        out.par_chunks_mut(rows * T)
            .enumerate()
            .for_each(|(blk, dst)| {
                let (j0, nj) = (blk * T, dst.len() / rows);
                for i0 in (0..rows).step_by(T) {
                    for j in 0..nj {
                        let d = &mut dst[j * rows..(j + 1) * rows];
                        for i in i0..(i0 + T).min(rows) {
                            d[i] = src[i * cols + j0 + j];
                        }
                    }
                }
            });
    }
    flat(out, [cols, rows])
}

/// A tensor of backend `B` as a tensor of backend `T`, when they are the same type.
/// [`cast`] where the caller already knows both types are the same backend.
pub(crate) fn same<B: Backend, T: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<T, D> {
    match cast::<B, T, D>(t) {
        Ok(t) => t,
        Err(_) => unreachable!("checked to be the same backend"),
    }
}

pub(crate) fn cast<B: Backend, T: Backend, const D: usize>(
    t: Tensor<B, D>,
) -> Result<Tensor<T, D>, Tensor<B, D>> {
    let boxed: Box<dyn Any> = Box::new(t);
    match boxed.downcast::<Tensor<T, D>>() {
        Ok(t) => Ok(*t),
        Err(b) => Err(*b.downcast::<Tensor<B, D>>().expect("the value put in")),
    }
}

/// The CPU fast path of balora-adapter's `LoraLinear` forward for `x` `[rows, in]`, or `x`
/// back when it does not apply (another backend, another dtype, a trainable base weight).
#[allow(clippy::result_large_err)]
pub fn lora_linear<B: Backend>(
    x: Tensor<B, 2>,
    w: &Tensor<B, 2>,
    bias: Option<&Tensor<B, 1>>,
    adapter: Option<(&Tensor<B, 2>, &Tensor<B, 2>, f64)>,
    cache: &FrozenCache,
) -> Result<Tensor<B, 2>, Tensor<B, 2>> {
    let x = match cast::<B, Ad, 2>(x) {
        Ok(x) => x,
        Err(x) => return inner_forward(x, w, bias, adapter),
    };
    let w = same::<B, Ad, 2>(w.clone());
    let bias = bias.map(|b| same::<B, Ad, 1>(b.clone()));
    let adapter =
        adapter.map(|(a, b, s)| (same::<B, Ad, 2>(a.clone()), same::<B, Ad, 2>(b.clone()), s));
    let (xp, wp) = (prim(x.clone()), prim(w));
    let bp = bias.map(prim);
    if wp.is_tracked() || bp.as_ref().is_some_and(|b| b.is_tracked()) || !is_f32(&xp.primitive) {
        return Err(same::<Ad, B, 2>(x));
    }
    let wt = Frozen::Dense(cache.transpose_of(&wp.primitive));
    let out = autodiff_forward(
        xp,
        Frozen::Dense(wp.primitive),
        wt,
        bp.map(|b| b.primitive),
        adapter,
    );
    Ok(same::<Ad, B, 2>(Tensor::from_primitive(
        TensorPrimitive::Float(out),
    )))
}

/// The frozen product with an optional adapter on `Autodiff<Flex>` (`w` for the forward, `wt`
/// kept for the backward).
pub(crate) fn autodiff_forward(
    x: AdPrim,
    w: Frozen,
    wt: Frozen,
    bias: Option<FlexTensor>,
    adapter: Option<(Tensor<Ad, 2>, Tensor<Ad, 2>, f64)>,
) -> AdPrim {
    match adapter {
        None => frozen_autodiff(x, w, wt, bias),
        Some((a, b, s)) => lora_autodiff(x, w, wt, bias, prim(a), prim(b), s),
    }
}

/// A frozen `x·W` with `Wᵀ` given (`[out, in]` row-major), for weights that exist in both
/// layouts anyway (a tied LM head: the embedding is `Wᵀ`).
#[allow(clippy::result_large_err)]
pub fn frozen_linear<B: Backend>(
    x: Tensor<B, 2>,
    w: &Tensor<B, 2>,
    wt: &Tensor<B, 2>,
) -> Result<Tensor<B, 2>, Tensor<B, 2>> {
    let x = match cast::<B, Ad, 2>(x) {
        Ok(x) => x,
        Err(x) => {
            return match cast::<B, Flex, 2>(x) {
                Ok(x) => {
                    let w = Frozen::Dense(flex_prim(same::<B, Flex, 2>(w.clone())));
                    let y = forward_values(&flex_prim(x), &w, None, None);
                    Ok(same::<Flex, B, 2>(flex_tensor(y.0)))
                }
                Err(x) => Err(x),
            }
        }
    };
    let (xp, wp) = (prim(x.clone()), prim(same::<B, Ad, 2>(w.clone())));
    let wtp = prim(same::<B, Ad, 2>(wt.clone()));
    if wp.is_tracked() || wtp.is_tracked() || !is_f32(&xp.primitive) {
        return Err(same::<Ad, B, 2>(x));
    }
    let wt = Frozen::Dense(wtp.primitive.to_contiguous());
    let out = frozen_autodiff(xp, Frozen::Dense(wp.primitive), wt, None);
    Ok(same::<Ad, B, 2>(Tensor::from_primitive(
        TensorPrimitive::Float(out),
    )))
}

/// Forward on plain burn-flex (inference, evaluation): the same kernels, no graph.
#[allow(clippy::result_large_err)]
fn inner_forward<B: Backend>(
    x: Tensor<B, 2>,
    w: &Tensor<B, 2>,
    bias: Option<&Tensor<B, 1>>,
    adapter: Option<(&Tensor<B, 2>, &Tensor<B, 2>, f64)>,
) -> Result<Tensor<B, 2>, Tensor<B, 2>> {
    let x = cast::<B, Flex, 2>(x)?;
    let xp = flex_prim(x.clone());
    if !is_f32(&xp) {
        return Err(same::<Flex, B, 2>(x));
    }
    let f = |t: &Tensor<B, 2>| flex_prim(same::<B, Flex, 2>(t.clone()));
    let bias = bias.map(|b| same::<B, Flex, 1>(b.clone()).into_primitive().tensor());
    let ad = adapter.map(|(a, b, s)| (f(a), f(b), s));
    let y = forward_values(
        &xp,
        &Frozen::Dense(f(w)),
        bias.as_ref(),
        ad.as_ref().map(|(a, b, s)| (a, b, *s)),
    );
    Ok(same::<Flex, B, 2>(flex_tensor(y.0)))
}

pub(crate) fn prim<const D: usize>(t: Tensor<Ad, D>) -> AdPrim {
    t.into_primitive().tensor()
}

pub(crate) fn flex_prim<const D: usize>(t: Tensor<Flex, D>) -> FlexTensor {
    t.into_primitive().tensor()
}

pub(crate) fn flex_tensor<const D: usize>(t: FlexTensor) -> Tensor<Flex, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

pub(crate) fn is_f32(t: &FlexTensor) -> bool {
    t.dtype() == DType::F32
}

/// Values of the forward: `(y, x·Aᵀ)`.
pub(crate) fn forward_values(
    x: &FlexTensor,
    w: &Frozen,
    bias: Option<&FlexTensor>,
    adapter: Option<(&FlexTensor, &FlexTensor, f64)>,
) -> (FlexTensor, Option<FlexTensor>) {
    let x = x.to_contiguous();
    let (rows, din) = dims2(&x);
    let dout = match w {
        Frozen::Dense(w) => dims2(w).1,
        Frozen::Quant(q) => q.rows(),
    };
    let mut y = vec![0f32; rows * dout];
    if let Some(b) = bias {
        let b = b.to_contiguous();
        let b: &[f32] = b.storage();
        for row in y.chunks_exact_mut(dout) {
            row.copy_from_slice(&b[..dout]);
        }
    }
    let xs: &[f32] = x.storage();
    match w {
        Frozen::Dense(w) => crate::gemm::rows_times(
            rows,
            din,
            dout,
            xs,
            w.to_contiguous().storage(),
            &mut y,
            bias.is_some(),
            1.0,
        ),
        Frozen::Quant(q) => crate::qlinear::forward(rows, xs, q, &mut y, bias.is_some()),
    }
    let xa = adapter.map(|(a, b, s)| {
        let (a, b) = (a.to_contiguous(), b.to_contiguous());
        let r = dims2(&a).0;
        let mut xa = vec![0f32; rows * r];
        // x·Aᵀ: A is [r, in] row-major, so Aᵀ is read column-major (r is tiny).
        crate::gemm::small(
            rows,
            r,
            din,
            xs,
            (din, 1),
            a.storage(),
            (1, din),
            &mut xa,
            false,
            1.0,
        );
        // y += s·(x·Aᵀ)·Bᵀ.
        crate::gemm::small(
            rows,
            dout,
            r,
            &xa,
            (r, 1),
            b.storage(),
            (1, r),
            &mut y,
            true,
            s as f32,
        );
        flat(xa, [rows, r])
    });
    (flat(y, [rows, dout]), xa)
}

fn dims2(t: &FlexTensor) -> (usize, usize) {
    let s = t.layout().shape();
    (s[0], s[1])
}

fn flat<const D: usize>(v: Vec<f32>, shape: [usize; D]) -> FlexTensor {
    FlexTensor::from_data(burn::tensor::TensorData::new(v, Shape::new(shape)))
}

#[derive(Debug)]
struct FrozenBackward;

#[derive(Debug)]
struct LoraBackward;

impl Backward<Flex, 1> for FrozenBackward {
    /// `Wᵀ` (`[out, in]`, contiguous) or the blocks.
    type State = Frozen;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<Flex>(&ops.node).to_contiguous();
        if let [Some(x)] = &ops.parents {
            grads.register::<Flex>(x.id, dx_of(&dy, &ops.state, None));
        }
    }
}

/// `(x, x·Aᵀ, Wᵀ, A, B, s)`.
type LoraState = (FlexTensor, FlexTensor, Frozen, FlexTensor, FlexTensor, f64);

impl Backward<Flex, 3> for LoraBackward {
    type State = LoraState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<Flex>(&ops.node).to_contiguous();
        let (x, xa, wt, a, b, s) = ops.state;
        let (a, b) = (a.to_contiguous(), b.to_contiguous());
        let [px, pa, pb] = &ops.parents;
        let (rows, dout) = dims2(&dy);
        let (r, din) = dims2(&a);
        let dys: &[f32] = dy.storage();
        // g = dy·B  [rows, r]
        let mut g = vec![0f32; rows * r];
        crate::gemm::small(
            rows,
            r,
            dout,
            dys,
            (dout, 1),
            b.storage(),
            (r, 1),
            &mut g,
            false,
            1.0,
        );
        if let Some(px) = px {
            grads.register::<Flex>(px.id, dx_of(&dy, &wt, Some((&g, &a, s))));
        }
        if let Some(pa) = pa {
            // dA = s·gᵀ·x  [r, in]
            let x = x.to_contiguous();
            let mut da = vec![0f32; r * din];
            crate::gemm::small(
                r,
                din,
                rows,
                &g,
                (1, r),
                x.storage(),
                (din, 1),
                &mut da,
                false,
                s as f32,
            );
            grads.register::<Flex>(pa.id, flat(da, [r, din]));
        }
        if let Some(pb) = pb {
            // dB = s·dyᵀ·(x·Aᵀ)  [out, r]
            let xa = xa.to_contiguous();
            let mut db = vec![0f32; dout * r];
            crate::gemm::small(
                dout,
                r,
                rows,
                dys,
                (1, dout),
                xa.storage(),
                (r, 1),
                &mut db,
                false,
                s as f32,
            );
            grads.register::<Flex>(pb.id, flat(db, [dout, r]));
        }
    }
}

/// `dx = dy·Wᵀ (+ s·g·A)`.
fn dx_of(dy: &FlexTensor, wt: &Frozen, lora: Option<(&[f32], &FlexTensor, f64)>) -> FlexTensor {
    let (rows, dout) = dims2(dy);
    let din = match wt {
        Frozen::Dense(wt) => dims2(wt).1,
        Frozen::Quant(q) => q.cols(),
    };
    let mut dx = vec![0f32; rows * din];
    match wt {
        Frozen::Dense(wt) => crate::gemm::rows_times(
            rows,
            dout,
            din,
            dy.storage(),
            wt.storage(),
            &mut dx,
            false,
            1.0,
        ),
        Frozen::Quant(q) => crate::qlinear::dx(rows, dy.storage(), q, &mut dx),
    }
    if let Some((g, a, s)) = lora {
        let r = dims2(a).0;
        crate::gemm::small(
            rows,
            din,
            r,
            g,
            (r, 1),
            a.storage(),
            (din, 1),
            &mut dx,
            true,
            s as f32,
        );
    }
    flat(dx, [rows, din])
}

fn frozen_autodiff(x: AdPrim, w: Frozen, wt: Frozen, bias: Option<FlexTensor>) -> AdPrim {
    let (y, _) = forward_values(&x.primitive, &w, bias.as_ref(), None);
    match FrozenBackward
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(wt, y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    }
}

fn lora_autodiff(
    x: AdPrim,
    w: Frozen,
    wt: Frozen,
    bias: Option<FlexTensor>,
    a: AdPrim,
    b: AdPrim,
    s: f64,
) -> AdPrim {
    let (y, xa) = forward_values(
        &x.primitive,
        &w,
        bias.as_ref(),
        Some((&a.primitive, &b.primitive, s)),
    );
    let xa = xa.expect("adapter given");
    match LoraBackward
        .prepare::<NoCheckpointing>([x.node.clone(), a.node.clone(), b.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            (
                x.primitive.to_contiguous(),
                xa,
                wt,
                a.primitive,
                b.primitive,
                s,
            ),
            y,
        ),
        OpsKind::UnTracked(prep) => prep.finish(y),
    }
}
