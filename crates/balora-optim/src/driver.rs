//! Applies an [`AdapterOptimizer`] to a burn module and its gradients.

use crate::{AdapterOptimizer, GaugeTransform, PairStep};
use balora_adapter::{collect_params, grams_of, replace_params, PairSlot, ParamValue};
use burn::module::{AutodiffModule, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{backend::AutodiffBackend, Tensor};
use std::collections::HashMap;

type PairWithGrads<'a, B> = (
    &'a PairSlot<B>,
    Tensor<<B as AutodiffBackend>::InnerBackend, 2>,
    Tensor<<B as AutodiffBackend>::InnerBackend, 2>,
);

/// Drives an adapter-aware optimizer over a whole autodiff module.
///
/// Pairs (`lora_a`/`lora_b` under one module path) go through
/// [`AdapterOptimizer::step_pair`], other parameters with a gradient through
/// [`AdapterOptimizer::step_param`]; parameters without gradient (frozen) are untouched.
pub struct OptimizerDriver<B: AutodiffBackend> {
    /// The optimizer, on the inner backend.
    pub inner: Box<dyn AdapterOptimizer<B::InnerBackend>>,
}

impl<B: AutodiffBackend> OptimizerDriver<B> {
    /// Wraps an optimizer.
    pub fn new(inner: Box<dyn AdapterOptimizer<B::InnerBackend>>) -> Self {
        Self { inner }
    }

    /// One optimizer step; returns the updated module.
    pub fn step<M: AutodiffModule<B>>(
        &mut self,
        lr: f64,
        module: M,
        mut grads: GradientsParams,
    ) -> M {
        let table = collect_params(&module);
        let mut updates: HashMap<ParamId, ParamValue<B>> = HashMap::new();
        let with_grads: Vec<PairWithGrads<'_, B>> = table
            .pairs
            .iter()
            .filter_map(|p| {
                let ga = grads.remove::<B::InnerBackend, 2>(p.a_id)?;
                let gb = grads.remove::<B::InnerBackend, 2>(p.b_id)?;
                Some((p, ga, gb))
            })
            .collect();
        let grams = if self.inner.wants_grams() {
            let inner_pairs: Vec<PairSlot<B::InnerBackend>> =
                with_grads.iter().map(|(p, _, _)| p.inner()).collect();
            grams_of(&inner_pairs).into_iter().map(Some).collect()
        } else {
            vec![None; with_grads.len()]
        };
        for ((p, ga, gb), grams) in with_grads.into_iter().zip(grams) {
            let (na, nb) = self.inner.step_pair(
                &p.key,
                lr,
                PairStep {
                    a: p.a.clone().inner(),
                    b: p.b.clone().inner(),
                    grad_a: ga,
                    grad_b: gb,
                    grams,
                },
            );
            updates.insert(p.a_id, Tensor::<B, 2>::from_inner(na).into());
            updates.insert(p.b_id, Tensor::<B, 2>::from_inner(nb).into());
        }
        for s in table.singles.iter().filter(|s| s.trainable) {
            let n = s.value.shape().num_elements();
            let g = match s.shape.len() {
                1 => grads.remove::<B::InnerBackend, 1>(s.id),
                2 => grads
                    .remove::<B::InnerBackend, 2>(s.id)
                    .map(|g| g.reshape([n])),
                3 => grads
                    .remove::<B::InnerBackend, 3>(s.id)
                    .map(|g| g.reshape([n])),
                4 => grads
                    .remove::<B::InnerBackend, 4>(s.id)
                    .map(|g| g.reshape([n])),
                _ => None,
            };
            if let Some(g) = g {
                let v = self
                    .inner
                    .step_param(&s.path, lr, s.value.clone().inner(), g);
                updates.insert(s.id, Tensor::<B, 1>::from_inner(v).into());
            }
        }
        replace_params(module, updates)
    }

    /// Forwards manifold transforms (from the hook report) for state transport.
    pub fn on_refactor(&mut self, transforms: &[(String, GaugeTransform)]) {
        for (key, t) in transforms {
            self.inner.on_refactor(key, t);
        }
    }
}
