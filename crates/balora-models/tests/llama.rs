//! Llama family on tiny random models against a naive f64 reference written here.

mod common;
use balora_formats::{GgufFile, TensorSource};
use balora_models::llama::{gguf_to_hf_name, hf_to_gguf_name};
use balora_models::load::load_llama_gguf;
use balora_models::peft::{load_adapter, save_adapter, AdapterMeta};
use balora_models::weights::to_vec;
use balora_models::{
    attach, merge_all, unmerge_all, CausalLm, KvCache, LlamaConfig, LlamaForCausalLm, LoraConfig,
    MemWeights, ModelError, ModuleSelector,
};
use burn::backend::NdArray;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use common::*;

type B = NdArray;

fn ids(v: &[usize]) -> Tensor<B, 2, Int> {
    let d = Default::default();
    Tensor::from_data(
        TensorData::new(
            v.iter().map(|&x| x as i64).collect::<Vec<_>>(),
            [1, v.len()],
        ),
        &d,
    )
}

fn load(t: &TinyLlama, w: &MemWeights) -> LlamaForCausalLm<B> {
    let cfg = LlamaConfig::from_hf_json(&t.json(), "config.json").unwrap();
    LlamaForCausalLm::load(&cfg, w, &Default::default()).unwrap()
}

const PROMPT: [usize; 7] = [3, 17, 5, 39, 0, 22, 8];

#[test]
fn logits_match_naive_reference_llama_and_qwen2() {
    for (bias, tied) in [(false, true), (true, false)] {
        let t = tiny(bias, tied);
        let w = t.weights(7);
        let m = load(&t, &w);
        let got = to_vec(m.forward_logits(ids(&PROMPT), None));
        let want: Vec<f64> = llama_reference(&t, &w, &PROMPT).concat();
        let diff = max_abs_diff(&got, &want);
        assert!(diff < 1e-4, "bias={bias} tied={tied}: max |Δ| = {diff}");
    }
}

/// The tiny Llama GGUF of the fuzz corpus (2 heads, 1 KV head, head_dim 4, tied embeddings).
fn tiny_gguf() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../balora-fuzz/corpus/gguf/tiny_llama.gguf")
}

/// llama.cpp's converter stores HF row `h·d + t·d/2 + j` of q/k at row `h·d + 2j + t`; written
/// here from that rule, independently of the loader: `hf[h·d + t·d/2 + j] = gguf[h·d + 2j + t]`.
fn unpermute_here(gguf: &[f32], heads: usize, cols: usize) -> Vec<f32> {
    let d = gguf.len() / cols / heads;
    let mut hf = vec![0.0; gguf.len()];
    for h in 0..heads {
        for t in 0..2 {
            for j in 0..d / 2 {
                let (dst, src) = (h * d + t * d / 2 + j, h * d + 2 * j + t);
                hf[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&gguf[src * cols..(src + 1) * cols]);
            }
        }
    }
    hf
}

/// The GGUF's tensors under HF names; q/k rows un-permuted here when `unpermute`.
fn gguf_as_hf_here(unpermute: bool) -> MemWeights {
    let f = GgufFile::open(tiny_gguf()).unwrap();
    let mut w = MemWeights::new("tiny_llama.gguf");
    for name in f.names() {
        let t = f.load(&name).unwrap();
        let heads = [(".attn_q.", 2), (".attn_k.", 1)]
            .into_iter()
            .find(|(p, _)| name.contains(p));
        let data = match heads {
            Some((_, h)) if unpermute => unpermute_here(&t.data, h, t.shape[1]),
            _ => t.data,
        };
        w.insert(gguf_to_hf_name(&name).unwrap(), t.shape, data);
    }
    w
}

/// A GGUF loads in Hugging Face layout: llama.cpp's q/k row permutation is undone once, at
/// load, so the model computes the HF logits with HF (rotate-half) RoPE and its q/k weights
/// are the HF rows — what PEFT adapters, merge and export see.
/// Token ids within [`tiny_gguf`]'s 16-token vocabulary.
const GGUF_PROMPT: [usize; 6] = [3, 1, 15, 7, 0, 9];

/// The shapes of [`tiny_gguf`].
fn tiny_gguf_shape() -> TinyLlama {
    TinyLlama {
        vocab: 16,
        d: 8,
        ff: 16,
        layers: 1,
        nh: 2,
        nkv: 1,
        hd: 4,
        qkv_bias: false,
        tied: true,
    }
}

fn gguf_model() -> LlamaForCausalLm<B> {
    load_llama_gguf::<B>(&tiny_gguf(), &Default::default())
        .unwrap()
        .model
}

#[test]
fn gguf_loads_in_hugging_face_layout() {
    let t = tiny_gguf_shape();
    let lm = load_llama_gguf::<B>(&tiny_gguf(), &Default::default()).unwrap();
    let prompt = GGUF_PROMPT;
    let got = to_vec(lm.model.forward_logits(ids(&prompt), None));
    let hf = gguf_as_hf_here(true);
    let want: Vec<f64> = llama_reference(&t, &hf, &prompt).concat();
    let diff = max_abs_diff(&got, &want);
    assert!(diff < 1e-4, "GGUF vs HF reference: max |Δ| = {diff}");
    // The q/k weights in the model are the HF rows (burn stores [in, out]).
    let q = to_vec(
        lm.model.model.layers[0]
            .self_attn
            .q_proj
            .base
            .weight
            .val()
            .transpose(),
    );
    assert_eq!(q, hf.tensors["model.layers.0.self_attn.q_proj.weight"].1);
    // The permutation matters for this file: the rows as stored give other logits.
    let raw = llama_reference(&t, &gguf_as_hf_here(false), &prompt).concat();
    assert!(max_abs_diff(&got, &raw) > 1e-3);
    for n in [
        "blk.3.attn_q.weight",
        "blk.0.attn_k.bias",
        "token_embd.weight",
        "output.weight",
        "output_norm.weight",
        "blk.0.ffn_down.weight",
    ] {
        assert_eq!(hf_to_gguf_name(&gguf_to_hf_name(n).unwrap()).unwrap(), n);
    }
    assert_eq!(
        hf_to_gguf_name("model.layers.0.self_attn.qproj.weight"),
        None
    );
}

#[test]
fn kv_cache_and_padding_agree_with_full_forward() {
    let t = tiny(true, false);
    let w = t.weights(3);
    let m = load(&t, &w);
    let want = llama_reference(&t, &w, &PROMPT);
    let mut cache = KvCache::new(m.num_layers());
    let first = to_vec(m.forward_step(ids(&PROMPT[..4]), &mut cache));
    assert!(max_abs_diff(&first, &want[3]) < 1e-4);
    for (i, &tok) in PROMPT[4..].iter().enumerate() {
        let step = to_vec(m.forward_step(ids(&[tok]), &mut cache));
        let diff = max_abs_diff(&step, &want[4 + i]);
        assert!(diff < 1e-4, "cached step {i}: {diff}");
    }
    assert_eq!(cache.len(), PROMPT.len());
    // Right padding: row 1 is the 4-token prefix padded to 7.
    let dev = Default::default();
    let mut flat: Vec<i64> = PROMPT.iter().map(|&x| x as i64).collect();
    flat.extend(PROMPT[..4].iter().map(|&x| x as i64));
    flat.extend([1, 1, 1]);
    let batch = Tensor::<B, 2, Int>::from_data(TensorData::new(flat, [2, 7]), &dev);
    let mut mask = vec![true; 7];
    mask.extend([true, true, true, true, false, false, false]);
    let mask = Tensor::<B, 2, Bool>::from_data(TensorData::new(mask, [2, 7]), &dev);
    let out = m.forward_logits(batch, Some(mask));
    let row1 = to_vec(out.clone().narrow(0, 1, 1).narrow(1, 3, 1));
    assert!(max_abs_diff(&row1, &want[3]) < 1e-4);
    let row0 = to_vec(out.narrow(0, 0, 1).narrow(1, 6, 1));
    assert!(max_abs_diff(&row0, &want[6]) < 1e-4);
}

fn randomize_b(m: LlamaForCausalLm<B>) -> LlamaForCausalLm<B> {
    use balora_models::AdapterHost;
    let mut r = Lcg(99);
    m.map_linears(&mut |_, mut l| {
        if let Some(a) = l.adapter.as_mut() {
            let [o, rk] = a.lora_b.dims();
            let t = Tensor::from_data(
                TensorData::new(r.vec(o * rk, 0.3), [o, rk]),
                &Default::default(),
            );
            a.lora_b = burn::module::Param::from_tensor(t);
        }
        l
    })
}

#[test]
fn merge_unmerge_parity() {
    let t = tiny(true, false);
    let w = t.weights(5);
    let base = load(&t, &w);
    let before = to_vec(base.forward_logits(ids(&PROMPT), None));
    let spec = LoraConfig::new(3, 6.0, ModuleSelector::Regex("all-linear".into())).unwrap();
    let (m, _) = attach(base, &spec, &Default::default()).unwrap();
    let m = randomize_b(m);
    let adapted = to_vec(m.forward_logits(ids(&PROMPT), None));
    assert!(
        max_abs_diff(
            &adapted,
            &before.iter().map(|&x| x as f64).collect::<Vec<_>>()
        ) > 1e-2
    );
    let merged = merge_all(m);
    let mv = to_vec(merged.forward_logits(ids(&PROMPT), None));
    let a64: Vec<f64> = adapted.iter().map(|&x| x as f64).collect();
    assert!(
        max_abs_diff(&mv, &a64) < 1e-4,
        "merged vs unmerged {}",
        max_abs_diff(&mv, &a64)
    );
    let un = unmerge_all(merged);
    let uv = to_vec(un.forward_logits(ids(&PROMPT), None));
    assert!(max_abs_diff(&uv, &a64) < 1e-4);
}

#[test]
fn gguf_base_adapter_is_saved_in_hf_layout() {
    let t = tiny_gguf_shape();
    let w = gguf_as_hf_here(true);
    let dev = Default::default();
    let spec = LoraConfig::new(
        2,
        4.0,
        ModuleSelector::List(vec!["q_proj".into(), "k_proj".into(), "v_proj".into()]),
    )
    .unwrap();
    let (m, _) = attach(gguf_model(), &spec, &dev).unwrap();
    let m = randomize_b(m);
    let gguf_logits = to_vec(m.forward_logits(ids(&GGUF_PROMPT), None));
    let dir_tmp = tempfile::Builder::new()
        .prefix("balora-gguf-adapter-")
        .tempdir()
        .unwrap();
    let dir = dir_tmp.path();
    save_adapter(&m, &spec, &AdapterMeta::default(), dir).unwrap();
    // The saved file applied to the HF-layout base gives the same model.
    let (hf, _) = load_adapter(load(&t, &w), dir, &dev).unwrap();
    let hf_logits: Vec<f64> = to_vec(hf.forward_logits(ids(&GGUF_PROMPT), None))
        .iter()
        .map(|&x| x as f64)
        .collect();
    assert!(max_abs_diff(&gguf_logits, &hf_logits) < 1e-4);
    // Reloading into the GGUF base round-trips too.
    let (back, _) = load_adapter(gguf_model(), dir, &dev).unwrap();
    let back_logits = to_vec(back.forward_logits(ids(&GGUF_PROMPT), None));
    assert!(max_abs_diff(&back_logits, &hf_logits) < 1e-4);
}

#[test]
fn loader_errors_name_file_tensor_and_shape() {
    let t = tiny(false, true);
    let mut w = t.weights(1);
    w.tensors.remove("model.layers.1.mlp.up_proj.weight");
    let cfg = LlamaConfig::from_hf_json(&t.json(), "config.json").unwrap();
    let e = LlamaForCausalLm::<B>::load(&cfg, &w, &Default::default()).unwrap_err();
    assert!(matches!(e, ModelError::MissingTensor { .. }));
    assert!(
        e.to_string().contains("tiny-llama.safetensors")
            && e.to_string().contains("model.layers.1.mlp.up_proj.weight"),
        "{e}"
    );
    let mut w = t.weights(1);
    w.insert(
        "model.layers.0.self_attn.k_proj.weight",
        vec![24, 24],
        vec![0.0; 576],
    );
    let e = LlamaForCausalLm::<B>::load(&cfg, &w, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("k_proj.weight") && e.contains("[24, 24]") && e.contains("[8, 24]"),
        "{e}"
    );
    let mut j = t.json();
    j["num_key_value_heads"] = 4.into();
    let e = LlamaConfig::from_hf_json(&j, "config.json")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("config.json") && e.contains("num_key_value_heads"),
        "{e}"
    );
    j["model_type"] = "gpt2".into();
    assert!(LlamaConfig::from_hf_json(&j, "config.json")
        .unwrap_err()
        .to_string()
        .contains("gpt2"));
}

#[test]
fn export_restores_hf_names_and_layout_and_merges() {
    use balora_models::export::llama_hf_tensors;
    let t = tiny_gguf_shape();
    let w = gguf_as_hf_here(true);
    // An unadapted GGUF model exports exactly the HF checkpoint.
    let exported = llama_hf_tensors(&gguf_model());
    assert_eq!(exported.len(), w.tensors.len());
    for (name, shape, data) in &exported {
        let (s, d) = &w.tensors[name];
        assert_eq!(s, shape, "{name}");
        assert_eq!(d, data, "{name}");
    }
    // Merged adapters: the exported HF checkpoint reproduces the adapted model's logits.
    let spec = LoraConfig::new(2, 4.0, ModuleSelector::Regex("all-linear".into())).unwrap();
    let (m, _) = attach(gguf_model(), &spec, &Default::default()).unwrap();
    let m = randomize_b(m);
    let want: Vec<f64> = to_vec(m.forward_logits(ids(&GGUF_PROMPT), None))
        .iter()
        .map(|&x| x as f64)
        .collect();
    let mut merged = MemWeights::new("merged.safetensors");
    for (n, s, d) in llama_hf_tensors(&merge_all(m)) {
        merged.insert(n, s, d);
    }
    let got = to_vec(load(&t, &merged).forward_logits(ids(&GGUF_PROMPT), None));
    assert!(max_abs_diff(&got, &want) < 1e-4);
}

#[test]
fn sampler_greedy_top_p_and_frequencies() {
    use balora_models::generate::{pick, GenerateOptions};
    use rand::{rngs::StdRng, SeedableRng};
    let logits = [0.0f32, 2.0, 1.0, -1.0];
    let mut rng = StdRng::seed_from_u64(1);
    assert_eq!(pick(&logits, &GenerateOptions::default(), &mut rng), 1);
    // p = softmax(logits): [0.087, 0.644, 0.237, 0.032]; top_p 0.6 keeps only token 1.
    let nucleus = GenerateOptions {
        temperature: 1.0,
        top_p: 0.6,
        ..Default::default()
    };
    assert!((0..200).all(|_| pick(&logits, &nucleus, &mut rng) == 1));
    let full = GenerateOptions {
        temperature: 1.0,
        top_p: 1.0,
        ..Default::default()
    };
    let mut counts = [0usize; 4];
    let n = 20000;
    for _ in 0..n {
        counts[pick(&logits, &full, &mut rng) as usize] += 1;
    }
    let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
    for (i, &c) in counts.iter().enumerate() {
        let p = (logits[i] as f64).exp() / z;
        assert!(
            (c as f64 / n as f64 - p).abs() < 0.015,
            "token {i}: {} vs {p}",
            c as f64 / n as f64
        );
    }
}

#[test]
fn gaussian_init_and_init_std_apply_per_layer_rank_on_llama() {
    let t = tiny(false, false);
    let w = t.weights(5);
    let dev = Default::default();
    for init_std in [None, Some(0.01)] {
        let spec = gaussian_spec("q_proj", "v_proj", init_std);
        // Seeded: a few hundred draws per layer, so an unlucky stream could miss the 30 % band.
        <B as burn::tensor::backend::Backend>::seed(&dev, 11);
        let (m, _) = attach(load(&t, &w), &spec, &dev).unwrap();
        check_gaussian_init(&a_rms(&m), "v_proj", init_std);
    }
}

/// transformers ≥ 5 writes RoPE settings under `rope_parameters` (e.g. Qwen2's θ = 1e6,
/// Llama 3.1's `llama3` scaling); older files use top-level `rope_theta` / `rope_scaling`.
#[test]
fn rope_settings_are_read_from_transformers_5_rope_parameters() {
    let t = tiny(false, true);
    let mut j = t.json();
    let top = j.as_object_mut().unwrap();
    top.remove("rope_theta");
    top.remove("rope_scaling");
    top.insert(
        "rope_parameters".into(),
        serde_json::json!({"rope_theta": 1000000.0, "rope_type": "default"}),
    );
    let cfg = LlamaConfig::from_hf_json(&j, "config.json").unwrap();
    assert_eq!(cfg.rope_theta, 1e6);
    assert_eq!(cfg.rope_llama3_scaling, None);

    j["rope_parameters"] = serde_json::json!({
        "rope_theta": 500000.0, "rope_type": "llama3", "factor": 8.0,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192
    });
    let cfg = LlamaConfig::from_hf_json(&j, "config.json").unwrap();
    assert_eq!(cfg.rope_theta, 5e5);
    assert_eq!(cfg.rope_llama3_scaling, Some((8.0, 1.0, 4.0, 8192.0)));

    // The pre-5 spelling still wins where both are present.
    j["rope_theta"] = 250000.0.into();
    assert_eq!(
        LlamaConfig::from_hf_json(&j, "config.json")
            .unwrap()
            .rope_theta,
        2.5e5
    );
}
