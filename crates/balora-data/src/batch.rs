//! Examples, padded batches and the seeded loader.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

/// Label of a position that contributes no loss (PyTorch's `ignore_index`).
pub const IGNORE_INDEX: i64 = -100;

/// One tokenized example.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// Token ids.
    pub ids: Vec<u32>,
    /// Causal LM: whether token `t` is a training target (predicted from tokens `< t`).
    pub target: Vec<bool>,
    /// Classification: the class.
    pub label: Option<usize>,
}

impl Example {
    /// A causal-LM example.
    pub fn lm(ids: Vec<u32>, target: Vec<bool>) -> Self {
        debug_assert_eq!(ids.len(), target.len());
        Self {
            ids,
            target,
            label: None,
        }
    }

    /// A classification example.
    pub fn class(ids: Vec<u32>, label: usize) -> Self {
        let n = ids.len();
        Self {
            ids,
            target: vec![false; n],
            label: Some(label),
        }
    }
}

/// A padded batch on the host, row-major `[batch, seq]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Rows.
    pub batch: usize,
    /// Columns (the longest example; others are right-padded).
    pub seq: usize,
    /// Token ids (`pad_id` in padding).
    pub input_ids: Vec<i64>,
    /// `true` for real tokens.
    pub attention_mask: Vec<bool>,
    /// Causal LM: `[batch, seq]`, `labels[t] = ids[t]` for target tokens else [`IGNORE_INDEX`];
    /// position `t` is predicted by the logits at `t − 1`. Classification: `[batch]` classes.
    pub labels: Vec<i64>,
    /// Whether this is a classification batch.
    pub classification: bool,
}

impl Batch {
    /// Pads `examples` on the right with `pad_id`.
    pub fn collate(examples: &[&Example], pad_id: u32) -> Self {
        let batch = examples.len();
        let seq = examples
            .iter()
            .map(|e| e.ids.len())
            .max()
            .unwrap_or(0)
            .max(1);
        let classification = examples.iter().any(|e| e.label.is_some());
        let mut input_ids = vec![pad_id as i64; batch * seq];
        let mut attention_mask = vec![false; batch * seq];
        let mut labels = if classification {
            vec![0; batch]
        } else {
            vec![IGNORE_INDEX; batch * seq]
        };
        for (row, e) in examples.iter().enumerate() {
            for (t, &id) in e.ids.iter().enumerate() {
                input_ids[row * seq + t] = id as i64;
                attention_mask[row * seq + t] = true;
                if !classification && t > 0 && e.target[t] {
                    labels[row * seq + t] = id as i64;
                }
            }
            if let Some(l) = e.label {
                labels[row] = l as i64;
            }
        }
        Self {
            batch,
            seq,
            input_ids,
            attention_mask,
            labels,
            classification,
        }
    }

    /// Positions that contribute to the loss (causal LM) or rows (classification).
    pub fn loss_tokens(&self) -> usize {
        if self.classification {
            self.batch
        } else {
            self.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()
        }
    }

    /// Real (non-padding) tokens.
    pub fn real_tokens(&self) -> usize {
        self.attention_mask.iter().filter(|&&m| m).count()
    }
}

/// The loader's position (saved in checkpoints).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderState {
    /// Completed passes over the data.
    pub epoch: u64,
    /// Next index within the epoch's permutation.
    pub pos: usize,
}

/// Endless seeded mini-batch order: each epoch is a permutation drawn from `(seed, epoch)`,
/// so the order is the same on every run and resumes exactly from a [`LoaderState`].
#[derive(Debug, Clone)]
pub struct Loader {
    len: usize,
    batch_size: usize,
    seed: u64,
    state: LoaderState,
    order: Vec<usize>,
}

impl Loader {
    /// Over `len` examples (must be > 0) in batches of `batch_size`.
    pub fn new(len: usize, batch_size: usize, seed: u64) -> Self {
        let mut l = Self {
            len,
            batch_size: batch_size.max(1),
            seed,
            state: LoaderState { epoch: 0, pos: 0 },
            order: Vec::new(),
        };
        l.order = l.permutation(0);
        l
    }

    fn permutation(&self, epoch: u64) -> Vec<usize> {
        let mut v: Vec<usize> = (0..self.len).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(
            self.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        v.shuffle(&mut rng);
        v
    }

    /// The next batch's example indices (wrapping into the next epoch; never short unless
    /// the dataset has fewer than `batch_size` examples).
    pub fn next_indices(&mut self) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.batch_size);
        let want = self.batch_size.min(self.len);
        while out.len() < want {
            if self.state.pos >= self.len {
                self.state.epoch += 1;
                self.state.pos = 0;
                self.order = self.permutation(self.state.epoch);
            }
            out.push(self.order[self.state.pos]);
            self.state.pos += 1;
        }
        out
    }

    /// Current position.
    pub fn state(&self) -> LoaderState {
        self.state
    }

    /// Jumps to a saved position.
    pub fn restore(&mut self, state: LoaderState) {
        self.state = state;
        self.order = self.permutation(state.epoch);
    }
}
