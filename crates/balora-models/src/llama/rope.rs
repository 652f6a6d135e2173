//! Rotary position embedding (Hugging Face rotate-half: dimension `i` of a head pairs with
//! `i + head_dim/2`): the frequencies, the host-built tables, and their application
//! `rope(x) = x ⊙ cos + (x·R) ⊙ sin`.

use super::LlamaConfig;
use burn::tensor::{backend::Backend, Tensor, TensorData};

impl LlamaConfig {
    /// Inverse RoPE frequencies (`head_dim/2` values), with Llama-3 scaling if configured.
    pub fn inv_freq(&self) -> Vec<f64> {
        let half = self.head_dim / 2;
        (0..half)
            .map(|i| {
                let f = 1.0 / self.rope_theta.powf(2.0 * i as f64 / self.head_dim as f64);
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
}

/// The RoPE tables of a model: `[max_position, head_dim]` cos and sin (each pair's angle at
/// both of its dimensions) and the `[head_dim, head_dim]` signed permutation `R` with `(x·R)` =
/// each pair rotated by 90°.
pub(super) fn tables<B: Backend>(cfg: &LlamaConfig, device: &B::Device) -> [Tensor<B, 2>; 3] {
    let (hd, half) = (cfg.head_dim, cfg.head_dim / 2);
    let inv = cfg.inv_freq();
    let n = cfg.max_position.max(1);
    // Dimension `j` of a head belongs to pair `j % half` (rotate-half), and
    // `(x·R)[j] = sign(j)·x[partner(j)]`.
    let pair = |j: usize| j % half;
    let partner = |j: usize| -> (usize, f32) {
        if j < half {
            (j + half, -1.0)
        } else {
            (j - half, 1.0)
        }
    };
    let mut cos = Vec::with_capacity(n * hd);
    let mut sin = Vec::with_capacity(n * hd);
    for p in 0..n {
        for j in 0..hd {
            let a = p as f64 * inv[pair(j)];
            cos.push(a.cos() as f32);
            sin.push(a.sin() as f32);
        }
    }
    let mut rot = vec![0f32; hd * hd];
    for j in 0..hd {
        let (from, sign) = partner(j);
        rot[from * hd + j] = sign;
    }
    [
        Tensor::from_data(TensorData::new(cos, [n, hd]), device),
        Tensor::from_data(TensorData::new(sin, [n, hd]), device),
        Tensor::from_data(TensorData::new(rot, [hd, hd]), device),
    ]
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
