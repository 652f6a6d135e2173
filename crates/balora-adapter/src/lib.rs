//! LoRA adapters for burn modules and the device side of the manifold hook.
//!
//! * [`LoraLinear`]: a frozen `nn::Linear` plus an optional [`LoraAdapter`]; forward is
//!   `x·W0ᵀ + b + s·((dropout(x)·Aᵀ)·Bᵀ)` and never forms the dense `s·B·A`.
//! * [`collect_params`] walks any burn [`Module`](burn::module::Module) and pairs every `lora_a`/`lora_b` by module
//!   path — adapters are found in user models too, not just ours.
//! * [`apply_manifold`] runs a [`Manifold`](balora_manifold::Manifold) on every adapter of a model: the r×r Grams of all
//!   adapters go to the host in **one** transfer, the manifold decides the gauge transforms in
//!   f64, and the transforms come back in one upload and are applied as two thin matmuls. On
//!   burn-ndarray (feature `ndarray`, on by default) the factors are read in place instead and
//!   each adapter is handled in one go on every core ([`HookPath`]).
//! * [`LoraConfig`]: the one adapter configuration — the TOML `[adapter]` section, the surgery
//!   request, PEFT's `adapter_config.json` (via `balora_models::peft`) — and
//!   [`LoraConfig::resolve`], the one function giving each layer its [`LayerLora`].
//!
//! ```
//! use balora_adapter::{LoraConfig, LoraLinear, ModuleSelector};
//! use burn::backend::NdArray;
//! use burn::tensor::Tensor;
//!
//! let device = Default::default();
//! let cfg = LoraConfig::new(2, 4.0, ModuleSelector::List(vec!["fc".into()])).unwrap();
//! let layer = LoraLinear::<NdArray>::new(8, 4, true, &device)
//!     .with_adapter(&cfg.resolve("fc").unwrap(), &device);
//! let y = layer.forward(Tensor::<NdArray, 2>::ones([3, 8], &device));
//! assert_eq!(y.dims(), [3, 4]);
//! ```

mod config;
mod hook;
#[cfg(feature = "ndarray")]
mod inplace;
mod linear;
mod params;
mod patterns;
mod quant;

pub use config::{
    name_matches, AdapterInit, LayerInit, LayerLora, LoraConfig, LoraConfigError, ModuleSelector,
};
pub use hook::{
    apply_manifold, apply_manifold_autodiff, apply_manifold_with, grams_of, pair_grams, HookPath,
    HookReport, ManifoldHookError,
};
pub use linear::{over_rows, LoraAdapter, LoraLinear};
pub use params::{
    collect_pairs, collect_params, replace_params, PairSlot, ParamSlot, ParamTable, ParamValue,
};
pub use patterns::{deserialize_ordered_map, AsMap, Patterns};
pub use quant::{BaseDtype, QuantKind, QuantMatrix};
