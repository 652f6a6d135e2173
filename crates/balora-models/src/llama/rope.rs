//! Rotary position embedding (Hugging Face rotate-half: dimension `i` of a head pairs with
//! `i + head_dim/2`): the frequencies, the host-built tables, and their application
//! `rope(x) = x ⊙ cos + (x·R) ⊙ sin`.

use super::LlamaConfig;
use burn::tensor::{backend::Backend, Tensor, TensorData};

impl LlamaConfig {
    /// The leading dimensions of each head RoPE rotates (all but Phi-3's partial rotary).
    pub fn rotary_dim(&self) -> usize {
        self.family.rotary_dim.unwrap_or(self.head_dim)
    }

    /// Inverse RoPE frequencies (`rotary_dim/2` values) of the global layers, with Llama-3 or
    /// linear scaling if configured.
    pub fn inv_freq(&self) -> Vec<f64> {
        let dim = self.rotary_dim();
        (0..dim / 2)
            .map(|i| {
                let f = 1.0 / self.rope_theta.powf(2.0 * i as f64 / dim as f64);
                let f = f / self.family.rope_linear_factor.unwrap_or(1.0);
                match self.rope_llama3_scaling {
                    None => f,
                    Some((factor, low, high, orig)) => {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        let low_wl = orig / low;
                        let high_wl = orig / high;
                        if wavelen < high_wl {
                            f
                        } else if wavelen > low_wl {
                            f / factor
                        } else {
                            let s = (orig / wavelen - low) / (high - low);
                            (1.0 - s) * f / factor + s * f
                        }
                    }
                }
            })
            .collect()
    }

    /// Inverse frequencies of the sliding layers when they have their own base (Gemma 3's
    /// `rope_local_base_freq`, unscaled).
    pub fn inv_freq_local(&self) -> Option<Vec<f64>> {
        let theta = self.family.rope_local_theta?;
        let dim = self.rotary_dim();
        Some(
            (0..dim / 2)
                .map(|i| 1.0 / theta.powf(2.0 * i as f64 / dim as f64))
                .collect(),
        )
    }
}

/// The `[max_position, head_dim]` cos and sin tables of inverse frequencies `inv` (each pair's
/// angle at both of its dimensions; dimensions past `rotary_dim` get cos 1, sin 0: they pass
/// through unrotated, Phi-3's partial rotary).
pub(super) fn tables<B: Backend>(
    cfg: &LlamaConfig,
    inv: &[f64],
    device: &B::Device,
) -> [Tensor<B, 2>; 2] {
    let (hd, half) = (cfg.head_dim, cfg.rotary_dim() / 2);
    let n = cfg.max_position.max(1);
    let mut cos = Vec::with_capacity(n * hd);
    let mut sin = Vec::with_capacity(n * hd);
    for p in 0..n {
        for j in 0..hd {
            // Dimension `j` of a head belongs to pair `j % half` (rotate-half).
            let a = if j < 2 * half {
                p as f64 * inv[j % half]
            } else {
                0.0
            };
            cos.push(a.cos() as f32);
            sin.push(a.sin() as f32);
        }
    }
    [
        Tensor::from_data(TensorData::new(cos, [n, hd]), device),
        Tensor::from_data(TensorData::new(sin, [n, hd]), device),
    ]
}

/// The `[head_dim, head_dim]` signed permutation `R` with `(x·R)` = each rotated pair turned by
/// 90°: `(x·R)[j] = sign(j)·x[partner(j)]` within the first `rotary_dim` dimensions, 0 past them.
pub(super) fn rotation<B: Backend>(cfg: &LlamaConfig, device: &B::Device) -> Tensor<B, 2> {
    let (hd, half) = (cfg.head_dim, cfg.rotary_dim() / 2);
    let mut rot = vec![0f32; hd * hd];
    for j in 0..2 * half {
        let (from, sign) = if j < half {
            (j + half, -1.0)
        } else {
            (j - half, 1.0)
        };
        rot[from * hd + j] = sign;
    }
    Tensor::from_data(TensorData::new(rot, [hd, hd]), device)
}

/// The tables `(cos, sin)` for `[batch, seq, heads, head_dim]` inputs at positions
/// `offset..offset + seq`, materialised at full size once per forward: element-wise ops
/// between same-shaped contiguous tensors are the fast case on every backend (a broadcast
/// operand is a strided read on CPU backends, in each of the 60 uses and their backwards).
pub(super) fn expand<B: Backend>(
    [cos, sin]: [&Tensor<B, 2>; 2],
    b: usize,
    s: usize,
    heads: usize,
    offset: usize,
) -> [Tensor<B, 4>; 2] {
    let hd = cos.dims()[1];
    [cos, sin].map(|t| {
        t.clone()
            .narrow(0, offset, s)
            .reshape([1, s, 1, hd])
            .repeat_dim(0, b)
            .repeat_dim(2, heads)
    })
}

/// RoPE of `x` `[batch, seq, heads, head_dim]` with tables from [`expand`] and the rotation
/// `rot` from [`tables`]: `x ⊙ cos + (x·R) ⊙ sin`.
pub(super) fn apply<B: Backend>(
    x: Tensor<B, 4>,
    rot: &Tensor<B, 2>,
    [cos, sin]: &[Tensor<B, 4>; 2],
) -> Tensor<B, 4> {
    let [b, s, h, hd] = x.dims();
    let rotated = x
        .clone()
        .reshape([b * s * h, hd])
        .matmul(rot.clone())
        .reshape([b, s, h, hd]);
    x * cos.clone() + rotated * sin.clone()
}
