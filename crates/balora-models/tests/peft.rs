//! PEFT adapter files and surgery: an independently written adapter, round trips, malformed
//! inputs, target selection and the trainable-parameter summary.

mod common;
use balora_models::peft::{load_adapter, parse_config, read_adapter, save_adapter, AdapterMeta};
use balora_models::surgery::summary;
use balora_models::weights::to_vec;
use balora_models::{
    attach, AdapterHost, LlamaConfig, LlamaForCausalLm, LoraConfig, ModuleSelector, Patterns,
};
use burn::backend::NdArray;
use common::*;
use std::path::{Path, PathBuf};

type B = NdArray;

fn model() -> LlamaForCausalLm<B> {
    let t = tiny(false, false);
    let cfg = LlamaConfig::from_hf_json(&t.json(), "config.json").unwrap();
    LlamaForCausalLm::load(&cfg, &t.weights(4), &Default::default()).unwrap()
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/peft_tiny")
}

/// A fresh folder, removed when the returned guard is dropped (also when the test fails).
fn tmp(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("balora-peft-{name}-"))
        .tempdir()
        .unwrap()
}

#[test]
fn loads_adapter_written_by_python_safetensors() {
    let (m, spec) = load_adapter(model(), &fixture(), &Default::default()).unwrap();
    assert_eq!(spec.r, 4);
    let mut k = 0usize;
    let mut seen = 0;
    for (info, l) in m.linears() {
        let name = info
            .path
            .split_once(&format!("layers.{}.", info.layer.unwrap_or(99)))
            .map(|x| x.1.to_string());
        let Some(a) = &l.adapter else { continue };
        let name = name.unwrap();
        let (r, alpha) = match name.as_str() {
            "self_attn.q_proj" => (4, 8.0),
            "self_attn.v_proj" => (4, 16.0),
            "mlp.down_proj" => (2, 8.0),
            other => panic!("unexpected adapter on {other}"),
        };
        let [ra, din] = a.lora_a.dims();
        let [dout, rb] = a.lora_b.dims();
        assert_eq!((ra, rb), (r, r), "{}", info.path);
        assert!(
            (a.scale - alpha / r as f64).abs() < 1e-12,
            "{}: scale {}",
            info.path,
            a.scale
        );
        let av = to_vec(a.lora_a.val());
        let bv = to_vec(a.lora_b.val());
        for i in 0..r {
            for j in 0..din {
                let want = (0.37 * i as f64 + 0.11 * j as f64 + k as f64).sin();
                assert!((av[i * din + j] as f64 - want).abs() < 1e-6);
            }
        }
        for i in 0..dout {
            for j in 0..r {
                let want = (0.23 * i as f64 + 0.71 * j as f64 + k as f64).cos() / 5.0;
                assert!((bv[i * r + j] as f64 - want).abs() < 1e-6);
            }
        }
        k += 1;
        seen += 1;
    }
    assert_eq!(seen, 6);
}

#[test]
fn round_trip_is_exact_and_keys_are_peft_names() {
    let (m, spec) = load_adapter(model(), &fixture(), &Default::default()).unwrap();
    let dir_tmp = tmp("rt");
    let dir = dir_tmp.path();
    let meta = AdapterMeta {
        task_type: Some("CAUSAL_LM".into()),
        base_model_name_or_path: Some("tiny".into()),
    };
    save_adapter(&m, &spec, &meta, dir).unwrap();
    let orig =
        balora_models::MemWeights::read_safetensors(&fixture().join("adapter_model.safetensors"))
            .unwrap();
    let back = balora_models::MemWeights::read_safetensors(&dir.join("adapter_model.safetensors"))
        .unwrap();
    assert_eq!(orig.tensors, back.tensors);
    let (spec2, _) = read_adapter(dir).unwrap();
    assert_eq!(spec2.rank_pattern, spec.rank_pattern);
    assert_eq!(spec2.alpha_pattern, spec.alpha_pattern);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap())
            .unwrap();
    for (k, v) in [
        ("peft_type", "LORA"),
        ("task_type", "CAUSAL_LM"),
        ("bias", "none"),
    ] {
        assert_eq!(cfg[k], v);
    }
    assert_eq!(cfg["fan_in_fan_out"], false);
    assert_eq!(cfg["use_dora"], false);
}

fn write_cfg(dir: &Path, edit: impl Fn(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    edit(&mut v);
    std::fs::write(dir.join("adapter_config.json"), v.to_string()).unwrap();
}

#[test]
fn malformed_adapters_give_clear_errors() {
    let dev = Default::default();
    let dir_tmp = tmp("bad");
    let dir = dir_tmp.path();
    std::fs::copy(
        fixture().join("adapter_model.safetensors"),
        dir.join("adapter_model.safetensors"),
    )
    .unwrap();
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("use_dora", Box::new(|v| v["use_dora"] = true.into())),
        ("peft_type", Box::new(|v| v["peft_type"] = "IA3".into())),
        (
            "missing field `r`",
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("r");
            }),
        ),
        (
            "rank 4 but the config gives rank 3",
            Box::new(|v| v["r"] = 3.into()),
        ),
    ];
    // (fan_in_fan_out is set by the layer type, as in PEFT: tests/gpt_families.rs.)
    for (needle, edit) in cases {
        write_cfg(dir, edit);
        let e = load_adapter(model(), dir, &dev).unwrap_err().to_string();
        assert!(e.contains(needle), "expected `{needle}` in: {e}");
        assert!(e.contains("adapter_"), "error names the file: {e}");
    }
    // A field a newer PEFT may write is accepted (with a warning), not an error.
    write_cfg(dir, |v| v["frobnicate"] = 1.into());
    load_adapter(model(), dir, &dev).expect("unknown fields are ignored with a warning");
    // Truncated / non-safetensors weights file.
    write_cfg(dir, |_| {});
    let bytes = std::fs::read(fixture().join("adapter_model.safetensors")).unwrap();
    std::fs::write(
        dir.join("adapter_model.safetensors"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    let e = load_adapter(model(), dir, &dev).unwrap_err().to_string();
    assert!(
        e.contains("adapter_model.safetensors") && e.contains("safetensors"),
        "{e}"
    );
    std::fs::write(dir.join("adapter_model.safetensors"), b"{not a header").unwrap();
    assert!(load_adapter(model(), dir, &dev).is_err());
    // A key of another model.
    let mut w =
        balora_models::MemWeights::read_safetensors(&fixture().join("adapter_model.safetensors"))
            .unwrap();
    w.insert(
        "base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight",
        vec![4, 24],
        vec![0.0; 96],
    );
    let spec = parse_config(
        &std::fs::read_to_string(fixture().join("adapter_config.json")).unwrap(),
        "c",
    )
    .unwrap();
    let e = balora_models::peft::apply_adapter_tensors(model(), &spec, &w, &dev)
        .unwrap_err()
        .to_string();
    assert!(e.contains("layers.7"), "{e}");
    // Wrong shape.
    let mut w =
        balora_models::MemWeights::read_safetensors(&fixture().join("adapter_model.safetensors"))
            .unwrap();
    w.insert(
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
        vec![20, 4],
        vec![0.0; 80],
    );
    let e = balora_models::peft::apply_adapter_tensors(model(), &spec, &w, &dev)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("q_proj.lora_B.weight") && e.contains("[20, 4]") && e.contains("[24, 4]"),
        "{e}"
    );
}

fn adapted(spec: &LoraConfig) -> Vec<(String, usize)> {
    let (m, _) = attach(model(), spec, &Default::default()).unwrap();
    m.linears()
        .into_iter()
        .filter_map(|(i, l)| l.adapter.as_ref().map(|a| (i.path.clone(), a.rank())))
        .collect()
}

#[test]
fn target_selection_like_peft() {
    let list = LoraConfig::new(
        2,
        4.0,
        ModuleSelector::List(vec!["q_proj".into(), "mlp.up_proj".into()]),
    )
    .unwrap();
    let got: Vec<String> = adapted(&list).into_iter().map(|x| x.0).collect();
    assert_eq!(
        got,
        [
            "model.layers.0.self_attn.q_proj",
            "model.layers.0.mlp.up_proj",
            "model.layers.1.self_attn.q_proj",
            "model.layers.1.mlp.up_proj"
        ]
    );
    // Suffix match is on whole dotted components: "proj" matches nothing.
    let none = LoraConfig::new(2, 4.0, ModuleSelector::List(vec!["proj".into()])).unwrap();
    assert!(attach(model(), &none, &Default::default())
        .unwrap_err()
        .to_string()
        .contains("matched no linear"));
    let re = LoraConfig::new(
        2,
        4.0,
        ModuleSelector::Regex(r".*\.1\.self_attn\.(k|v)_proj".into()),
    )
    .unwrap();
    let got: Vec<String> = adapted(&re).into_iter().map(|x| x.0).collect();
    assert_eq!(
        got,
        [
            "model.layers.1.self_attn.k_proj",
            "model.layers.1.self_attn.v_proj"
        ]
    );
    // all-linear: 7 per layer, not the LM head.
    let mut all = LoraConfig::new(2, 4.0, ModuleSelector::List(vec!["all-linear".into()])).unwrap();
    assert_eq!(adapted(&all).len(), 14);
    all.exclude = ModuleSelector::List(vec!["down_proj".into()]);
    all.layers_to_transform = vec![1];
    all.rank_pattern = Patterns::unordered([("q_proj".to_string(), 5)]);
    let got = adapted(&all);
    assert_eq!(got.len(), 6);
    assert!(got
        .iter()
        .all(|(p, _)| p.starts_with("model.layers.1.") && !p.ends_with("down_proj")));
    assert_eq!(
        got.iter().find(|(p, _)| p.ends_with("q_proj")).unwrap().1,
        5
    );
    assert!(got
        .iter()
        .filter(|(p, _)| !p.ends_with("q_proj"))
        .all(|(_, r)| *r == 2));
}

#[test]
fn trainable_summary_counts_by_hand() {
    let t = tiny(false, false);
    let mut spec = LoraConfig::new(
        2,
        4.0,
        ModuleSelector::List(vec!["q_proj".into(), "down_proj".into()]),
    )
    .unwrap();
    spec.modules_to_save = vec!["lm_head".into()];
    let (m, s) = attach(model(), &spec, &Default::default()).unwrap();
    // q_proj: r·(24 + 24); down_proj: r·(40 + 24); two layers; lm_head 40×24 in full.
    let adapters = 2 * (2 * (24 + 24) + 2 * (40 + 24));
    let head = t.vocab * t.d;
    assert_eq!(s.trainable, adapters + head);
    let per_layer = 24 * 24 + 2 * 8 * 24 + 24 * 24 + 3 * 40 * 24 + 2 * 24;
    let base = t.vocab * t.d + 2 * per_layer + 24 + head;
    assert_eq!(s.total, base + adapters);
    assert_eq!(s.adapters, 4);
    assert_eq!(summary(&m, &["lm_head".to_string()]), s);
    assert!(s.to_string().contains("trainable%"));
    // Saving writes the full head under PEFT's modules_to_save name.
    let dir_tmp = tmp("mts");
    let dir = dir_tmp.path();
    save_adapter(&m, &spec, &AdapterMeta::default(), dir).unwrap();
    let w = balora_models::MemWeights::read_safetensors(&dir.join("adapter_model.safetensors"))
        .unwrap();
    assert_eq!(w.tensors["base_model.model.lm_head.weight"].0, vec![40, 24]);
    let (m2, _) = load_adapter(model(), dir, &Default::default()).unwrap();
    assert_eq!(
        to_vec(m2.lm_head.unwrap().base.weight.val()),
        to_vec(m.lm_head.unwrap().base.weight.val())
    );
}

#[test]
fn balance_keeps_products_and_balances_grams() {
    use balora_manifold::balanced::Gauge;
    use balora_models::balance::balance_adapter;
    // The Python fixture's factors have rank 2 (sin/cos of sums): only the active part is balanced.
    let out_tmp = tmp("bal");
    let out = out_tmp.path();
    let rows = balance_adapter(&fixture(), out, Gauge::Closest).unwrap();
    assert!(rows
        .iter()
        .all(|r| r.active_rank == 2 && r.product_rel_change < 1e-12));
    // A full-rank adapter: random B on a fresh Kaiming A.
    let src_tmp = tmp("bal-src");
    let src = src_tmp.path();
    let spec = LoraConfig::new(
        3,
        6.0,
        ModuleSelector::List(vec!["q_proj".into(), "down_proj".into(), "v_proj".into()]),
    )
    .unwrap();
    let (m, _) = attach(model(), &spec, &Default::default()).unwrap();
    let mut rng = Lcg(17);
    let m = m.map_linears(&mut |_, mut l| {
        if let Some(a) = l.adapter.as_mut() {
            let [o, k] = a.lora_b.dims();
            let t = burn::tensor::Tensor::from_data(
                burn::tensor::TensorData::new(rng.vec(o * k, 2.0), [o, k]),
                &Default::default(),
            );
            a.lora_b = burn::module::Param::from_tensor(t);
        }
        l
    });
    save_adapter(&m, &spec, &AdapterMeta::default(), src).unwrap();
    for gauge in [Gauge::Closest, Gauge::Canonical] {
        let rows = balance_adapter(src, out, gauge).unwrap();
        assert_eq!(rows.len(), 6);
        assert!(rows.iter().all(|r| r.active_rank == 3));
        let before =
            balora_models::MemWeights::read_safetensors(&src.join("adapter_model.safetensors"))
                .unwrap();
        let after =
            balora_models::MemWeights::read_safetensors(&out.join("adapter_model.safetensors"))
                .unwrap();
        for row in &rows {
            let get = |w: &balora_models::MemWeights, s: &str| {
                w.tensors[&format!("{}.{s}", row.module)].clone()
            };
            let (sa, a0) = get(&before, "lora_A.weight");
            let (sb, b0) = get(&before, "lora_B.weight");
            let (_, a1) = get(&after, "lora_A.weight");
            let (_, b1) = get(&after, "lora_B.weight");
            let (r, din, dout) = (sa[0], sa[1], sb[0]);
            // Products B·A computed here, in f64.
            let prod = |a: &[f32], b: &[f32]| -> Vec<f64> {
                let mut p = vec![0.0; dout * din];
                for i in 0..dout {
                    for j in 0..din {
                        for k in 0..r {
                            p[i * din + j] += b[i * r + k] as f64 * a[k * din + j] as f64;
                        }
                    }
                }
                p
            };
            let (p0, p1) = (prod(&a0, &b0), prod(&a1, &b1));
            let n0 = p0.iter().map(|x| x * x).sum::<f64>().sqrt();
            let d = p0
                .iter()
                .zip(&p1)
                .map(|(x, y)| (x - y) * (x - y))
                .sum::<f64>()
                .sqrt();
            assert!(
                d / n0 < 1e-5,
                "{}: product changed by {}",
                row.module,
                d / n0
            );
            // BᵀB = AAᵀ after.
            let mut worst = 0.0f64;
            for i in 0..r {
                for j in 0..r {
                    let ga: f64 = (0..din)
                        .map(|c| a1[i * din + c] as f64 * a1[j * din + c] as f64)
                        .sum();
                    let gb: f64 = (0..dout)
                        .map(|c| b1[c * r + i] as f64 * b1[c * r + j] as f64)
                        .sum();
                    worst = worst.max((ga - gb).abs());
                }
            }
            let scale: f64 = (0..r)
                .map(|i| {
                    (0..din)
                        .map(|c| (a1[i * din + c] as f64).powi(2))
                        .sum::<f64>()
                })
                .sum();
            assert!(worst / scale < 1e-5, "{}: imbalance {worst}", row.module);
            assert!(row.imbalance_before > 0.1 && row.imbalance_after < 1e-6);
        }
        // The config is carried over and the result loads.
        load_adapter(model(), out, &Default::default()).unwrap();
    }
}

#[test]
fn saved_config_keeps_the_pattern_order_and_reloads_the_same_ranks() {
    // Generic key first: by PEFT's first-match rule layer 0's q_proj gets 3, not 5 (sorted
    // alphabetically, "layers..." would come first and give 5).
    let mut spec = LoraConfig::new(2, 4.0, ModuleSelector::Regex("all-linear".into())).unwrap();
    spec.rank_pattern = Patterns::ordered(vec![
        ("q_proj".into(), 3),
        ("layers.0.self_attn.q_proj".into(), 5),
    ]);
    let (m, _) = attach(model(), &spec, &Default::default()).unwrap();
    let ranks = adapted(&spec);
    assert!(ranks.contains(&("model.layers.0.self_attn.q_proj".into(), 3)));
    let dir_tmp = tmp("order");
    let dir = dir_tmp.path();
    save_adapter(&m, &spec, &AdapterMeta::default(), dir).unwrap();
    let text = std::fs::read_to_string(dir.join("adapter_config.json")).unwrap();
    let (g, s) = (
        text.find("\"q_proj\": 3").unwrap(),
        text.find("\"layers.0.self_attn.q_proj\": 5").unwrap(),
    );
    assert!(g < s, "{text}");
    let (back, _) = load_adapter(model(), dir, &Default::default()).unwrap();
    let back_ranks: Vec<(String, usize)> = back
        .linears()
        .into_iter()
        .filter_map(|(i, l)| l.adapter.as_ref().map(|a| (i.path.clone(), a.rank())))
        .collect();
    assert_eq!(back_ranks, ranks);
}
