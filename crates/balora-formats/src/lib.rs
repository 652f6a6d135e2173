//! Model file formats for balora: tensors from GGUF and safetensors files as f32, tokenizers,
//! Hugging Face `config.json`.
//!
//! * [`GgufFile`]: GGUF v2/v3 (llama.cpp) with metadata accessors and f32 dequantisation of
//!   F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and K-quant (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K,
//!   Q8_K) tensors ([`quant`]).
//! * [`SafetensorsFiles`]: one or several `*.safetensors` files (F32/F16/BF16/F64 → f32);
//!   [`read_safetensors`] and [`write_safetensors`] (atomic) are the one safetensors reader and
//!   writer of the workspace.
//! * Both implement [`TensorSource`], which yields [`RawTensor`]s: row-major f32 data in
//!   PyTorch/HF order (a linear weight is `[out, in]`).
//! * [`LlamaHfView`]: a Llama-family GGUF with Hugging Face names and Q/K layout (llama.cpp's
//!   q/k row permutation undone once, here), through the one name table
//!   ([`llama_gguf_to_hf`], [`llama_hf_to_gguf`]), so one loader
//!   serves GGUF and safetensors checkpoints.
//! * [`tokenizer_from_gguf`] builds a `tokenizers::Tokenizer` from GGUF metadata;
//!   [`load_tokenizer_json`] loads a `tokenizer.json`; [`read_hf_config`] parses `config.json`.
//! * [`atomic`]: crash-safe file writes and folder swaps (temp + `fsync` + rename), used by
//!   every crate that writes results.
//!
//! Every error is a [`FormatError`] naming the file and, where it applies, the tensor, key and shapes.
//!
//! ```
//! use balora_formats::{write_safetensors, SafetensorsFiles, TensorSource, PT_FORMAT};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let path = dir.path().join("model.safetensors");
//! let data = vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
//! write_safetensors(&path, &[("dense.weight".into(), vec![2, 3], data)], PT_FORMAT)?;
//! let files = SafetensorsFiles::open(&[&path])?;
//! let w = files.load_with_shape("dense.weight", &[2, 3])?; // [out, in]
//! assert_eq!(w.data[3], 4.0); // row 1, column 0
//! let err = files.load("dense.bias").unwrap_err().to_string();
//! assert!(err.contains("model.safetensors") && err.contains("dense.bias"));
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod atomic;
mod config;
mod error;
mod gguf;
mod hf_names;
pub mod quant;
mod safetensors;
mod tokenizer;

pub use config::read_hf_config;
pub use error::FormatError;
pub use gguf::{GgufFile, GgufTensorInfo, GgufValue, MAX_ARRAY_DEPTH, MAX_METADATA_VALUES};
pub use hf_names::{llama_gguf_to_hf, llama_hf_to_gguf, LlamaHfView};
pub use quant::GgmlType;
pub use safetensors::{read_safetensors, write_safetensors, SafetensorsFiles, PT_FORMAT};
pub use tokenizer::{load_tokenizer_json, tokenizer_from_gguf, SUPPORTED_PRE};

use std::path::Path;

/// A tensor converted to f32: row-major, shape in PyTorch/HF order (a linear weight is `[out, in]`).
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    /// The name in its file.
    pub name: String,
    /// Shape, slowest dimension first.
    pub shape: Vec<usize>,
    /// `shape.iter().product()` values, row-major.
    pub data: Vec<f32>,
}

impl RawTensor {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Undoes llama.cpp's row permutation of Llama `attn_q`/`attn_k` weights (and biases), giving
    /// the Hugging Face layout that `rotate_half` RoPE expects. `n_head` is the number of heads
    /// of this projection (`head_count` for Q, `head_count_kv` for K).
    ///
    /// llama.cpp's converter stores HF row `h·d + t·d/2 + j` (head `h`, half `t`, index `j`)
    /// at row `h·d + 2j + t`, i.e. the two halves of each head interleaved.
    pub fn unpermute_llama_qk(&mut self, n_head: usize) -> Result<(), String> {
        let rows = self.shape.first().copied().unwrap_or(0);
        if n_head == 0 || rows.checked_rem(2 * n_head) != Some(0) || self.numel() != self.data.len()
        {
            return Err(format!(
                "tensor `{}` of shape {:?} cannot be split into {n_head} heads of even size",
                self.name, self.shape
            ));
        }
        let cols = self.numel() / rows.max(1);
        let d = rows / n_head;
        let half = d / 2;
        let mut out = vec![0.0f32; self.data.len()];
        for h in 0..n_head {
            for t in 0..2 {
                for j in 0..half {
                    let dst = (h * d + t * half + j) * cols;
                    let src = (h * d + 2 * j + t) * cols;
                    out[dst..dst + cols].copy_from_slice(&self.data[src..src + cols]);
                }
            }
        }
        self.data = out;
        Ok(())
    }
}

/// A file (or set of files) that yields named f32 tensors.
pub trait TensorSource {
    /// The file (the first one for a set of files), for messages.
    fn path(&self) -> &Path;
    /// All tensor names, in file order.
    fn names(&self) -> Vec<String>;
    /// Reads one tensor as f32. A missing name gives [`FormatError::MissingTensor`] listing a few
    /// available names.
    fn load(&self, name: &str) -> Result<RawTensor, FormatError>;

    /// [`TensorSource::load`], then checks the shape: a mismatch gives
    /// [`FormatError::ShapeMismatch`] naming the file, tensor and both shapes.
    fn load_with_shape(&self, name: &str, shape: &[usize]) -> Result<RawTensor, FormatError> {
        let t = self.load(name)?;
        if t.shape != shape {
            return Err(FormatError::ShapeMismatch {
                path: self.path().to_path_buf(),
                tensor: name.to_string(),
                found: t.shape,
                expected: format!("{shape:?}"),
            });
        }
        Ok(t)
    }
}
