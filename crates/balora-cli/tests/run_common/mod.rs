//! Shared helpers of the run-folder tests: a tiny training job on the real SmolLM2 asset (one
//! adapted projection, 8-token sequences) and independent checks of what a run folder holds.
#![allow(dead_code)] // each test binary uses a subset

use safetensors::SafeTensors;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `balora` binary.
pub fn balora() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_balora"));
    // Config variables of the caller's environment must not leak into these runs.
    for (k, _) in std::env::vars() {
        if k.starts_with("BALORA_") && k != "BALORA_ASSETS" && k != "BALORA_REQUIRE_ASSETS" {
            c.env_remove(k);
        }
    }
    c.env_remove("NO_COLOR");
    c
}

/// A fresh scratch folder, removed with everything in it when dropped (also when the test
/// fails); used as a `Path` (`dir.join(…)`, `&dir`).
pub struct Scratch(tempfile::TempDir);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        self.0.path()
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        self.0.path()
    }
}

impl AsRef<std::ffi::OsStr> for Scratch {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.path().as_os_str()
    }
}

/// A fresh scratch folder for `name` (`balora-runs-<name>-…` in the temporary directory).
pub fn scratch(name: &str) -> Scratch {
    Scratch(
        tempfile::Builder::new()
            .prefix(&format!("balora-runs-{name}-"))
            .tempdir()
            .unwrap(),
    )
}

/// A small text corpus in `dir` (outside any run folder).
pub fn corpus(dir: &Path) -> PathBuf {
    let words = [
        "the", "whale", "ship", "sea", "captain", "white", "water", "boat", "deck", "harpoon",
    ];
    let text: Vec<&str> = (0..1500)
        .map(|i| words[(i * 7 + i / 3) % words.len()])
        .collect();
    let p = dir.join("corpus.txt");
    std::fs::write(&p, text.join(" ")).unwrap();
    p
}

/// `train` arguments of the tiny job on `gguf` and `data` with `steps` steps.
pub fn job(gguf: &Path, data: &Path, steps: u64) -> Vec<String> {
    [
        "train".to_string(),
        "--set".into(),
        format!("model.path=\"{}\"", gguf.display()),
        "--set".into(),
        format!("data.path=\"{}\"", data.display()),
        "--set".into(),
        "data.max_chars=3000".into(),
        "--set".into(),
        "data.seq_len=8".into(),
        "--set".into(),
        "trainer.batch_size=2".into(),
        "--set".into(),
        "trainer.eval_batches=1".into(),
        "--set".into(),
        "trainer.eval_every=0".into(),
        "--set".into(),
        "adapter.targets=[\"q_proj\"]".into(),
        "--set".into(),
        "adapter.layers_to_transform=[0]".into(),
        "--set".into(),
        format!("trainer.steps={steps}"),
    ]
    .into()
}

/// Runs `balora` with `args` and `extra`, output into `out`.
pub fn run(args: &[String], extra: &[&str], out: &Path) -> Output {
    balora()
        .args(args)
        .args(extra)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

/// stderr as text.
pub fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Steps of the `train` records in `out/metrics.jsonl`, in file order.
pub fn train_steps(out: &Path) -> Vec<u64> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .map(|v| v["step"].as_u64().unwrap())
        .collect()
}

/// Checkpoint folders (`checkpoint-N`) under `out/checkpoints` by step.
pub fn checkpoints(out: &Path) -> Vec<(u64, PathBuf)> {
    let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(out.join("checkpoints"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().to_string();
                    Some((n.strip_prefix("checkpoint-")?.parse().ok()?, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Lowercase hex SHA-256 (the `sha2` crate, independent of balora's code).
pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Checks a checkpoint folder against its manifest (sizes and SHA-256 recomputed here) and that
/// both safetensors files parse; returns the step recorded in `state.json`.
pub fn assert_checkpoint_intact(dir: &Path) -> u64 {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap())
            .unwrap_or_else(|e| panic!("{}: manifest: {e}", dir.display()));
    let entries = m.as_array().unwrap();
    for name in ["params.safetensors", "optimizer.safetensors", "state.json"] {
        let e = entries
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("{}: {name} not in the manifest", dir.display()));
        let bytes = std::fs::read(dir.join(name)).unwrap();
        assert_eq!(bytes.len() as u64, e["bytes"].as_u64().unwrap(), "{name}");
        assert_eq!(sha256(&bytes), e["sha256"].as_str().unwrap(), "{name}");
        if name.ends_with(".safetensors") {
            SafeTensors::deserialize(&bytes).unwrap();
        }
    }
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap()).unwrap();
    state["step"].as_u64().unwrap()
}

/// The adapter in `dir`: (`lora_alpha` from adapter_config.json, weights file bytes).
pub fn adapter(dir: &Path) -> Option<(f64, Vec<u8>)> {
    let cfg = std::fs::read(dir.join("adapter_config.json")).ok()?;
    let cfg: serde_json::Value = serde_json::from_slice(&cfg).unwrap();
    let w = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    Some((cfg["lora_alpha"].as_f64().unwrap(), w))
}

/// All tensors of a safetensors file as f32, sorted by name.
pub fn tensors(bytes: &[u8]) -> Vec<(String, Vec<f32>)> {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let mut v: Vec<(String, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| {
            (
                n,
                t.data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Asserts two safetensors files hold the same tensors up to a relative `tol`.
pub fn assert_close(a: &[u8], b: &[u8], tol: f32) {
    let (a, b) = (tensors(a), tensors(b));
    assert_eq!(a.len(), b.len());
    for ((na, va), (nb, vb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        let scale = vb.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
        for (x, y) in va.iter().zip(vb) {
            assert!((x - y).abs() <= tol * scale, "{na}: {x} vs {y}");
        }
    }
}

/// Copies a folder tree.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        let q = to.join(e.file_name());
        if p.is_dir() {
            copy_tree(&p, &q);
        } else {
            std::fs::copy(&p, &q).unwrap();
        }
    }
}
