//! The Llama-style decoder and the families built on it (Llama 2/3, Mistral, Qwen2, SmolLM2,
//! Qwen3, Gemma 2, Gemma 3 text, Phi-3): RMSNorm, RoPE (Hugging Face rotate-half, partial),
//! grouped-query attention, gated MLP, tied or untied head, causal + sliding-window + padding
//! masks, KV cache; what each family changes is a flag of [`Family`]. Weights are always in
//! Hugging Face layout: a GGUF's q/k rows are un-permuted as the file is read
//! ([`balora_formats::LlamaHfView`]).
//!
//! * [`config`]: [`LlamaConfig`] from `config.json` or GGUF metadata; [`family`]: [`Family`],
//!   the per-family flags, and the RoPE settings of `config.json`.
//! * `build`: the model's structure (names, shapes), shared by loading and random init.
//! * `rope`: frequencies (Llama-3 scaling), tables, application.
//! * [`layers`]: attention, MLP, decoder layer; [`model`]: the model, loading, forward.
//! * [`cache`]: [`KvCache`]; [`names`]: GGUF ↔ Hugging Face tensor names.

mod build;
pub mod cache;
pub mod config;
pub mod family;
pub mod layers;
pub mod model;
pub mod names;
mod rope;

pub use cache::KvCache;
pub use config::LlamaConfig;
pub use family::Family;
pub use layers::{LlamaAttention, LlamaLayer, LlamaMlp};
pub use model::{LlamaForCausalLm, LlamaModel};
pub use names::{gguf_to_hf_name, hf_to_gguf_name};
