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
