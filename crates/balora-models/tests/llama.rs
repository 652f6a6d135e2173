//! Llama family on tiny random models against a naive f64 reference written here.

mod common;
use balora_models::llama::{
    gguf_to_hf_name, hf_to_gguf_name, llama_cpp_permutation, permute_rows, GgufAsHf,
};
use balora_models::peft::{load_adapter, save_adapter, AdapterMeta};
use balora_models::weights::to_vec;
use balora_models::{
    attach, merge_all, unmerge_all, CausalLm, KvCache, LlamaConfig, LlamaForCausalLm, LoraConfig,
    MemWeights, ModelError, ModuleSelector, RopeLayout,
};
use burn::backend::NdArray;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use common::*;

type B = NdArray;

fn tiny(qkv_bias: bool, tied: bool) -> TinyLlama {
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

/// llama.cpp permutes q/k rows for its interleaved RoPE; loading those with interleaved RoPE
/// must give the HF logits.
fn gguf_style(t: &TinyLlama, w: &MemWeights) -> MemWeights {
    let mut g = MemWeights::new("tiny.gguf");
    for (name, (shape, data)) in &w.tensors {
        let mut data = data.clone();
        if name.contains("q_proj.weight") {
            data = permute_rows(&data, t.d, &llama_cpp_permutation(t.nh, t.hd));
        }
        if name.contains("k_proj.weight") {
            data = permute_rows(&data, t.d, &llama_cpp_permutation(t.nkv, t.hd));
        }
        g.insert(hf_to_gguf_name(name).unwrap(), shape.clone(), data);
    }
    g
}

fn load_gguf_style(t: &TinyLlama, g: &MemWeights) -> LlamaForCausalLm<B> {
    let mut cfg = LlamaConfig::from_hf_json(&t.json(), "config.json").unwrap();
    cfg.rope_layout = RopeLayout::Interleaved;
    LlamaForCausalLm::load(&cfg, &GgufAsHf(g), &Default::default()).unwrap()
}

#[test]
fn gguf_permuted_weights_with_interleaved_rope_match_hf() {
    let t = tiny(false, true);
    let w = t.weights(11);
    let g = gguf_style(&t, &w);
    let hf = to_vec(load(&t, &w).forward_logits(ids(&PROMPT), None));
    let gg = to_vec(load_gguf_style(&t, &g).forward_logits(ids(&PROMPT), None));
    let want: Vec<f64> = llama_reference(&t, &w, &PROMPT).concat();
    assert!(max_abs_diff(&gg, &want) < 1e-4);
    assert!(max_abs_diff(&hf, &want) < 1e-4);
    // Interleaved RoPE on HF-order weights is a different model: the check can fail.
    let mut cfg = LlamaConfig::from_hf_json(&t.json(), "c").unwrap();
    cfg.rope_layout = RopeLayout::Interleaved;
    let wrong = to_vec(
        LlamaForCausalLm::<B>::load(&cfg, &w, &Default::default())
            .unwrap()
            .forward_logits(ids(&PROMPT), None),
    );
    assert!(max_abs_diff(&wrong, &want) > 1e-2);
    for n in [
        "blk.3.attn_q.weight",
        "token_embd.weight",
        "output.weight",
        "blk.0.ffn_down.weight",
    ] {
        assert_eq!(hf_to_gguf_name(&gguf_to_hf_name(n).unwrap()).unwrap(), n);
    }
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
    let t = tiny(false, true);
    let w = t.weights(21);
    let g = gguf_style(&t, &w);
    let dev = Default::default();
    let spec = LoraConfig::new(
        2,
        4.0,
        ModuleSelector::List(vec!["q_proj".into(), "k_proj".into(), "v_proj".into()]),
    )
    .unwrap();
    let (m, _) = attach(load_gguf_style(&t, &g), &spec, &dev).unwrap();
    let m = randomize_b(m);
    let gguf_logits = to_vec(m.forward_logits(ids(&PROMPT), None));
    let dir = std::env::temp_dir().join(format!("balora-gguf-adapter-{}", std::process::id()));
    save_adapter(&m, &spec, &AdapterMeta::default(), &dir).unwrap();
    // The saved file applied to the HF-layout base gives the same model.
    let (hf, _) = load_adapter(load(&t, &w), &dir, &dev).unwrap();
    let hf_logits: Vec<f64> = to_vec(hf.forward_logits(ids(&PROMPT), None))
        .iter()
        .map(|&x| x as f64)
        .collect();
    assert!(max_abs_diff(&gguf_logits, &hf_logits) < 1e-4);
    // Reloading into the GGUF-layout base round-trips too.
    let (back, _) = load_adapter(load_gguf_style(&t, &g), &dir, &dev).unwrap();
    let back_logits = to_vec(back.forward_logits(ids(&PROMPT), None));
    assert!(max_abs_diff(&back_logits, &hf_logits) < 1e-4);
    std::fs::remove_dir_all(&dir).ok();
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
    let t = tiny(false, true);
    let w = t.weights(31);
    let g = gguf_style(&t, &w);
    // Unadapted GGUF-layout model exports exactly the HF checkpoint.
    let exported = llama_hf_tensors(&load_gguf_style(&t, &g));
    assert_eq!(exported.len(), w.tensors.len());
    for (name, shape, data) in &exported {
        let (s, d) = &w.tensors[name];
        assert_eq!(s, shape, "{name}");
        assert_eq!(d, data, "{name}");
    }
    // Merged adapters: the exported HF checkpoint reproduces the adapted model's logits.
    let spec = LoraConfig::new(2, 4.0, ModuleSelector::Regex("all-linear".into())).unwrap();
    let (m, _) = attach(load_gguf_style(&t, &g), &spec, &Default::default()).unwrap();
    let m = randomize_b(m);
    let want: Vec<f64> = to_vec(m.forward_logits(ids(&PROMPT), None))
        .iter()
        .map(|&x| x as f64)
        .collect();
    let mut merged = MemWeights::new("merged.safetensors");
    for (n, s, d) in llama_hf_tensors(&merge_all(m)) {
        merged.insert(n, s, d);
    }
    let got = to_vec(load(&t, &merged).forward_logits(ids(&PROMPT), None));
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
