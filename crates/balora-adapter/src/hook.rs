//! The manifold hook: re-factor every adapter of a model after an optimizer step.

use crate::params::{collect_pairs, replace_params, PairSlot, ParamValue};
use balora_manifold::{DMatrix, GaugeTransform, Manifold, ManifoldError, PairGrams, Refactor};
use burn::module::{AutodiffModule, Module, ParamId};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;
use std::collections::HashMap;

/// What one hook call did.
#[derive(Debug, Clone, Default)]
pub struct HookReport {
    /// Adapters found in the model.
    pub adapters: usize,
    /// Adapters whose factors were changed.
    pub refactored: usize,
    /// Adapters with numerical rank below r (only their active part was re-factored).
    pub rank_deficient: usize,
    /// Adapters with a zero product, left unchanged (e.g. `B = 0`).
    pub zero_product: usize,
    /// The applied transforms by adapter key (for optimizer-state transport).
    pub transforms: Vec<(String, GaugeTransform)>,
}

/// Errors of the hook.
#[derive(Debug, thiserror::Error)]
pub enum ManifoldHookError {
    /// The manifold rejected an adapter.
    #[error("adapter `{key}`: {source}")]
    Manifold {
        /// Adapter key.
        key: String,
        /// Cause.
        source: ManifoldError,
    },
}

/// The r×r Grams (`AAᵀ`, `BᵀB`) of every adapter in `module`, fetched in one device→host transfer.
pub fn pair_grams<B: Backend, M: Module<B>>(module: &M) -> Vec<(String, PairGrams)> {
    let pairs = collect_pairs(module);
    grams_of(&pairs)
        .into_iter()
        .zip(pairs.iter().map(|p| p.key.clone()))
        .map(|(g, k)| (k, g))
        .collect()
}

/// Grams of the given pairs (in order), fetched in one device→host transfer.
pub fn grams_of<B: Backend>(pairs: &[PairSlot<B>]) -> Vec<PairGrams> {
    if pairs.is_empty() {
        return Vec::new();
    }
    let flat: Vec<Tensor<B, 1>> = pairs
        .iter()
        .flat_map(|p| {
            let r = p.a.dims()[0];
            let ga = p.a.clone().matmul(p.a.clone().transpose()).reshape([r * r]);
            let gb = p.b.clone().transpose().matmul(p.b.clone()).reshape([r * r]);
            [ga, gb]
        })
        .collect();
    let host: Vec<f64> = Tensor::cat(flat, 0)
        .detach()
        .into_data()
        .iter::<f64>()
        .collect();
    let mut off = 0;
    pairs
        .iter()
        .map(|p| {
            let r = p.a.dims()[0];
            let take = |off: &mut usize| {
                let m = DMatrix::from_row_slice(r, r, &host[*off..*off + r * r]);
                *off += r * r;
                m
            };
            let aat = take(&mut off);
            let btb = take(&mut off);
            PairGrams::measured(aat, btb)
        })
        .collect()
}

/// Where [`apply_manifold_with`] runs the Grams and the two thin products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HookPath {
    /// Burn tensor ops, except for factors already in host memory (burn-ndarray, built with
    /// this crate's `ndarray` feature), which are read in place and processed adapter by
    /// adapter on every core. Same math, same results up to f32 rounding.
    #[default]
    Auto,
    /// Always burn tensor ops: one batched Gram transfer, one upload of all transforms.
    TensorOps,
}

/// Runs `manifold` on every adapter of `module` after optimizer step `step` (1-based).
///
/// Device work: one batched Gram computation + transfer, one upload of all transforms, and two
/// thin matmuls per adapter (`A ← Q·A`, `B ← B·P`): O((in+out)·r²) per adapter. On burn-ndarray
/// the same products run in place on the host (see [`HookPath::Auto`]).
///
/// ```
/// use balora_adapter::{apply_manifold, LoraAdapter};
/// use balora_manifold::balanced::Balanced;
/// use burn::backend::NdArray;
/// use burn::tensor::{Distribution, Tensor};
///
/// let device = Default::default();
/// let a = Tensor::<NdArray, 2>::random([2, 6], Distribution::Normal(0.0, 1.0), &device);
/// let b = Tensor::<NdArray, 2>::random([5, 2], Distribution::Normal(0.0, 1.0), &device);
/// let adapter = LoraAdapter::from_tensors(a, b, 1.0, 0.0);
/// let (adapter, report) = apply_manifold(adapter, &Balanced::default(), 1).unwrap();
/// assert_eq!(report.refactored, 1);
/// let (a, b) = (adapter.lora_a.val(), adapter.lora_b.val());
/// let gap = (b.clone().transpose().matmul(b) - a.clone().matmul(a.transpose())).abs().max();
/// assert!(gap.into_scalar() < 1e-4);
/// ```
pub fn apply_manifold<B: Backend, M: Module<B>>(
    module: M,
    manifold: &dyn Manifold,
    step: u64,
) -> Result<(M, HookReport), ManifoldHookError> {
    apply_manifold_with(module, manifold, step, HookPath::Auto)
}

/// [`apply_manifold`] with an explicit [`HookPath`] (benchmarks and cross-path tests).
pub fn apply_manifold_with<B: Backend, M: Module<B>>(
    module: M,
    manifold: &dyn Manifold,
    step: u64,
    path: HookPath,
) -> Result<(M, HookReport), ManifoldHookError> {
    if !manifold.applies_at(step) {
        return Ok((module, HookReport::default()));
    }
    let (updates, report) = refactor_pairs(&collect_pairs(&module), manifold, path)?;
    Ok((replace_all(module, updates), report))
}

/// [`apply_manifold`] for a module being trained: the projection runs on the inner backend's
/// tensors (no autodiff bookkeeping; burn-ndarray's host path reads them in place) and the new
/// factors go back into the autodiff module, still trainable.
pub fn apply_manifold_autodiff<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: M,
    manifold: &dyn Manifold,
    step: u64,
) -> Result<(M, HookReport), ManifoldHookError> {
    if !manifold.applies_at(step) {
        return Ok((module, HookReport::default()));
    }
    let inner: Vec<PairSlot<B::InnerBackend>> =
        collect_pairs(&module).iter().map(PairSlot::inner).collect();
    let (updates, report) = refactor_pairs(&inner, manifold, HookPath::Auto)?;
    let updates = updates
        .into_iter()
        .map(|(id, t)| (id, Tensor::<B, 2>::from_inner(t)))
        .collect();
    Ok((replace_all(module, updates), report))
}

fn replace_all<B: Backend, M: Module<B>>(module: M, updates: Updates<B>) -> M {
    if updates.is_empty() {
        return module;
    }
    let updates: HashMap<ParamId, ParamValue<B>> =
        updates.into_iter().map(|(id, t)| (id, t.into())).collect();
    replace_params(module, updates)
}

/// New factor values by parameter id.
type Updates<B> = Vec<(ParamId, Tensor<B, 2>)>;

/// The manifold on every pair: new factors by parameter id, and the report.
fn refactor_pairs<B: Backend>(
    pairs: &[PairSlot<B>],
    manifold: &dyn Manifold,
    path: HookPath,
) -> Result<(Updates<B>, HookReport), ManifoldHookError> {
    let mut report = HookReport {
        adapters: pairs.len(),
        ..Default::default()
    };
    let mut updates = Vec::new();
    if pairs.is_empty() {
        return Ok((updates, report));
    }
    let outcomes = match path {
        HookPath::Auto => host_outcomes(pairs, manifold),
        HookPath::TensorOps => None,
    };
    let outcomes = match outcomes {
        Some(done) => done?,
        None => tensor_op_outcomes(pairs, manifold)?,
    };
    for (pair, outcome) in pairs.iter().zip(outcomes) {
        match outcome {
            Outcome::Unchanged => {}
            Outcome::ZeroProduct => report.zero_product += 1,
            Outcome::Refactored {
                rank_deficient,
                transform,
                a,
                b,
            } => {
                report.rank_deficient += usize::from(rank_deficient);
                updates.push((pair.a_id, a));
                updates.push((pair.b_id, b));
                report.refactored += 1;
                report.transforms.push((pair.key.clone(), transform));
            }
        }
    }
    Ok((updates, report))
}

/// What the hook did to one adapter.
enum Outcome<B: Backend> {
    /// The manifold left it alone.
    Unchanged,
    /// Zero product (e.g. `B = 0` at init): left unchanged, counted.
    ZeroProduct,
    /// New factors.
    Refactored {
        rank_deficient: bool,
        transform: GaugeTransform,
        a: Tensor<B, 2>,
        b: Tensor<B, 2>,
    },
}

/// The manifold's decision for one adapter, from its Grams (shared by both paths).
fn decide(
    key: &str,
    grams: &PairGrams,
    manifold: &dyn Manifold,
) -> Result<Option<Refactor>, ManifoldHookError> {
    let err = |source| ManifoldHookError::Manifold {
        key: key.to_string(),
        source,
    };
    if grams
        .aat
        .iter()
        .chain(grams.btb.iter())
        .any(|v| !v.is_finite())
    {
        return Err(err(ManifoldError::BadGrams(
            "non-finite factor entries (NaN or inf)".into(),
        )));
    }
    manifold.refactor(grams).map_err(err)
}

/// Host-memory path: per adapter (on every core) Grams, decision and update, in place.
/// `None` when the factors are not burn-ndarray tensors.
#[cfg(feature = "ndarray")]
fn host_outcomes<B: Backend>(
    pairs: &[PairSlot<B>],
    manifold: &dyn Manifold,
) -> Option<Result<Vec<Outcome<B>>, ManifoldHookError>> {
    let host: Vec<crate::inplace::HostPair> = pairs
        .iter()
        .map(crate::inplace::HostPair::of)
        .collect::<Option<_>>()?;
    let outcomes = pairs
        .par_iter()
        .zip(host.par_iter())
        .map(|(pair, h)| {
            Ok(match decide(&pair.key, &h.grams(), manifold)? {
                None => Outcome::Unchanged,
                Some(rf) if rf.active_rank == 0 => Outcome::ZeroProduct,
                Some(rf) => {
                    let (a, b) = h.apply(&rf.transform);
                    Outcome::Refactored {
                        rank_deficient: rf.is_rank_deficient(),
                        transform: rf.transform,
                        a: Tensor::from_data(a, &pair.a.device()),
                        b: Tensor::from_data(b, &pair.b.device()),
                    }
                }
            })
        })
        .collect();
    Some(outcomes)
}

#[cfg(not(feature = "ndarray"))]
fn host_outcomes<B: Backend>(
    _pairs: &[PairSlot<B>],
    _manifold: &dyn Manifold,
) -> Option<Result<Vec<Outcome<B>>, ManifoldHookError>> {
    None
}

/// Tensor-op path: one Gram transfer, decisions on every core, one upload, two matmuls each.
fn tensor_op_outcomes<B: Backend>(
    pairs: &[PairSlot<B>],
    manifold: &dyn Manifold,
) -> Result<Vec<Outcome<B>>, ManifoldHookError> {
    let grams = grams_of(pairs);
    // The r×r decisions are independent per adapter: decide them on every core (results in
    // adapter order, so the outcome does not depend on scheduling).
    let decisions = pairs
        .par_iter()
        .zip(grams.par_iter())
        .map(|(pair, g)| decide(&pair.key, g, manifold))
        .collect::<Result<Vec<_>, _>>()?;
    // One upload of every P and Q.
    let mut host: Vec<f32> = Vec::new();
    for rf in decisions.iter().flatten().filter(|rf| rf.active_rank > 0) {
        for m in [&rf.transform.p, &rf.transform.q] {
            host.extend(m.transpose().iter().map(|&v| v as f32)); // row-major
        }
    }
    let all = (!host.is_empty()).then(|| {
        let len = host.len();
        Tensor::<B, 1>::from_data(TensorData::new(host, [len]), &pairs[0].a.device())
    });
    let mut off = 0;
    Ok(decisions
        .into_iter()
        .zip(pairs)
        .map(|(rf, pair)| match (rf, &all) {
            (None, _) => Outcome::Unchanged,
            (Some(rf), _) if rf.active_rank == 0 => Outcome::ZeroProduct,
            (Some(rf), Some(all)) => {
                let r = rf.transform.p.nrows();
                let dev = pair.a.device();
                let mut take = || {
                    let m = all
                        .clone()
                        .slice(off..off + r * r)
                        .reshape([r, r])
                        .to_device(&dev);
                    off += r * r;
                    m
                };
                let (p, q) = (take(), take());
                Outcome::Refactored {
                    rank_deficient: rf.is_rank_deficient(),
                    a: q.matmul(pair.a.clone()),
                    b: pair.b.clone().matmul(p),
                    transform: rf.transform,
                }
            }
            (Some(_), None) => unreachable!("a nonzero-rank transform was uploaded"),
        })
        .collect())
}
