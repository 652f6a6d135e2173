//! Checking a loaded dataset against the model it will train, before any batch is built: a
//! token id the embedding has no row for, or a sequence longer than the model's positions,
//! would otherwise panic deep inside the model.

use crate::load::{DataError, Dataset};
use std::path::Path;

/// What the model can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelLimits {
    /// Embedding rows: every token id (and the pad id) must be below it.
    pub vocab_size: usize,
    /// Positions the model has (RoPE tables, position embeddings).
    pub context: usize,
    /// Classifier outputs, for classification data (labels must be below it).
    pub num_labels: Option<usize>,
}

impl Dataset {
    /// Checks `seq_len` (the configured `data.seq_len`) and every example against `limits`:
    /// `seq_len ≤ context`, all ids and the pad id `< vocab_size`, labels `< num_labels`. Errors
    /// name `path`, the field (`data.seq_len`) or the example and id.
    pub fn check_fits(
        &self,
        path: &Path,
        seq_len: usize,
        limits: ModelLimits,
    ) -> Result<(), DataError> {
        let fail = |reason: String| {
            Err(DataError::DoesNotFit {
                path: path.to_path_buf(),
                reason,
            })
        };
        if limits.vocab_size == 0 {
            return fail("the model's vocabulary size is 0".into());
        }
        if seq_len > limits.context {
            return fail(format!(
                "data.seq_len = {seq_len} exceeds the model's context of {} positions",
                limits.context
            ));
        }
        if self.pad_id as usize >= limits.vocab_size {
            return fail(format!(
                "the tokenizer's pad id {} is ≥ the model's vocabulary size {}",
                self.pad_id, limits.vocab_size
            ));
        }
        for (split, examples) in [("training", &self.train), ("validation", &self.valid)] {
            for (i, e) in examples.iter().enumerate() {
                if e.ids.len() > limits.context {
                    return fail(format!(
                        "{split} example {i} has {} tokens, more than the model's context of {} positions",
                        e.ids.len(),
                        limits.context
                    ));
                }
                if let Some((pos, &id)) = e
                    .ids
                    .iter()
                    .enumerate()
                    .find(|(_, &id)| id as usize >= limits.vocab_size)
                {
                    return fail(format!(
                        "{split} example {i}: token id {id} at position {pos} is ≥ the model's vocabulary size {} (tokenizer and model do not match)",
                        limits.vocab_size
                    ));
                }
                if let (Some(label), Some(n)) = (e.label, limits.num_labels) {
                    if label >= n {
                        return fail(format!(
                            "{split} example {i}: label {label} is ≥ model.num_labels = {n}"
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}
