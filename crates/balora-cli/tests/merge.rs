//! `balora merge` end to end: the real-PEFT fixtures (crates/balora-models/tests/fixtures/
//! peft_real, written by PyTorch + PEFT 0.21.2) merge to PEFT's `merge_and_unload` weights; a
//! classifier adapter written by balora merges into `BertForSequenceClassification` names
//! (checked against W + s·B·A in f64 from the files); and `--out` can never clobber an input,
//! an existing file needs `--force`, non-finite results are refused with nothing written.

#[allow(dead_code)] // `generate_capital_of_france` is for other targets
mod common;

use balora_models::peft::{save_adapter, AdapterMeta};
use balora_models::{
    attach, AdapterHost, BertForSequenceClassification, LoraConfig, ModuleSelector, Pooling,
};
use common::{balora, read_f32_tensors};
use std::path::{Path, PathBuf};
use std::process::Output;

fn fixture(family: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../balora-models/tests/fixtures/peft_real")
        .join(family)
}

/// A fresh folder, removed when the returned guard is dropped (also when the test fails).
fn tmp(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("balora-merge-{name}-"))
        .tempdir()
        .unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn merge(base: &Path, adapter: &Path, out: &Path, extra: &[&str]) -> Output {
    balora()
        .arg("merge")
        .arg("--base")
        .arg(base)
        .arg("--adapter")
        .arg(adapter)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

fn ok(o: &Output) {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn fails_with(o: &Output, needles: &[&str]) {
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected a failure");
    for n in needles {
        assert!(e.contains(n), "error lacks `{n}`: {e}");
    }
}

/// Every merged tensor bit-identical to PEFT's `merged.<name>`; returns the names.
fn assert_peft_merge(family: &str, out: &Path) -> Vec<String> {
    let got = read_f32_tensors(out);
    let want = read_f32_tensors(&fixture(family).join("expected.safetensors"));
    for (name, (shape, data)) in &got {
        let (ws, wd) = &want[&format!("merged.{name}")];
        assert_eq!(shape, ws, "{family} {name}");
        let same = data.iter().zip(wd).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{family}: merged `{name}` differs from PEFT's");
    }
    got.into_keys().collect()
}

#[test]
fn merges_real_peft_adapters_bit_for_bit() {
    let d_tmp = tmp("peft");
    let d = d_tmp.path();
    for family in ["llama", "qwen2"] {
        let out = d.join(format!("{family}.safetensors"));
        let f = fixture(family);
        ok(&merge(&f.join("base"), &f.join("adapter"), &out, &[]));
        assert_peft_merge(family, &out);
    }
    // The SEQ_CLS adapter: `bert.`-prefixed modules + the classifier in modules_to_save.
    let out = d.join("bert.safetensors");
    let f = fixture("bert");
    ok(&merge(&f.join("base"), &f.join("adapter"), &out, &[]));
    let names = assert_peft_merge("bert", &out);
    for k in [
        "classifier.weight",
        "classifier.bias",
        "bert.embeddings.word_embeddings.weight",
    ] {
        assert!(names.iter().any(|n| n == k), "no `{k}` in {names:?}");
    }
}

#[test]
fn merges_a_classifier_adapter_written_by_balora() {
    type B = burn::backend::NdArray;
    let dev = Default::default();
    let d_tmp = tmp("balora-cls");
    let d = d_tmp.path();
    let base = fixture("bert").join("base");
    let (bert, _, _) = balora_models::load::load_bert_hf_dir::<B>(&base, &dev).unwrap();
    let m = BertForSequenceClassification::new(bert, 2, Pooling::Cls, &dev);
    let mut spec = LoraConfig::new(
        4,
        8.0,
        ModuleSelector::List(vec!["query".into(), "value".into()]),
    )
    .unwrap();
    spec.modules_to_save = vec!["classifier".into()];
    let (m, _) = attach(m, &spec, &dev).unwrap();
    // Non-zero B (fresh adapters have B = 0, which would make the merge a no-op).
    let mut k = 0.0f32;
    let m = m.map_linears(&mut |_, mut l| {
        if let Some(a) = l.adapter.as_mut() {
            let [o, r] = a.lora_b.dims();
            k += 1.0;
            let v: Vec<f32> = (0..o * r)
                .map(|i| ((i as f32) * 0.37 + k).sin() * 0.3)
                .collect();
            a.lora_b = burn::module::Param::from_tensor(burn::tensor::Tensor::from_data(
                burn::tensor::TensorData::new(v, [o, r]),
                &dev,
            ));
        }
        l
    });
    let adapter = d.join("adapter");
    std::fs::create_dir_all(&adapter).unwrap();
    save_adapter(&m, &spec, &AdapterMeta::default(), &adapter).unwrap();
    let out = d.join("merged.safetensors");
    ok(&merge(&base, &adapter, &out, &[]));

    // Reference: W + (α/r)·B·A in f64, from the base and adapter files.
    let got = read_f32_tensors(&out);
    let w0 = read_f32_tensors(&base.join("model.safetensors"));
    let ad = read_f32_tensors(&adapter.join("adapter_model.safetensors"));
    let mut checked = 0;
    for (name, (shape, data)) in &got {
        let module = name.trim_end_matches(".weight");
        let pa = format!("base_model.model.{module}.lora_A.weight");
        let want: Vec<f64> = if let Some((sa, a)) = ad.get(&pa) {
            let (_, b) = &ad[&pa.replace("lora_A", "lora_B")];
            let (r, din) = (sa[0], sa[1]);
            let (_, w) = &w0[name];
            (0..w.len())
                .map(|i| {
                    let (o, j) = (i / din, i % din);
                    let ba: f64 = (0..r)
                        .map(|t| b[o * r + t] as f64 * a[t * din + j] as f64)
                        .sum();
                    w[i] as f64 + 2.0 * ba
                })
                .collect()
        } else if let Some((_, v)) = ad.get(&format!("base_model.model.{name}")) {
            v.iter().map(|&x| x as f64).collect()
        } else {
            w0[name].1.iter().map(|&x| x as f64).collect()
        };
        assert_eq!(shape.iter().product::<usize>(), want.len(), "{name}");
        for (g, w) in data.iter().zip(&want) {
            assert!(
                ((*g as f64) - w).abs() <= 1e-6 * (1.0 + w.abs()),
                "{name}: {g} vs {w}"
            );
        }
        checked += 1;
    }
    assert!(got.contains_key("classifier.weight") && got["classifier.weight"].0 == [2, 32]);
    assert!(got.contains_key("bert.encoder.layer.1.attention.self.query.weight"));
    assert_eq!(checked, got.len());
}

#[test]
fn out_may_not_be_an_input_even_through_a_link() {
    let d_tmp = tmp("inputs");
    let d = d_tmp.path();
    let (base, adapter) = (d.join("base"), d.join("adapter"));
    copy_dir(&fixture("llama").join("base"), &base);
    copy_dir(&fixture("llama").join("adapter"), &adapter);
    let before = std::fs::read(adapter.join("adapter_model.safetensors")).unwrap();
    for out in [
        adapter.join("adapter_model.safetensors"),
        base.join("model.safetensors"),
        base.join("config.json"),
        adapter.clone(),
    ] {
        let o = merge(&base, &adapter, &out, &["--force"]);
        fails_with(&o, &["is the input"]);
    }
    let link = d.join("link.safetensors");
    std::fs::hard_link(adapter.join("adapter_model.safetensors"), &link).unwrap();
    fails_with(&merge(&base, &adapter, &link, &["--force"]), &["hard link"]);
    #[cfg(unix)]
    {
        let sym = d.join("sym.safetensors");
        std::os::unix::fs::symlink(base.join("model.safetensors"), &sym).unwrap();
        fails_with(
            &merge(&base, &adapter, &sym, &["--force"]),
            &["is the input"],
        );
    }
    fails_with(
        &merge(&base, &adapter, &base.join("merged.safetensors"), &[]),
        &["inside the base model folder"],
    );
    assert!(!base.join("merged.safetensors").exists());
    fails_with(
        &merge(&base, &adapter, &d.join("no/such/dir/m.safetensors"), &[]),
        &["does not exist"],
    );
    assert_eq!(
        std::fs::read(adapter.join("adapter_model.safetensors")).unwrap(),
        before
    );
}

#[test]
fn existing_output_needs_force_and_is_replaced_atomically() {
    let d_tmp = tmp("force");
    let d = d_tmp.path();
    let f = fixture("llama");
    let out = d.join("merged.safetensors");
    std::fs::write(&out, b"keep me").unwrap();
    fails_with(
        &merge(&f.join("base"), &f.join("adapter"), &out, &[]),
        &["--force"],
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    ok(&merge(
        &f.join("base"),
        &f.join("adapter"),
        &out,
        &["--force"],
    ));
    assert_peft_merge("llama", &out);
    let left: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 1, "temporary files left behind: {left:?}");
    fails_with(
        &merge(&f.join("base"), &f.join("adapter"), d, &["--force"]),
        &["folder"],
    );
}

#[test]
fn non_finite_merges_name_the_module_and_write_nothing() {
    let d_tmp = tmp("finite");
    let d = d_tmp.path();
    let f = fixture("llama");
    // lora_alpha = 1e308: s·B·A overflows f32.
    let huge = d.join("huge");
    copy_dir(&f.join("adapter"), &huge);
    let cfg = huge.join("adapter_config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    v["lora_alpha"] = serde_json::json!(1e308);
    v["alpha_pattern"] = serde_json::json!({});
    std::fs::write(&cfg, v.to_string()).unwrap();
    let out = d.join("out.safetensors");
    fails_with(
        &merge(&f.join("base"), &huge, &out, &[]),
        &[
            "non-finite",
            "model.layers.0.self_attn.q_proj",
            "nothing written",
        ],
    );
    assert!(!out.exists());
    // A NaN in one lora_B.
    let nan = d.join("nan");
    copy_dir(&f.join("adapter"), &nan);
    let file = nan.join("adapter_model.safetensors");
    let mut t = read_f32_tensors(&file);
    let key = "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight";
    t.get_mut(key).unwrap().1[3] = f32::NAN;
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = t
        .into_iter()
        .map(|(n, (s, d))| (n, s, d.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views: Vec<_> = bytes
        .iter()
        .map(|(n, s, b)| {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b);
            (n.clone(), v.unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, &file).unwrap();
    fails_with(
        &merge(&f.join("base"), &nan, &out, &[]),
        &["non-finite", "model.layers.1.mlp.down_proj"],
    );
    assert!(!out.exists());
}

/// The symptom: `balance` and `generate --adapter` on a folder PEFT 0.21 wrote (its
/// config has `kasa_config`, `use_bdlora`, `peft_version`, ...). Generation's first greedy token
/// must be PyTorch's argmax of the adapted logits.
#[test]
fn balance_and_generate_accept_a_peft_0_21_adapter() {
    let f = fixture("llama");
    let d_tmp = tmp("peft021");
    let d = d_tmp.path();
    let o = balora()
        .arg("balance")
        .arg(f.join("adapter"))
        .arg(d.join("balanced"))
        .output()
        .unwrap();
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stdout).contains("balanced 10 adapters"));
    // Row 0 of expected.json's input_ids, and PyTorch's next token after it.
    let ids = [1, 17, 42, 99, 5, 63, 28, 7];
    let want = read_f32_tensors(&f.join("expected.safetensors"));
    let (shape, logits) = &want["adapted_logits"];
    let (seq, vocab) = (shape[1], shape[2]);
    let last = &logits[(seq - 1) * vocab..seq * vocab];
    let argmax = (0..vocab)
        .max_by(|&a, &b| last[a].total_cmp(&last[b]))
        .unwrap();
    let prompt: Vec<String> = ids.iter().map(|i| format!("t{i}")).collect();
    for adapter in [f.join("adapter"), d.join("balanced")] {
        let o = balora()
            .args([
                "generate",
                "--backend",
                "ndarray",
                "--max-tokens",
                "1",
                "--prompt",
            ])
            .arg(prompt.join(" "))
            .arg("--model")
            .arg(f.join("base"))
            .arg("--adapter")
            .arg(&adapter)
            .output()
            .unwrap();
        ok(&o);
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            text.contains(&format!("t7t{argmax}")),
            "expected PyTorch's next token t{argmax} after the prompt: {text}"
        );
    }
}

/// The case end to end: `balora train` on the classify job (MiniLM, `bert.`-prefixed
/// adapters + the classifier in modules_to_save), then `balora merge` of its adapter folder.
#[test]
fn merges_what_the_classify_job_trains() {
    let Some(minilm) = balora_assets::for_test("minilm") else {
        return;
    };
    let d_tmp = tmp("classify");
    let d = d_tmp.path();
    let data: String = (0..24)
        .map(|i| {
            let text = if i % 2 == 0 {
                "awful bad day"
            } else {
                "lovely fine day"
            };
            format!("{{\"text\": \"{text} {i}\", \"label\": {}}}\n", i % 2)
        })
        .collect();
    std::fs::write(d.join("data.jsonl"), data).unwrap();
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/classify-minilm.toml");
    let set = |k: &str, v: &Path| format!("{k}={}", v.display());
    // The job's model is the `minilm` asset, the one for_test found.
    let o = balora()
        .arg("train")
        .arg("--config")
        .arg(&config)
        .args(["--set", &set("data.path", &d.join("data.jsonl"))])
        .args(["--set", &set("output.dir", &d.join("run"))])
        .args(["--set", "trainer.steps=2", "--set", "trainer.eval_every=0"])
        .output()
        .unwrap();
    ok(&o);
    let adapter = d.join("run/adapter");
    let out = d.join("merged.safetensors");
    ok(&merge(&minilm, &adapter, &out, &[]));
    let got = read_f32_tensors(&out);
    let ad = read_f32_tensors(&adapter.join("adapter_model.safetensors"));
    let w0 = read_f32_tensors(&minilm.join("model.safetensors"));
    // The trained head, copied bit for bit under HF's classifier names.
    for k in ["weight", "bias"] {
        assert_eq!(
            got[&format!("classifier.{k}")],
            ad[&format!("base_model.model.classifier.{k}")],
            "classifier.{k}"
        );
    }
    // An adapted query: W0 + (16/8)·B·A in f64 (configs/classify-minilm.toml: r 8, alpha 16).
    let name = "bert.encoder.layer.3.attention.self.query.weight";
    let base_name = w0
        .keys()
        .find(|k| k.ends_with("encoder.layer.3.attention.self.query.weight"))
        .unwrap();
    let (_, w) = &w0[base_name];
    let pa = "base_model.model.bert.encoder.layer.3.attention.self.query.lora_A.weight";
    let (sa, a) = &ad[pa];
    let (_, b) = &ad[&pa.replace("lora_A", "lora_B")];
    let (r, din) = (sa[0], sa[1]);
    let moved = got[name]
        .1
        .iter()
        .zip(w)
        .fold(0f32, |m, (g, x)| m.max((g - x).abs()));
    assert!(moved > 1e-5, "{name}: training moved nothing ({moved:e})");
    for (i, g) in got[name].1.iter().enumerate() {
        let (o, j) = (i / din, i % din);
        let ba: f64 = (0..r)
            .map(|t| b[o * r + t] as f64 * a[t * din + j] as f64)
            .sum();
        let want = w[i] as f64 + 2.0 * ba;
        assert!(
            ((*g as f64) - want).abs() <= 1e-6 * (1.0 + want.abs()),
            "{name}[{i}]"
        );
    }
}
