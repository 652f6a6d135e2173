//! The manifold hook: re-factor every adapter of a model after an optimizer step.

use crate::params::{collect_pairs, replace_params, PairSlot};
use balora_manifold::{DMatrix, GaugeTransform, Manifold, ManifoldError, PairGrams};
use burn::module::Module;
use burn::tensor::{backend::Backend, Tensor, TensorData};
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
            // Symmetrised; non-finite Grams are caught by the manifold's refactor via new().
            PairGrams::new(aat.clone(), btb.clone()).unwrap_or(PairGrams { aat, btb })
        })
        .collect()
}

/// Runs `manifold` on every adapter of `module` after optimizer step `step` (1-based).
///
/// Device work: one batched Gram computation + transfer, one upload of all transforms, and two
/// thin matmuls per adapter (`A ← Q·A`, `B ← B·P`): O((in+out)·r²) per adapter.
pub fn apply_manifold<B: Backend, M: Module<B>>(
    module: M,
    manifold: &dyn Manifold,
    step: u64,
) -> Result<(M, HookReport), ManifoldHookError> {
    let mut report = HookReport::default();
    if !manifold.applies_at(step) {
        return Ok((module, report));
    }
    let table = crate::params::ParamTable {
        pairs: collect_pairs(&module),
        singles: Vec::new(),
    };
    report.adapters = table.pairs.len();
    let grams = grams_of(&table.pairs);
    // The r×r decisions are independent per adapter: decide them on every core (results in
    // adapter order, so the outcome does not depend on scheduling).
    let keys: Vec<&str> = table.pairs.iter().map(|p| p.key.as_str()).collect();
    let decisions: Vec<_> = keys
        .par_iter()
        .zip(grams.par_iter())
        .map(|(key, g)| {
            if g.aat.iter().chain(g.btb.iter()).any(|v| !v.is_finite()) {
                return Err(ManifoldHookError::Manifold {
                    key: key.to_string(),
                    source: ManifoldError::BadGrams(
                        "non-finite factor entries (NaN or inf)".into(),
                    ),
                });
            }
            manifold
                .refactor(g)
                .map_err(|source| ManifoldHookError::Manifold {
                    key: key.to_string(),
                    source,
                })
        })
        .collect();
    let mut chosen: Vec<(usize, GaugeTransform)> = Vec::new();
    for (i, decided) in decisions.into_iter().enumerate() {
        if let Some(rf) = decided? {
            if rf.active_rank == 0 {
                report.zero_product += 1;
                continue;
            }
            if rf.is_rank_deficient() {
                report.rank_deficient += 1;
            }
            chosen.push((i, rf.transform));
        }
    }
    if chosen.is_empty() {
        return Ok((module, report));
    }
    // One upload of every P and Q.
    let mut host: Vec<f32> = Vec::new();
    for (_, t) in &chosen {
        for m in [&t.p, &t.q] {
            host.extend(m.transpose().iter().map(|&v| v as f32)); // row-major
        }
    }
    let device = table.pairs[chosen[0].0].a.device();
    let len = host.len();
    let all = Tensor::<B, 1>::from_data(TensorData::new(host, [len]), &device);
    let mut updates = HashMap::new();
    let mut off = 0;
    for (i, t) in chosen {
        let pair = &table.pairs[i];
        let r = t.p.nrows();
        let dev = pair.a.device();
        let p = all
            .clone()
            .slice(off..off + r * r)
            .reshape([r, r])
            .to_device(&dev);
        let q = all
            .clone()
            .slice(off + r * r..off + 2 * r * r)
            .reshape([r, r])
            .to_device(&dev);
        off += 2 * r * r;
        let (ra, ia) = (pair.a.dims()[0], pair.a.dims()[1]);
        let (ob, rb) = (pair.b.dims()[0], pair.b.dims()[1]);
        let new_a = q.matmul(pair.a.clone());
        let new_b = pair.b.clone().matmul(p);
        updates.insert(pair.a_id, new_a.reshape([ra * ia]));
        updates.insert(pair.b_id, new_b.reshape([ob * rb]));
        report.refactored += 1;
        report.transforms.push((pair.key.clone(), t));
    }
    Ok((replace_params(module, updates), report))
}
