//! Global-norm gradient clipping over a model's trainable parameters (adapter pairs and
//! `modules_to_save`).

use balora_adapter::collect_params;
use burn::module::{AutodiffModule, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};

/// The global L2 norm of the gradients of `model`'s trainable parameters; if `max_norm > 0`
/// and the norm exceeds it, all gradients are scaled by `max_norm / norm`.
pub fn clip_grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
) -> f64 {
    let table = collect_params(model);
    let mut ids: Vec<(ParamId, usize)> = Vec::new();
    for p in &table.pairs {
        ids.push((p.a_id, 2));
        ids.push((p.b_id, 2));
    }
    for s in table.singles.iter().filter(|s| s.trainable) {
        ids.push((s.id, s.shape.len()));
    }
    fn sq<B: Backend, const D: usize>(g: &GradientsParams, id: ParamId) -> Option<Tensor<B, 1>> {
        g.get::<B, D>(id).map(|t| t.powi_scalar(2).sum())
    }
    let parts: Vec<Tensor<B::InnerBackend, 1>> = ids
        .iter()
        .filter_map(|&(id, d)| match d {
            1 => sq::<B::InnerBackend, 1>(grads, id),
            2 => sq::<B::InnerBackend, 2>(grads, id),
            3 => sq::<B::InnerBackend, 3>(grads, id),
            4 => sq::<B::InnerBackend, 4>(grads, id),
            _ => None,
        })
        .collect();
    if parts.is_empty() {
        return 0.0;
    }
    let norm = Tensor::cat(parts, 0)
        .sum()
        .into_scalar()
        .elem::<f64>()
        .sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let s = max_norm / (norm + 1e-6);
        fn scale<B: Backend, const D: usize>(g: &mut GradientsParams, id: ParamId, s: f64) {
            if let Some(t) = g.remove::<B, D>(id) {
                g.register(id, t.mul_scalar(s));
            }
        }
        for &(id, d) in &ids {
            match d {
                1 => scale::<B::InnerBackend, 1>(grads, id, s),
                2 => scale::<B::InnerBackend, 2>(grads, id, s),
                3 => scale::<B::InnerBackend, 3>(grads, id, s),
                4 => scale::<B::InnerBackend, 4>(grads, id, s),
                _ => {}
            }
        }
    }
    norm
}
