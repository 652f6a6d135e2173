//! Adapters written by real PEFT 0.21.2 (`tools/reference/peft_real_fixtures.py`): balora must
//! parse their full `adapter_config.json`, reproduce PyTorch's adapted outputs, keep them when
//! balancing, and merge to PEFT's `merge_and_unload` weights. The references are the committed
//! files PyTorch + PEFT wrote; nothing here is computed by the code under test.

mod common;
use common::rel_err;

use balora_manifold::balanced::Gauge;
use balora_models::balance::balance_adapter;
use balora_models::export::{bert_classifier_hf_tensors, llama_hf_tensors, NamedTensor};
use balora_models::load::{load_bert_hf_dir, load_causal_lm};
use balora_models::peft::{load_adapter, parse_config, read_adapter};
use balora_models::weights::to_vec;
use balora_models::{
    merge_all, BertForSequenceClassification, CausalLm, LlamaForCausalLm, MemWeights, Pooling,
    SequenceClassifier, Weights,
};
use burn::backend::NdArray;
use burn::tensor::{Int, Tensor, TensorData};
use std::path::{Path, PathBuf};

type B = NdArray;

/// Relative tolerance on outputs: f32 forward passes of a 2-layer width-32 model in two
/// implementations (different summation orders, exp/erf approximations) agree to a few f32
/// ulps of the largest value per op; 1e-4 of the largest output leaves ~100× margin over the
/// measured differences (printed by each test) and is far below any real mistake (a wrong
/// scale, a transposed or permuted factor changes outputs by > 1e-2).
const REL_TOL: f64 = 1e-4;

fn root(family: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/peft_real")
        .join(family)
}

fn expected(family: &str) -> MemWeights {
    balora_models::MemWeights::read_safetensors(&root(family).join("expected.safetensors")).unwrap()
}

fn want(w: &MemWeights, name: &str) -> Vec<f32> {
    w.fetch(name).unwrap().1
}

fn ids(family: &str) -> Tensor<B, 2, Int> {
    let text = std::fs::read_to_string(root(family).join("expected.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let rows: Vec<Vec<i64>> = serde_json::from_value(v["input_ids"].clone()).unwrap();
    let (b, s) = (rows.len(), rows[0].len());
    let flat: Vec<i64> = rows.into_iter().flatten().collect();
    Tensor::from_data(TensorData::new(flat, [b, s]), &Default::default())
}

fn check(what: &str, got: &[f32], want: &[f32]) {
    let e = rel_err(got, want);
    println!("{what}: max rel err {e:.3e}");
    assert!(e < REL_TOL, "{what}: relative error {e:.3e} ≥ {REL_TOL:e}");
}

fn lm(family: &str) -> LlamaForCausalLm<B> {
    load_causal_lm::<B>(&root(family).join("base"), &Default::default())
        .unwrap()
        .model
}

fn logits(m: &LlamaForCausalLm<B>, family: &str) -> Vec<f32> {
    to_vec(m.forward_logits(ids(family), None))
}

fn classifier(family: &str) -> BertForSequenceClassification<B> {
    let dev = Default::default();
    let (bert, _, _) = load_bert_hf_dir::<B>(&root(family).join("base"), &dev).unwrap();
    BertForSequenceClassification::new(bert, 3, Pooling::Cls, &dev)
}

#[test]
fn configs_written_by_peft_0_21_parse_with_their_values() {
    let cfg = |f: &str| {
        let p = root(f).join("adapter/adapter_config.json");
        parse_config(&std::fs::read_to_string(&p).unwrap(), f).unwrap()
    };
    // The values the fixture script passed to LoraConfig.
    let l = cfg("llama");
    assert_eq!((l.r, l.alpha, l.rslora), (4, 8.0, false));
    assert_eq!(l.rank_pattern.get("down_proj"), Some(&2));
    assert_eq!(l.alpha_pattern.get("v_proj"), Some(&16.0));
    assert!((l.dropout - 0.05).abs() < 1e-12);
    let q = cfg("qwen2");
    assert_eq!((q.r, q.alpha, q.rslora), (4, 6.0, true));
    assert_eq!(q.rank_pattern.get("layers.1.mlp.gate_proj"), Some(&6));
    let b = cfg("bert");
    assert_eq!(b.rank_pattern.get("key"), Some(&2));
    assert!(b.modules_to_save.iter().any(|s| s == "classifier"));
}

#[test]
fn unsupported_features_are_named_with_their_value() {
    let text = std::fs::read_to_string(root("").join("feature_configs.json")).unwrap();
    let all: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert!(
        all.len() >= 10,
        "feature_configs.json has {} cases",
        all.len()
    );
    for (field, cfg) in &all {
        let r = parse_config(&cfg.to_string(), "adapter_config.json");
        // fan_in_fan_out is decided by the layer type, as in PEFT (tests/gpt_families.rs).
        if field == "default" || field == "fan_in_fan_out" {
            r.unwrap();
            continue;
        }
        let e = r.expect_err(field).to_string();
        let value = cfg[field].to_string();
        assert!(
            e.contains(&format!("`{field}`")) && e.contains(&value),
            "error for {field} = {value} does not name both: {e}"
        );
    }
    // Hand-made variants of PEFT's default config.
    let mut base = all["default"].clone();
    base["a_field_of_peft_0_30"] = serde_json::json!({"x": 1});
    parse_config(&base.to_string(), "c").expect("unknown fields warn, not fail");
    let mut loftq = all["default"].clone();
    loftq["init_lora_weights"] = "loftq".into();
    loftq["loftq_config"] = serde_json::json!({"loftq_bits": 4, "loftq_iter": 1});
    let e = parse_config(&loftq.to_string(), "c")
        .unwrap_err()
        .to_string();
    assert!(e.contains("loftq_config") && e.contains("LoftQ"), "{e}");
    let mut loha = all["default"].clone();
    loha["peft_type"] = "LOHA".into();
    let e = parse_config(&loha.to_string(), "c")
        .unwrap_err()
        .to_string();
    assert!(e.contains("LOHA"), "{e}");
}

#[test]
fn initialisations_that_keep_the_base_are_read() {
    let text = std::fs::read_to_string(root("").join("accepted_configs.json")).unwrap();
    let all: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(all.len(), 4, "accepted_configs.json: {:?}", all.keys());
    for (case, cfg) in &all {
        let c = parse_config(&cfg.to_string(), case).unwrap_or_else(|e| {
            panic!(
                "{case} (init_lora_weights = {}): {e}",
                cfg["init_lora_weights"]
            )
        });
        assert_eq!((c.r, c.alpha), (4, 8.0), "{case}");
    }
}

fn lm_reproduces_peft(family: &str) {
    let exp = expected(family);
    let base = lm(family);
    check(
        &format!("{family} base logits"),
        &logits(&base, family),
        &want(&exp, "base_logits"),
    );
    let (m, _) = load_adapter(base, &root(family).join("adapter"), &Default::default()).unwrap();
    check(
        &format!("{family} adapted logits"),
        &logits(&m, family),
        &want(&exp, "adapted_logits"),
    );
}

#[test]
fn llama_adapter_reproduces_peft_logits() {
    lm_reproduces_peft("llama");
}

#[test]
fn qwen2_rslora_all_linear_adapter_reproduces_peft_logits() {
    lm_reproduces_peft("qwen2");
}

/// `BᵀB` and `AAᵀ` of every pair of a saved adapter, in f64 (plain loops).
fn balance_gap(w: &MemWeights) -> f64 {
    let mut worst = 0f64;
    for name in w.tensors.keys().filter(|k| k.ends_with(".lora_A.weight")) {
        let (sa, a) = w.fetch(name).unwrap();
        let (sb, b) = w
            .fetch(&name.replace(".lora_A.weight", ".lora_B.weight"))
            .unwrap();
        let (r, din, dout) = (sa[0], sa[1], sb[0]);
        let (mut diff, mut norm) = (0f64, 0f64);
        for i in 0..r {
            for j in 0..r {
                let aa: f64 = (0..din)
                    .map(|k| a[i * din + k] as f64 * a[j * din + k] as f64)
                    .sum();
                let bb: f64 = (0..dout)
                    .map(|k| b[k * r + i] as f64 * b[k * r + j] as f64)
                    .sum();
                diff += (aa - bb).powi(2);
                norm += aa.powi(2) + bb.powi(2);
            }
        }
        worst = worst.max(diff.sqrt() / norm.sqrt());
    }
    worst
}

#[test]
fn balancing_real_peft_adapters_keeps_outputs() {
    for family in ["llama", "qwen2"] {
        let input = root(family).join("adapter");
        let out_tmp = tempfile::Builder::new()
            .prefix(&format!("balora-peft-real-bal-{family}-"))
            .tempdir()
            .unwrap();
        let out = out_tmp.path();
        balance_adapter(&input, out, Gauge::Closest).unwrap();
        let (_, before) = read_adapter(&input).unwrap();
        let (_, after) = read_adapter(out).unwrap();
        let (gb, ga) = (balance_gap(&before), balance_gap(&after));
        println!("{family}: balance gap ‖BᵀB−AAᵀ‖/‖·‖ before {gb:.3e}, after {ga:.3e}");
        assert!(
            gb > 1e-2,
            "{family}: the PEFT adapter should start unbalanced"
        );
        assert!(ga < 1e-5, "{family}: gap {ga:.3e} after balancing");
        let (m, _) = load_adapter(lm(family), out, &Default::default()).unwrap();
        check(
            &format!("{family} balanced logits vs PEFT"),
            &logits(&m, family),
            &want(&expected(family), "adapted_logits"),
        );
    }
}

/// Compares merged tensors with PEFT's `merge_and_unload()` state dict; returns the largest
/// difference in f32 ulps of the PEFT value and how many tensors were bit-identical.
fn compare_merged(family: &str, got: &[NamedTensor], exp: &MemWeights) -> (f64, usize) {
    let (mut worst_ulp, mut identical) = (0f64, 0usize);
    for (name, shape, data) in got {
        let key = format!("merged.{name}");
        let (s, w) = exp
            .fetch(&key)
            .unwrap_or_else(|_| panic!("{family}: PEFT has no merged `{name}`"));
        assert_eq!(&s, shape, "{family}: shape of {name}");
        if data.iter().zip(&w).all(|(a, b)| a.to_bits() == b.to_bits()) {
            identical += 1;
        }
        for (&g, &x) in data.iter().zip(&w) {
            let ulp = (x.abs().max(f32::MIN_POSITIVE) * f32::EPSILON) as f64;
            worst_ulp = worst_ulp.max((g as f64 - x as f64).abs() / ulp);
        }
    }
    println!(
        "{family}: merged tensors {identical}/{} bit-identical to PEFT, max diff {worst_ulp:.1} ulp",
        got.len()
    );
    (worst_ulp, identical)
}

#[test]
fn merging_real_peft_adapters_gives_peft_merged_weights() {
    for family in ["llama", "qwen2"] {
        let exp = expected(family);
        let (m, _) = load_adapter(
            lm(family),
            &root(family).join("adapter"),
            &Default::default(),
        )
        .unwrap();
        let merged = merge_all(m);
        check(
            &format!("{family} merged logits"),
            &logits(&merged, family),
            &want(&exp, "merged_logits"),
        );
        let tensors = llama_hf_tensors(&merged);
        let (ulp, identical) = compare_merged(family, &tensors, &exp);
        // balora computes W + (B·A)·s in f32 in PEFT's order: the same bits.
        assert_eq!(identical, tensors.len(), "{family}: max diff {ulp} ulp");
    }
}

#[test]
fn bert_classifier_adapter_reproduces_peft_and_merges() {
    let exp = expected("bert");
    let dev = Default::default();
    let m = classifier("bert");
    check(
        "bert base hidden",
        &to_vec(m.bert.forward(ids("bert"), None)),
        &want(&exp, "base_hidden"),
    );
    let (m, _) = load_adapter(m, &root("bert").join("adapter"), &dev).unwrap();
    check(
        "bert adapted hidden",
        &to_vec(m.bert.forward(ids("bert"), None)),
        &want(&exp, "adapted_hidden"),
    );
    // PEFT's trained classifier (modules_to_save) on the CLS state: balora's head.
    check(
        "bert classifier logits",
        &to_vec(m.forward_classes(ids("bert"), None)),
        &want(&exp, "cls_logits"),
    );
    let tensors = bert_classifier_hf_tensors(&merge_all(m));
    let (ulp, identical) = compare_merged("bert", &tensors, &exp);
    assert_eq!(identical, tensors.len(), "bert: max diff {ulp} ulp");
    // Everything PEFT's merged BertForSequenceClassification holds, except the pooler that
    // balora's classifier does not have.
    let ours: std::collections::BTreeSet<&str> = tensors.iter().map(|t| t.0.as_str()).collect();
    for k in exp.tensors.keys().filter_map(|k| k.strip_prefix("merged.")) {
        assert!(
            ours.contains(k) || k.starts_with("bert.pooler."),
            "merged output lacks `{k}`"
        );
    }
}
