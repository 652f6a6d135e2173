//! Qwen3, Gemma 2, Gemma 3 (text) and Phi-3 against PyTorch: tiny random models written by
//! `transformers` 5.24 and adapters written by real PEFT 0.21.2
//! (`tools/reference/families_golden.py`). balora loads each folder with its Hugging Face
//! loader and must reproduce the model's logits, the PEFT model's logits, and after merging
//! `merge_and_unload()`'s logits and weights. The references are the committed files PyTorch
//! wrote; nothing here is computed by the code under test.

use balora_models::export::llama_hf_tensors;
use balora_models::load::load_causal_lm;
use balora_models::peft::load_adapter;
use balora_models::weights::to_vec;
use balora_models::{merge_all, AdapterHost, CausalLm, KvCache, LlamaForCausalLm, MemWeights};
use burn::backend::NdArray;
use burn::tensor::{Int, Tensor, TensorData};
use serde_json::Value;
use std::path::{Path, PathBuf};

type B = NdArray;

/// Absolute tolerance on logits. Both sides are f32 forward passes of 2–3 layer, width-64
/// models whose logits are O(1) (|logit| < 6): PyTorch and burn sum in different orders and
/// use different exp/tanh/erf kernels, and the RoPE tables are computed in f64 here and in f32
/// there, each a few f32 ulps (~1e-7 relative) per op; the measured differences (printed) are
/// ~1e-6. 1e-4 leaves ~100× margin and is far below any real mistake: a missing `1 + w`, a
/// wrong score scale, a dropped soft-cap, window or q/k norm each changes logits by > 1e-2 (the
/// `*_matters` checks below show it for the window and the soft-caps).
const TOL: f64 = 1e-4;

/// Merged weights are `W + s·(B·A)` in f32 on both sides: allowed a few f32 ulps of O(1)
/// values.
const WEIGHT_TOL: f64 = 1e-6;

const FAMILIES: [&str; 4] = ["qwen3", "gemma2", "gemma3", "phi3"];

fn root(family: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/families")
        .join(family)
}

fn golden(family: &str) -> Value {
    let p = root(family).join("golden.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

/// A `{"shape", "data"}` array of golden.json.
fn arr(v: &Value) -> (Vec<usize>, Vec<f32>) {
    let shape = v["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    let data = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    (shape, data)
}

fn inputs(g: &Value) -> Vec<Vec<i64>> {
    serde_json::from_value(g["inputs"].clone()).unwrap()
}

fn ids(row: &[i64]) -> Tensor<B, 2, Int> {
    Tensor::from_data(
        TensorData::new(row.to_vec(), [1, row.len()]),
        &Default::default(),
    )
}

fn max_abs(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "length");
    got.iter()
        .zip(want)
        .fold(0f64, |m, (&a, &b)| m.max((a as f64 - b as f64).abs()))
}

fn lm(family: &str) -> LlamaForCausalLm<B> {
    load_causal_lm::<B>(&root(family), &Default::default())
        .unwrap_or_else(|e| panic!("{family}: {e}"))
        .model
}

/// The largest |Δ| over both sequences between the model's logits and golden `key`.
fn logits_diff(m: &LlamaForCausalLm<B>, g: &Value, key: &str) -> f64 {
    let mut worst = 0f64;
    for (i, row) in inputs(g).iter().enumerate() {
        let (shape, want) = arr(&g[key][i]);
        assert_eq!(shape, [row.len(), m.vocab_size()], "{key}[{i}] shape");
        worst = worst.max(max_abs(&to_vec(m.forward_logits(ids(row), None)), &want));
    }
    worst
}

fn check_logits(family: &str, m: &LlamaForCausalLm<B>, g: &Value, key: &str) {
    let d = logits_diff(m, g, key);
    println!("{family} {key}: max |Δ| = {d:.3e}");
    assert!(d <= TOL, "{family} {key}: max |Δ| = {d:.3e} > {TOL:e}");
}

fn family_matches_transformers_and_peft(family: &str) {
    let g = golden(family);
    let base = lm(family);
    check_logits(family, &base, &g, "base_logits");
    let (m, _) = load_adapter(base, &root(family).join("adapter"), &Default::default())
        .unwrap_or_else(|e| panic!("{family} adapter: {e}"));
    let adapted = m
        .linears()
        .iter()
        .filter(|(_, l)| l.adapter.is_some())
        .count();
    let per_layer = if family == "phi3" { 4 } else { 7 };
    assert_eq!(
        adapted,
        per_layer * m.num_layers(),
        "{family}: adapted linears"
    );
    check_logits(family, &m, &g, "adapted_logits");
    let merged = merge_all(m);
    check_logits(family, &merged, &g, "merged_logits");
    let ours = llama_hf_tensors(&merged);
    let want = g["merged_weights"].as_object().unwrap();
    assert!(!want.is_empty());
    for (name, v) in want {
        let (shape, data) = arr(v);
        let (_, s, got) = ours
            .iter()
            .find(|t| &t.0 == name)
            .unwrap_or_else(|| panic!("{family}: no merged `{name}`"));
        assert_eq!(s, &shape, "{family}: shape of {name}");
        let d = max_abs(got, &data);
        println!("{family} merged {name}: max |Δ| = {d:.3e}");
        assert!(d <= WEIGHT_TOL, "{family} merged {name}: {d:.3e}");
    }
    // Every exported tensor is the checkpoint's, names and values (norms as `w`, not `1 + w`).
    let file = MemWeights::read_safetensors(&root(family).join("model.safetensors")).unwrap();
    let exported = llama_hf_tensors(&lm(family));
    assert_eq!(exported.len(), file.tensors.len(), "{family}: tensor count");
    for (name, shape, data) in &exported {
        let (s, w) = file.tensors.get(name).unwrap_or_else(|| panic!("{name}"));
        assert_eq!(s, shape, "{family}: {name}");
        assert!(max_abs(data, w) <= WEIGHT_TOL, "{family}: exported {name}");
    }
}

#[test]
fn qwen3_matches_transformers_and_peft() {
    family_matches_transformers_and_peft("qwen3");
}

#[test]
fn gemma2_matches_transformers_and_peft() {
    family_matches_transformers_and_peft("gemma2");
}

#[test]
fn gemma3_matches_transformers_and_peft() {
    family_matches_transformers_and_peft("gemma3");
}

#[test]
fn phi3_fused_projections_match_transformers_and_peft() {
    family_matches_transformers_and_peft("phi3");
    // PEFT's names for the fused layers.
    let names: Vec<String> = lm("phi3")
        .linears()
        .into_iter()
        .map(|(i, _)| i.path)
        .collect();
    assert!(names.contains(&"model.layers.1.self_attn.qkv_proj".to_string()));
    assert!(names.contains(&"model.layers.0.mlp.gate_up_proj".to_string()));
    assert!(!names
        .iter()
        .any(|n| n.ends_with("q_proj") && !n.ends_with("qkv_proj")));
}

/// The sliding window, the soft-caps and partial rotary change these fixtures' logits: turning
/// each off moves them far beyond the tolerance, so the tests above check each of them.
#[test]
fn sliding_window_softcaps_and_local_rope_matter() {
    for family in ["gemma2", "gemma3", "phi3"] {
        let g = golden(family);
        let mut m = lm(family);
        m.family.sliding_window = None;
        let d = logits_diff(&m, &g, "base_logits");
        println!("{family} without its sliding window: max |Δ| = {d:.3e}");
        assert!(d > 1e-2, "{family}: the window does not change the logits");
    }
    let g = golden("gemma2");
    for which in ["attention", "final"] {
        let mut m = lm("gemma2");
        match which {
            "attention" => m.family.attn_softcap = None,
            _ => m.family.final_softcap = None,
        }
        let d = logits_diff(&m, &g, "base_logits");
        println!("gemma2 without the {which} soft-cap: max |Δ| = {d:.3e}");
        assert!(d > 1e-2, "gemma2: the {which} soft-cap does not matter");
    }
    let g = golden("gemma3");
    let mut m = lm("gemma3");
    m.rope_cos_local = None;
    m.rope_sin_local = None;
    let d = logits_diff(&m, &g, "base_logits");
    println!("gemma3 with the global RoPE on local layers: max |Δ| = {d:.3e}");
    assert!(d > 1e-2, "gemma3: the local RoPE base does not matter");
}

/// Decoding one token at a time with the KV cache gives the full forward's logits, sliding
/// window included (positions past the window drop out of the cached keys' mask).
#[test]
fn kv_cache_decoding_matches_the_full_forward() {
    for family in FAMILIES {
        let g = golden(family);
        let m = lm(family);
        let row = &inputs(&g)[1];
        let (_, want) = arr(&g["base_logits"][1]);
        let v = m.vocab_size();
        let mut cache = KvCache::new(m.num_layers());
        let mut worst = 0f64;
        for (i, &tok) in row.iter().enumerate() {
            let got = to_vec(m.forward_step(ids(&[tok]), &mut cache));
            worst = worst.max(max_abs(&got, &want[i * v..(i + 1) * v]));
        }
        println!("{family} cached decoding: max |Δ| = {worst:.3e}");
        assert!(worst <= TOL, "{family}: cached decoding {worst:.3e}");
    }
}

#[test]
fn family_config_errors_name_the_field() {
    let read = |f: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(root(f).join("config.json")).unwrap())
            .unwrap()
    };
    let err = |v: &Value| {
        balora_models::LlamaConfig::from_hf_json(v, "config.json")
            .unwrap_err()
            .to_string()
    };
    let mut phi = read("phi3");
    phi["rope_parameters"]["rope_type"] = "longrope".into();
    let e = err(&phi);
    assert!(
        e.contains("rope_parameters.rope_type") && e.contains("longrope"),
        "{e}"
    );
    let mut phi = read("phi3");
    phi["rope_parameters"]["partial_rotary_factor"] = 0.2.into();
    assert!(err(&phi).contains("partial_rotary_factor"));
    let mut gemma = read("gemma2");
    gemma["layer_types"] = serde_json::json!(["sliding_attention"]);
    assert!(err(&gemma).contains("layer_types"));
    gemma["layer_types"] = serde_json::json!(["sliding_attention", "chunked", "x"]);
    assert!(err(&gemma).contains("layer_types[1]"));
    let mut gemma = read("gemma2");
    gemma["hidden_activation"] = "relu".into();
    assert!(err(&gemma).contains("hidden_activation"));
    let mut gemma3 = read("gemma3");
    gemma3["model_type"] = "gemma3".into();
    assert!(err(&gemma3).contains("gemma3_text"));
}

/// A Qwen3 GGUF (written by gguf-py's `GGUFWriter` from the same tiny model, llama.cpp's
/// `qwen3` names and keys, q/k rows unpermuted as llama.cpp's converter leaves them for NEOX
/// RoPE) loads to the same tensors as the Hugging Face folder, gives transformers' logits and
/// takes the PEFT adapter.
#[test]
fn qwen3_gguf_loads_like_the_hf_folder() {
    let g = golden("qwen3");
    let dev = Default::default();
    let gguf = load_causal_lm::<B>(&root("qwen3").join("model.gguf"), &dev)
        .unwrap()
        .model;
    assert_eq!(
        llama_hf_tensors(&gguf),
        llama_hf_tensors(&lm("qwen3")),
        "tensors"
    );
    check_logits("qwen3 gguf", &gguf, &g, "base_logits");
    let (m, _) = load_adapter(gguf, &root("qwen3").join("adapter"), &dev).unwrap();
    check_logits("qwen3 gguf", &merge_all(m), &g, "merged_logits");
}

/// A Phi-3 GGUF (llama.cpp's `phi3` names: fused `attn_qkv`, fused gate/up in `ffn_up`,
/// `rope.dimension_count` = the rotary part of a head, `attention.sliding_window`) loads to the
/// Hugging Face folder's tensors and transformers' logits, and takes the PEFT adapter on the
/// fused layers.
#[test]
fn phi3_gguf_loads_like_the_hf_folder() {
    let g = golden("phi3");
    let dev = Default::default();
    let gguf = load_causal_lm::<B>(&root("phi3").join("model.gguf"), &dev)
        .unwrap()
        .model;
    assert_eq!(
        llama_hf_tensors(&gguf),
        llama_hf_tensors(&lm("phi3")),
        "tensors"
    );
    check_logits("phi3 gguf", &gguf, &g, "base_logits");
    let (m, _) = load_adapter(gguf, &root("phi3").join("adapter"), &dev).unwrap();
    check_logits("phi3 gguf", &merge_all(m), &g, "merged_logits");
}
