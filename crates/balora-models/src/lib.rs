//! Transformer families in burn with LoRA-ready linear layers, and the traits the trainer
//! uses to train any of them.

pub mod balance;
pub mod bert;
mod error;
pub mod generate;
pub mod load;
pub mod host;
pub mod llama;
pub mod peft;
pub mod st;
pub mod surgery;
pub mod weights;

pub use bert::{BertConfig, BertForSequenceClassification, BertModel, Pooling};
pub use error::ModelError;
pub use host::{AdapterHost, LinearInfo};
pub use llama::{KvCache, LlamaConfig, LlamaForCausalLm, RopeLayout};
pub use surgery::{
    attach, merge_all, unmerge_all, AdapterSpec, LayerSelector, ModuleSelector, TrainableSummary,
};
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
