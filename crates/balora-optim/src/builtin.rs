//! Built-in optimizers: SGD (momentum), AdamW (with optional moment transport), sign descent.

use crate::rules::{adamw_update, sgd_update, sign_update, AdamWParams, StateStore};
use crate::transport::TransportMode;
use crate::{AdapterOptimizer, OptimError, OptimizerFactory, Options, PairStep};
use balora_manifold::OptionDoc;
use burn::tensor::{backend::Backend, Tensor};

/// State keys of an adapter's factors: `{key}.lora_a`, `{key}.lora_b`.
pub fn factor_keys(key: &str) -> (String, String) {
    (format!("{key}.lora_a"), format!("{key}.lora_b"))
}

/// AdamW (decoupled weight decay). Option `transport`: carry the moments across
/// re-factorisations (see [`TransportMode`]).
#[derive(Debug, Clone)]
pub struct AdamW<B: Backend> {
    /// Hyper-parameters.
    pub hp: AdamWParams,
    /// What is carried into the new gauge when the manifold re-factors.
    pub transport: TransportMode,
    store: StateStore<B>,
}

impl<B: Backend> AdamW<B> {
    /// A fresh optimizer.
    pub fn new(hp: AdamWParams, transport: TransportMode) -> Self {
        Self {
            hp,
            transport,
            store: StateStore::new(&["m", "v"]),
        }
    }
}

/// Parses AdamW options (`beta1`, `beta2`, `eps`, `weight_decay`) with extra allowed keys.
pub fn adamw_params(
    opts: &Options,
    section: &str,
    extra: &[&str],
) -> Result<AdamWParams, OptimError> {
    let mut allowed = vec!["beta1", "beta2", "eps", "weight_decay"];
    allowed.extend_from_slice(extra);
    opts.reject_unknown(section, &allowed)?;
    let d = AdamWParams::default();
    let hp = AdamWParams {
        beta1: opts.f64_or("beta1", d.beta1)?,
        beta2: opts.f64_or("beta2", d.beta2)?,
        eps: opts.f64_or("eps", d.eps)?,
        weight_decay: opts.f64_or("weight_decay", d.weight_decay)?,
    };
    for (k, v) in [("beta1", hp.beta1), ("beta2", hp.beta2)] {
        if !(0.0..1.0).contains(&v) {
            return Err(OptionsError(k, format!("must be in [0, 1), got {v}")));
        }
    }
    if hp.eps <= 0.0 || hp.weight_decay < 0.0 {
        return Err(OptionsError(
            "eps",
            "eps must be > 0 and weight_decay ≥ 0".into(),
        ));
    }
    Ok(hp)
}

#[allow(non_snake_case)]
fn OptionsError(key: &str, message: String) -> OptimError {
    OptimError::Options(crate::OptionsError::BadValue {
        key: key.into(),
        message,
    })
}

impl<B: Backend> AdapterOptimizer<B> for AdamW<B> {
    fn name(&self) -> &str {
        "adamw"
    }
    fn step_pair(&mut self, key: &str, lr: f64, p: PairStep<B>) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let (ka, kb) = factor_keys(key);
        (
            adamw_update(&mut self.store, &ka, &self.hp, lr, p.a, p.grad_a),
            adamw_update(&mut self.store, &kb, &self.hp, lr, p.b, p.grad_b),
        )
    }
    fn step_param(&mut self, key: &str, lr: f64, v: Tensor<B, 1>, g: Tensor<B, 1>) -> Tensor<B, 1> {
        adamw_update(&mut self.store, key, &self.hp, lr, v, g)
    }
    fn moment_transport(&self) -> Option<TransportMode> {
        Some(self.transport)
    }
    fn store(&self) -> Option<&StateStore<B>> {
        Some(&self.store)
    }
    fn store_mut(&mut self) -> Option<&mut StateStore<B>> {
        Some(&mut self.store)
    }
}

/// SGD with optional momentum and decoupled weight decay.
#[derive(Debug, Clone)]
pub struct Sgd<B: Backend> {
    /// Momentum μ (0 = plain gradient descent).
    pub momentum: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Transport the momentum buffer across re-factorisations.
    pub transport: bool,
    store: StateStore<B>,
}

impl<B: Backend> Sgd<B> {
    /// A fresh optimizer.
    pub fn new(momentum: f64, weight_decay: f64, transport: bool) -> Self {
        Self {
            momentum,
            weight_decay,
            transport,
            store: StateStore::new(&["m"]),
        }
    }
}

impl<B: Backend> AdapterOptimizer<B> for Sgd<B> {
    fn name(&self) -> &str {
        "sgd"
    }
    fn step_pair(&mut self, key: &str, lr: f64, p: PairStep<B>) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let (ka, kb) = factor_keys(key);
        let (mu, wd) = (self.momentum, self.weight_decay);
        (
            sgd_update(&mut self.store, &ka, mu, wd, lr, p.a, p.grad_a),
            sgd_update(&mut self.store, &kb, mu, wd, lr, p.b, p.grad_b),
        )
    }
    fn step_param(&mut self, key: &str, lr: f64, v: Tensor<B, 1>, g: Tensor<B, 1>) -> Tensor<B, 1> {
        sgd_update(
            &mut self.store,
            key,
            self.momentum,
            self.weight_decay,
            lr,
            v,
            g,
        )
    }
    fn moment_transport(&self) -> Option<TransportMode> {
        let first = if self.transport {
            TransportMode::First
        } else {
            TransportMode::Off
        };
        (self.momentum != 0.0).then_some(first)
    }
    fn store(&self) -> Option<&StateStore<B>> {
        Some(&self.store)
    }
    fn store_mut(&mut self) -> Option<&mut StateStore<B>> {
        Some(&mut self.store)
    }
}

/// Sign descent `θ ← θ − η·g/(|g| + ε)`: the paper's synthetic-experiment optimizer (stateless).
#[derive(Debug, Clone)]
pub struct SignDescent {
    /// ε.
    pub eps: f64,
}

impl<B: Backend> AdapterOptimizer<B> for SignDescent {
    fn name(&self) -> &str {
        "sign"
    }
    fn step_pair(&mut self, _key: &str, lr: f64, p: PairStep<B>) -> (Tensor<B, 2>, Tensor<B, 2>) {
        (
            sign_update(self.eps, lr, p.a, p.grad_a),
            sign_update(self.eps, lr, p.b, p.grad_b),
        )
    }
    fn step_param(
        &mut self,
        _key: &str,
        lr: f64,
        v: Tensor<B, 1>,
        g: Tensor<B, 1>,
    ) -> Tensor<B, 1> {
        sign_update(self.eps, lr, v, g)
    }
}

struct AdamWFactory {
    hp: AdamWParams,
    transport: TransportMode,
}
impl OptimizerFactory for AdamWFactory {
    fn build<B: Backend>(&self) -> Box<dyn AdapterOptimizer<B>> {
        Box::new(AdamW::<B>::new(self.hp, self.transport))
    }
}

struct SgdFactory {
    momentum: f64,
    weight_decay: f64,
    transport: bool,
}
impl OptimizerFactory for SgdFactory {
    fn build<B: Backend>(&self) -> Box<dyn AdapterOptimizer<B>> {
        Box::new(Sgd::<B>::new(
            self.momentum,
            self.weight_decay,
            self.transport,
        ))
    }
}

struct SignFactory(f64);
impl OptimizerFactory for SignFactory {
    fn build<B: Backend>(&self) -> Box<dyn AdapterOptimizer<B>> {
        Box::new(SignDescent { eps: self.0 })
    }
}

crate::register_optimizer! {
    name: "adamw",
    description: "AdamW (decoupled weight decay); optional moment transport across re-factorisations",
    options: &[
        OptionDoc { key: "beta1", default: "0.9", help: "first-moment decay" },
        OptionDoc { key: "beta2", default: "0.999", help: "second-moment decay" },
        OptionDoc { key: "eps", default: "1e-8", help: "denominator ε" },
        OptionDoc { key: "weight_decay", default: "0", help: "decoupled weight decay λ" },
        OptionDoc { key: "transport", default: "false", help: "carry the moments into the manifold's new gauge: \"first\" (m_A ← Pᵀm_A, m_B ← m_B Qᵀ), \"signed\" (also v, exactly, when P is a signed permutation), \"diagonal\" = true (also v_A ← (P∘P)ᵀv_A, v_B ← v_B (Q∘Q)ᵀ); see docs/transport.md" },
    ],
    build: |opts| {
        let hp = adamw_params(opts, "optimizer.adamw", &["transport"])?;
        Ok(Box::new(AdamWFactory { hp, transport: TransportMode::from_options(opts)? }))
    },
}

crate::register_optimizer! {
    name: "sgd",
    description: "SGD with optional momentum and decoupled weight decay",
    options: &[
        OptionDoc { key: "momentum", default: "0", help: "momentum μ" },
        OptionDoc { key: "weight_decay", default: "0", help: "decoupled weight decay λ" },
        OptionDoc { key: "transport", default: "false", help: "carry the momentum buffer into the manifold's new gauge" },
    ],
    build: |opts| {
        opts.reject_unknown("optimizer.sgd", &["momentum", "weight_decay", "transport"])?;
        Ok(Box::new(SgdFactory {
            momentum: opts.f64_or("momentum", 0.0)?,
            weight_decay: opts.f64_or("weight_decay", 0.0)?,
            transport: opts.bool_or("transport", false)?,
        }))
    },
}

crate::register_optimizer! {
    name: "sign",
    description: "sign descent g/(|g|+ε), the paper's synthetic-experiment optimizer",
    options: &[OptionDoc { key: "eps", default: "1e-8", help: "ε in g/(|g|+ε)" }],
    build: |opts| {
        opts.reject_unknown("optimizer.sign", &["eps"])?;
        Ok(Box::new(SignFactory(opts.f64_or("eps", 1e-8)?)))
    },
}
