//! Adapter-aware optimizers for LoRA and BaLoRA.
//!
//! An [`AdapterOptimizer`] sees each adapter's `(A, B)` pair together (with its gradients and,
//! on request, its r×r Grams) and keeps per-adapter state by adapter key, which is what LoRA-aware
//! rules need (LoRA+, Riemannian preconditioning, moment transport across re-factorisations).
//! Parameters that are not LoRA factors (heads, `modules_to_save`) go through
//! [`AdapterOptimizer::step_param`].
//!
//! Optimizers are registered at link time with [`register_optimizer!`] (an [`OptimizerEntry`]
//! in the generic plugin [`Registry`] of `balora-manifold`) and built by name with
//! [`build_optimizer`]; [`OptimizerDriver`] applies one to a burn module
//! with its [`GradientsParams`](burn::optim::GradientsParams).
//!
//! ```
//! use balora_optim::{build_optimizer, Options};
//! use burn::backend::NdArray;
//! let opt = build_optimizer::<NdArray>("adamw", &Options::default()).unwrap();
//! assert_eq!(opt.name(), "adamw");
//! assert!(build_optimizer::<NdArray>("no-such", &Options::default()).is_err());
//! ```

mod builtin;
mod driver;
mod registry;
pub mod rules;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod transport;

/// Re-exported so plugin crates register without naming `inventory` themselves.
pub use balora_manifold::inventory;
pub use balora_manifold::{
    GaugeTransform, OptionDoc, OptionValue, Options, OptionsError, PairGrams, PluginEntry,
    Registry, RegistryError,
};
pub use builtin::{adamw_params, factor_keys, sgd_params, AdamW, Sgd, SignDescent};
pub use driver::OptimizerDriver;
pub use registry::{
    build_optimizer, optimizer_entries, ErasedFactory, OptimizerEntry, OptimizerFactory,
    Optimizers, RegistryBackend,
};
pub use transport::{
    signed_permutation, transport_adam, transport_buffers, transport_first_moments,
    transport_second_moments, transport_store, upload, MomentKind, TransportMode,
};

use burn::tensor::{backend::Backend, Tensor, TensorData};

/// Errors of the optimizer layer.
#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    /// Unknown optimizer name.
    #[error("unknown optimizer `{name}`; registered optimizers: {known}")]
    Unknown {
        /// Requested name.
        name: String,
        /// Registered names.
        known: String,
    },
    /// Bad option.
    #[error(transparent)]
    Options(#[from] OptionsError),
    /// Saved state that does not fit.
    #[error("optimizer state: {0}")]
    State(String),
    /// The registry is inconsistent (a name registered by two crates).
    #[error(transparent)]
    Registry(RegistryError),
    /// The backend was not compiled into this build.
    #[error("backend `{0}` is not compiled into this build of balora-optim")]
    Backend(&'static str),
}

/// One adapter's step input: factors, gradients and (if asked for) Grams, on the inner backend.
#[derive(Debug, Clone)]
pub struct PairStep<B: Backend> {
    /// A `[r, in]`.
    pub a: Tensor<B, 2>,
    /// B `[out, r]`.
    pub b: Tensor<B, 2>,
    /// ∂L/∂A.
    pub grad_a: Tensor<B, 2>,
    /// ∂L/∂B.
    pub grad_b: Tensor<B, 2>,
    /// `AAᵀ`, `BᵀB` in f64 when [`AdapterOptimizer::wants_grams`] is true (one transfer for all).
    pub grams: Option<PairGrams>,
}

/// An optimizer that updates LoRA pairs jointly and keeps per-adapter state.
pub trait AdapterOptimizer<B: Backend>: Send {
    /// Registered name.
    fn name(&self) -> &str;

    /// Whether [`PairStep::grams`] should be filled.
    fn wants_grams(&self) -> bool {
        false
    }

    /// New `(A, B)` for the adapter `key` after one step with learning rate `lr`.
    fn step_pair(&mut self, key: &str, lr: f64, pair: PairStep<B>) -> (Tensor<B, 2>, Tensor<B, 2>);

    /// New value of an ordinary trainable parameter (flattened).
    fn step_param(
        &mut self,
        key: &str,
        lr: f64,
        value: Tensor<B, 1>,
        grad: Tensor<B, 1>,
    ) -> Tensor<B, 1>;

    /// The optimizer's per-tensor state, if it keeps one in a [`StateStore`](rules::StateStore):
    /// with it, [`state`](Self::state), [`load_state`](Self::load_state) and
    /// [`on_refactor`](Self::on_refactor) need no code of their own. `None`: stateless.
    fn store(&self) -> Option<&rules::StateStore<B>> {
        None
    }

    /// Mutable access to the same store (implement both or neither).
    fn store_mut(&mut self) -> Option<&mut rules::StateStore<B>> {
        None
    }

    /// How the store's buffers transform under a re-factorisation (the default
    /// [`on_refactor`](Self::on_refactor) uses it): raw-gradient averages unless overridden.
    fn moment_kind(&self) -> MomentKind {
        MomentKind::Gradient
    }

    /// Told after a manifold re-factored adapter `key` by `(A, B) → (Q·A, B·P)`.
    ///
    /// Default: carries the store's `m` (and `v`) buffers per [`moment_transport`](
    /// Self::moment_transport) and [`moment_kind`](Self::moment_kind)
    /// ([`transport_store`]); nothing without a store or a transport mode.
    fn on_refactor(&mut self, key: &str, transform: &GaugeTransform) {
        let (mode, kind) = (self.moment_transport(), self.moment_kind());
        if let (Some(mode), Some(store)) = (mode, self.store_mut()) {
            transport_store(store, key, transform, kind, mode);
        }
    }

    /// Whether the optimizer keeps per-factor moments whose meaning depends on the gauge, and
    /// what it carries across re-factorisations: `None` for stateless optimizers (and plugins
    /// that do not say), else the [`TransportMode`] in effect. Trainers use it to warn about
    /// momentum without transport under a gauge that jumps (the canonical one).
    fn moment_transport(&self) -> Option<TransportMode> {
        None
    }

    /// The state as named host tensors (for checkpoints). Default: the store's
    /// [`export`](rules::StateStore::export), empty without a store.
    fn state(&self) -> Vec<(String, TensorData)> {
        self.store().map(|s| s.export()).unwrap_or_default()
    }

    /// Restores [`state`](Self::state) output onto `device`. Default: the store's
    /// [`import`](rules::StateStore::import); without a store any entry is an error.
    fn load_state(
        &mut self,
        state: Vec<(String, TensorData)>,
        device: &B::Device,
    ) -> Result<(), OptimError> {
        if let Some(store) = self.store_mut() {
            return store.import(state, device);
        }
        match state.first() {
            None => Ok(()),
            Some((k, _)) => Err(OptimError::State(format!(
                "{} is stateless; got `{k}`",
                self.name()
            ))),
        }
    }
}
