//! LoRA+ (Hayou, Ghosh, Yu, ICML 2024) as a balora optimizer plugin.
//!
//! AdamW on both factors, but the learning rate of B is `λ·η` while A's is `η` (λ = `ratio`,
//! 16 by default). The element-wise AdamW rule is [`balora_optim::rules::adamw_update`]; this crate
//! only chooses the per-factor learning rates, which is why it needs to see the (A, B) pair
//! together. Optional `transport` carries the moments across re-factorisations the same way as the
//! built-in AdamW ([`TransportMode`]: first moments exactly, second moments by the diagonal rule,
//! exact for signed permutations).
//!
//! Registered as `loraplus`; link the crate (e.g. `extern crate balora_plugin_loraplus;`) and
//! build it by name:
//!
//! ```
//! extern crate balora_plugin_loraplus;
//! use balora_optim::{build_optimizer, OptionValue, Options};
//! use burn::backend::NdArray;
//! let opts = Options::default().with("ratio", OptionValue::Float(8.0));
//! let opt = build_optimizer::<NdArray>("loraplus", &opts).unwrap();
//! assert_eq!(opt.name(), "loraplus");
//! ```

use balora_optim::rules::{adamw_update, AdamWParams, StateStore};
use balora_optim::{
    adamw_params, factor_keys, AdapterOptimizer, OptimError, OptimizerFactory, OptionDoc, Options,
    PairStep, TransportMode,
};
use burn::tensor::{backend::Backend, Tensor};

/// Default ratio λ = η_B / η_A.
pub const DEFAULT_RATIO: f64 = 16.0;

/// LoRA+ on top of AdamW.
#[derive(Debug, Clone)]
pub struct LoraPlus<B: Backend> {
    /// AdamW hyper-parameters (shared by both factors).
    pub hp: AdamWParams,
    /// λ: B's learning rate is `λ·lr`, A's is `lr`.
    pub ratio: f64,
    /// What is carried into the manifold's new gauge.
    pub transport: TransportMode,
    store: StateStore<B>,
}

impl<B: Backend> LoraPlus<B> {
    /// A fresh optimizer.
    pub fn new(hp: AdamWParams, ratio: f64, transport: TransportMode) -> Self {
        Self {
            hp,
            ratio,
            transport,
            store: StateStore::new(&["m", "v"]),
        }
    }
}

impl<B: Backend> AdapterOptimizer<B> for LoraPlus<B> {
    fn name(&self) -> &str {
        "loraplus"
    }

    fn step_pair(&mut self, key: &str, lr: f64, p: PairStep<B>) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let (ka, kb) = factor_keys(key);
        let a = adamw_update(&mut self.store, &ka, &self.hp, lr, p.a, p.grad_a);
        let b = adamw_update(
            &mut self.store,
            &kb,
            &self.hp,
            lr * self.ratio,
            p.b,
            p.grad_b,
        );
        (a, b)
    }

    /// Parameters that are not LoRA factors (heads, …) use the base learning rate.
    fn step_param(&mut self, key: &str, lr: f64, v: Tensor<B, 1>, g: Tensor<B, 1>) -> Tensor<B, 1> {
        adamw_update(&mut self.store, key, &self.hp, lr, v, g)
    }

    fn moment_transport(&self) -> Option<TransportMode> {
        Some(self.transport)
    }

    // State, checkpoints and moment transport (raw-gradient moments, per `transport`): the
    // trait's defaults over this store.
    fn store(&self) -> Option<&StateStore<B>> {
        Some(&self.store)
    }

    fn store_mut(&mut self) -> Option<&mut StateStore<B>> {
        Some(&mut self.store)
    }
}

/// Parsed options; builds a [`LoraPlus`] for any backend.
#[derive(Debug, Clone, Copy)]
pub struct LoraPlusFactory {
    /// AdamW hyper-parameters.
    pub hp: AdamWParams,
    /// λ.
    pub ratio: f64,
    /// Moment transport.
    pub transport: TransportMode,
}

impl LoraPlusFactory {
    /// From config options: the AdamW keys plus `ratio` and `transport`.
    pub fn from_options(opts: &Options) -> Result<Self, OptimError> {
        let hp = adamw_params(opts, "optimizer.loraplus", &["ratio", "transport"])?;
        let ratio = opts.f64_where("ratio", DEFAULT_RATIO, "a positive number", |v| {
            v.is_finite() && v > 0.0
        })?;
        Ok(Self {
            hp,
            ratio,
            transport: TransportMode::from_options(opts)?,
        })
    }
}

impl OptimizerFactory for LoraPlusFactory {
    fn build<B: Backend>(&self) -> Box<dyn AdapterOptimizer<B>> {
        Box::new(LoraPlus::<B>::new(self.hp, self.ratio, self.transport))
    }
}

balora_optim::register_optimizer! {
    name: "loraplus",
    description: "LoRA+: AdamW with B's learning rate λ·(A's) (Hayou et al., 2024)",
    options: &[
        OptionDoc { key: "ratio", default: "16", help: "λ = lr_B / lr_A" },
        OptionDoc { key: "beta1", default: "0.9", help: "first-moment decay" },
        OptionDoc { key: "beta2", default: "0.999", help: "second-moment decay" },
        OptionDoc { key: "eps", default: "1e-8", help: "denominator ε" },
        OptionDoc { key: "weight_decay", default: "0", help: "decoupled weight decay λ_wd" },
        OptionDoc { key: "transport", default: "false", help: "carry the moments into the manifold's new gauge: \"first\" | \"signed\" | \"diagonal\" (= true), as for adamw" },
    ],
    build: |opts| Ok(Box::new(LoraPlusFactory::from_options(opts)?)),
}
