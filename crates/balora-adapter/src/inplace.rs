//! The hook's two thin products on factors that already live in host memory (burn-ndarray).
//!
//! On burn-ndarray the "device" is the host, so the generic tensor-op path of the hook pays for
//! copies that buy nothing: burn-ndarray copies every transposed operand into row-major order
//! before a matmul, and the Grams and the updates of one adapter are separate passes over RAM.
//! Here each adapter is handled in one go on a strided view of the factor it already holds:
//! `G_A = A·Aᵀ`, `G_B = Bᵀ·B` (ndarray GEMM on the views, no copy), the manifold's r×r decision,
//! then `A' = Q·A`, `B' = B·P` while the factors are still in cache — adapters in parallel.
//!
//! The math is the same as on every other backend (Grams in, r×r transform out, two thin
//! products); only where the products run differs. Factors held by any other backend (or
//! inside an autodiff wrapper: strip it with `AutodiffModule::valid` first) return `None` from
//! [`HostPair::of`] and take the tensor-op path.

use crate::params::PairSlot;
use balora_manifold::{DMatrix, GaugeTransform, PairGrams};
use burn::tensor::{backend::Backend, TensorData, TensorPrimitive};
use burn_ndarray::NdArrayTensor;
use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView2, Axis, Ix2, LinalgScalar};
use std::any::Any;

/// Both factors of one adapter as burn-ndarray storage (cheap reference-counted clones).
pub(crate) struct HostPair {
    a: NdArrayTensor,
    b: NdArrayTensor,
}

impl HostPair {
    /// The pair's burn-ndarray storage, or `None` when `B` keeps tensors elsewhere.
    pub(crate) fn of<B: Backend>(pair: &PairSlot<B>) -> Option<Self> {
        fn storage<B: Backend>(t: &burn::tensor::Tensor<B, 2>) -> Option<NdArrayTensor> {
            match t.clone().into_primitive() {
                TensorPrimitive::Float(p) => {
                    (&p as &dyn Any).downcast_ref::<NdArrayTensor>().cloned()
                }
                TensorPrimitive::QFloat(_) => None,
            }
        }
        let pair = Self {
            a: storage(&pair.a)?,
            b: storage(&pair.b)?,
        };
        // Only float factors of one element type take this path.
        matches!(
            (&pair.a, &pair.b),
            (NdArrayTensor::F32(_), NdArrayTensor::F32(_))
                | (NdArrayTensor::F64(_), NdArrayTensor::F64(_))
        )
        .then_some(pair)
    }

    /// `(A·Aᵀ, Bᵀ·B)` in f64, products in the factors' precision (as on the device).
    pub(crate) fn grams(&self) -> PairGrams {
        let (aat, btb) = match (&self.a, &self.b) {
            (NdArrayTensor::F32(a), NdArrayTensor::F32(b)) => {
                grams(view2(&a.view()), view2(&b.view()))
            }
            (NdArrayTensor::F64(a), NdArrayTensor::F64(b)) => {
                grams(view2(&a.view()), view2(&b.view()))
            }
            _ => unreachable!("HostPair::of admits only F32/F64 pairs"),
        };
        PairGrams::measured(aat, btb)
    }

    /// `(Q·A, B·P)` as row-major data of A's and B's shapes, in the factors' precision.
    pub(crate) fn apply(&self, t: &GaugeTransform) -> (TensorData, TensorData) {
        match (&self.a, &self.b) {
            (NdArrayTensor::F32(a), NdArrayTensor::F32(b)) => {
                apply(view2(&a.view()), view2(&b.view()), t)
            }
            (NdArrayTensor::F64(a), NdArrayTensor::F64(b)) => {
                apply(view2(&a.view()), view2(&b.view()), t)
            }
            _ => unreachable!("HostPair::of admits only F32/F64 pairs"),
        }
    }
}

/// The element types of this path.
trait HostFloat: LinalgScalar + burn::tensor::Element {
    fn to_f64(self) -> f64;
    fn from_f64(v: f64) -> Self;
}

impl HostFloat for f32 {
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}

impl HostFloat for f64 {
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(v: f64) -> Self {
        v
    }
}

fn view2<'a, E>(v: &ndarray::ArrayView<'a, E, ndarray::IxDyn>) -> ArrayView2<'a, E> {
    v.clone()
        .into_dimensionality::<Ix2>()
        .expect("adapter factors are 2-D (checked when the pair was collected)")
}

fn to_host<E: HostFloat>(m: &Array2<E>) -> DMatrix<f64> {
    DMatrix::from_fn(m.nrows(), m.ncols(), |i, j| m[[i, j]].to_f64())
}

fn to_elems<E: HostFloat>(m: &DMatrix<f64>) -> Array2<E> {
    Array2::from_shape_fn((m.nrows(), m.ncols()), |(i, j)| E::from_f64(m[(i, j)]))
}

/// Columns of A (rows of B) per GEMM call. Small enough that matrixmultiply keeps each call on
/// the calling thread (its threading starts near `(m + n)·k ≥ 2¹⁵`): the adapters already run
/// on every core, and nested GEMM threads only fight them (measured: 1.5× slower).
const BLOCK: usize = 512;

fn grams<E: HostFloat>(a: ArrayView2<E>, b: ArrayView2<E>) -> (DMatrix<f64>, DMatrix<f64>) {
    let r = a.nrows();
    let mut aat = Array2::<E>::zeros((r, r));
    for blk in a.axis_chunks_iter(Axis(1), BLOCK) {
        general_mat_mul(E::one(), &blk, &blk.t(), E::one(), &mut aat);
    }
    let mut btb = Array2::<E>::zeros((r, r));
    for blk in b.axis_chunks_iter(Axis(0), BLOCK) {
        general_mat_mul(E::one(), &blk.t(), &blk, E::one(), &mut btb);
    }
    (to_host(&aat), to_host(&btb))
}

fn apply<E: HostFloat>(
    a: ArrayView2<E>,
    b: ArrayView2<E>,
    t: &GaugeTransform,
) -> (TensorData, TensorData) {
    let (q, p) = (to_elems::<E>(&t.q), to_elems::<E>(&t.p));
    let mut new_a = Array2::<E>::zeros(a.raw_dim());
    for (src, mut dst) in a
        .axis_chunks_iter(Axis(1), BLOCK)
        .zip(new_a.axis_chunks_iter_mut(Axis(1), BLOCK))
    {
        general_mat_mul(E::one(), &q, &src, E::zero(), &mut dst);
    }
    let mut new_b = Array2::<E>::zeros(b.raw_dim());
    for (src, mut dst) in b
        .axis_chunks_iter(Axis(0), BLOCK)
        .zip(new_b.axis_chunks_iter_mut(Axis(0), BLOCK))
    {
        general_mat_mul(E::one(), &src, &p, E::zero(), &mut dst);
    }
    (row_major(new_a), row_major(new_b))
}

fn row_major<E: HostFloat>(m: Array2<E>) -> TensorData {
    let shape = [m.nrows(), m.ncols()];
    let m = if m.is_standard_layout() {
        m
    } else {
        m.as_standard_layout().into_owned()
    };
    let (vec, offset) = m.into_raw_vec_and_offset();
    debug_assert_eq!(offset.unwrap_or(0), 0);
    TensorData::new(vec, shape)
}
