use crate::config::{LayerInit, LayerLora};
use balora_cpu::{FrozenCache, QuantMatrix};
use burn::module::{Module, Param, ParamId};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::tensor::{backend::Backend, Distribution, Tensor, TensorData};

/// The low-rank pair of one adapted layer, in PEFT's layout.
#[derive(Module, Debug)]
pub struct LoraAdapter<B: Backend> {
    /// A, shape `[r, in]`.
    pub lora_a: Param<Tensor<B, 2>>,
    /// B, shape `[out, r]`.
    pub lora_b: Param<Tensor<B, 2>>,
    /// Scale s (α/r or α/√r).
    pub scale: f64,
    /// Dropout on the adapter input.
    pub dropout: Dropout,
    /// Whether `s·B·A` has been added into the base weight (forward then skips the adapter).
    pub merged: bool,
}

impl<B: Backend> LoraAdapter<B> {
    /// A fresh adapter (`B = 0`) for a `d_in → d_out` layer, as resolved by
    /// [`LoraConfig::resolve`](crate::LoraConfig::resolve).
    pub fn new(d_in: usize, d_out: usize, cfg: &LayerLora, device: &B::Device) -> Self {
        let r = cfg.r();
        let a = match cfg.init() {
            LayerInit::Kaiming => {
                let bound = cfg.init_scale() / (d_in as f64).sqrt();
                Tensor::random([r, d_in], Distribution::Uniform(-bound, bound), device)
            }
            LayerInit::Gaussian { std } => {
                let std = std * cfg.init_scale();
                Tensor::random([r, d_in], Distribution::Normal(0.0, std), device)
            }
        };
        Self::from_tensors(
            a,
            Tensor::zeros([d_out, r], device),
            cfg.scale(),
            cfg.dropout(),
        )
    }

    /// An adapter from given factors (A `[r, in]`, B `[out, r]`).
    pub fn from_tensors(a: Tensor<B, 2>, b: Tensor<B, 2>, scale: f64, dropout: f64) -> Self {
        Self {
            lora_a: Param::from_tensor(a),
            lora_b: Param::from_tensor(b),
            scale,
            dropout: DropoutConfig::new(dropout.clamp(0.0, 1.0)).init(),
            merged: false,
        }
    }

    /// Rank r.
    pub fn rank(&self) -> usize {
        self.lora_a.dims()[0]
    }

    /// `s·((dropout(x)·Aᵀ)·Bᵀ)` for `x` of shape `[..., in]`.
    pub fn delta<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let x = self.dropout.forward(x);
        let xa = burn::tensor::module::linear(x, self.lora_a.val().transpose(), None);
        burn::tensor::module::linear(xa, self.lora_b.val().transpose(), None).mul_scalar(self.scale)
    }

    /// The dense `s·B·A` (`[out, in]`), for merging and tests only.
    pub fn delta_weight(&self) -> Tensor<B, 2> {
        self.lora_b
            .val()
            .matmul(self.lora_a.val())
            .mul_scalar(self.scale)
    }
}

/// `f` applied to `x` `[.., features]` seen as `[rows, features]` (a view on backends with
/// strided tensors), the result shaped back to `[.., f's features]`: row-wise layers then run
/// one GEMM over all rows instead of a batched matmul that broadcasts their weight.
pub fn over_rows<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    f: impl FnOnce(Tensor<B, 2>) -> Tensor<B, 2>,
) -> Tensor<B, D> {
    let dims = x.dims();
    let rows = dims[..D - 1].iter().product::<usize>();
    let y = f(x.reshape([rows, dims[D - 1]]));
    let mut out = dims;
    out[D - 1] = y.dims()[1];
    y.reshape(out)
}

/// A linear layer with a frozen base weight and an optional LoRA adapter.
///
/// The base weight is f32 in `base.weight`, or kept as ggml quantization blocks in `quant`
/// ([`from_quantized`](Self::from_quantized): `base.weight` is then an empty `[0, 0]`
/// placeholder and [`base_weight`](Self::base_weight) dequantises on request).
#[derive(Module, Debug)]
pub struct LoraLinear<B: Backend> {
    /// Frozen base layer (burn layout: weight `[in, out]`; `[0, 0]` when `quant` holds it).
    pub base: Linear<B>,
    /// The adapter, if one is attached.
    pub adapter: Option<LoraAdapter<B>>,
    /// The CPU path's row-major copy of `Wᵀ` (filled on first use on burn-flex; empty elsewhere).
    #[module(skip)]
    pub frozen_t: FrozenCache,
    /// The base weight as quantization blocks (`[out, in]`, Hugging Face layout), if kept so.
    #[module(skip)]
    pub quant: Option<QuantMatrix>,
}

impl<B: Backend> LoraLinear<B> {
    /// A randomly initialised frozen base layer without adapter.
    pub fn new(d_in: usize, d_out: usize, bias: bool, device: &B::Device) -> Self {
        Self::from_base(LinearConfig::new(d_in, d_out).with_bias(bias).init(device))
    }

    /// Wraps an existing layer; its parameters are frozen.
    pub fn from_base(base: Linear<B>) -> Self {
        Self {
            base: base.no_grad(),
            adapter: None,
            frozen_t: FrozenCache::default(),
            quant: None,
        }
    }

    /// A frozen layer whose weight `w` (`[out, in]`) stays in its blocks (an optional `[out]`
    /// bias in f32). Its products dequantise tile by tile on burn-flex
    /// ([`balora_cpu::quant_lora_linear`]); other backends multiply by the dequantised weight.
    pub fn from_quantized(w: QuantMatrix, bias: Option<Vec<f32>>, device: &B::Device) -> Self {
        let frozen = |t: Tensor<B, 2>| Param::initialized(ParamId::new(), t);
        let bias = bias.map(|b| {
            let n = b.len();
            Param::initialized(
                ParamId::new(),
                Tensor::<B, 1>::from_data(TensorData::new(b, [n]), device),
            )
        });
        let mut l = Self::from_base(Linear {
            weight: frozen(Tensor::zeros([0, 0], device)),
            bias,
        });
        l.quant = Some(w);
        l
    }

    /// Input and output sizes.
    pub fn dims(&self) -> (usize, usize) {
        if let Some(q) = &self.quant {
            return (q.cols(), q.rows());
        }
        let [d_in, d_out] = self.base.weight.dims();
        (d_in, d_out)
    }

    /// The base weight in f32, burn layout `[in, out]` (dequantised when kept as blocks).
    pub fn base_weight(&self) -> Tensor<B, 2> {
        match &self.quant {
            Some(q) => {
                let device = self.base.weight.device();
                let w = TensorData::new(q.to_f32(), [q.rows(), q.cols()]);
                Tensor::<B, 2>::from_data(w, &device).transpose()
            }
            None => self.base.weight.val(),
        }
    }

    /// Attaches a fresh adapter (replacing any existing one).
    pub fn with_adapter(mut self, cfg: &LayerLora, device: &B::Device) -> Self {
        let (d_in, d_out) = self.dims();
        self.adapter = Some(LoraAdapter::new(d_in, d_out, cfg, device));
        self
    }

    /// `x·W0ᵀ + b + s·((dropout(x)·Aᵀ)·Bᵀ)`.
    ///
    /// Inputs of any rank are flattened to `[rows, in]` first (a view on backends with strided
    /// tensors): one GEMM over all rows instead of a batched matmul that broadcasts the weight,
    /// which CPU backends pack once per batch element. On burn-flex (feature `flex`) the layer
    /// runs the fused CPU kernels of `balora_cpu`; every other backend uses burn's ops.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        over_rows(x, |x| self.forward_rows(x))
    }

    /// [`forward`](Self::forward) on `[rows, in]`.
    fn forward_rows(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let adapter = self.adapter.as_ref().filter(|a| !a.merged);
        if let Some(q) = &self.quant {
            return self.quant_rows(q, x, adapter);
        }
        let x = {
            // The fused kernels have no dropout: layers with adapter dropout use burn's ops.
            if adapter.is_none_or(|a| a.dropout.prob == 0.0) {
                let bias = self.base.bias.as_ref().map(|b| b.val());
                let lora = adapter.map(|a| (a.lora_a.val(), a.lora_b.val(), a.scale));
                match balora_cpu::lora_linear(
                    x,
                    &self.base.weight.val(),
                    bias.as_ref(),
                    lora.as_ref().map(|(a, b, s)| (a, b, *s)),
                    &self.frozen_t,
                ) {
                    Ok(y) => return y,
                    Err(x) => x,
                }
            } else {
                x
            }
        };
        match adapter {
            Some(ad) => self.base.forward(x.clone()) + ad.delta(x),
            None => self.base.forward(x),
        }
    }

    /// [`forward_rows`](Self::forward_rows) for a base kept as blocks: the fused kernels on
    /// burn-flex (adapter dropout, which they lack, then rides beside the base product), else
    /// burn's ops on the dequantised weight.
    fn quant_rows(
        &self,
        q: &QuantMatrix,
        x: Tensor<B, 2>,
        adapter: Option<&LoraAdapter<B>>,
    ) -> Tensor<B, 2> {
        let bias = self.base.bias.as_ref().map(|b| b.val());
        let fused = adapter.filter(|a| a.dropout.prob == 0.0);
        let lora = fused.map(|a| (a.lora_a.val(), a.lora_b.val(), a.scale));
        let lora = lora.as_ref().map(|(a, b, s)| (a, b, *s));
        let (y, x) = match balora_cpu::quant_lora_linear(x.clone(), q, bias.as_ref(), lora) {
            Ok(y) => (y, x),
            Err(x) => {
                let y = burn::tensor::module::linear(x.clone(), self.base_weight(), bias);
                return match adapter {
                    Some(ad) => y + ad.delta(x),
                    None => y,
                };
            }
        };
        match adapter.filter(|a| a.dropout.prob != 0.0) {
            Some(ad) => y + ad.delta(x),
            None => y,
        }
    }

    /// Adds `s·B·A` into the base weight; forward then costs one matmul. Idempotent. A base
    /// kept as blocks is dequantised first (the merged weight is f32).
    pub fn merge(mut self) -> Self {
        if self.quant.is_some() && self.adapter.as_ref().is_some_and(|a| !a.merged) {
            let w = self.base_weight();
            self.base.weight = self.base.weight.map(|_| w);
            self.quant = None;
        }
        if let Some(ad) = self.adapter.as_mut().filter(|a| !a.merged) {
            let delta = ad.delta_weight().transpose().detach();
            self.base.weight = self.base.weight.map(|w| w + delta);
            ad.merged = true;
        }
        self
    }

    /// Subtracts `s·B·A` from the base weight again. Idempotent.
    pub fn unmerge(mut self) -> Self {
        if let Some(ad) = self.adapter.as_mut().filter(|a| a.merged) {
            let delta = ad.delta_weight().transpose().detach();
            self.base.weight = self.base.weight.map(|w| w - delta);
            ad.merged = false;
        }
        self
    }
}
