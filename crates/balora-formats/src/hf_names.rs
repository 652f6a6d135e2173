//! A Llama GGUF seen with Hugging Face tensor names and layouts.

use crate::error::{examples, FormatError};
use crate::gguf::GgufFile;
use crate::{RawTensor, TensorSource};
use std::path::Path;

/// The Hugging Face name of a llama.cpp Llama tensor name (`blk.3.attn_q.weight` →
/// `model.layers.3.self_attn.q_proj.weight`), `None` for names outside the Llama set.
pub fn llama_gguf_to_hf(name: &str) -> Option<String> {
    let fixed = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    layer.parse::<usize>().ok()?;
    let (part, suffix) = tail.rsplit_once('.')?; // suffix: weight / bias
    let hf = match part {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

/// A Llama-architecture [`GgufFile`] as a [`TensorSource`] with Hugging Face names
/// (`model.layers.N.self_attn.q_proj.weight`, ...) and layouts: `attn_q`/`attn_k` rows are
/// un-permuted ([`RawTensor::unpermute_llama_qk`]) so the tensors equal the original HF
/// checkpoint's (up to quantisation). With tied embeddings there is no `lm_head.weight`.
/// A model loader can then read GGUF and safetensors checkpoints with one name scheme.
pub struct LlamaHfView<'a> {
    file: &'a GgufFile,
    n_head: usize,
    n_head_kv: usize,
    /// (hf name, gguf name) in file order.
    names: Vec<(String, String)>,
}

impl<'a> LlamaHfView<'a> {
    /// Checks the architecture (`llama`) and reads the head counts. Tensors whose names are
    /// outside the Llama set are left out.
    pub fn new(file: &'a GgufFile) -> Result<Self, FormatError> {
        let arch = file.architecture()?;
        if arch != "llama" {
            return Err(FormatError::Invalid {
                path: file.path().to_path_buf(),
                what: "metadata `general.architecture`".into(),
                msg: format!("{arch:?}: Hugging Face names are only mapped for \"llama\""),
            });
        }
        let n_head = file.arch_u32("attention.head_count")? as usize;
        let n_head_kv = match file.get("llama.attention.head_count_kv") {
            Some(_) => file.arch_u32("attention.head_count_kv")? as usize,
            None => n_head,
        };
        let names = file
            .tensor_infos()
            .iter()
            .filter_map(|t| llama_gguf_to_hf(&t.name).map(|hf| (hf, t.name.clone())))
            .collect();
        Ok(Self {
            file,
            n_head,
            n_head_kv,
            names,
        })
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
        let Some((_, gguf)) = self.names.iter().find(|(hf, _)| hf == name) else {
            return Err(FormatError::MissingTensor {
                path: self.file.path().to_path_buf(),
                tensor: name.to_string(),
                count: self.names.len(),
                examples: examples(self.names.iter().map(|(hf, _)| hf.as_str()), name, 5),
            });
        };
        let mut t = self.file.load(gguf)?;
        let heads = if gguf.contains(".attn_q.") {
            Some(self.n_head)
        } else if gguf.contains(".attn_k.") {
            Some(self.n_head_kv)
        } else {
            None
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
