//! Text generation with a KV cache: greedy, or temperature + nucleus (top-p) sampling.

use crate::llama::{KvCache, LlamaForCausalLm};
use crate::weights::to_vec;
use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// Decoding options.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// Maximum new tokens.
    pub max_tokens: usize,
    /// 0 = greedy; otherwise logits are divided by it before sampling.
    pub temperature: f64,
    /// Nucleus mass (1 = no truncation).
    pub top_p: f64,
    /// Sampling seed.
    pub seed: u64,
    /// Stop at any of these ids (not emitted).
    pub stop_ids: Vec<u32>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_tokens: 64,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop_ids: Vec::new(),
        }
    }
}

/// Picks the next token from `logits` (greedy when `temperature <= 0`).
pub fn pick(logits: &[f32], opts: &GenerateOptions, rng: &mut StdRng) -> u32 {
    if opts.temperature <= 0.0 {
        let mut best = 0;
        for (i, &v) in logits.iter().enumerate() {
            if v > logits[best] {
                best = i;
            }
        }
        return best as u32;
    }
    let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut probs: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &v)| (i, ((v as f64 - m) / opts.temperature).exp()))
        .collect();
    let z: f64 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= z);
    probs.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut keep = probs.len();
    let mut acc = 0.0;
    for (k, p) in probs.iter().enumerate() {
        acc += p.1;
        if acc >= opts.top_p {
            keep = k + 1;
            break;
        }
    }
    let probs = &probs[..keep];
    let total: f64 = probs.iter().map(|p| p.1).sum();
    let mut u = rng.random::<f64>() * total;
    for p in probs {
        u -= p.1;
        if u <= 0.0 {
            return p.0 as u32;
        }
    }
    probs[probs.len() - 1].0 as u32
}

/// Generates up to `opts.max_tokens` ids after `prompt`; `on_token` sees each new id as it
/// is produced. Returns the new ids.
pub fn generate<B: Backend>(
    model: &LlamaForCausalLm<B>,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_token: impl FnMut(u32),
) -> Vec<u32> {
    let device = model.rope_cos.device();
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut cache = KvCache::new(model.num_layers());
    let mut out = Vec::new();
    let max_pos = model.rope_cos.dims()[0];
    let mut input: Vec<i64> = prompt.iter().map(|&t| t as i64).collect();
    while out.len() < opts.max_tokens && cache.len() + input.len() <= max_pos && !input.is_empty() {
        let n = input.len();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(input, [1, n]), &device);
        let logits = to_vec(model.forward_step(ids, &mut cache));
        let next = pick(&logits, opts, &mut rng);
        if opts.stop_ids.contains(&next) {
            break;
        }
        out.push(next);
        on_token(next);
        input = vec![next as i64];
    }
    out
}

/// SmolLM2's ChatML prompt for one user message (with the default system prompt).
pub fn chatml_prompt(user: &str) -> String {
    format!(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    )
}
