//! Where model weights come from: a name → (shape, f32 data) lookup, and helpers that turn
//! checked tensors into burn modules.

use crate::ModelError;
use balora_adapter::LoraLinear;
use burn::module::{Param, ParamId};
use burn::nn::{Embedding, LayerNorm, LayerNormConfig, Linear, RmsNorm, RmsNormConfig};
use burn::tensor::{backend::Backend, Tensor, TensorData};
use std::collections::BTreeMap;
use std::path::Path;

/// A source of named f32 tensors in Hugging Face order (linear weights `[out, in]`).
///
/// Implemented for [`MemWeights`]; `balora-formats`' GGUF and safetensors readers plug in
/// through the same trait.
pub trait Weights {
    /// A human-readable origin (file path) for error messages.
    fn origin(&self) -> String;
    /// Whether `name` exists.
    fn contains(&self, name: &str) -> bool;
    /// Shape and row-major data of `name`.
    fn fetch(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>), ModelError>;
}

/// Tensors held in memory (tests, adapter files, converted checkpoints).
#[derive(Debug, Clone, Default)]
pub struct MemWeights {
    /// Origin for error messages.
    pub origin: String,
    /// name → (shape, data).
    pub tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

impl MemWeights {
    /// An empty map named `origin`.
    pub fn new(origin: impl Into<String>) -> Self {
        Self {
            origin: origin.into(),
            tensors: BTreeMap::new(),
        }
    }
    /// Inserts a tensor.
    pub fn insert(&mut self, name: impl Into<String>, shape: Vec<usize>, data: Vec<f32>) {
        self.tensors.insert(name.into(), (shape, data));
    }

    /// Every tensor of a safetensors file, named after the file
    /// ([`balora_formats::read_safetensors`]: mapped, validated, F32/F16/BF16/F64 as f32).
    pub fn read_safetensors(path: &Path) -> Result<Self, ModelError> {
        let tensors =
            balora_formats::read_safetensors(path).map_err(|e| ModelError::format(path, e))?;
        let mut w = Self::new(path.display().to_string());
        for t in tensors {
            w.insert(t.name, t.shape, t.data);
        }
        Ok(w)
    }
}

impl Weights for MemWeights {
    fn origin(&self) -> String {
        self.origin.clone()
    }
    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
    fn fetch(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>), ModelError> {
        self.tensors
            .get(name)
            .cloned()
            .ok_or_else(|| ModelError::MissingTensor {
                file: self.origin.clone(),
                tensor: name.to_string(),
            })
    }
}

/// Fetches `name` and checks its shape.
pub(crate) fn fetch_checked(
    w: &dyn Weights,
    name: &str,
    expected: &[usize],
) -> Result<Vec<f32>, ModelError> {
    let (shape, data) = w.fetch(name)?;
    // Accept a trailing/leading singleton difference only when the element count matches exactly
    // and the non-unit dims agree (e.g. `[n]` vs `[1, n]`).
    let squeeze = |s: &[usize]| s.iter().copied().filter(|&d| d != 1).collect::<Vec<_>>();
    if shape != expected && squeeze(&shape) != squeeze(expected) {
        return Err(ModelError::Shape {
            file: w.origin(),
            tensor: name.to_string(),
            expected: expected.to_vec(),
            actual: shape,
        });
    }
    if data.len() != expected.iter().product::<usize>() {
        return Err(ModelError::Format {
            file: w.origin(),
            message: format!(
                "tensor `{name}` has {} values for shape {shape:?}",
                data.len()
            ),
        });
    }
    Ok(data)
}

pub(crate) fn frozen<B: Backend, const D: usize>(t: Tensor<B, D>) -> Param<Tensor<B, D>> {
    Param::initialized(ParamId::new(), t.set_require_grad(false))
}

pub(crate) fn tensor2<B: Backend>(
    data: Vec<f32>,
    shape: [usize; 2],
    dev: &B::Device,
) -> Tensor<B, 2> {
    Tensor::from_data(TensorData::new(data, shape), dev)
}

pub(crate) fn tensor1<B: Backend>(data: Vec<f32>, n: usize, dev: &B::Device) -> Tensor<B, 1> {
    Tensor::from_data(TensorData::new(data, [n]), dev)
}

/// A frozen linear layer from an HF `[out, in]` weight (and optional `[out]` bias).
pub(crate) fn linear_from(
    w: &dyn Weights,
    weight: &str,
    bias: Option<&str>,
    d_in: usize,
    d_out: usize,
) -> Result<(Vec<f32>, Option<Vec<f32>>), ModelError> {
    let wd = fetch_checked(w, weight, &[d_out, d_in])?;
    let bd = match bias {
        Some(b) => Some(fetch_checked(w, b, &[d_out])?),
        None => None,
    };
    Ok((wd, bd))
}

/// Builds a frozen [`LoraLinear`] from HF-layout data (`[out, in]` weight).
pub(crate) fn lora_linear<B: Backend>(
    wd: Vec<f32>,
    bd: Option<Vec<f32>>,
    d_in: usize,
    d_out: usize,
    dev: &B::Device,
) -> LoraLinear<B> {
    // burn's layout is [in, out]: transpose on the host so the stored weight is contiguous
    // (a transposed view would be re-laid out by the backend on every matmul).
    let mut t = vec![0f32; wd.len()];
    for o in 0..d_out {
        for i in 0..d_in {
            t[i * d_out + o] = wd[o * d_in + i];
        }
    }
    let weight = tensor2::<B>(t, [d_in, d_out], dev);
    let bias = bd.map(|b| frozen(tensor1::<B>(b, d_out, dev)));
    LoraLinear::from_base(Linear {
        weight: frozen(weight),
        bias,
    })
}

pub(crate) fn load_lora_linear<B: Backend>(
    w: &dyn Weights,
    prefix: &str,
    bias: bool,
    d_in: usize,
    d_out: usize,
    dev: &B::Device,
) -> Result<LoraLinear<B>, ModelError> {
    let bname = format!("{prefix}.bias");
    let (wd, bd) = linear_from(
        w,
        &format!("{prefix}.weight"),
        bias.then_some(bname.as_str()),
        d_in,
        d_out,
    )?;
    Ok(lora_linear(wd, bd, d_in, d_out, dev))
}

pub(crate) fn load_embedding<B: Backend>(
    w: &dyn Weights,
    name: &str,
    n: usize,
    d: usize,
    dev: &B::Device,
) -> Result<Embedding<B>, ModelError> {
    let data = fetch_checked(w, name, &[n, d])?;
    Ok(Embedding {
        weight: frozen(tensor2::<B>(data, [n, d], dev)),
    })
}

pub(crate) fn load_rms<B: Backend>(
    w: &dyn Weights,
    name: &str,
    d: usize,
    eps: f64,
    dev: &B::Device,
) -> Result<RmsNorm<B>, ModelError> {
    let data = fetch_checked(w, name, &[d])?;
    let mut n = RmsNormConfig::new(d).with_epsilon(eps).init(dev);
    n.gamma = frozen(tensor1::<B>(data, d, dev));
    Ok(n)
}

pub(crate) fn load_layer_norm<B: Backend>(
    w: &dyn Weights,
    prefix: &str,
    d: usize,
    eps: f64,
    dev: &B::Device,
) -> Result<LayerNorm<B>, ModelError> {
    // HF BERT checkpoints use `weight`/`bias`; old TF-converted ones `gamma`/`beta`.
    let (wn, bn) = if w.contains(&format!("{prefix}.gamma")) {
        (format!("{prefix}.gamma"), format!("{prefix}.beta"))
    } else {
        (format!("{prefix}.weight"), format!("{prefix}.bias"))
    };
    let g = fetch_checked(w, &wn, &[d])?;
    let b = fetch_checked(w, &bn, &[d])?;
    let mut n = LayerNormConfig::new(d).with_epsilon(eps).init(dev);
    n.gamma = frozen(tensor1::<B>(g, d, dev));
    n.beta = Some(frozen(tensor1::<B>(b, d, dev)));
    Ok(n)
}

/// Values of a float tensor, row-major.
pub fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap_or_default()
}
