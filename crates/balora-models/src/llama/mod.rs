//! The Llama family (Llama 2/3, Mistral, Qwen2, SmolLM2): RMSNorm, RoPE (Hugging Face
//! rotate-half), grouped-query attention, SwiGLU MLP, tied or untied head, causal + padding
//! masks, KV cache. Weights are always in Hugging Face layout: a GGUF's q/k rows are
//! un-permuted as the file is read ([`balora_formats::LlamaHfView`]).
//!
//! * [`config`]: [`LlamaConfig`] from `config.json` or GGUF metadata.
//! * `rope`: frequencies (Llama-3 scaling), tables, application.
//! * [`layers`]: attention, MLP, decoder layer; [`model`]: the model, loading, forward.
//! * [`cache`]: [`KvCache`]; [`names`]: GGUF ↔ Hugging Face tensor names.

pub mod cache;
pub mod config;
pub mod layers;
pub mod model;
pub mod names;
mod rope;

pub use cache::KvCache;
pub use config::LlamaConfig;
pub use layers::{LlamaAttention, LlamaLayer, LlamaMlp};
pub use model::{LlamaForCausalLm, LlamaModel};
pub use names::{gguf_to_hf_name, hf_to_gguf_name};
