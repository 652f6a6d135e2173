//! `balora balance`, `balora merge` and `balora generate` end to end on the real assets: a
//! PEFT adapter for all-MiniLM-L6-v2 written here (seeded random factors), then the outputs are
//! checked against f64 math done in this test (products, balance, W₀ + s·B·A), never against
//! balora's own code. SmolLM2 greedy decoding is checked against the numpy reference's continuation.
//!
//! The assets come from `cargo xtask assets`; without them these tests skip, unless
//! `BALORA_REQUIRE_ASSETS=1` (set by CI), which turns a missing asset into a failure.

use nalgebra::DMatrix;
use rand::{rngs::StdRng, Rng, SeedableRng};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::path::Path;

mod common;
use common::{balora, generate_capital_of_france};

/// A fresh folder, removed when the returned guard is dropped (also when the test fails).
fn tmp(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("balora-{name}-"))
        .tempdir()
        .unwrap()
}

fn f32_bytes(m: &DMatrix<f64>) -> Vec<u8> {
    m.transpose()
        .iter()
        .flat_map(|&v| (v as f32).to_le_bytes())
        .collect()
}

fn read_matrix(st: &SafeTensors, key: &str) -> DMatrix<f64> {
    let t = st.tensor(key).unwrap_or_else(|e| panic!("{key}: {e}"));
    assert_eq!(t.dtype(), Dtype::F32, "{key}");
    let shape = t.shape().to_vec();
    assert_eq!(shape.len(), 2, "{key}");
    let v: Vec<f64> = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
        .collect();
    DMatrix::from_row_slice(shape[0], shape[1], &v)
}

fn rel(a: &DMatrix<f64>, b: &DMatrix<f64>) -> f64 {
    (a - b).norm() / b.norm()
}

const R: usize = 4;
const ALPHA: f64 = 8.0;
const D: usize = 384;
/// The two adapted modules (layer 0 query and layer 5 value of MiniLM's encoder).
const MODULES: [&str; 2] = [
    "encoder.layer.0.attention.self.query",
    "encoder.layer.5.attention.self.value",
];

/// Writes a PEFT adapter folder with unbalanced seeded factors; returns (A, B) per module.
fn write_adapter(dir: &Path) -> Vec<(DMatrix<f64>, DMatrix<f64>)> {
    let mut rng = StdRng::seed_from_u64(11);
    let mut pairs = Vec::new();
    let mut bytes = Vec::new();
    for _ in MODULES {
        // B deliberately 30× larger than A: far from balanced.
        let a = DMatrix::from_fn(R, D, |_, _| (rng.random::<f64>() - 0.5) * 0.02);
        let b = DMatrix::from_fn(D, R, |_, _| (rng.random::<f64>() - 0.5) * 0.6);
        bytes.push((f32_bytes(&a), f32_bytes(&b)));
        // The file holds f32: compare against what was actually written.
        pairs.push((a.map(|v| v as f32 as f64), b.map(|v| v as f32 as f64)));
    }
    let mut views = Vec::new();
    for (m, (ab, bb)) in MODULES.iter().zip(&bytes) {
        let pre = format!("base_model.model.{m}");
        views.push((
            format!("{pre}.lora_A.weight"),
            TensorView::new(Dtype::F32, vec![R, D], ab).unwrap(),
        ));
        views.push((
            format!("{pre}.lora_B.weight"),
            TensorView::new(Dtype::F32, vec![D, R], bb).unwrap(),
        ));
    }
    safetensors::serialize_to_file(views, None, &dir.join("adapter_model.safetensors")).unwrap();
    let config = serde_json::json!({
        "peft_type": "LORA",
        "r": R,
        "lora_alpha": ALPHA,
        "target_modules": ["query", "value"],
        "layers_to_transform": null,
        "use_rslora": false,
        "bias": "none",
    });
    std::fs::write(dir.join("adapter_config.json"), config.to_string()).unwrap();
    pairs
}

#[test]
fn balance_keeps_products_and_balances_each_pair() {
    let dir_tmp = tmp("balance-in");
    let dir = dir_tmp.path();
    let out_tmp = tmp("balance-out");
    let out = out_tmp.path();
    let pairs = write_adapter(dir);
    for gauge in ["closest", "canonical"] {
        let o = balora()
            .arg("balance")
            .arg(dir)
            .arg(out)
            .args(["--gauge", gauge])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(stdout.contains("balanced 2 adapters"), "{stdout}");
        let bytes = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        for (m, (a0, b0)) in MODULES.iter().zip(&pairs) {
            let pre = format!("base_model.model.{m}");
            let a = read_matrix(&st, &format!("{pre}.lora_A.weight"));
            let b = read_matrix(&st, &format!("{pre}.lora_B.weight"));
            // Product preserved (f32 storage: ≲ 1e-6 relative).
            let e = rel(&(&b * &a), &(b0 * a0));
            assert!(e < 1e-5, "{gauge} {m}: product changed by {e:.2e}");
            // Balanced: BᵀB = AAᵀ, relative to their size; before it was far from it.
            let gap = |a: &DMatrix<f64>, b: &DMatrix<f64>| {
                let (ga, gb) = (a * a.transpose(), b.transpose() * b);
                (&gb - &ga).norm() / (gb.norm() + ga.norm())
            };
            assert!(gap(a0, b0) > 0.9, "the input should be unbalanced");
            let g = gap(&a, &b);
            assert!(g < 1e-5, "{gauge} {m}: balance gap {g:.2e}");
        }
        // The config travels with the factors.
        let cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(cfg["r"], R);
    }
}

#[test]
fn merge_writes_w0_plus_scaled_product_in_hf_layout() {
    let Some(minilm) = balora_assets::for_test("minilm") else {
        return;
    };
    let dir_tmp = tmp("merge-in");
    let dir = dir_tmp.path();
    let out_tmp = tmp("merge-out");
    let out = out_tmp.path().join("merged.safetensors");
    let pairs = write_adapter(dir);
    let o = balora()
        .arg("merge")
        .arg("--base")
        .arg(&minilm)
        .arg("--adapter")
        .arg(dir)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("merged 2 adapters"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let base_bytes = std::fs::read(minilm.join("model.safetensors")).unwrap();
    let base = SafeTensors::deserialize(&base_bytes).unwrap();
    let merged_bytes = std::fs::read(&out).unwrap();
    let merged = SafeTensors::deserialize(&merged_bytes).unwrap();
    let base_key = |suffix: &str| {
        base.names()
            .into_iter()
            .find(|n| n.ends_with(suffix))
            .unwrap_or_else(|| panic!("no base tensor ending in {suffix}"))
            .to_string()
    };
    let s = ALPHA / R as f64;
    for (m, (a, b)) in MODULES.iter().zip(&pairs) {
        let w0 = read_matrix(&base, &base_key(&format!("{m}.weight")));
        let w = read_matrix(&merged, &format!("{m}.weight"));
        let want = &w0 + (b * a) * s;
        // One f32 rounding of each entry of W₀ + s·BA plus an r-term dot product.
        let worst = (&w - &want)
            .iter()
            .zip(want.iter())
            .map(|(d, x)| d.abs() / (x.abs() + 1e-3))
            .fold(0.0f64, f64::max);
        assert!(
            worst < 1e-5,
            "{m}: merged weight off by {worst:.2e} (relative)"
        );
        assert!(rel(&w, &w0) > 1e-3, "{m}: the adapter changed nothing");
    }
    // Untouched weights are copied exactly.
    let k = "encoder.layer.0.attention.self.key.weight";
    assert_eq!(
        read_matrix(&merged, k),
        read_matrix(&base, &base_key(k)),
        "{k} should be the base weight"
    );
}

#[test]
fn generate_greedy_continues_like_the_reference() {
    let Some(o) = generate_capital_of_france() else {
        return;
    };
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // tools/reference/models_golden.py (numpy, float64) decodes " Paris." greedily.
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("The capital of France is Paris."), "{text}");
}
