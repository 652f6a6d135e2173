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

/// Why [`try_generate`] refused or stopped.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GenerateError {
    /// The prompt has no tokens.
    #[error("the prompt is empty (0 tokens): nothing to continue")]
    EmptyPrompt,
    /// The prompt does not fit the model's context.
    #[error("the prompt has {tokens} tokens but the model's context is {context} positions")]
    PromptTooLong {
        /// Prompt tokens.
        tokens: usize,
        /// Positions the model has RoPE tables for.
        context: usize,
    },
    /// A prompt id the embedding has no row for.
    #[error("prompt token id {id} (position {position}) is ≥ the model's vocabulary size {vocab}")]
    TokenOutOfVocab {
        /// The id.
        id: u32,
        /// Its position in the prompt.
        position: usize,
        /// Embedding rows.
        vocab: usize,
    },
    /// Temperature or top-p outside their domain.
    #[error("{0}")]
    Options(String),
    /// The model produced NaN or ±∞ logits (broken weights or adapter).
    #[error("the model's logits at generation step {step} are not finite ({bad} of {vocab} values are NaN or ±∞): the weights or the adapter hold non-finite values or overflow")]
    NonFiniteLogits {
        /// 0-based step (0 = the logits after the prompt).
        step: usize,
        /// Non-finite values.
        bad: usize,
        /// Vocabulary size.
        vocab: usize,
    },
}

/// Checks temperature (finite, ≥ 0) and top-p (in (0, 1]).
pub fn check_options(opts: &GenerateOptions) -> Result<(), GenerateError> {
    if !(opts.temperature.is_finite() && opts.temperature >= 0.0) {
        return Err(GenerateError::Options(format!(
            "temperature {} must be a finite number ≥ 0 (0 = greedy)",
            opts.temperature
        )));
    }
    if !(opts.top_p > 0.0 && opts.top_p <= 1.0) {
        return Err(GenerateError::Options(format!(
            "top_p {} must be in (0, 1]",
            opts.top_p
        )));
    }
    Ok(())
}

/// Checks a prompt against the model: not empty, at most the context's positions, every id
/// below the vocabulary size.
pub fn check_prompt<B: Backend>(
    model: &LlamaForCausalLm<B>,
    prompt: &[u32],
) -> Result<(), GenerateError> {
    use crate::CausalLm;
    let max_pos = model.rope_cos.dims()[0];
    let vocab = model.vocab_size();
    if prompt.is_empty() {
        return Err(GenerateError::EmptyPrompt);
    }
    if prompt.len() > max_pos {
        return Err(GenerateError::PromptTooLong {
            tokens: prompt.len(),
            context: max_pos,
        });
    }
    if let Some((position, &id)) = prompt
        .iter()
        .enumerate()
        .find(|(_, &t)| t as usize >= vocab)
    {
        return Err(GenerateError::TokenOutOfVocab {
            id,
            position,
            vocab,
        });
    }
    Ok(())
}

/// Generates up to `opts.max_tokens` ids after `prompt`; `on_token` sees each new id as it
/// is produced. Returns the new ids. Refuses (before any compute) an empty prompt, one longer
/// than the context, ids outside the vocabulary and bad options; stops with an error on
/// non-finite logits. Generation also ends at a stop id or when the context is full.
pub fn try_generate<B: Backend>(
    model: &LlamaForCausalLm<B>,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_token: impl FnMut(u32),
) -> Result<Vec<u32>, GenerateError> {
    check_options(opts)?;
    check_prompt(model, prompt)?;
    let max_pos = model.rope_cos.dims()[0];
    let device = model.rope_cos.device();
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut cache = KvCache::new(model.num_layers());
    let mut out = Vec::new();
    let mut input: Vec<i64> = prompt.iter().map(|&t| t as i64).collect();
    while out.len() < opts.max_tokens && cache.len() + input.len() <= max_pos {
        let n = input.len();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(input, [1, n]), &device);
        let logits = to_vec(model.forward_step(ids, &mut cache));
        let bad = logits.iter().filter(|x| !x.is_finite()).count();
        if bad > 0 {
            return Err(GenerateError::NonFiniteLogits {
                step: out.len(),
                bad,
                vocab: logits.len(),
            });
        }
        let next = pick(&logits, opts, &mut rng);
        if opts.stop_ids.contains(&next) {
            break;
        }
        out.push(next);
        on_token(next);
        input = vec![next as i64];
    }
    Ok(out)
}

/// [`try_generate`] for callers that only want tokens (benchmarks, golden tests): the ids
/// produced before an error (none for a refused prompt). Use [`try_generate`] to see errors.
pub fn generate<B: Backend>(
    model: &LlamaForCausalLm<B>,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_token: impl FnMut(u32),
) -> Vec<u32> {
    let mut out = Vec::new();
    let _ = try_generate(model, prompt, opts, |id| {
        out.push(id);
        on_token(id)
    });
    out
}

/// SmolLM2's ChatML prompt for one user message (with the default system prompt).
pub fn chatml_prompt(user: &str) -> String {
    format!(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    )
}
