//! Transformer families in burn with LoRA-ready linear layers, and the traits the trainer
//! uses to train any of them.
//!
//! * [`llama`]: Llama 2/3, Mistral, Qwen2, SmolLM2 (RMSNorm, RoPE, GQA, SwiGLU, tied/untied
//!   head, KV cache); [`bert`]: BERT / MiniLM encoders and a classifier; [`gpt`]: GPT-2
//!   (Conv1D projections, PEFT `fan_in_fan_out`) and GPT-NeoX / Pythia (partial rotary).
//! * [`load`]: models from GGUF files or Hugging Face folders (through `balora-formats`); every
//!   model is in Hugging Face layout (a GGUF's q/k rows are un-permuted once, as it is read).
//! * [`surgery`]: PEFT-style target selection ([`attach`]), trainable summary, [`merge_all`].
//! * [`peft`]: `adapter_model.safetensors` + `adapter_config.json` in PEFT's names and layout.
//! * [`balance`]: re-factor a saved adapter onto the balanced manifold; [`generate`]: decoding.
//! * [`validate`]: model settings and tensors checked against each other before allocating.

pub mod balance;
pub mod bert;
mod error;
pub mod export;
pub mod generate;
pub mod gpt;
pub mod linears;
pub mod llama;
pub mod load;
pub mod peft;
pub mod surgery;
pub mod validate;
pub mod weights;

pub use balora_adapter::{AdapterInit, LoraConfig, ModuleSelector, Patterns};
pub use bert::{BertConfig, BertForSequenceClassification, BertModel, Pooling};
pub use error::ModelError;
pub use gpt::gpt2::{Gpt2Config, Gpt2LmHeadModel};
pub use gpt::neox::{GptNeoXConfig, GptNeoXForCausalLm};
pub use linears::{AdapterHost, LinearInfo};
pub use llama::{KvCache, LlamaConfig, LlamaForCausalLm};
pub use peft::LayerSelector;
pub use surgery::{attach, merge_all, unmerge_all, TrainableSummary};
pub use weights::{MemWeights, Weights};

use burn::module::Module;
use burn::tensor::{backend::Backend, Bool, Int, Tensor};

/// A causal language model: token ids in, next-token logits out.
pub trait CausalLm<B: Backend>: Module<B> {
    /// Logits `[batch, seq, vocab]` for `input_ids` `[batch, seq]`. `attention_mask`
    /// `[batch, seq]` is `true` for real tokens and `false` for padding (right padding).
    fn forward_logits(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Bool>>,
    ) -> Tensor<B, 3>;

    /// Vocabulary size.
    fn vocab_size(&self) -> usize;
}

/// A sequence classifier: token ids in, class logits out.
pub trait SequenceClassifier<B: Backend>: Module<B> {
    /// Class logits `[batch, classes]`; `attention_mask` as in [`CausalLm::forward_logits`].
    fn forward_classes(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Bool>>,
    ) -> Tensor<B, 2>;

    /// Number of classes.
    fn num_classes(&self) -> usize;
}
