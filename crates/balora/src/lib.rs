//! **balora**: fine-tune models with LoRA and balanced LoRA (BaLoRA) on [burn].
//!
//! This crate gathers the public API of the workspace's crates under one name:
//!
//! | module | crate | what |
//! |---|---|---|
//! | [`adapter`] | `balora-adapter` | [`LoraLinear`](adapter::LoraLinear), adapter discovery in any burn module, the manifold hook |
//! | [`manifold`] | `balora-manifold` | the [`Manifold`](manifold::Manifold) trait (host f64 gauge math), `balanced` (BaLoRA), the manifold registry |
//! | [`optim`] | `balora-optim` | the [`AdapterOptimizer`](optim::AdapterOptimizer) trait, built-in adamw/sgd/sign, the optimizer registry |
//! | [`train`] | `balora-train` | [`TrainStepper`](train::TrainStepper): optimizer step → manifold hook → state transport |
//!
//! Guides (their code blocks are compiled and run as doctests of this crate):
//! [architecture](guide_architecture), [writing an optimizer plugin](guide_optimizer_plugin),
//! [writing a manifold plugin](guide_manifold_plugin), [optimizer-state transport](guide_transport).
//! A user's own burn model trained through this API: `cargo run --example custom_model -p balora`.
//!
//! ```
//! use balora::adapter::{LoraConfig, LoraLinear};
//! use balora::manifold::Options;
//! use balora::train::TrainStepper;
//! use burn::backend::{Autodiff, NdArray};
//! use burn::optim::GradientsParams;
//! use burn::tensor::Tensor;
//! type B = Autodiff<NdArray>;
//!
//! let dev = Default::default();
//! let mut layer = LoraLinear::<B>::new(8, 4, false, &dev)
//!     .with_adapter(&LoraConfig { r: 2, ..Default::default() }.resolve("fc").unwrap(), &dev);
//! let mut stepper = TrainStepper::<B>::from_names("adamw", &Options::default(), "balanced", &Options::default()).unwrap();
//! let x = Tensor::<B, 2>::ones([3, 8], &dev);
//! let loss = layer.forward(x).powi_scalar(2).mean();
//! let grads = GradientsParams::from_grads(loss.backward(), &layer);
//! layer = stepper.step(1e-2, layer, grads).unwrap().0;
//! assert_eq!(stepper.steps(), 1);
//! ```

pub use balora_adapter as adapter;
pub use balora_manifold as manifold;
pub use balora_optim as optim;
pub use balora_train as train;
/// The burn version balora is built on (0.21), re-exported so user code names the same types.
pub use burn;

#[doc = include_str!("../../../docs/architecture.md")]
pub mod guide_architecture {}

#[doc = include_str!("../../../docs/write-an-optimizer-plugin.md")]
pub mod guide_optimizer_plugin {}

#[doc = include_str!("../../../docs/write-a-manifold-plugin.md")]
pub mod guide_manifold_plugin {}

#[doc = include_str!("../../../docs/transport.md")]
pub mod guide_transport {}
