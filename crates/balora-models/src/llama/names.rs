//! Llama tensor names: GGUF ↔ Hugging Face, through the one table of the project
//! ([`balora_formats::llama_gguf_to_hf`], [`balora_formats::llama_hf_to_gguf`]).

/// Maps a GGUF tensor name of the Llama family to its Hugging Face name
/// (`blk.3.attn_q.weight` → `model.layers.3.self_attn.q_proj.weight`).
pub fn gguf_to_hf_name(name: &str) -> Option<String> {
    balora_formats::llama_gguf_to_hf(name)
}

/// The inverse of [`gguf_to_hf_name`].
pub fn hf_to_gguf_name(name: &str) -> Option<String> {
    balora_formats::llama_hf_to_gguf(name)
}

impl<B: burn::tensor::backend::Backend> super::LlamaForCausalLm<B> {
    /// Every RMSNorm weight `(Hugging Face name, shape, data)` as a checkpoint holds it: for
    /// Gemma's `1 + w` norms the `w` (the model keeps `1 + w`).
    pub fn hf_norm_tensors(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let plus_one = self.family.norm_plus_one;
        let mut out = Vec::new();
        let mut push = |name: String, n: &burn::nn::RmsNorm<B>| {
            let mut data = crate::weights::to_vec(n.gamma.val());
            if plus_one {
                data.iter_mut().for_each(|x| *x -= 1.0);
            }
            out.push((name, vec![data.len()], data));
        };
        for (i, l) in self.model.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            push(format!("{p}.input_layernorm.weight"), &l.input_layernorm);
            push(
                format!("{p}.post_attention_layernorm.weight"),
                &l.post_attention_layernorm,
            );
            let a = &l.self_attn;
            for (n, norm) in [
                ("self_attn.q_norm", &a.q_norm),
                ("self_attn.k_norm", &a.k_norm),
                ("pre_feedforward_layernorm", &l.pre_feedforward_layernorm),
                ("post_feedforward_layernorm", &l.post_feedforward_layernorm),
            ] {
                if let Some(norm) = norm {
                    push(format!("{p}.{n}.weight"), norm);
                }
            }
        }
        push("model.norm.weight".into(), &self.model.norm);
        out
    }
}
