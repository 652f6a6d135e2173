//! A Llama-family GGUF seen with Hugging Face tensor names and layouts: the one GGUF ↔ Hugging
//! Face name table of the project, and the one place llama.cpp's q/k row permutation is undone.

use crate::error::{examples, FormatError};
use crate::gguf::GgufFile;
use crate::{RawTensor, TensorSource};
use std::path::Path;

/// Whole-model tensors: (GGUF name, Hugging Face name).
const FIXED: [(&str, &str); 3] = [
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// Per-layer modules: (GGUF `blk.N.<part>`, Hugging Face `model.layers.N.<module>`).
const LAYER: [(&str, &str); 12] = [
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    // Qwen3's per-head q/k norms.
    ("attn_q_norm", "self_attn.q_norm"),
    ("attn_k_norm", "self_attn.k_norm"),
    // Phi-3's fused q/k/v (its fused gate/up is `ffn_up`: see [`LlamaHfView::new`]).
    ("attn_qkv", "self_attn.qkv_proj"),
];

/// Maps `name` through the table: `from` picks the side it is written in (0 GGUF, 1 HF).
fn map_name(name: &str, from: usize) -> Option<String> {
    let pick = |p: (&'static str, &'static str)| if from == 0 { p } else { (p.1, p.0) };
    if let Some((_, to)) = FIXED.into_iter().map(pick).find(|(f, _)| *f == name) {
        return Some(to.to_string());
    }
    let (prefix, to_prefix) = pick(("blk.", "model.layers."));
    let (layer, tail) = name.strip_prefix(prefix)?.split_once('.')?;
    layer.parse::<usize>().ok()?;
    let (part, suffix) = tail.rsplit_once('.')?; // suffix: weight / bias
    let (_, to) = LAYER.into_iter().map(pick).find(|(f, _)| *f == part)?;
    Some(format!("{to_prefix}{layer}.{to}.{suffix}"))
}

/// The Hugging Face name of a llama.cpp Llama-family tensor name (`blk.3.attn_q.weight` →
/// `model.layers.3.self_attn.q_proj.weight`), `None` for names outside the Llama set.
pub fn llama_gguf_to_hf(name: &str) -> Option<String> {
    map_name(name, 0)
}

/// The inverse of [`llama_gguf_to_hf`] (`model.norm.weight` → `output_norm.weight`).
pub fn llama_hf_to_gguf(name: &str) -> Option<String> {
    map_name(name, 1)
}

/// A Llama-family [`GgufFile`] (`general.architecture` `llama`, `mistral`, `qwen2`, `qwen3` or
/// `phi3`) as a [`TensorSource`] with Hugging Face names (`model.layers.N.self_attn.q_proj.weight`,
/// ...) and layouts: for `llama`/`mistral`, whose q/k rows llama.cpp's converter permutes for ggml's
/// interleaved RoPE, `attn_q`/`attn_k` weights and biases are un-permuted
/// ([`RawTensor::unpermute_llama_qk`]) as they are read, so the tensors equal the original HF
/// checkpoint's (up to quantisation); `qwen2`, `qwen3` and `phi3` are stored in HF order (NEOX
/// RoPE) and read as is.
/// With tied embeddings there is no `lm_head.weight`. A model loader reads GGUF and safetensors
/// checkpoints with one name scheme and one layout, and nothing downstream knows llama.cpp's.
pub struct LlamaHfView<'a> {
    file: &'a GgufFile,
    /// `(q heads, kv heads)` when q/k rows are stored permuted.
    permuted: Option<(usize, usize)>,
    /// (hf name, gguf name) in file order.
    names: Vec<(String, String)>,
}

impl<'a> LlamaHfView<'a> {
    /// Checks the architecture and reads the head counts. Tensors whose names are outside the
    /// Llama set are left out.
    pub fn new(file: &'a GgufFile) -> Result<Self, FormatError> {
        let arch = file.architecture()?;
        if !matches!(arch, "llama" | "mistral" | "qwen2" | "qwen3" | "phi3") {
            return Err(FormatError::Invalid {
                path: file.path().to_path_buf(),
                what: "metadata `general.architecture`".into(),
                msg: format!(
                    "{arch:?}: Hugging Face names are only mapped for \"llama\", \"mistral\", \"qwen2\", \"qwen3\", \"phi3\""
                ),
            });
        }
        let permuted = if matches!(arch, "qwen2" | "qwen3" | "phi3") {
            None
        } else {
            let n_head = file.arch_u32("attention.head_count")? as usize;
            let n_head_kv = match file.get(&format!("{arch}.attention.head_count_kv")) {
                Some(_) => file.arch_u32("attention.head_count_kv")? as usize,
                None => n_head,
            };
            Some((n_head, n_head_kv))
        };
        // Phi-3 keeps gate and up fused in `ffn_up` (rows gate, up): HF's `gate_up_proj`.
        let fused_up = arch == "phi3";
        let names = file
            .tensor_infos()
            .iter()
            .filter_map(|t| llama_gguf_to_hf(&t.name).map(|hf| (hf, t.name.clone())))
            .map(|(hf, g)| match fused_up {
                true => (hf.replace(".mlp.up_proj.", ".mlp.gate_up_proj."), g),
                false => (hf, g),
            })
            .collect();
        Ok(Self {
            file,
            permuted,
            names,
        })
    }

    /// The GGUF name of the tensor the Hugging Face name `hf` reads (for messages).
    pub fn gguf_name(&self, hf: &str) -> Option<&str> {
        self.names
            .iter()
            .find(|(h, _)| h == hf)
            .map(|(_, g)| g.as_str())
    }

    /// Whether the file has a tensor for the Hugging Face name `hf`.
    pub fn contains(&self, hf: &str) -> bool {
        self.gguf_name(hf).is_some()
    }
}

impl TensorSource for LlamaHfView<'_> {
    fn path(&self) -> &Path {
        self.file.path()
    }

    fn names(&self) -> Vec<String> {
        self.names.iter().map(|(hf, _)| hf.clone()).collect()
    }

    fn load(&self, name: &str) -> Result<RawTensor, FormatError> {
        let Some(gguf) = self.gguf_name(name) else {
            return Err(FormatError::MissingTensor {
                path: self.file.path().to_path_buf(),
                tensor: name.to_string(),
                count: self.names.len(),
                examples: examples(self.names.iter().map(|(hf, _)| hf.as_str()), name, 5),
            });
        };
        let mut t = self.file.load(gguf)?;
        let heads = match self.permuted {
            Some((q, _)) if gguf.contains(".attn_q.") => Some(q),
            Some((_, kv)) if gguf.contains(".attn_k.") => Some(kv),
            _ => None,
        };
        if let Some(h) = heads {
            t.unpermute_llama_qk(h)
                .map_err(|msg| FormatError::Invalid {
                    path: self.file.path().to_path_buf(),
                    what: format!("tensor `{gguf}`"),
                    msg,
                })?;
        }
        t.name = name.to_string();
        Ok(t)
    }
}
