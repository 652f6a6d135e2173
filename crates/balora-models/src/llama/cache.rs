//! The key/value cache of incremental decoding.

use burn::tensor::{backend::Backend, Tensor};

/// Per-layer key/value cache for incremental decoding.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    /// Per layer: keys and values `[batch, kv_heads, positions, head_dim]` so far.
    pub(super) layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    pub(super) len: usize,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for `layers` layers.
    pub fn new(layers: usize) -> Self {
        Self {
            layers: vec![None; layers],
            len: 0,
        }
    }
    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}
