//! Adapter-aware optimizers for LoRA and BaLoRA.
//!
//! An [`AdapterOptimizer`] sees each adapter's `(A, B)` pair together (with its gradients and,
//! on request, its r×r Grams) and keeps per-adapter state by adapter key, which is what LoRA-aware
//! rules need (LoRA+, Riemannian preconditioning, moment transport across re-factorisations).
//! Parameters that are not LoRA factors (heads, `modules_to_save`) go through
//! [`AdapterOptimizer::step_param`].
//!
//! Optimizers are registered at link time with [`inventory::submit!`] and an [`OptimizerEntry`]
//! and built by name with [`build_optimizer`]; [`OptimizerDriver`] applies one to a burn module
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
    GaugeTransform, OptionDoc, OptionValue, Options, OptionsError, PairGrams,
};
pub use builtin::{adamw_params, factor_keys, AdamW, Sgd, SignDescent};
pub use driver::OptimizerDriver;
pub use registry::{
    build_optimizer, optimizer_entries, ErasedFactory, OptimizerEntry, OptimizerFactory,
    RegistryBackend,
};
pub use transport::{
    signed_permutation, transport_adam, transport_buffers, transport_first_moments,
    transport_second_moments, upload, MomentKind, TransportMode,
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

    /// Told after a manifold re-factored adapter `key` by `(A, B) → (Q·A, B·P)`.
    fn on_refactor(&mut self, _key: &str, _transform: &GaugeTransform) {}

    /// Whether the optimizer keeps per-factor moments whose meaning depends on the gauge, and
    /// what it carries across re-factorisations: `None` for stateless optimizers (and plugins
    /// that do not say), else the [`TransportMode`] in effect. Trainers use it to warn about
    /// momentum without transport under a gauge that jumps (the canonical one).
    fn moment_transport(&self) -> Option<TransportMode> {
        None
    }

    /// The state as named host tensors (for checkpoints).
    fn state(&self) -> Vec<(String, TensorData)>;

    /// Restores [`state`](Self::state) output onto `device`.
    fn load_state(
        &mut self,
        state: Vec<(String, TensorData)>,
        device: &B::Device,
    ) -> Result<(), OptimError>;
}
