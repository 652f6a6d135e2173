//! GPT-2 and GPT-NeoX against `transformers` 5.24 and real PEFT 0.21.2: the committed fixtures
//! (tiny random models, PEFT adapters, golden logits and merged weights) are written by
//! `PYTHONHASHSEED=0 target/tch-venv/bin/python tools/reference/gpt_golden.py`; nothing here is
//! computed by the code under test.

mod common;
use common::rel_err;

use balora_models::load::{load_gpt2_hf_dir, load_gpt_neox_hf_dir};
use balora_models::peft::{load_adapter, parse_config, save_adapter, AdapterMeta};
use balora_models::weights::to_vec;
use balora_models::{
    attach, merge_all, AdapterHost, CausalLm, Gpt2LmHeadModel, GptNeoXForCausalLm, LoraConfig,
    MemWeights, ModelError, ModuleSelector,
};
use burn::backend::NdArray;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use serde_json::Value;
use std::path::{Path, PathBuf};

type B = NdArray;

/// Logits: `max |balora − transformers| / max |transformers|` must stay below this. Both sides
/// are f32 forward passes of a 2-layer width-64 model; they differ only in summation order and
/// in the exp / erf / tanh implementations, a few f32 ulps (1.2e-7 relative) per op, which
/// through ~15 ops and LayerNorm's 1/σ lands near 1e-6 (measured values are printed). 1e-4 keeps
/// two orders of magnitude of margin and is far below any real mistake: a transposed Conv1D, a
/// wrong q/k/v split or rotary half, a missing bias or a wrong LoRA scale moves logits by > 1e-2.
const REL_TOL: f64 = 1e-4;

/// Merged weights: `max |balora − PEFT| / max |PEFT|` over a tensor. Both compute
/// `W + scale·(B·A)ᵀ` in f32 (a rank-4 sum, then one add): a few ulps of the largest value,
/// ≤ 6e-8 each; 1e-6 (8 ulps) bounds it, while a transposed or mis-scaled delta is ~1e-1.
const MERGE_TOL: f64 = 1e-6;

fn root(family: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/families")
        .join(family)
}

fn golden(family: &str) -> Value {
    let text = std::fs::read_to_string(root(family).join("golden.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("an array of numbers")
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn ids(g: &Value, rows: usize) -> Tensor<B, 2, Int> {
    let all: Vec<Vec<i64>> = serde_json::from_value(g["input_ids"].clone()).unwrap();
    let s = all[0].len();
    let flat: Vec<i64> = all.into_iter().take(rows).flatten().collect();
    Tensor::from_data(TensorData::new(flat, [rows, s]), &Default::default())
}

fn check(what: &str, got: &[f32], want: &[f32], tol: f64) {
    let e = rel_err(got, want);
    println!("{what}: max rel err {e:.3e}");
    assert!(e < tol, "{what}: relative error {e:.3e} ≥ {tol:e}");
}

fn logits<M: CausalLm<B>>(m: &M, g: &Value) -> Vec<f32> {
    to_vec(m.forward_logits(ids(g, 2), None))
}

/// Sequence 0 with its last 3 positions padded (attention_mask false), as the script ran it.
fn padded_logits<M: CausalLm<B>>(m: &M, g: &Value) -> Vec<f32> {
    let s = g["input_ids"][0].as_array().unwrap().len();
    let mask: Vec<bool> = (0..s).map(|i| i < s - 3).collect();
    let mask = Tensor::<B, 2, Bool>::from_data(TensorData::new(mask, [1, s]), &Default::default());
    to_vec(m.forward_logits(ids(g, 1), Some(mask)))
}

fn gpt2() -> Gpt2LmHeadModel<B> {
    load_gpt2_hf_dir::<B>(&root("gpt2"), &Default::default())
        .unwrap()
        .0
}

fn neox(dir: &str) -> GptNeoXForCausalLm<B> {
    load_gpt_neox_hf_dir::<B>(&root(dir), &Default::default())
        .unwrap()
        .0
}

/// The merged tensors PEFT recorded, compared with the model's HF export.
fn check_merged(family: &str, got: &[(String, Vec<usize>, Vec<f32>)], g: &Value) {
    let merged = g["merged"].as_object().unwrap();
    assert!(!merged.is_empty());
    for (name, t) in merged {
        let (_, shape, data) = got
            .iter()
            .find(|(n, _, _)| n == name)
            .unwrap_or_else(|| panic!("{family}: balora's export has no `{name}`"));
        let want_shape: Vec<usize> = serde_json::from_value(t["shape"].clone()).unwrap();
        assert_eq!(shape, &want_shape, "{family}: layout of merged {name}");
        check(
            &format!("{family} merged {name}"),
            data,
            &floats(&t["data"]),
            MERGE_TOL,
        );
    }
}

/// A fresh folder, removed when dropped (also when the test fails).
struct Tmp(PathBuf);

impl std::ops::Deref for Tmp {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

fn tmp(name: &str) -> Tmp {
    let d = std::env::temp_dir().join(format!("balora-gpt-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    Tmp(d)
}

#[test]
fn gpt2_logits_match_transformers() {
    let g = golden("gpt2");
    let m = gpt2();
    check(
        "gpt2 base logits",
        &logits(&m, &g),
        &floats(&g["base_logits"]),
        REL_TOL,
    );
    check(
        "gpt2 right-padded logits",
        &padded_logits(&m, &g),
        &floats(&g["padded_logits"]),
        REL_TOL,
    );
}

#[test]
fn gpt2_fan_in_fan_out_peft_adapter_applies_and_merges_like_peft() {
    let g = golden("gpt2");
    let dir = root("gpt2").join("adapter");
    let text = std::fs::read_to_string(dir.join("adapter_config.json")).unwrap();
    assert!(text.contains("\"fan_in_fan_out\": true"), "fixture: {text}");
    let spec = parse_config(&text, "gpt2 adapter").unwrap();
    assert_eq!((spec.r, spec.alpha), (4, 8.0));
    let (m, _) = load_adapter(gpt2(), &dir, &Default::default()).unwrap();
    let adapted = m
        .linears()
        .iter()
        .filter(|(_, l)| l.adapter.is_some())
        .count();
    assert_eq!(
        adapted, 8,
        "c_attn, attn.c_proj, c_fc, mlp.c_proj × 2 layers"
    );
    let want = floats(&g["adapted_logits"]);
    check("gpt2 adapted logits", &logits(&m, &g), &want, REL_TOL);
    // The adapter moves the logits far more than the tolerance: the check above can fail.
    assert!(rel_err(&floats(&g["base_logits"]), &want) > 1e-2);
    let merged = merge_all(m);
    check(
        "gpt2 merged logits",
        &logits(&merged, &g),
        &floats(&g["merged_logits"]),
        REL_TOL,
    );
    check_merged("gpt2", &merged.hf_tensors(), &g);
}

#[test]
fn gpt2_adapter_written_by_balora_is_peft_s_file() {
    let dev = Default::default();
    let dir = root("gpt2").join("adapter");
    let (m, spec) = load_adapter(gpt2(), &dir, &dev).unwrap();
    let out = tmp("gpt2-write");
    let meta = AdapterMeta {
        task_type: Some("CAUSAL_LM".into()),
        base_model_name_or_path: None,
    };
    save_adapter(&m, &spec, &meta, &out).unwrap();
    let orig = MemWeights::read_safetensors(&dir.join("adapter_model.safetensors")).unwrap();
    let back = MemWeights::read_safetensors(&out.join("adapter_model.safetensors")).unwrap();
    assert_eq!(
        orig.tensors, back.tensors,
        "same PEFT keys, shapes and values"
    );
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["fan_in_fan_out"], true);
    assert_eq!(
        cfg["target_modules"],
        serde_json::json!(["c_attn", "c_proj", "c_fc"])
    );
    // Read back by balora: the same outputs as PEFT's.
    let (m2, _) = load_adapter(gpt2(), &out, &dev).unwrap();
    let g = golden("gpt2");
    check(
        "gpt2 balora-written adapter logits",
        &logits(&m2, &g),
        &floats(&g["adapted_logits"]),
        REL_TOL,
    );
}

#[test]
fn fresh_gpt2_adapters_record_fan_in_fan_out_and_modules_to_save_in_conv1d_layout() {
    let dev = Default::default();
    let spec = LoraConfig {
        targets: ModuleSelector::List(vec!["c_attn".into()]),
        modules_to_save: vec!["mlp.c_fc".into()],
        ..LoraConfig::default()
    };
    let (m, summary) = attach(gpt2(), &spec, &dev).unwrap();
    assert_eq!(summary.adapters, 2);
    let out = tmp("gpt2-fresh");
    save_adapter(&m, &spec, &AdapterMeta::default(), &out).unwrap();
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["fan_in_fan_out"], true);
    let w = MemWeights::read_safetensors(&out.join("adapter_model.safetensors")).unwrap();
    // PEFT's factor shapes (lora_A [r, in], lora_B [out, r]) and HF Conv1D's [in, out] weight.
    let key = |s: &str| format!("base_model.model.transformer.h.0.{s}");
    assert_eq!(w.tensors[&key("attn.c_attn.lora_A.weight")].0, vec![8, 64]);
    assert_eq!(w.tensors[&key("attn.c_attn.lora_B.weight")].0, vec![192, 8]);
    let (shape, data) = &w.tensors[&key("mlp.c_fc.weight")];
    assert_eq!(shape, &vec![64, 256]);
    let base = MemWeights::read_safetensors(&root("gpt2").join("model.safetensors")).unwrap();
    assert_eq!(data, &base.tensors["transformer.h.0.mlp.c_fc.weight"].1);
    // And read back onto a fresh model in that layout.
    let (m2, _) = load_adapter(gpt2(), &out, &dev).unwrap();
    let g = golden("gpt2");
    check(
        "gpt2 re-read fresh adapter",
        &logits(&m2, &g),
        &logits(&m, &g),
        1e-6,
    );
}

#[test]
fn neox_logits_match_transformers_parallel_and_serial_residual() {
    let g = golden("gpt_neox");
    let m = neox("gpt_neox");
    assert!(m.parallel_residual);
    check(
        "gpt_neox base logits",
        &logits(&m, &g),
        &floats(&g["base_logits"]),
        REL_TOL,
    );
    check(
        "gpt_neox right-padded logits",
        &padded_logits(&m, &g),
        &floats(&g["padded_logits"]),
        REL_TOL,
    );
    let gs = golden("gpt_neox/serial");
    let s = neox("gpt_neox/serial");
    assert!(!s.parallel_residual);
    check(
        "gpt_neox serial-residual logits",
        &logits(&s, &gs),
        &floats(&gs["base_logits"]),
        REL_TOL,
    );
}

#[test]
fn neox_peft_adapter_applies_and_merges_like_peft() {
    let g = golden("gpt_neox");
    let dir = root("gpt_neox").join("adapter");
    let (m, spec) = load_adapter(neox("gpt_neox"), &dir, &Default::default()).unwrap();
    assert_eq!((spec.r, spec.alpha), (4, 8.0));
    let adapted = m
        .linears()
        .iter()
        .filter(|(_, l)| l.adapter.is_some())
        .count();
    assert_eq!(adapted, 8, "4 projections × 2 layers (not embed_out)");
    let want = floats(&g["adapted_logits"]);
    check("gpt_neox adapted logits", &logits(&m, &g), &want, REL_TOL);
    assert!(rel_err(&floats(&g["base_logits"]), &want) > 1e-2);
    let out = tmp("neox-write");
    save_adapter(&m, &spec, &AdapterMeta::default(), &out).unwrap();
    let orig = MemWeights::read_safetensors(&dir.join("adapter_model.safetensors")).unwrap();
    let back = MemWeights::read_safetensors(&out.join("adapter_model.safetensors")).unwrap();
    assert_eq!(orig.tensors, back.tensors);
    let cfg = std::fs::read_to_string(out.join("adapter_config.json")).unwrap();
    assert!(cfg.contains("\"fan_in_fan_out\": false"), "{cfg}");
    let merged = merge_all(m);
    check(
        "gpt_neox merged logits",
        &logits(&merged, &g),
        &floats(&g["merged_logits"]),
        REL_TOL,
    );
    check_merged("gpt_neox", &merged.hf_tensors(), &g);
}

/// PEFT sets `fan_in_fan_out` by the layer type whatever the file says (`Conv1D` → true,
/// `nn.Linear` → false, with a warning), so a file with the other value computes the same.
#[test]
fn fan_in_fan_out_follows_the_layer_type_as_in_peft() {
    for (family, flip) in [("gpt2", false), ("gpt_neox", true)] {
        let g = golden(family);
        let src = root(family).join("adapter");
        let dir = tmp(&format!("flip-{family}"));
        std::fs::copy(
            src.join("adapter_model.safetensors"),
            dir.join("adapter_model.safetensors"),
        )
        .unwrap();
        let mut cfg: Value = serde_json::from_str(
            &std::fs::read_to_string(src.join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        cfg["fan_in_fan_out"] = flip.into();
        std::fs::write(dir.join("adapter_config.json"), cfg.to_string()).unwrap();
        let got = if family == "gpt2" {
            logits(
                &load_adapter(gpt2(), &dir, &Default::default()).unwrap().0,
                &g,
            )
        } else {
            let m = neox(family);
            logits(&load_adapter(m, &dir, &Default::default()).unwrap().0, &g)
        };
        check(
            &format!("{family} with fan_in_fan_out = {flip}"),
            &got,
            &floats(&g["adapted_logits"]),
            REL_TOL,
        );
    }
}

/// Copies a fixture folder with `config.json` edited and/or one tensor replaced.
fn broken_copy(
    family: &str,
    name: &str,
    edit: impl Fn(&mut Value),
    tensor: Option<(&str, Vec<usize>)>,
) -> Tmp {
    let out = tmp(name);
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(root(family).join("config.json")).unwrap())
            .unwrap();
    edit(&mut cfg);
    std::fs::write(out.join("config.json"), cfg.to_string()).unwrap();
    let w = MemWeights::read_safetensors(&root(family).join("model.safetensors")).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> =
        w.tensors.into_iter().map(|(n, (s, d))| (n, s, d)).collect();
    if let Some((tname, shape)) = tensor {
        let t = tensors.iter_mut().find(|t| t.0 == tname).unwrap();
        t.1 = shape;
    }
    balora_formats::write_safetensors(
        &out.join("model.safetensors"),
        &tensors,
        balora_formats::PT_FORMAT,
    )
    .unwrap();
    out
}

#[test]
fn bad_configs_and_tensors_are_named() {
    let dev = Default::default();
    let gerr = |d: &Path| {
        load_gpt2_hf_dir::<B>(d, &dev)
            .expect_err("an error")
            .to_string()
    };
    let nerr = |d: &Path| {
        load_gpt_neox_hf_dir::<B>(d, &dev)
            .expect_err("an error")
            .to_string()
    };
    // A Conv1D weight stored nn.Linear-style ([out, in]) is a shape error naming the tensor.
    let d = broken_copy(
        "gpt2",
        "c-attn-t",
        |_| {},
        Some(("transformer.h.0.attn.c_attn.weight", vec![192, 64])),
    );
    let e = gerr(&d);
    assert!(
        e.contains("transformer.h.0.attn.c_attn.weight") && e.contains("192"),
        "{e}"
    );
    let d = broken_copy("gpt2", "heads", |v| v["n_head"] = 5.into(), None);
    let e = gerr(&d);
    assert!(e.contains("n_head"), "{e}");
    let d = broken_copy(
        "gpt2",
        "act",
        |v| v["activation_function"] = "relu".into(),
        None,
    );
    assert!(gerr(&d).contains("activation_function"));
    let d = broken_copy("gpt2", "layers", |v| v["n_layer"] = 3.into(), None);
    assert!(gerr(&d).contains("n_layer"));
    let d = broken_copy(
        "gpt_neox",
        "rot",
        |v| v["rope_parameters"]["partial_rotary_factor"] = 0.1.into(),
        None,
    );
    let e = nerr(&d);
    assert!(e.contains("partial_rotary_factor"), "{e}");
    let d = broken_copy("gpt_neox", "mt", |v| v["model_type"] = "gpt2".into(), None);
    assert!(nerr(&d).contains("model_type"));
    let e: ModelError = load_gpt2_hf_dir::<B>(&root("gpt_neox"), &dev)
        .err()
        .unwrap();
    assert!(e.to_string().contains("model_type"), "{e}");
}

/// Writes what `tools/reference/gpt_golden.py --check DIR FAMILY` loads with real PEFT: a
/// balora-made adapter (fresh factors, randomised B) and balora's logits with it.
/// `cargo test -p balora-models --test gpt_families -- --ignored write_for_python` (DIR is
/// printed).
#[test]
#[ignore = "writes files for the Python round-trip check"]
fn write_for_python() {
    let dev = Default::default();
    let spec = LoraConfig {
        targets: ModuleSelector::List(vec!["c_attn".into(), "c_fc".into(), "c_proj".into()]),
        ..LoraConfig::default()
    };
    let (m, _) = attach(gpt2(), &spec, &dev).unwrap();
    // Fresh B is zero: give it values so the adapter changes the outputs.
    let m = m.map_linears(&mut |_, mut l| {
        if let Some(a) = &mut l.adapter {
            let [o, r] = a.lora_b.dims();
            let vals: Vec<f32> = (0..o * r)
                .map(|k| ((k * 37 % 101) as f32 - 50.0) / 250.0)
                .collect();
            a.lora_b = a
                .lora_b
                .clone()
                .map(|_| Tensor::from_data(TensorData::new(vals, [o, r]), &dev));
        }
        l
    });
    let out = std::env::temp_dir().join("balora-gpt2-for-python");
    std::fs::create_dir_all(&out).unwrap();
    save_adapter(&m, &spec, &AdapterMeta::default(), &out).unwrap();
    let g = golden("gpt2");
    let j = serde_json::json!({"input_ids": g["input_ids"], "logits": logits(&m, &g)});
    std::fs::write(out.join("logits.json"), j.to_string()).unwrap();
    println!("{}", out.display());
}
