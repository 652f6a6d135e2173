//! Element-wise update rules with per-tensor state, shared by the built-in optimizers and plugins.
//!
//! * SGD with momentum μ and decoupled weight decay λ: `m ← μm + g`, `θ ← θ(1 − ηλ) − ηm`.
//! * Sign descent (the paper's synthetic "Adam"): `θ ← θ − η·g/(|g| + ε)`.
//! * AdamW: `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`, `m̂ = m/(1−β₁ᵗ)`, `v̂ = v/(1−β₂ᵗ)`,
//!   `θ ← θ(1 − ηλ) − η·m̂/(√v̂ + ε)`.

use crate::OptimError;
use burn::tensor::{backend::Backend, Tensor, TensorData};
use std::collections::BTreeMap;

/// Per-tensor state: named buffers (flattened) plus a step counter.
#[derive(Debug, Clone)]
pub struct Slot<B: Backend> {
    /// Steps taken with this tensor.
    pub t: u64,
    /// Buffers (`m`, `v`, …), flattened.
    pub bufs: Vec<Tensor<B, 1>>,
}

/// State store keyed by tensor key (e.g. `layers.0.q_proj.adapter.A`).
#[derive(Debug, Clone)]
pub struct StateStore<B: Backend> {
    slots: BTreeMap<String, Slot<B>>,
    names: &'static [&'static str],
}

impl<B: Backend> StateStore<B> {
    /// A store whose slots hold buffers with these names.
    pub fn new(names: &'static [&'static str]) -> Self {
        Self {
            slots: BTreeMap::new(),
            names,
        }
    }

    /// The buffer names, in slot order.
    pub fn names(&self) -> &'static [&'static str] {
        self.names
    }

    /// The slot of `key` if it has taken a step (or was imported).
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Slot<B>> {
        self.slots.get_mut(key)
    }

    /// The slot of `key`, zero-initialised like `like` on first use.
    pub fn slot<const D: usize>(&mut self, key: &str, like: &Tensor<B, D>) -> &mut Slot<B> {
        let n = like.shape().num_elements();
        let names = self.names.len();
        self.slots.entry(key.to_string()).or_insert_with(|| Slot {
            t: 0,
            bufs: (0..names)
                .map(|_| Tensor::zeros([n], &like.device()))
                .collect(),
        })
    }

    /// Host copy: `key/name` → buffer, `key/t` → step count.
    pub fn export(&self) -> Vec<(String, TensorData)> {
        let mut out = Vec::new();
        for (key, slot) in &self.slots {
            out.push((
                format!("{key}/t"),
                TensorData::new(vec![slot.t as f32], [1]),
            ));
            for (name, buf) in self.names.iter().zip(&slot.bufs) {
                out.push((format!("{key}/{name}"), buf.to_data()));
            }
        }
        out
    }

    /// Restores [`export`](Self::export) output.
    pub fn import(
        &mut self,
        state: Vec<(String, TensorData)>,
        device: &B::Device,
    ) -> Result<(), OptimError> {
        let mut map: BTreeMap<String, TensorData> = state.into_iter().collect();
        let keys: Vec<String> = map
            .keys()
            .filter_map(|k| k.strip_suffix("/t").map(str::to_string))
            .collect();
        self.slots.clear();
        for key in keys {
            let t = map
                .remove(&format!("{key}/t"))
                .and_then(|d| d.iter::<f64>().next())
                .ok_or_else(|| OptimError::State(format!("`{key}/t` is empty")))?;
            let mut bufs = Vec::new();
            for name in self.names {
                let d = map
                    .remove(&format!("{key}/{name}"))
                    .ok_or_else(|| OptimError::State(format!("missing buffer `{key}/{name}`")))?;
                let n = d.num_elements();
                bufs.push(Tensor::<B, 1>::from_data(d.convert::<f32>(), device).reshape([n]));
            }
            self.slots.insert(key, Slot { t: t as u64, bufs });
        }
        if let Some(extra) = map.keys().next() {
            return Err(OptimError::State(format!("unexpected entry `{extra}`")));
        }
        Ok(())
    }
}

fn flat<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, 1> {
    let n = t.shape().num_elements();
    t.reshape([n])
}

/// Hyper-parameters of AdamW.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWParams {
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Decoupled weight decay λ.
    pub weight_decay: f64,
}

impl Default for AdamWParams {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// Hyper-parameters of SGD.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SgdParams {
    /// Momentum μ (0 = plain gradient descent, no state).
    pub momentum: f64,
    /// Decoupled weight decay λ.
    pub weight_decay: f64,
}

/// One AdamW update of `param` (any rank) with state in `store[key]` (buffers `m`, `v`).
pub fn adamw_update<B: Backend, const D: usize>(
    store: &mut StateStore<B>,
    key: &str,
    hp: &AdamWParams,
    lr: f64,
    param: Tensor<B, D>,
    grad: Tensor<B, D>,
) -> Tensor<B, D> {
    let shape = param.shape();
    let slot = store.slot(key, &param);
    slot.t += 1;
    let g = flat(grad);
    let m = slot.bufs[0].clone().mul_scalar(hp.beta1) + g.clone().mul_scalar(1.0 - hp.beta1);
    let v = slot.bufs[1].clone().mul_scalar(hp.beta2) + g.powi_scalar(2).mul_scalar(1.0 - hp.beta2);
    slot.bufs[0] = m.clone();
    slot.bufs[1] = v.clone();
    let bc1 = 1.0 - hp.beta1.powi(slot.t as i32);
    let bc2 = 1.0 - hp.beta2.powi(slot.t as i32);
    let denom = v.div_scalar(bc2).sqrt().add_scalar(hp.eps);
    let update = m.div_scalar(bc1).div(denom).mul_scalar(lr);
    let p = flat(param).mul_scalar(1.0 - lr * hp.weight_decay) - update;
    p.reshape(shape)
}

/// One SGD update with momentum `mu` (buffer `m`) and decoupled weight decay.
pub fn sgd_update<B: Backend, const D: usize>(
    store: &mut StateStore<B>,
    key: &str,
    mu: f64,
    weight_decay: f64,
    lr: f64,
    param: Tensor<B, D>,
    grad: Tensor<B, D>,
) -> Tensor<B, D> {
    let shape = param.shape();
    let decayed = flat(param).mul_scalar(1.0 - lr * weight_decay);
    let g = flat(grad);
    let dir = if mu != 0.0 {
        let slot = store.slot(key, &g);
        slot.t += 1;
        let m = slot.bufs[0].clone().mul_scalar(mu) + g;
        slot.bufs[0] = m.clone();
        m
    } else {
        g
    };
    (decayed - dir.mul_scalar(lr)).reshape(shape)
}

/// One sign-descent update `θ − η·g/(|g| + ε)` (stateless).
pub fn sign_update<B: Backend, const D: usize>(
    eps: f64,
    lr: f64,
    param: Tensor<B, D>,
    grad: Tensor<B, D>,
) -> Tensor<B, D> {
    let denom = grad.clone().abs().add_scalar(eps);
    param - grad.div(denom).mul_scalar(lr)
}
