//! The BERT family (BERT, MiniLM): embeddings (word + position + token type, LayerNorm),
//! post-LN encoder with GELU, CLS / masked-mean pooling, classification head.

use crate::weights::{frozen, load_embedding, load_layer_norm, load_lora_linear, Weights};
use crate::{ModelError, SequenceClassifier};
use balora_adapter::LoraLinear;
use burn::module::Module;
use burn::nn::{Embedding, LayerNorm, LayerNormConfig};
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::{backend::Backend, Bool, Distribution, Int, Tensor, TensorData};
use serde_json::Value;

/// Hyper-parameters of a BERT-family encoder.
#[derive(Debug, Clone, PartialEq)]
pub struct BertConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width d.
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_layers: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// FFN inner width.
    pub intermediate_size: usize,
    /// Position embeddings.
    pub max_position: usize,
    /// Token-type embeddings.
    pub type_vocab_size: usize,
    /// LayerNorm ε.
    pub layer_norm_eps: f64,
}

impl BertConfig {
    /// A tiny config for tests.
    pub fn tiny(vocab: usize) -> Self {
        Self {
            vocab_size: vocab,
            hidden_size: 32,
            num_layers: 2,
            num_heads: 4,
            intermediate_size: 64,
            max_position: 64,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
        }
    }

    /// From a Hugging Face `config.json` value.
    pub fn from_hf_json(v: &Value, origin: &str) -> Result<Self, ModelError> {
        let u = |k: &str| -> Result<usize, ModelError> {
            v.get(k)
                .and_then(Value::as_u64)
                .map(|x| x as usize)
                .ok_or_else(|| ModelError::config(origin, k, "missing or not an integer"))
        };
        if let Some(act) = v.get("hidden_act").and_then(Value::as_str) {
            if act != "gelu" {
                return Err(ModelError::config(
                    origin,
                    "hidden_act",
                    format!("`{act}` is not supported (only `gelu`)"),
                ));
            }
        }
        let cfg = Self {
            vocab_size: u("vocab_size")?,
            hidden_size: u("hidden_size")?,
            num_layers: u("num_hidden_layers")?,
            num_heads: u("num_attention_heads")?,
            intermediate_size: u("intermediate_size")?,
            max_position: u("max_position_embeddings")?,
            type_vocab_size: v
                .get("type_vocab_size")
                .and_then(Value::as_u64)
                .unwrap_or(2) as usize,
            layer_norm_eps: v
                .get("layer_norm_eps")
                .and_then(Value::as_f64)
                .unwrap_or(1e-12),
        };
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// Checks every setting on its own and against the others before anything is allocated
    /// from them (see [`crate::validate`]); errors name the `config.json` field.
    fn validate(&self, origin: &str) -> Result<(), ModelError> {
        use crate::validate::{check_positive_finite, check_size, MAX_DIM, MAX_LAYERS};
        check_size(origin, "vocab_size", self.vocab_size, MAX_DIM)?;
        check_size(origin, "hidden_size", self.hidden_size, MAX_DIM)?;
        check_size(origin, "num_hidden_layers", self.num_layers, MAX_LAYERS)?;
        check_size(origin, "num_attention_heads", self.num_heads, MAX_DIM)?;
        check_size(origin, "intermediate_size", self.intermediate_size, MAX_DIM)?;
        check_size(
            origin,
            "max_position_embeddings",
            self.max_position,
            MAX_DIM,
        )?;
        check_size(origin, "type_vocab_size", self.type_vocab_size, MAX_DIM)?;
        check_positive_finite(origin, "layer_norm_eps", self.layer_norm_eps)?;
        if self.hidden_size.checked_rem(self.num_heads) != Some(0) {
            return Err(ModelError::config(
                origin,
                "num_attention_heads",
                format!(
                    "{} does not divide hidden_size = {}",
                    self.num_heads, self.hidden_size
                ),
            ));
        }
        Ok(())
    }
}

/// Embeddings (HF `embeddings.`); `layer_norm` is HF's `LayerNorm`.
#[derive(Module, Debug)]
pub struct BertEmbeddings<B: Backend> {
    /// Token embedding.
    pub word_embeddings: Embedding<B>,
    /// Absolute position embedding.
    pub position_embeddings: Embedding<B>,
    /// Segment embedding.
    pub token_type_embeddings: Embedding<B>,
    /// LayerNorm.
    pub layer_norm: LayerNorm<B>,
}

/// Self-attention projections (HF `attention.self.`).
#[derive(Module, Debug)]
pub struct BertSelfAttention<B: Backend> {
    /// Query.
    pub query: LoraLinear<B>,
    /// Key.
    pub key: LoraLinear<B>,
    /// Value.
    pub value: LoraLinear<B>,
}

/// Dense + LayerNorm after a residual (HF `attention.output.` and `output.`).
#[derive(Module, Debug)]
pub struct BertOutput<B: Backend> {
    /// Projection.
    pub dense: LoraLinear<B>,
    /// LayerNorm (HF `LayerNorm`).
    pub layer_norm: LayerNorm<B>,
}

/// Attention block (HF `attention.`); `self_` is HF's `self`.
#[derive(Module, Debug)]
pub struct BertAttention<B: Backend> {
    /// Projections.
    pub self_: BertSelfAttention<B>,
    /// Output projection + norm.
    pub output: BertOutput<B>,
}

/// FFN input projection (HF `intermediate.`).
#[derive(Module, Debug)]
pub struct BertIntermediate<B: Backend> {
    /// Projection.
    pub dense: LoraLinear<B>,
}

/// One encoder layer (HF `encoder.layer.N.`).
#[derive(Module, Debug)]
pub struct BertLayer<B: Backend> {
    /// Attention.
    pub attention: BertAttention<B>,
    /// FFN in.
    pub intermediate: BertIntermediate<B>,
    /// FFN out + norm.
    pub output: BertOutput<B>,
}

/// Encoder stack.
#[derive(Module, Debug)]
pub struct BertEncoder<B: Backend> {
    /// Layers.
    pub layer: Vec<BertLayer<B>>,
}

/// A BERT encoder (HF `BertModel` without pooler).
#[derive(Module, Debug)]
pub struct BertModel<B: Backend> {
    /// Embeddings.
    pub embeddings: BertEmbeddings<B>,
    /// Encoder.
    pub encoder: BertEncoder<B>,
    /// Attention heads.
    pub num_heads: usize,
}

/// Sentence pooling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The first token's hidden state.
    Cls,
    /// Mean over real (unmasked) tokens.
    Mean,
}

fn ln<B: Backend>(d: usize, eps: f64, dev: &B::Device) -> LayerNorm<B> {
    LayerNormConfig::new(d).with_epsilon(eps).init(dev)
}

impl<B: Backend> BertModel<B> {
    /// A randomly initialised encoder.
    pub fn random(cfg: &BertConfig, dev: &B::Device) -> Self {
        let d = cfg.hidden_size;
        let emb = |n: usize| Embedding {
            weight: frozen(Tensor::random([n, d], Distribution::Normal(0.0, 1.0), dev)),
        };
        let lin = |i: usize, o: usize| LoraLinear::new(i, o, true, dev);
        let layer = (0..cfg.num_layers)
            .map(|_| BertLayer {
                attention: BertAttention {
                    self_: BertSelfAttention {
                        query: lin(d, d),
                        key: lin(d, d),
                        value: lin(d, d),
                    },
                    output: BertOutput {
                        dense: lin(d, d),
                        layer_norm: ln(d, cfg.layer_norm_eps, dev),
                    },
                },
                intermediate: BertIntermediate {
                    dense: lin(d, cfg.intermediate_size),
                },
                output: BertOutput {
                    dense: lin(cfg.intermediate_size, d),
                    layer_norm: ln(d, cfg.layer_norm_eps, dev),
                },
            })
            .collect();
        Self {
            embeddings: BertEmbeddings {
                word_embeddings: emb(cfg.vocab_size),
                position_embeddings: emb(cfg.max_position),
                token_type_embeddings: emb(cfg.type_vocab_size),
                layer_norm: ln(d, cfg.layer_norm_eps, dev),
            },
            encoder: BertEncoder { layer },
            num_heads: cfg.num_heads,
        }
    }

    /// Loads HF names (`embeddings.word_embeddings.weight`, `encoder.layer.0.attention.self.query.weight`, ...);
    /// a `bert.` prefix is accepted too.
    pub fn load(cfg: &BertConfig, w: &dyn Weights, dev: &B::Device) -> Result<Self, ModelError> {
        let pre = if w.contains("bert.embeddings.word_embeddings.weight") {
            "bert."
        } else {
            ""
        };
        let d = cfg.hidden_size;
        let eps = cfg.layer_norm_eps;
        let mut layer = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            let p = format!("{pre}encoder.layer.{l}");
            let lin = |n: &str, i: usize, o: usize| {
                load_lora_linear::<B>(w, &format!("{p}.{n}"), true, i, o, dev)
            };
            layer.push(BertLayer {
                attention: BertAttention {
                    self_: BertSelfAttention {
                        query: lin("attention.self.query", d, d)?,
                        key: lin("attention.self.key", d, d)?,
                        value: lin("attention.self.value", d, d)?,
                    },
                    output: BertOutput {
                        dense: lin("attention.output.dense", d, d)?,
                        layer_norm: load_layer_norm(
                            w,
                            &format!("{p}.attention.output.LayerNorm"),
                            d,
                            eps,
                            dev,
                        )?,
                    },
                },
                intermediate: BertIntermediate {
                    dense: lin("intermediate.dense", d, cfg.intermediate_size)?,
                },
                output: BertOutput {
                    dense: lin("output.dense", cfg.intermediate_size, d)?,
                    layer_norm: load_layer_norm(w, &format!("{p}.output.LayerNorm"), d, eps, dev)?,
                },
            });
        }
        Ok(Self {
            embeddings: BertEmbeddings {
                word_embeddings: load_embedding(
                    w,
                    &format!("{pre}embeddings.word_embeddings.weight"),
                    cfg.vocab_size,
                    d,
                    dev,
                )?,
                position_embeddings: load_embedding(
                    w,
                    &format!("{pre}embeddings.position_embeddings.weight"),
                    cfg.max_position,
                    d,
                    dev,
                )?,
                token_type_embeddings: load_embedding(
                    w,
                    &format!("{pre}embeddings.token_type_embeddings.weight"),
                    cfg.type_vocab_size,
                    d,
                    dev,
                )?,
                layer_norm: load_layer_norm(w, &format!("{pre}embeddings.LayerNorm"), d, eps, dev)?,
            },
            encoder: BertEncoder { layer },
            num_heads: cfg.num_heads,
        })
    }

    /// Last hidden states `[batch, seq, d]` (token types all 0).
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Bool>>,
    ) -> Tensor<B, 3> {
        let [b, s] = input_ids.dims();
        let dev = input_ids.device();
        let pos = Tensor::<B, 1, Int>::arange(0..s as i64, &dev)
            .reshape([1, s])
            .expand([b, s]);
        let types = Tensor::<B, 2, Int>::zeros([b, s], &dev);
        let e = &self.embeddings;
        let mut x = e.layer_norm.forward(
            e.word_embeddings.forward(input_ids)
                + e.position_embeddings.forward(pos)
                + e.token_type_embeddings.forward(types),
        );
        let d = x.dims()[2];
        let nh = self.num_heads;
        let hd = d / nh;
        // Materialised at the scores' full shape once, reused by every layer: a broadcast
        // operand is a strided read on CPU backends.
        let bias: Option<Tensor<B, 4>> = attention_mask.map(|m| {
            (m.float().neg() + 1.0)
                .mul_scalar(-1e9)
                .reshape([b, 1, 1, s])
                .repeat_dim(1, self.num_heads)
                .repeat_dim(2, s)
        });
        let scale = 1.0 / (hd as f64).sqrt();
        for l in &self.encoder.layer {
            let sa = &l.attention.self_;
            let heads = |t: Tensor<B, 3>| t.reshape([b, s, nh, hd]).swap_dims(1, 2);
            let q = heads(sa.query.forward(x.clone()));
            let k = heads(sa.key.forward(x.clone()));
            let v = heads(sa.value.forward(x.clone()));
            let mut scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale);
            if let Some(bm) = &bias {
                scores = scores + bm.clone();
            }
            let ctx = softmax(scores, 3)
                .matmul(v)
                .swap_dims(1, 2)
                .reshape([b, s, d]);
            let ao = &l.attention.output;
            x = ao.layer_norm.forward(ao.dense.forward(ctx) + x);
            let inner = match balora_cpu::gelu(l.intermediate.dense.forward(x.clone())) {
                Ok(y) => y,
                Err(h) => gelu(h),
            };
            x = l
                .output
                .layer_norm
                .forward(l.output.dense.forward(inner) + x);
        }
        x
    }

    /// Pooled sentence vectors `[batch, d]`.
    pub fn pool(
        &self,
        hidden: Tensor<B, 3>,
        attention_mask: Option<Tensor<B, 2, Bool>>,
        pooling: Pooling,
    ) -> Tensor<B, 2> {
        let [b, s, d] = hidden.dims();
        match pooling {
            Pooling::Cls => hidden.narrow(1, 0, 1).reshape([b, d]),
            Pooling::Mean => {
                let m = match attention_mask {
                    Some(m) => m.float(),
                    None => Tensor::ones([b, s], &hidden.device()),
                };
                let m3: Tensor<B, 3> = m.clone().reshape([b, s, 1]);
                let sum: Tensor<B, 2> = (hidden * m3).sum_dim(1).reshape([b, d]);
                let n: Tensor<B, 2> = m.sum_dim(1).clamp_min(1e-9);
                sum / n
            }
        }
    }

    /// L2-normalised mean-pooled sentence embeddings (sentence-transformers' MiniLM recipe).
    pub fn sentence_embeddings(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Bool>>,
    ) -> Tensor<B, 2> {
        let h = self.forward(input_ids, attention_mask.clone());
        let p = self.pool(h, attention_mask, Pooling::Mean);
        let norm = p.clone().square().sum_dim(1).sqrt().clamp_min(1e-12);
        p / norm
    }
}

/// BERT with a classification head (HF `BertForSequenceClassification` without the pooler
/// dense layer: the head reads the pooled vector directly).
#[derive(Module, Debug)]
pub struct BertForSequenceClassification<B: Backend> {
    /// Encoder (PEFT paths `bert.encoder.layer.N...`).
    pub bert: BertModel<B>,
    /// Head `[d → classes]`.
    pub classifier: LoraLinear<B>,
    /// Mean pooling (`true`) or CLS (`false`).
    pub mean_pool: bool,
}

impl<B: Backend> BertForSequenceClassification<B> {
    /// Wraps an encoder with a fresh head (small random weights, zero bias).
    pub fn new(bert: BertModel<B>, classes: usize, pooling: Pooling, dev: &B::Device) -> Self {
        let d = bert.embeddings.word_embeddings.weight.dims()[1];
        let w = Tensor::<B, 2>::random([d, classes], Distribution::Normal(0.0, 0.02), dev);
        let classifier = LoraLinear::from_base(burn::nn::Linear {
            weight: frozen(w),
            bias: Some(frozen(Tensor::from_data(
                TensorData::new(vec![0f32; classes], [classes]),
                dev,
            ))),
        });
        Self {
            bert,
            classifier,
            mean_pool: pooling == Pooling::Mean,
        }
    }
}

impl<B: Backend> SequenceClassifier<B> for BertForSequenceClassification<B> {
    fn forward_classes(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Bool>>,
    ) -> Tensor<B, 2> {
        let h = self.bert.forward(input_ids, attention_mask.clone());
        let pooling = if self.mean_pool {
            Pooling::Mean
        } else {
            Pooling::Cls
        };
        self.classifier
            .forward(self.bert.pool(h, attention_mask, pooling))
    }

    fn num_classes(&self) -> usize {
        self.classifier.dims().1
    }
}
