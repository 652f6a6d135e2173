//! Built-in optimizers: SGD (momentum), AdamW (with optional moment transport), sign descent.

use crate::rules::{adamw_update, sgd_update, sign_update, AdamWParams, SgdParams, StateStore};
use crate::transport::TransportMode;
use crate::{AdapterOptimizer, OptimError, OptimizerFactory, Options, OptionsError, PairStep};
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

/// The option keys of [`adamw_params`].
const ADAMW_KEYS: [&str; 4] = ["beta1", "beta2", "eps", "weight_decay"];

/// The option keys of [`sgd_params`].
const SGD_KEYS: [&str; 2] = ["momentum", "weight_decay"];

/// Unknown keys of `section` are an error unless in `keys` or `extra`.
fn reject_unknown(
    opts: &Options,
    section: &str,
    keys: &[&str],
    extra: &[&str],
) -> Result<(), OptimError> {
    let allowed: Vec<&str> = keys.iter().chain(extra).copied().collect();
    Ok(opts.reject_unknown(section, &allowed)?)
}

/// The decay of a running average (β, μ): in [0, 1).
fn decay(opts: &Options, key: &str, default: f64) -> Result<f64, OptionsError> {
    opts.f64_where(key, default, "in [0, 1)", |v| (0.0..1.0).contains(&v))
}

/// The AdamW options of an optimizer's `section` (`beta1`, `beta2` in [0, 1), `eps` > 0,
/// `weight_decay` ≥ 0; defaults [`AdamWParams::default`]); keys other than these and `extra`
/// are an error naming the section. Optimizers built on AdamW (the built-in, `loraplus`,
/// `riemannian`'s AdamW base) parse their AdamW part with it.
pub fn adamw_params(
    opts: &Options,
    section: &str,
    extra: &[&str],
) -> Result<AdamWParams, OptimError> {
    reject_unknown(opts, section, &ADAMW_KEYS, extra)?;
    let d = AdamWParams::default();
    Ok(AdamWParams {
        beta1: decay(opts, "beta1", d.beta1)?,
        beta2: decay(opts, "beta2", d.beta2)?,
        eps: opts.f64_where("eps", d.eps, "> 0", |v| v > 0.0)?,
        weight_decay: opts.f64_where("weight_decay", d.weight_decay, "≥ 0", |v| v >= 0.0)?,
    })
}

/// The SGD options of an optimizer's `section` (`momentum` in [0, 1), `weight_decay` ≥ 0, both
/// default 0); keys other than these and `extra` are an error naming the section.
pub fn sgd_params(opts: &Options, section: &str, extra: &[&str]) -> Result<SgdParams, OptimError> {
    reject_unknown(opts, section, &SGD_KEYS, extra)?;
    Ok(SgdParams {
        momentum: decay(opts, "momentum", 0.0)?,
        weight_decay: opts.f64_where("weight_decay", 0.0, "≥ 0", |v| v >= 0.0)?,
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
    /// Momentum and weight decay.
    pub hp: SgdParams,
    /// Transport the momentum buffer across re-factorisations.
    pub transport: bool,
    store: StateStore<B>,
}

impl<B: Backend> Sgd<B> {
    /// A fresh optimizer.
    pub fn new(hp: SgdParams, transport: bool) -> Self {
        Self {
            hp,
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
        let SgdParams {
            momentum: mu,
            weight_decay: wd,
        } = self.hp;
        (
            sgd_update(&mut self.store, &ka, mu, wd, lr, p.a, p.grad_a),
            sgd_update(&mut self.store, &kb, mu, wd, lr, p.b, p.grad_b),
        )
    }
    fn step_param(&mut self, key: &str, lr: f64, v: Tensor<B, 1>, g: Tensor<B, 1>) -> Tensor<B, 1> {
        let SgdParams {
            momentum,
            weight_decay,
        } = self.hp;
        sgd_update(&mut self.store, key, momentum, weight_decay, lr, v, g)
    }
    fn moment_transport(&self) -> Option<TransportMode> {
        let first = if self.transport {
            TransportMode::First
        } else {
            TransportMode::Off
        };
        (self.hp.momentum != 0.0).then_some(first)
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
    hp: SgdParams,
    transport: bool,
}
impl OptimizerFactory for SgdFactory {
    fn build<B: Backend>(&self) -> Box<dyn AdapterOptimizer<B>> {
        Box::new(Sgd::<B>::new(self.hp, self.transport))
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
        Ok(Box::new(SgdFactory {
            hp: sgd_params(opts, "optimizer.sgd", &["transport"])?,
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
