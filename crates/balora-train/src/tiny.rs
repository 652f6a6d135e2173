//! A tiny random-weight causal LM (one attention + MLP block) for tests and benchmarks.
//!
//! Its projections are [`LoraLinear`]s named like Llama's (`q_proj`, `k_proj`, `v_proj`,
//! `o_proj`, `up_proj`, `down_proj`), so `adapter.targets` select them the same way.

use balora_adapter::{LayerLora, LoraLinear};
use balora_models::CausalLm;
use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::{backend::Backend, Bool, Int, Tensor};

/// Sizes of a [`TinyLm`].
#[derive(Debug, Clone, Copy)]
pub struct TinyLmConfig {
    /// Vocabulary.
    pub vocab: usize,
    /// Hidden size.
    pub hidden: usize,
    /// MLP size.
    pub mlp: usize,
    /// Blocks.
    pub layers: usize,
}

impl Default for TinyLmConfig {
    fn default() -> Self {
        Self {
            vocab: 64,
            hidden: 32,
            mlp: 64,
            layers: 1,
        }
    }
}

/// One pre-norm block.
#[derive(Module, Debug)]
pub struct TinyBlock<B: Backend> {
    norm1: LayerNorm<B>,
    /// Query projection.
    pub q_proj: LoraLinear<B>,
    /// Key projection.
    pub k_proj: LoraLinear<B>,
    /// Value projection.
    pub v_proj: LoraLinear<B>,
    /// Output projection.
    pub o_proj: LoraLinear<B>,
    norm2: LayerNorm<B>,
    /// MLP up.
    pub up_proj: LoraLinear<B>,
    /// MLP down.
    pub down_proj: LoraLinear<B>,
}

/// The tiny causal LM.
#[derive(Module, Debug)]
pub struct TinyLm<B: Backend> {
    embed: Embedding<B>,
    /// Blocks.
    pub layers: Vec<TinyBlock<B>>,
    norm: LayerNorm<B>,
    lm_head: Linear<B>,
}

impl<B: Backend> TinyLm<B> {
    /// Random frozen weights (seed the backend first for reproducibility); adapters with `lora`
    /// (from [`balora_adapter::LoraConfig::resolve`]) on every projection whose name is in `targets`.
    pub fn new(cfg: TinyLmConfig, lora: &LayerLora, targets: &[&str], device: &B::Device) -> Self {
        let h = cfg.hidden;
        let proj = |name: &str, i: usize, o: usize| {
            let l = LoraLinear::new(i, o, false, device);
            if targets.contains(&name) {
                l.with_adapter(lora, device)
            } else {
                l
            }
        };
        let layers = (0..cfg.layers)
            .map(|_| TinyBlock {
                norm1: LayerNormConfig::new(h).init(device).no_grad(),
                q_proj: proj("q_proj", h, h),
                k_proj: proj("k_proj", h, h),
                v_proj: proj("v_proj", h, h),
                o_proj: proj("o_proj", h, h),
                norm2: LayerNormConfig::new(h).init(device).no_grad(),
                up_proj: proj("up_proj", h, cfg.mlp),
                down_proj: proj("down_proj", cfg.mlp, h),
            })
            .collect();
        Self {
            embed: EmbeddingConfig::new(cfg.vocab, h).init(device).no_grad(),
            layers,
            norm: LayerNormConfig::new(h).init(device).no_grad(),
            lm_head: LinearConfig::new(h, cfg.vocab)
                .with_bias(false)
                .init(device)
                .no_grad(),
        }
    }
}

impl<B: Backend> TinyBlock<B> {
    fn forward(&self, x: Tensor<B, 3>, mask: Tensor<B, 4, Bool>) -> Tensor<B, 3> {
        let [_, _, h] = x.dims();
        let n = self.norm1.forward(x.clone());
        let q = self.q_proj.forward(n.clone());
        let k = self.k_proj.forward(n.clone());
        let v = self.v_proj.forward(n);
        let scores = q
            .matmul(k.swap_dims(1, 2))
            .div_scalar((h as f64).sqrt())
            .unsqueeze_dim::<4>(1)
            .mask_fill(mask, -1e9)
            .squeeze_dim::<3>(1);
        let att = softmax(scores, 2).matmul(v);
        let x = x + self.o_proj.forward(att);
        let n = self.norm2.forward(x.clone());
        x.clone() + self.down_proj.forward(gelu(self.up_proj.forward(n)))
    }
}

impl<B: Backend> CausalLm<B> for TinyLm<B> {
    fn forward_logits(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Bool>>,
    ) -> Tensor<B, 3> {
        let [b, s] = input_ids.dims();
        let device = input_ids.device();
        // Blocked: future positions, and padded keys.
        let mut blocked = Tensor::<B, 2, Bool>::tril_mask([s, s], 0, &device)
            .unsqueeze::<3>()
            .expand([b, s, s]);
        if let Some(m) = attention_mask {
            let pad = m.bool_not().unsqueeze_dim::<3>(1).expand([b, s, s]);
            blocked = blocked.bool_or(pad);
        }
        let mask = blocked.unsqueeze_dim::<4>(1);
        let mut x = self.embed.forward(input_ids);
        for layer in &self.layers {
            x = layer.forward(x, mask.clone());
        }
        self.lm_head.forward(self.norm.forward(x))
    }

    fn vocab_size(&self) -> usize {
        self.lm_head.weight.dims()[1]
    }
}
