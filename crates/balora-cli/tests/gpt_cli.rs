//! `balora train` / `balora merge` on GPT-2 and GPT-NeoX Hugging Face folders: balora-models'
//! tiny fixtures (random models, adapters written by real PEFT 0.21.2, PEFT's merged weights in
//! `golden.json`; `tools/reference/gpt_golden.py`). Merged tensors are checked against PEFT's
//! and against `W + (α/r)·B·A` computed here in f64 from the adapter files; nothing is compared
//! with the code under test.

#[allow(dead_code)] // `generate_capital_of_france` is for other targets
mod common;

use balora_models::load::{load_gpt2_hf_dir, load_gpt_neox_hf_dir};
use balora_models::peft::{apply_adapter_tensors, read_adapter};
use balora_models::AdapterHost;
use common::{balora, read_f32_tensors};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;
use tempfile::TempDir;

/// As balora-models' `gpt_families` test: `max |balora − PEFT| / max |PEFT|` over a tensor. Both
/// compute `W + scale·(B·A)ᵀ` in f32 (a rank-4 sum, then one add), a few ulps of the largest
/// value; a transposed or mis-scaled delta is ~1e-1.
const MERGE_TOL: f64 = 1e-6;

/// The two families: fixture folder, Conv1D layout (`fan_in_fan_out`), adapter targets.
const FAMILIES: [(&str, bool, &str); 2] = [
    ("gpt2", true, r#"["c_attn","c_proj","c_fc"]"#),
    (
        "gpt_neox",
        false,
        r#"["query_key_value","dense","dense_h_to_4h","dense_4h_to_h"]"#,
    ),
];

fn fixture(family: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../balora-models/tests/fixtures/families")
        .join(family)
}

fn json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn ok(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The command failed with one `error:` line holding every needle.
fn fails_with(o: &Output, needles: &[&str]) {
    assert!(!o.status.success(), "expected a failure");
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "one error line expected: {err}");
    assert_eq!(err.trim_end().lines().last(), Some(lines[0]), "{err}");
    for n in needles {
        assert!(lines[0].contains(n), "error lacks `{n}`: {}", lines[0]);
    }
}

/// `max |got − want| / max |want|`.
fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "length");
    let scale = want.iter().fold(0f64, |m, x| m.max(x.abs()));
    let diff = got
        .iter()
        .zip(want)
        .fold(0f64, |m, (&g, w)| m.max((g as f64 - w).abs()));
    diff / scale.max(1e-30)
}

const WORDS: [&str; 10] = [
    "the", "whale", "ship", "sea", "captain", "white", "water", "boat", "deck", "harpoon",
];

/// A word-level `tokenizer.json` (the `tokenizers` file format, written out here): id 0 is
/// `<|endoftext|>` (GPT-2's and the fixtures' eos, the pad token), 1 `[UNK]`, then [`WORDS`].
fn tokenizer_json() -> String {
    let mut vocab = serde_json::Map::new();
    for (i, w) in ["<|endoftext|>", "[UNK]"].iter().chain(&WORDS).enumerate() {
        vocab.insert(w.to_string(), i.into());
    }
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    })
    .to_string()
}

/// A copy of the fixture's model (config + weights, not its adapter) in `dir/model`, with a
/// `tokenizer.json` when `tokenizer`.
fn model_copy(dir: &Path, family: &str, tokenizer: bool) -> PathBuf {
    let m = dir.join("model");
    std::fs::create_dir(&m).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture(family).join(f), m.join(f)).unwrap();
    }
    if tokenizer {
        std::fs::write(m.join("tokenizer.json"), tokenizer_json()).unwrap();
    }
    m
}

/// A text corpus of [`WORDS`] in a fixed, learnable order.
fn corpus(dir: &Path) -> PathBuf {
    let text: Vec<&str> = (0..1200)
        .map(|i| WORDS[(i * 7 + i / 3) % WORDS.len()])
        .collect();
    let p = dir.join("corpus.txt");
    std::fs::write(&p, text.join(" ")).unwrap();
    p
}

/// `balora train` of BaLoRA adapters (r 4, α 8) on `model` and `data`, into `out`.
fn train(model: &Path, data: &Path, targets: &str, out: &Path, extra: &[&str]) -> Output {
    let sets = [
        format!("model.path=\"{}\"", model.display()),
        format!("data.path=\"{}\"", data.display()),
        "data.seq_len=16".into(),
        "data.validation_fraction=0.1".into(),
        "manifold.name=\"balanced\"".into(),
        "optimizer.name=\"adamw\"".into(),
        format!("adapter.targets={targets}"),
        "adapter.r=4".into(),
        "adapter.alpha=8.0".into(),
        "trainer.steps=24".into(),
        "trainer.lr=1e-2".into(),
        "trainer.warmup_steps=2".into(),
        "trainer.eval_every=12".into(),
        "trainer.eval_batches=0".into(),
        "trainer.progress=false".into(),
    ];
    let mut c = balora();
    c.arg("train");
    for s in &sets {
        c.args(["--set", s]);
    }
    for s in extra {
        c.args(["--set", s]);
    }
    c.arg("--out").arg(out).output().unwrap()
}

fn merge(base: &Path, adapter: &Path, out: &Path) -> Output {
    balora()
        .arg("merge")
        .arg("--base")
        .arg(base)
        .arg("--adapter")
        .arg(adapter)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

/// Checks the merged file `merged` of `base` + PEFT `adapter` against f64 math on the files:
/// an adapted `W` is `W + (α/r)·B·A` (transposed for Conv1D layers, `fan_in_fan_out`), every
/// other tensor is the base's, bit for bit. Returns the number of adapted tensors.
fn check_merged(base: &Path, adapter: &Path, merged: &Path, fan_in_fan_out: bool) -> usize {
    let (w0, ad, got) = (
        read_f32_tensors(&base.join("model.safetensors")),
        read_f32_tensors(&adapter.join("adapter_model.safetensors")),
        read_f32_tensors(merged),
    );
    let cfg = json(&adapter.join("adapter_config.json"));
    let scale = cfg["lora_alpha"].as_f64().unwrap() / cfg["r"].as_f64().unwrap();
    let mut adapted = 0;
    for (name, (shape, w)) in &w0 {
        let (gshape, g) = got
            .get(name)
            .unwrap_or_else(|| panic!("merged file lacks `{name}`"));
        assert_eq!(gshape, shape, "{name}: shape");
        let module = name.strip_suffix(".weight").unwrap_or(name);
        let Some((sa, a)) = ad.get(&format!("base_model.model.{module}.lora_A.weight")) else {
            assert_eq!(g, w, "{name}: not adapted, must be the base tensor");
            continue;
        };
        let (_, b) = &ad[&format!("base_model.model.{module}.lora_B.weight")];
        let (r, din) = (sa[0], sa[1]);
        let dout = b.len() / r;
        let want: Vec<f64> = (0..w.len())
            .map(|k| {
                // Stored [out, in] (Linear) or [in, out] (Conv1D).
                let (o, i) = if fan_in_fan_out {
                    (k % dout, k / dout)
                } else {
                    (k / din, k % din)
                };
                let ba: f64 = (0..r)
                    .map(|j| b[o * r + j] as f64 * a[j * din + i] as f64)
                    .sum();
                w[k] as f64 + scale * ba
            })
            .collect();
        let e = rel_err(g, &want);
        assert!(e < MERGE_TOL, "{name}: relative error {e:.3e}");
        let moved = rel_err(w, &want);
        assert!(moved > 1e-4, "{name}: the adapter moves it only {moved:e}");
        adapted += 1;
    }
    adapted
}

#[test]
fn merge_of_peft_adapters_matches_peft() {
    for (family, fan_in_fan_out, _) in FAMILIES {
        let tmp = TempDir::new().unwrap();
        let (base, adapter) = (fixture(family), fixture(family).join("adapter"));
        let out = tmp.path().join("merged.safetensors");
        let stdout = ok(&merge(&base, &adapter, &out));
        assert!(stdout.contains("merged 8 adapters"), "{stdout}");
        assert_eq!(check_merged(&base, &adapter, &out, fan_in_fan_out), 8);
        // PEFT's own merge (merge_and_unload), recorded by the fixture script.
        let got = read_f32_tensors(&out);
        let golden = json(&base.join("golden.json"));
        let want = golden["merged"].as_object().unwrap();
        assert!(!want.is_empty());
        for (name, t) in want {
            let shape: Vec<usize> = serde_json::from_value(t["shape"].clone()).unwrap();
            let data: Vec<f64> = serde_json::from_value(t["data"].clone()).unwrap();
            let (gshape, g) = &got[name];
            assert_eq!(gshape, &shape, "{family}: {name} layout");
            let e = rel_err(g, &data);
            println!("{family} merged {name} vs PEFT: max rel err {e:.3e}");
            assert!(e < MERGE_TOL, "{family} {name}: relative error {e:.3e}");
        }
    }
}

/// Train losses of `out/metrics.jsonl` and eval losses, in step order.
fn losses(out: &Path) -> (Vec<f64>, Vec<f64>) {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let recs: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |kind: &str| -> Vec<f64> {
        recs.iter()
            .filter(|r| r["kind"] == kind)
            .map(|r| r["loss"].as_f64().unwrap())
            .collect()
    };
    (of("train"), of("eval"))
}

#[test]
fn train_balora_on_gpt_families_writes_peft_adapters_that_merge() {
    for (family, fan_in_fan_out, targets) in FAMILIES {
        let tmp = TempDir::new().unwrap();
        let model = model_copy(tmp.path(), family, true);
        let data = corpus(tmp.path());
        let out = tmp.path().join("run");
        ok(&train(&model, &data, targets, &out, &[]));
        let (train_loss, eval) = losses(&out);
        assert_eq!(train_loss.len(), 24, "{family}: train records");
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let (first, last) = (mean(&train_loss[..4]), mean(&train_loss[20..]));
        println!("{family}: train loss {first:.3} -> {last:.3}, eval {eval:?}");
        assert!(last < first - 0.5, "{family}: train loss {first} -> {last}");
        assert!(
            eval.len() >= 2 && eval[eval.len() - 1] < eval[0] - 0.5,
            "{eval:?}"
        );
        // A PEFT adapter: PEFT's key names and config, read by balora-models' PEFT reader.
        let adapter = out.join("adapter");
        let cfg = json(&adapter.join("adapter_config.json"));
        assert_eq!(cfg["peft_type"], "LORA");
        assert_eq!(cfg["task_type"], "CAUSAL_LM");
        assert_eq!(cfg["r"], 4);
        assert_eq!(cfg["fan_in_fan_out"], fan_in_fan_out, "{family}");
        let (spec, w) = read_adapter(&adapter).unwrap();
        let device = Default::default();
        type B = burn::backend::NdArray;
        let n = if family == "gpt2" {
            let m = load_gpt2_hf_dir::<B>(&model, &device).unwrap().0;
            let m = apply_adapter_tensors(m, &spec, &w, &device).unwrap();
            m.linears()
                .iter()
                .filter(|(_, l)| l.adapter.is_some())
                .count()
        } else {
            let m = load_gpt_neox_hf_dir::<B>(&model, &device).unwrap().0;
            let m = apply_adapter_tensors(m, &spec, &w, &device).unwrap();
            m.linears()
                .iter()
                .filter(|(_, l)| l.adapter.is_some())
                .count()
        };
        assert_eq!(n, 8, "{family}: adapted layers");
        // The trained adapter merges as W + (α/r)·B·A in the checkpoint's own layout.
        let merged = tmp.path().join("merged.safetensors");
        ok(&merge(&model, &adapter, &merged));
        assert_eq!(check_merged(&model, &adapter, &merged, fan_in_fan_out), 8);
    }
}

#[test]
fn gpt_model_errors_are_one_line() {
    let tmp = TempDir::new().unwrap();
    let bare = fixture("gpt2");
    let data = corpus(tmp.path());
    let targets = FAMILIES[0].2;
    // No tokenizer.json in the folder and no model.tokenizer.
    let o = train(&bare, &data, targets, &tmp.path().join("a"), &[]);
    fails_with(&o, &["no tokenizer.json", "model.tokenizer"]);
    // ... which model.tokenizer supplies (one step is enough to show it loads).
    let tok = tmp.path().join("tokenizer.json");
    std::fs::write(&tok, tokenizer_json()).unwrap();
    let set_tok = format!("model.tokenizer=\"{}\"", tok.display());
    let o = train(
        &bare,
        &data,
        targets,
        &tmp.path().join("b"),
        &[&set_tok, "trainer.steps=1", "trainer.warmup_steps=0"],
    );
    ok(&o);
    // Llama module names match nothing in GPT-2; the message shows its names.
    let o = train(
        &bare,
        &data,
        r#"["q_proj"]"#,
        &tmp.path().join("c"),
        &[&set_tok],
    );
    fails_with(
        &o,
        &["matched no linear layer", "transformer.h.0.attn.c_attn"],
    );
    // A quantized base is Llama-only.
    let o = train(
        &bare,
        &data,
        targets,
        &tmp.path().join("d"),
        &[&set_tok, "model.dtype=\"q8_0\"", "backend=\"flex\""],
    );
    fails_with(&o, &["model.dtype", "GPT-2", "f32"]);
    // The classifier family on a causal LM.
    let o = train(
        &bare,
        &data,
        targets,
        &tmp.path().join("f"),
        &["model.family=\"bert\"", "data.format=\"classification\""],
    );
    fails_with(&o, &["GPT-2 causal LM", "model.family = \"llama\""]);
    // A GGUF of architecture gpt2 (a header with no tensors is enough).
    let gguf = tmp.path().join("gpt2.gguf");
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes()); // version
    b.extend(0u64.to_le_bytes()); // tensors
    b.extend(1u64.to_le_bytes()); // metadata entries
    let key = "general.architecture";
    b.extend((key.len() as u64).to_le_bytes());
    b.extend(key.as_bytes());
    b.extend(8u32.to_le_bytes()); // string
    b.extend(4u64.to_le_bytes());
    b.extend(b"gpt2");
    std::fs::write(&gguf, b).unwrap();
    let o = train(&gguf, &data, targets, &tmp.path().join("e"), &[]);
    fails_with(&o, &["general.architecture", "gpt2", "Hugging Face folder"]);
    // generate is Llama-only and says so.
    let o = balora()
        .arg("generate")
        .arg("--model")
        .arg(&bare)
        .args(["--prompt", "the whale"])
        .output()
        .unwrap();
    fails_with(&o, &["GPT-2", "Llama-style models only"]);
}

#[test]
fn a_config_without_model_type_goes_by_architectures() {
    for (family, fan_in_fan_out, _) in FAMILIES {
        let tmp = TempDir::new().unwrap();
        let model = model_copy(tmp.path(), family, false);
        let mut cfg = json(&model.join("config.json"));
        cfg.as_object_mut().unwrap().remove("model_type").unwrap();
        std::fs::write(model.join("config.json"), cfg.to_string()).unwrap();
        let adapter = fixture(family).join("adapter");
        let out = tmp.path().join("merged.safetensors");
        ok(&merge(&model, &adapter, &out));
        assert_eq!(check_merged(&model, &adapter, &out, fan_in_fan_out), 8);
    }
}
