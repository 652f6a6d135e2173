//! **balora**: fine-tune models with LoRA and balanced LoRA (BaLoRA) on [burn].
//!
//! This crate is the public API of the workspace: each module below lists, item by item, what a
//! user of the framework needs from one concept. The workspace's other crates keep more items
//! public (what the `balora` binary and the other crates share among themselves); those are
//! internals and are not re-exported here.
//!
//! | module | what |
//! |---|---|
//! | [`adapter`] | [`LoraConfig`](adapter::LoraConfig) (the one adapter configuration), [`LoraLinear`](adapter::LoraLinear), adapter discovery in any burn module, the manifold hook |
//! | [`manifold`] | the [`Manifold`](manifold::Manifold) trait (host f64 gauge math), `balanced` (BaLoRA), registration and lookup by name, plugin [`Options`](manifold::Options) |
//! | [`optim`] | the [`AdapterOptimizer`](optim::AdapterOptimizer) trait, built-in adamw/sgd/sign, element-wise rules, moment transport, registration and lookup by name |
//! | [`train`] | [`TrainStepper`](train::TrainStepper) (optimizer step → manifold hook → state transport), [`BurnOptimizer`](train::BurnOptimizer) (the same as a burn `Optimizer`), the trainer [`train`](train::train), checkpoints |
//! | [`config`] | the layered TOML job configuration the trainer reads |
//! | [`data`] | datasets, tokenisation and batching for the trainer |
//! | [`models`] | Llama-family and BERT models, loading from GGUF or Hugging Face folders, surgery (adapters on target layers), merge |
//! | [`peft`] | adapters saved and loaded in PEFT's format, merged weights in Hugging Face names |
//! | [`formats`] | GGUF, safetensors, tokenizers and `config.json` as plain f32 tensors; crash-safe writes |
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
//!
//! A model of the workspace with adapters on target layers, trained for two steps, saved as a
//! PEFT adapter, loaded back onto the base model and merged into its weights (a random tiny Llama
//! stands in for [`models::load_causal_lm`] of a GGUF file or a Hugging Face folder):
//!
//! ```
//! use balora::adapter::{LoraConfig, ModuleSelector};
//! use balora::manifold::Options;
//! use balora::models::{attach, merge_all, CausalLm, LlamaConfig, LlamaForCausalLm};
//! use balora::peft::{load_adapter, save_adapter, AdapterMeta};
//! use balora::train::TrainStepper;
//! use burn::backend::{Autodiff, NdArray};
//! use burn::optim::GradientsParams;
//! use burn::tensor::{Int, Tensor};
//! type B = Autodiff<NdArray>;
//!
//! let dev = Default::default();
//! let base = LlamaForCausalLm::<B>::random(&LlamaConfig::tiny(64), &dev);
//! let cfg = LoraConfig {
//!     r: 4,
//!     targets: ModuleSelector::List(vec!["q_proj".into(), "v_proj".into()]),
//!     ..Default::default()
//! };
//! let (mut model, summary) = attach(base.clone(), &cfg, &dev).unwrap();
//! assert_eq!(summary.adapters, 4); // 2 layers × {q_proj, v_proj}
//!
//! let mut stepper =
//!     TrainStepper::<B>::from_names("adamw", &Options::default(), "balanced", &Options::default())
//!         .unwrap();
//! let ids = Tensor::<B, 2, Int>::from_ints([[1, 2, 3, 4]], &dev);
//! for _ in 0..2 {
//!     let loss = model.forward_logits(ids.clone(), None).powi_scalar(2).mean();
//!     let grads = GradientsParams::from_grads(loss.backward(), &model);
//!     model = stepper.step(1e-2, model, grads).unwrap().0;
//! }
//!
//! let dir = std::env::temp_dir().join(format!("balora-facade-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let saved = save_adapter(&model, &cfg, &AdapterMeta::default(), &dir);
//! let loaded = saved.and_then(|()| load_adapter(base.clone(), &dir, &dev));
//! std::fs::remove_dir_all(&dir).unwrap();
//! let (loaded, read_cfg) = loaded.unwrap();
//! assert_eq!(read_cfg.r, 4);
//!
//! // The merged model computes what the adapted one does, and differs from the base.
//! let logits = |m: &LlamaForCausalLm<B>| m.forward_logits(ids.clone(), None);
//! let merged = merge_all(loaded);
//! let diff: f32 = (logits(&merged) - logits(&model)).abs().max().into_scalar();
//! let moved: f32 = (logits(&model) - logits(&base)).abs().max().into_scalar();
//! assert!(diff < 1e-4 && moved > 1e-3, "diff {diff}, moved {moved}");
//! ```

/// Adapters: configuration, the adapted linear layer, discovery in any burn module, and the
/// manifold hook that re-factors every adapter of a model after an optimizer step.
pub mod adapter {
    pub use balora_adapter::{
        apply_manifold, apply_manifold_autodiff, apply_manifold_with, collect_params, pair_grams,
        AdapterInit, HookPath, HookReport, LayerInit, LayerLora, LoraAdapter, LoraConfig,
        LoraConfigError, LoraLinear, ManifoldHookError, ModuleSelector, PairSlot, ParamSlot,
        ParamTable, Patterns,
    };
}

/// Manifolds: what happens to each adapter's factors after an optimizer step (host f64 math on
/// the r×r Grams), BaLoRA's `balanced`, registration (`register_manifold!`) and lookup by name,
/// and the [`Options`](manifold::Options) every plugin (manifold or optimizer) is configured with.
pub mod manifold {
    pub use balora_manifold::balanced::{Balanced, Gauge, DEFAULT_RANK_TOL};
    pub use balora_manifold::{
        build_manifold, diagnose, linalg, manifold_entries, register_manifold, DMatrix,
        GaugeTransform, Manifold, ManifoldError, ManifoldPlugin, OptionDoc, OptionValue, Options,
        OptionsError, PairDiagnostics, PairGrams, Refactor, RegistryError, Schedule, Unconstrained,
    };
}

/// Adapter-aware optimizers: the [`AdapterOptimizer`](optim::AdapterOptimizer) trait (each
/// `(A, B)` pair seen together), the built-ins, the element-wise `rules` and per-tensor state
/// plugins reuse, moment transport across re-factorisations, registration
/// (`register_optimizer!`) and lookup by name, and the driver that applies an optimizer to a whole
/// autodiff module.
pub mod optim {
    pub use balora_optim::{
        adamw_params, build_optimizer, factor_keys, optimizer_entries, register_optimizer, rules,
        transport_adam, transport_buffers, transport_first_moments, transport_second_moments,
        transport_store, upload, AdamW, AdapterOptimizer, MomentKind, OptimError, OptimizerDriver,
        OptimizerEntry, OptimizerFactory, PairStep, RegistryBackend, Sgd, SignDescent,
        TransportMode,
    };
    // The option types are shared with manifolds; named here too so a plugin imports from one
    // module.
    pub use balora_manifold::{
        GaugeTransform, OptionDoc, OptionValue, Options, OptionsError, PairGrams,
    };
}

/// Training: one step ([`TrainStepper`](train::TrainStepper): optimizer → manifold hook →
/// moment transport), the same behind burn's `Optimizer` trait
/// ([`BurnOptimizer`](train::BurnOptimizer), for burn-train's `Learner` or any burn loop), the
/// trainer loop over a dataset with evaluation, schedules and checkpoints, and the losses it uses.
pub mod train {
    pub use balora_train::checkpoint::{Checkpoint, CheckpointError};
    pub use balora_train::loss::{causal_lm_loss, classification_loss};
    pub use balora_train::{
        clip_grad_norm, evaluate, train, BurnOptimizer, BurnOptimizerRecord, LrSchedule,
        MetricRecord, Objective, RunOptions, StepReport, TrainError, TrainOutcome, TrainStepper,
    };
}

/// The job configuration (`configs/*.toml`): defaults < file < `BALORA_…` env < `key=value`
/// overrides, validated; its sections configure the model, adapter, optimizer, manifold, data
/// and trainer.
pub mod config {
    pub use balora_config::{
        ConfigError, DataSection, JobConfig, ModelSection, OutputSection, PluginSection,
        TrainerSection,
    };
}

/// Data for the trainer: datasets loaded per a [`DataSection`](config::DataSection), the
/// tokenising encoder, chat templates and batches.
pub mod data {
    pub use balora_data::{
        load_dataset, Batch, ChatMessage, ChatTemplate, DataError, Dataset, Encoder, Example,
    };
}

/// Models: the Llama family (Llama, SmolLM, Qwen2, Mistral) and BERT in burn with adapter-ready
/// linear layers, loaded from a `.gguf` file or a Hugging Face folder; surgery (adapters attached
/// by target patterns, `modules_to_save` unfrozen), merge/unmerge, generation, and the model
/// traits the trainer is written against.
pub mod models {
    pub use balora_models::generate::{generate, GenerateError, GenerateOptions};
    pub use balora_models::load::{
        load_bert_hf_dir, load_causal_lm, load_llama_gguf, load_llama_hf_dir, LoadedLm,
    };
    pub use balora_models::{
        attach, merge_all, unmerge_all, AdapterHost, BertConfig, BertForSequenceClassification,
        BertModel, CausalLm, KvCache, LinearInfo, LlamaConfig, LlamaForCausalLm, ModelError,
        Pooling, SequenceClassifier, TrainableSummary,
    };
}

/// PEFT interop: adapter folders (`adapter_model.safetensors` + `adapter_config.json`) written
/// and read as PyTorch + PEFT 0.21 does, and merged weights under Hugging Face names (what
/// `merge_and_unload` gives) to write with [`formats::write_safetensors`].
pub mod peft {
    pub use balora_models::balance::{balance_adapter, BalanceRow};
    pub use balora_models::export::{
        bert_classifier_hf_tensors, bert_hf_tensors, llama_hf_tensors,
    };
    pub use balora_models::peft::{
        load_adapter, read_adapter, save_adapter, AdapterMeta, ADAPTER_CONFIG, ADAPTER_WEIGHTS,
    };
}

/// Model files as plain f32 tensors, no tensor library: GGUF (every supported quantisation
/// dequantised), safetensors (the one reader and writer), tokenizers, `config.json`, and the
/// crash-safe file write.
pub mod formats {
    pub use balora_formats::atomic::write_atomic;
    pub use balora_formats::{
        load_tokenizer_json, read_hf_config, read_safetensors, tokenizer_from_gguf,
        write_safetensors, FormatError, GgufFile, RawTensor, SafetensorsFiles, TensorSource,
        PT_FORMAT,
    };
}

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
