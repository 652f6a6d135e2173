//! One test per hostile adapter, adapter-config, data or job-config input of issue 13: each
//! asserts a clear error naming the file and the key or shape (or the correct behaviour), with
//! the inputs of the seed corpus (`corpus/`, see `seed_corpus.rs`) or built here.

mod common;

use balora_fuzz::adapter::{self, keys, safetensors_bytes};
use balora_fuzz::gguf;
use common::{adapter_dir, assert_has, corpus_dir, tiny_model};
use std::time::{Duration, Instant};

fn balance_err(weights: &str) -> String {
    let (t, dir) = adapter_dir(weights, &adapter::config_json(4, &["q_proj"]));
    let start = Instant::now();
    let e = balora_models::balance::balance_adapter(
        &dir,
        &t.path().join("out"),
        balora_manifold::balanced::Gauge::Closest,
    )
    .unwrap_err()
    .to_string();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    assert!(
        e.contains("adapter_model.safetensors"),
        "names the file: {e}"
    );
    e
}

#[test]
fn adapter_with_zero_by_2pow40_shapes_is_refused_at_once() {
    let len = std::fs::metadata(corpus_dir().join("safetensors/zero_by_2pow40.safetensors"))
        .unwrap()
        .len();
    assert!(len < 512, "a small file: {len} bytes");
    assert_has(
        &balance_err("zero_by_2pow40.safetensors"),
        &["lora_A.weight", "[0, 1099511627776]", "r ≥ 1"],
    );
}

#[test]
fn rank_zero_adapter_is_refused_without_an_svd_panic() {
    assert_has(
        &balance_err("rank0.safetensors"),
        &["q_proj.lora_A.weight", "[0, 8]"],
    );
}

#[test]
fn nan_and_inf_adapters_are_refused_naming_the_tensor() {
    assert_has(
        &balance_err("nan.safetensors"),
        &["q_proj.lora_A.weight", "NaN", "index 3"],
    );
    assert_has(
        &balance_err("inf.safetensors"),
        &["q_proj.lora_B.weight", "inf", "index 0"],
    );
    assert_has(
        &balance_err("rank_mismatch.safetensors"),
        &["[8, 3]", "[4, 8]", "ranks differ"],
    );
}

#[test]
fn adapter_rank_beyond_the_layer_is_refused_naming_adapter_r() {
    let text = std::fs::read_to_string(corpus_dir().join("adapter_config/r_100000.json")).unwrap();
    let spec = balora_models::peft::parse_config(&text, "r_100000.json").unwrap();
    let t = Instant::now();
    let e = balora_models::attach(tiny_model(), &spec, &Default::default())
        .err()
        .unwrap()
        .to_string();
    assert_has(&e, &["adapter.r", "100000", "1..=8", "q_proj"]);
    assert!(t.elapsed() < Duration::from_secs(5));
    let text = std::fs::read_to_string(corpus_dir().join("adapter_config/rank_pattern_huge.json"))
        .unwrap();
    let spec = balora_models::peft::parse_config(&text, "rank_pattern_huge.json").unwrap();
    let e = balora_models::attach(tiny_model(), &spec, &Default::default())
        .err()
        .unwrap()
        .to_string();
    assert_has(&e, &["rank_pattern", "4294967295", "down_proj"]);
}

#[test]
fn a_rank_deficient_adapter_file_is_accepted_and_balanced_keeping_its_product() {
    // r = 10 > min(in, out) = 8: legal in PEFT files, only rank-deficient.
    let (ka, kb) = keys("model.layers.0.self_attn.q_proj");
    let (a, b) = (gguf::weights(80, 21), gguf::weights(80, 22));
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("adapter");
    let bytes = safetensors_bytes(&[
        (ka.clone(), vec![10, 8], a.clone()),
        (kb.clone(), vec![8, 10], b.clone()),
    ]);
    adapter::write_dir(&dir, &adapter::config_json(10, &["q_proj"]), &bytes).unwrap();
    let out = t.path().join("out");
    let rows = balora_models::balance::balance_adapter(
        &dir,
        &out,
        balora_manifold::balanced::Gauge::Closest,
    )
    .unwrap();
    assert_eq!(rows.len(), 1);
    assert!(rows[0].active_rank <= 8, "{rows:?}");
    let w = balora_models::MemWeights::read_safetensors(&out.join("adapter_model.safetensors"))
        .unwrap();
    let (a2, b2) = (&w.tensors[&ka].1, &w.tensors[&kb].1);
    // B·A in f64, written out: [8, 10] × [10, 8].
    let prod = |b: &[f32], a: &[f32]| -> Vec<f64> {
        let mut p = vec![0f64; 64];
        for i in 0..8 {
            for j in 0..8 {
                p[i * 8 + j] = (0..10)
                    .map(|k| b[i * 10 + k] as f64 * a[k * 8 + j] as f64)
                    .sum();
            }
        }
        p
    };
    let (p, p2) = (prod(&b, &a), prod(b2, a2));
    let num: f64 = p
        .iter()
        .zip(&p2)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt();
    let den: f64 = p.iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!(num / den < 1e-5, "relative change of B·A: {}", num / den);
}

#[test]
fn data_that_does_not_fit_the_model_is_refused_naming_the_setting() {
    use balora_config::{DataFormat, DataSection};
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("d.jsonl");
    std::fs::write(&p, "{\"text\": \"w1 w2 w3 w19\"}\n{\"text\": \"w4 w5\"}\n").unwrap();
    let cfg = DataSection {
        format: DataFormat::Jsonl,
        seq_len: 64,
        validation_fraction: 0.0,
        ..DataSection::default()
    };
    let ds = balora_data::load_dataset(&cfg, &p, &common::encoder(), 0).unwrap();
    let fits = |vocab, context| {
        ds.check_fits(
            &p,
            cfg.seq_len,
            balora_data::ModelLimits {
                vocab_size: vocab,
                context,
                num_labels: None,
            },
        )
    };
    let e = fits(22, 32).unwrap_err().to_string();
    assert_has(
        &e,
        &[p.to_str().unwrap(), "data.seq_len = 64", "context of 32"],
    );
    // w19 is id 19; the pad id is 20; a model with 20 rows cannot embed the pad id, one with
    // 21 rows can embed everything.
    let e = fits(20, 64).unwrap_err().to_string();
    assert_has(&e, &["pad id 20", "vocabulary size 20"]);
    assert!(fits(21, 64).is_ok());
    let ds2 = balora_data::Dataset {
        pad_id: 0,
        ..ds.clone()
    };
    let e = ds2
        .check_fits(
            &p,
            64,
            balora_data::ModelLimits {
                vocab_size: 19,
                context: 64,
                num_labels: None,
            },
        )
        .unwrap_err()
        .to_string();
    assert_has(&e, &["token id 19", "position 3", "vocabulary size 19"]);
}

#[test]
fn deeply_nested_toml_json_and_jsonl_are_refused_without_overflowing_the_stack() {
    let deep =
        |open: &str, close: &str| format!("{}{}", open.repeat(100_000), close.repeat(100_000));
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("deep.toml");
    std::fs::write(&p, format!("x = {}\n", deep("[", "]"))).unwrap();
    let e = balora_config::load_layered(
        balora_config::JobConfig::default(),
        Some(&p),
        "BALORA_TEST_NOENV_",
        Some(balora_config::SECTIONS),
        &[],
    )
    .unwrap_err()
    .to_string();
    assert_has(&e, &["recursion limit"]);
    let text = format!(
        r#"{{"r": 4, "lora_alpha": 8, "target_modules": {}}}"#,
        deep("[", "]")
    );
    let e = balora_models::peft::parse_config(&text, "adapter_config.json")
        .unwrap_err()
        .to_string();
    assert_has(&e, &["adapter_config.json", "recursion limit"]);
    let p = t.path().join("deep.jsonl");
    std::fs::write(&p, format!("{{\"text\": {}}}\n", deep("[", "]"))).unwrap();
    let cfg = balora_config::DataSection {
        format: balora_config::DataFormat::Jsonl,
        ..Default::default()
    };
    let e = balora_data::load_dataset(&cfg, &p, &common::encoder(), 0)
        .unwrap_err()
        .to_string();
    assert_has(&e, &["deep.jsonl:1", "recursion limit"]);
}
