//! Shared helpers for the model tests: deterministic random weights and naive f64 references.
#![allow(dead_code)]

use balora_models::MemWeights;

pub struct Lcg(pub u64);
impl Lcg {
    pub fn next_f32(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as f64 / (1u64 << 31) as f64 * 2.0 - 1.0) as f32
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next_f32() * scale).collect()
    }
}

pub struct TinyLlama {
    pub vocab: usize,
    pub d: usize,
    pub ff: usize,
    pub layers: usize,
    pub nh: usize,
    pub nkv: usize,
    pub hd: usize,
    pub qkv_bias: bool,
    pub tied: bool,
}

/// The tiny Llama the tests use (2 layers, 6 query / 2 key-value heads of size 4, vocabulary 40).
pub fn tiny(qkv_bias: bool, tied: bool) -> TinyLlama {
    TinyLlama {
        vocab: 40,
        d: 24,
        ff: 40,
        layers: 2,
        nh: 6,
        nkv: 2,
        hd: 4,
        qkv_bias,
        tied,
    }
}

impl TinyLlama {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "model_type": if self.qkv_bias { "qwen2" } else { "llama" },
            "vocab_size": self.vocab, "hidden_size": self.d, "intermediate_size": self.ff,
            "num_hidden_layers": self.layers, "num_attention_heads": self.nh,
            "num_key_value_heads": self.nkv, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "max_position_embeddings": 64, "tie_word_embeddings": self.tied
        })
    }
    pub fn weights(&self, seed: u64) -> MemWeights {
        let mut r = Lcg(seed);
        let mut w = MemWeights::new("tiny-llama.safetensors");
        let (d, hd) = (self.d, self.hd);
        w.insert(
            "model.embed_tokens.weight",
            vec![self.vocab, d],
            r.vec(self.vocab * d, 1.0),
        );
        for l in 0..self.layers {
            let p = format!("model.layers.{l}");
            let mut lin = |w: &mut MemWeights, n: &str, i: usize, o: usize, bias: bool| {
                w.insert(
                    format!("{p}.{n}.weight"),
                    vec![o, i],
                    r.vec(o * i, 1.0 / (i as f32).sqrt()),
                );
                if bias {
                    w.insert(format!("{p}.{n}.bias"), vec![o], r.vec(o, 0.5));
                }
            };
            lin(&mut w, "self_attn.q_proj", d, self.nh * hd, self.qkv_bias);
            lin(&mut w, "self_attn.k_proj", d, self.nkv * hd, self.qkv_bias);
            lin(&mut w, "self_attn.v_proj", d, self.nkv * hd, self.qkv_bias);
            lin(&mut w, "self_attn.o_proj", self.nh * hd, d, false);
            lin(&mut w, "mlp.gate_proj", d, self.ff, false);
            lin(&mut w, "mlp.up_proj", d, self.ff, false);
            lin(&mut w, "mlp.down_proj", self.ff, d, false);
            let g: Vec<f32> = r.vec(d, 0.3).into_iter().map(|x| 1.0 + x).collect();
            w.insert(format!("{p}.input_layernorm.weight"), vec![d], g);
            let g: Vec<f32> = r.vec(d, 0.3).into_iter().map(|x| 1.0 + x).collect();
            w.insert(format!("{p}.post_attention_layernorm.weight"), vec![d], g);
        }
        let g: Vec<f32> = r.vec(d, 0.3).into_iter().map(|x| 1.0 + x).collect();
        w.insert("model.norm.weight", vec![d], g);
        if !self.tied {
            w.insert(
                "lm_head.weight",
                vec![self.vocab, d],
                r.vec(self.vocab * d, 0.2),
            );
        }
        w
    }
}

fn get(w: &MemWeights, n: &str) -> Vec<f64> {
    w.tensors[n].1.iter().map(|&x| x as f64).collect()
}

/// y = W x (+ b), W row-major [o, i].
fn matvec(wt: &[f64], x: &[f64], o: usize, b: Option<&[f64]>) -> Vec<f64> {
    let i = x.len();
    (0..o)
        .map(|r| (0..i).map(|c| wt[r * i + c] * x[c]).sum::<f64>() + b.map_or(0.0, |b| b[r]))
        .collect()
}

fn rms(x: &[f64], g: &[f64], eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let s = 1.0 / (ms + eps).sqrt();
    x.iter().zip(g).map(|(v, g)| v * s * g).collect()
}

/// Naive f64 Hugging Face Llama forward (rotate-half RoPE): logits for every position.
pub fn llama_reference(t: &TinyLlama, w: &MemWeights, ids: &[usize]) -> Vec<Vec<f64>> {
    let (d, hd, nh, nkv) = (t.d, t.hd, t.nh, t.nkv);
    let emb = get(w, "model.embed_tokens.weight");
    let mut xs: Vec<Vec<f64>> = ids
        .iter()
        .map(|&i| emb[i * d..(i + 1) * d].to_vec())
        .collect();
    let s = ids.len();
    let rope = |v: &mut [f64], pos: usize| {
        let half = hd / 2;
        for h in 0..v.len() / hd {
            let base = h * hd;
            for i in 0..half {
                let f = 1.0 / 10000f64.powf(2.0 * i as f64 / hd as f64);
                let (c, sn) = ((pos as f64 * f).cos(), (pos as f64 * f).sin());
                let (a, b) = (v[base + i], v[base + i + half]);
                v[base + i] = a * c - b * sn;
                v[base + i + half] = b * c + a * sn;
            }
        }
    };
    for l in 0..t.layers {
        let p = format!("model.layers.{l}");
        let g = |n: &str| get(w, &format!("{p}.{n}"));
        let opt = |n: &str| {
            w.tensors
                .get(&format!("{p}.{n}"))
                .map(|x| x.1.iter().map(|&v| v as f64).collect::<Vec<_>>())
        };
        let (wq, wk, wv, wo) = (
            g("self_attn.q_proj.weight"),
            g("self_attn.k_proj.weight"),
            g("self_attn.v_proj.weight"),
            g("self_attn.o_proj.weight"),
        );
        let (bq, bk, bv) = (
            opt("self_attn.q_proj.bias"),
            opt("self_attn.k_proj.bias"),
            opt("self_attn.v_proj.bias"),
        );
        let hs: Vec<Vec<f64>> = xs
            .iter()
            .map(|x| rms(x, &g("input_layernorm.weight"), 1e-5))
            .collect();
        let mut qs = Vec::new();
        let mut ks = Vec::new();
        let mut vs = Vec::new();
        for (pos, h) in hs.iter().enumerate() {
            let mut q = matvec(&wq, h, nh * hd, bq.as_deref());
            let mut k = matvec(&wk, h, nkv * hd, bk.as_deref());
            rope(&mut q, pos);
            rope(&mut k, pos);
            qs.push(q);
            ks.push(k);
            vs.push(matvec(&wv, h, nkv * hd, bv.as_deref()));
        }
        for i in 0..s {
            let mut o = vec![0.0; nh * hd];
            for h in 0..nh {
                let kh = h / (nh / nkv);
                let sc: Vec<f64> = (0..=i)
                    .map(|j| {
                        (0..hd)
                            .map(|e| qs[i][h * hd + e] * ks[j][kh * hd + e])
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let m = sc.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = sc.iter().map(|v| (v - m).exp()).sum();
                for (j, v) in sc.iter().enumerate() {
                    let pr = (v - m).exp() / z;
                    for e in 0..hd {
                        o[h * hd + e] += pr * vs[j][kh * hd + e];
                    }
                }
            }
            let ao = matvec(&wo, &o, d, None);
            for e in 0..d {
                xs[i][e] += ao[e];
            }
        }
        for x in xs.iter_mut() {
            let h = rms(x, &g("post_attention_layernorm.weight"), 1e-5);
            let gt = matvec(&g("mlp.gate_proj.weight"), &h, t.ff, None);
            let up = matvec(&g("mlp.up_proj.weight"), &h, t.ff, None);
            let a: Vec<f64> = gt
                .iter()
                .zip(&up)
                .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                .collect();
            let dn = matvec(&g("mlp.down_proj.weight"), &a, d, None);
            for e in 0..d {
                x[e] += dn[e];
            }
        }
    }
    let head = if t.tied {
        emb
    } else {
        get(w, "lm_head.weight")
    };
    xs.iter()
        .map(|x| {
            matvec(
                &head,
                &rms(x, &get(w, "model.norm.weight"), 1e-5),
                t.vocab,
                None,
            )
        })
        .collect()
}

pub fn max_abs_diff(a: &[f32], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - y).abs())
        .fold(0.0, f64::max)
}

/// Per adapted layer: (module path, rank, root mean square of A). A is drawn with mean 0, so
/// the RMS estimates the σ of a gaussian init (relative error ≈ 1/√(2·r·in)).
pub fn a_rms<B: burn::tensor::backend::Backend, M: balora_models::AdapterHost<B>>(
    m: &M,
) -> Vec<(String, usize, f64)> {
    m.linears()
        .into_iter()
        .filter_map(|(i, l)| {
            let a = l.adapter.as_ref()?;
            let v: Vec<f32> = a.lora_a.val().into_data().to_vec().unwrap();
            let rms = (v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
            Some((i.path.clone(), a.rank(), rms))
        })
        .collect()
}

/// The adapter config of the init tests: gaussian A, rank 4, `rank_pattern` giving `narrow`
/// rank 2, targets `wide` and `narrow`.
pub fn gaussian_spec(wide: &str, narrow: &str, init_std: Option<f64>) -> balora_models::LoraConfig {
    let mut c = balora_models::LoraConfig::new(
        4,
        8.0,
        balora_models::ModuleSelector::List(vec![wide.into(), narrow.into()]),
    )
    .unwrap();
    c.init = balora_models::AdapterInit::Gaussian;
    c.init_std = init_std;
    c.rank_pattern = balora_models::Patterns::ordered(vec![(narrow.into(), 2)]);
    c
}

/// Checks the σ of every adapted layer's A: `init_std` when given, else PEFT's 1/r with the
/// layer's own rank (4 for `wide`, 2 for `narrow`). Tolerance 30%: the two candidate rules
/// being told apart differ by a factor 2 (1/r per layer vs. 1/global r) or more.
pub fn check_gaussian_init(layers: &[(String, usize, f64)], narrow: &str, init_std: Option<f64>) {
    assert!(layers.len() >= 4, "{layers:?}");
    for (path, r, rms) in layers {
        let want_r = if path.ends_with(narrow) { 2 } else { 4 };
        assert_eq!(*r, want_r, "{path}");
        let want = init_std.unwrap_or(1.0 / want_r as f64);
        assert!(
            (rms / want - 1.0).abs() < 0.3,
            "{path}: σ̂ = {rms}, want {want}"
        );
    }
}

/// `max |got − want| / max |want|`.
pub fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "length");
    let scale = want.iter().fold(0f64, |m, &x| m.max((x as f64).abs()));
    let diff = got
        .iter()
        .zip(want)
        .fold(0f64, |m, (&g, &w)| m.max((g as f64 - w as f64).abs()));
    diff / scale.max(1e-30)
}
