//! End-to-end checks of the `balora` binary.

use nalgebra::DMatrix;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::process::Command;

fn balora() -> Command {
    Command::new(env!("CARGO_BIN_EXE_balora"))
}

fn rand_mat(rng: &mut StdRng, r: usize, c: usize) -> DMatrix<f64> {
    DMatrix::from_fn(r, c, |_, _| rng.random::<f64>() * 2.0 - 1.0)
}

fn f32_bytes(m: &DMatrix<f64>) -> Vec<u8> {
    m.transpose()
        .iter()
        .flat_map(|&v| (v as f32).to_le_bytes())
        .collect()
}

#[test]
fn inspect_reports_singular_values_of_each_pair() {
    let mut rng = StdRng::seed_from_u64(3);
    let dir_tmp = tempfile::Builder::new()
        .prefix("balora-inspect-")
        .tempdir()
        .unwrap();
    let dir = dir_tmp.path();
    let (a, b) = (rand_mat(&mut rng, 4, 12), rand_mat(&mut rng, 10, 4));
    let (ab, bb) = (f32_bytes(&a), f32_bytes(&b));
    let key = "base_model.model.model.layers.0.self_attn.q_proj";
    let views = vec![
        (
            format!("{key}.lora_A.weight"),
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4, 12], &ab)
                .unwrap(),
        ),
        (
            format!("{key}.lora_B.weight"),
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![10, 4], &bb)
                .unwrap(),
        ),
    ];
    let file = dir.join("adapter_model.safetensors");
    safetensors::serialize_to_file(views, None, &file).unwrap();
    let out = balora()
        .args(["inspect", "--json"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let got: Vec<f64> = v[0]["diagnostics"]["singular_values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    // Reference: dense SVD of the f32-rounded product.
    let round = |m: &DMatrix<f64>| m.map(|x| x as f32 as f64);
    let mut want: Vec<f64> = (round(&b) * round(&a))
        .singular_values()
        .iter()
        .copied()
        .collect();
    want.sort_by(|x, y| y.total_cmp(x));
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-9 * w.max(1.0), "{g} vs {w}");
    }
    assert_eq!(v[0]["adapter"], key);

    // A file that is not safetensors gives an error naming the file.
    let bad = dir.join("bad.safetensors");
    std::fs::write(&bad, b"not a safetensors file").unwrap();
    let out = balora().arg("inspect").arg(&bad).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.safetensors"));
}

#[test]
fn plugins_lists_builtins() {
    let out = balora().arg("plugins").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for name in ["adamw", "sgd", "sign", "balanced", "unconstrained", "gauge"] {
        assert!(
            text.contains(name),
            "`balora plugins` does not list {name}:\n{text}"
        );
    }
}

#[test]
fn synthetic_rejects_unknown_keys_and_bad_values() {
    let out = balora()
        .args(["synthetic", "--set", "trajectoriez=2"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("trajectoriez"), "{err}");
    let out = balora()
        .args(["synthetic", "--set", "steps=many"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("steps"), "{err}");
}

#[test]
fn synthetic_small_run_writes_outputs() {
    let dir_tmp = tempfile::Builder::new()
        .prefix("balora-syn-")
        .tempdir()
        .unwrap();
    let dir = dir_tmp.path().join("out");
    let out = balora()
        .args([
            "synthetic",
            "--log",
            "warn",
            "--set",
            "trajectories=1",
            "--set",
            "lr_count=3",
            "--set",
            "steps=10",
            "--set",
            "seeds=2",
            "--set",
            "optimizers=[{label = \"sign\", name = \"sign\"}, {label = \"adamw\", name = \"adamw\"}]",
            "--out",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    let per_seed = summary["per_seed"].as_array().unwrap();
    assert_eq!(per_seed.len(), 2);
    assert_eq!(
        (per_seed[0]["seed"].as_u64(), per_seed[1]["seed"].as_u64()),
        (Some(0), Some(1))
    );
    for s in per_seed {
        assert_eq!(s["cells"].as_array().unwrap().len(), 6);
    }
    let across = summary["across_seeds"].as_array().unwrap();
    assert_eq!(across.len(), 6);
    for a in across {
        let meds: Vec<f64> = a["per_seed_median_gap"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(meds.len(), 2);
        // With two seeds the median of the per-seed medians is their mean.
        assert!(
            (a["median"].as_f64().unwrap() - 0.5 * (meds[0] + meds[1])).abs()
                <= 1e-12 * meds[0].abs().max(1.0)
        );
    }
    assert_eq!(
        across[0]["ratio_median"].as_f64(),
        Some(1.0),
        "LoRA's ratio to itself"
    );
    assert!(std::fs::read_to_string(dir.join("gap.svg"))
        .unwrap()
        .contains("<svg"));
    let csv = std::fs::read_to_string(dir.join("curves.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 2 * 6 * 11);
    let problems: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("problems.json")).unwrap()).unwrap();
    assert_eq!(problems.as_array().unwrap().len(), 2);
    assert_ne!(
        problems[0]["trajectories"][0]["w0"], problems[1]["trajectories"][0]["w0"],
        "one problem per seed"
    );
}
