//! Where model weights come from: a name → (shape, f32 data) lookup, and helpers that turn
//! checked tensors into burn modules.

use crate::ModelError;
use balora_adapter::{BaseDtype, LoraLinear, QuantKind, QuantMatrix};
use balora_formats::{GgmlType, GgufFile};
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
    /// How frozen linear weights are held (`model.dtype`): f32 unless the source is wrapped in
    /// a [`Quantizing`].
    fn base_dtype(&self) -> BaseDtype {
        BaseDtype::F32
    }
    /// `name` (`[out, in]`, Hugging Face layout) as the file's own quantization blocks, when the
    /// file stores it in a block type a quantized base keeps (`Q8_0`, `Q4_0`, `Q4_1`).
    fn fetch_blocks(&self, _name: &str) -> Result<Option<QuantMatrix>, ModelError> {
        Ok(None)
    }
}

/// A source whose frozen linear weights are built as quantization blocks ([`BaseDtype`]):
/// every [`LoraLinear`] loaded from it through `load_lora_linear` keeps its weight as blocks
/// (biases, norms and embeddings stay f32). With a GGUF file the file's own blocks are read
/// ([`Weights::fetch_blocks`]) and checked to dequantise, bit for bit, to the f32 values the
/// wrapped source serves for the same name (that check also covers the q/k row order).
pub struct Quantizing<'a> {
    inner: &'a dyn Weights,
    dtype: BaseDtype,
    /// The GGUF file and, when its q/k rows are stored permuted, `(q heads, kv heads)`.
    gguf: Option<(&'a GgufFile, Option<(usize, usize)>)>,
}

impl<'a> Quantizing<'a> {
    /// `inner` with linear weights held as `dtype`; `gguf` is the file `inner` reads (llama.cpp
    /// names) with its q/k head counts when those rows are stored permuted.
    pub fn new(
        inner: &'a dyn Weights,
        dtype: BaseDtype,
        gguf: Option<(&'a GgufFile, Option<(usize, usize)>)>,
    ) -> Self {
        Self { inner, dtype, gguf }
    }
}

impl Weights for Quantizing<'_> {
    fn origin(&self) -> String {
        self.inner.origin()
    }
    fn contains(&self, name: &str) -> bool {
        self.inner.contains(name)
    }
    fn fetch(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>), ModelError> {
        self.inner.fetch(name)
    }
    fn base_dtype(&self) -> BaseDtype {
        self.dtype
    }
    fn fetch_blocks(&self, name: &str) -> Result<Option<QuantMatrix>, ModelError> {
        let Some((file, heads)) = self.gguf else {
            return Ok(None);
        };
        let Some(gname) = balora_formats::llama_hf_to_gguf(name) else {
            return Ok(None);
        };
        let err = |m: String| ModelError::Format {
            file: self.origin(),
            message: format!("tensor `{gname}`: {m}"),
        };
        let Ok(info) = file.tensor_info(&gname) else {
            return Ok(None);
        };
        let kind = match info.ggml_type {
            GgmlType::Q8_0 => QuantKind::Q8_0,
            GgmlType::Q4_0 => QuantKind::Q4_0,
            GgmlType::Q4_1 => QuantKind::Q4_1,
            _ => return Ok(None),
        };
        let [rows, cols] = info.shape[..] else {
            return Ok(None);
        };
        let bytes = file.tensor_bytes(&gname).map_err(|e| err(e.to_string()))?;
        let mut q = QuantMatrix::from_blocks(kind, rows, cols, bytes.to_vec()).map_err(err)?;
        let h = match heads {
            Some((h, _)) if gname.contains(".attn_q.") => Some(h),
            Some((_, h)) if gname.contains(".attn_k.") => Some(h),
            _ => None,
        };
        if let Some(h) = h.filter(|&h| h > 0 && rows.is_multiple_of(2 * h)) {
            // llama.cpp stores HF row h·d + t·d/2 + j at row h·d + 2j + t (d = rows / heads).
            let d = rows / h;
            let src: Vec<usize> = (0..rows)
                .map(|r| {
                    let (hh, k) = (r / d, r % d);
                    let (t, j) = (k / (d / 2), k % (d / 2));
                    hh * d + 2 * j + t
                })
                .collect();
            q = q.permute_rows(&src).map_err(err)?;
        }
        let (_, f) = self.inner.fetch(name)?;
        if q.to_f32()
            .iter()
            .zip(&f)
            .any(|(a, b)| a.to_bits() != b.to_bits())
            || f.len() != rows * cols
        {
            return Err(err(format!(
                "its {} blocks do not dequantise to the values the f32 loader reads",
                kind.name()
            )));
        }
        Ok(Some(q))
    }
}

/// `name` (`[d_out, d_in]`) as quantization blocks for `w.base_dtype()`: the file's own blocks
/// when they are of the asked kind (any kept kind for [`BaseDtype::File`]), else quantized here
/// from the f32 values (`Q8_0` for `File`).
fn quantized(
    w: &dyn Weights,
    name: &str,
    d_in: usize,
    d_out: usize,
) -> Result<QuantMatrix, ModelError> {
    let dtype = w.base_dtype();
    let want = match dtype {
        BaseDtype::Q4_0 => Some(QuantKind::Q4_0),
        BaseDtype::File => None,
        _ => Some(QuantKind::Q8_0),
    };
    if let Some(q) = w.fetch_blocks(name)? {
        if (q.rows(), q.cols()) != (d_out, d_in) {
            return Err(ModelError::Shape {
                file: w.origin(),
                tensor: name.to_string(),
                expected: vec![d_out, d_in],
                actual: vec![q.rows(), q.cols()],
            });
        }
        if want.is_none_or(|k| k == q.kind()) {
            return Ok(q);
        }
    }
    let data = fetch_checked(w, name, &[d_out, d_in])?;
    let kind = want.unwrap_or(QuantKind::Q8_0);
    QuantMatrix::quantize(kind, d_out, d_in, &data).map_err(|m| {
        ModelError::config(
            &w.origin(),
            "model.dtype",
            format!(
                "\"{}\" cannot hold tensor `{name}` as {}: {m}",
                dtype.name(),
                kind.name()
            ),
        )
    })
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
    if w.base_dtype().is_quantized() {
        let q = quantized(w, &format!("{prefix}.weight"), d_in, d_out)?;
        let bd = match bias {
            true => Some(fetch_checked(w, &bname, &[d_out])?),
            false => None,
        };
        return Ok(LoraLinear::from_quantized(q, bd, dev));
    }
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
