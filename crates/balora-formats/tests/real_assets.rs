//! Golden tests on the real assets (SmolLM2-135M GGUF, all-MiniLM-L6-v2) against references
//! computed independently in Python (`tools/reference/*.py`, outputs in `tests/data/`).
//! Skipped, with a message naming `cargo xtask assets`, when the assets are not downloaded —
//! unless `BALORA_REQUIRE_ASSETS=1`, when a missing asset fails the test ([`balora_assets::for_test`]).

use balora_formats::{
    load_tokenizer_json, read_hf_config, tokenizer_from_gguf, GgmlType, GgufFile, LlamaHfView,
    SafetensorsFiles, TensorSource,
};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Instant;

fn reference(name: &str) -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

/// A JSON array of non-negative integers.
fn ints(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

/// The reference's tokenizer cases: `(text, token ids)`.
fn tokenizer_cases(r: &Value) -> Vec<(&str, Vec<u32>)> {
    r["tokenizer"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let ids = ints(&c["ids"]).into_iter().map(|x| x as u32).collect();
            (c["text"].as_str().unwrap(), ids)
        })
        .collect()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// Compares a loaded tensor with a reference entry: shape, leading values, sampled values, sums.
fn check_tensor(data: &[f32], shape: &[usize], r: &Value) {
    let name = r["name"].as_str().unwrap();
    let want_shape: Vec<usize> = r["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(shape, want_shape.as_slice(), "{name} shape");
    for (i, w) in f64s(&r["first"]).iter().enumerate() {
        assert!(
            (f64::from(data[i]) - w).abs() <= 1e-6 * w.abs().max(1e-3),
            "{name}[{i}] = {} vs {w}",
            data[i]
        );
    }
    let idx: Vec<usize> = r["sample_index"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    for (i, w) in idx.iter().zip(f64s(&r["sample"])) {
        assert!(
            (f64::from(data[*i]) - w).abs() <= 1e-6 * w.abs().max(1e-3),
            "{name}[{i}] = {} vs {w}",
            data[*i]
        );
    }
    let sum: f64 = data.iter().map(|&x| f64::from(x)).sum();
    let sum_sq: f64 = data.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
    let (ws, wq) = (r["sum"].as_f64().unwrap(), r["sum_sq"].as_f64().unwrap());
    assert!(
        (sum - ws).abs() <= 1e-9 * wq.sqrt() * (data.len() as f64).sqrt() + 1e-9,
        "{name} sum {sum} vs {ws}"
    );
    assert!(
        (sum_sq - wq).abs() <= 1e-9 * wq,
        "{name} sum of squares {sum_sq} vs {wq}"
    );
}

#[test]
fn smollm2_gguf_metadata_and_tensors_match_the_gguf_package() {
    let Some(path) = balora_assets::for_test("smollm2") else {
        return;
    };
    let r = reference("smollm2_reference.json");
    let m = &r["metadata"];
    let t0 = Instant::now();
    let f = GgufFile::open(&path).unwrap();
    let open_ms = t0.elapsed().as_secs_f64() * 1e3;
    assert_eq!(f.version(), 3);
    assert_eq!(f.architecture().unwrap(), "llama");
    // The brief's numbers, and the reference file's.
    assert_eq!(f.arch_u32("block_count").unwrap(), 30);
    assert_eq!(f.arch_u32("embedding_length").unwrap(), 576);
    assert_eq!(f.arch_u32("attention.head_count").unwrap(), 9);
    assert_eq!(f.arch_u32("attention.head_count_kv").unwrap(), 3);
    assert_eq!(f.arch_u32("vocab_size").unwrap(), 49152);
    assert_eq!(
        u64::from(f.arch_u32("feed_forward_length").unwrap()),
        m["feed_forward_length"].as_u64().unwrap()
    );
    assert_eq!(
        f64::from(f.arch_f32("rope.freq_base").unwrap()),
        m["rope_freq_base"].as_f64().unwrap()
    );
    assert_eq!(
        f64::from(f.arch_f32("attention.layer_norm_rms_epsilon").unwrap()),
        m["rms_eps"].as_f64().unwrap()
    );
    assert_eq!(
        f.tensor_infos().len() as u64,
        m["tensor_count"].as_u64().unwrap()
    );
    assert_eq!(f.data_offset(), m["data_offset"].as_u64().unwrap());
    assert!(f
        .chat_template()
        .unwrap()
        .starts_with(m["chat_template_prefix"].as_str().unwrap()));

    for tr in r["tensors"].as_array().unwrap() {
        let name = tr["name"].as_str().unwrap();
        let info = f.tensor_info(name).unwrap();
        assert_eq!(info.ggml_type.name(), tr["type"].as_str().unwrap());
        let t = f.load(name).unwrap();
        check_tensor(&t.data, &t.shape, tr);
    }

    // Every tensor dequantises; time it (the report quotes this).
    let t1 = Instant::now();
    let mut n = 0usize;
    for name in f.names() {
        n += f.load(&name).unwrap().numel();
    }
    let all_ms = t1.elapsed().as_secs_f64() * 1e3;
    let q41 = f
        .tensor_infos()
        .iter()
        .filter(|t| t.ggml_type == GgmlType::Q4_1)
        .count();
    eprintln!("SmolLM2 GGUF: open {open_ms:.1} ms, dequantise all {} tensors ({n} values, {q41} Q4_1) {all_ms:.0} ms", f.names().len());
    assert_eq!(n, 134_515_008); // SmolLM2-135M, tied embeddings
}

#[test]
fn smollm2_hf_view_unpermutes_q_and_k_like_numpy() {
    let Some(path) = balora_assets::for_test("smollm2") else {
        return;
    };
    let r = reference("smollm2_reference.json");
    let f = GgufFile::open(&path).unwrap();
    let view = LlamaHfView::new(&f).unwrap();
    let names = view.names();
    assert_eq!(names.len(), 272); // every tensor maps; tied embeddings: no lm_head
    assert!(names.contains(&"model.embed_tokens.weight".to_string()));
    assert!(!names.contains(&"lm_head.weight".to_string()));
    for case in r["hf_layout"].as_array().unwrap() {
        let t = view.load(case["hf"].as_str().unwrap()).unwrap();
        let cols = t.shape[1];
        let rows: Vec<usize> = ints(&case["rows"])
            .into_iter()
            .map(|x| x as usize)
            .collect();
        for (row, want) in rows.iter().zip(case["values"].as_array().unwrap()) {
            for (c, w) in f64s(want).iter().enumerate() {
                let got = f64::from(t.data[row * cols + c]);
                assert!(
                    (got - w).abs() <= 1e-6,
                    "{} row {row} col {c}: {got} vs {w}",
                    case["hf"]
                );
            }
        }
    }
    // Non-permuted tensors come through unchanged.
    let v = view.load("model.layers.0.self_attn.v_proj.weight").unwrap();
    assert_eq!(v.data, f.load("blk.0.attn_v.weight").unwrap().data);
    assert_eq!(v.shape, [192, 576]);
    let e = view
        .load("model.layers.0.self_attn.qproj.weight")
        .unwrap_err()
        .to_string();
    assert!(e.contains("model.layers.0.self_attn.q_proj.weight"), "{e}");
}

#[test]
fn smollm2_tokenizer_matches_reference_bpe() {
    let Some(path) = balora_assets::for_test("smollm2") else {
        return;
    };
    let r = reference("smollm2_reference.json");
    let f = GgufFile::open(&path).unwrap();
    let t0 = Instant::now();
    let tok = tokenizer_from_gguf(&f).unwrap();
    eprintln!(
        "SmolLM2 tokenizer built in {:.0} ms",
        t0.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(tok.get_vocab_size(true), 49152);
    assert_eq!(tok.token_to_id("<|im_start|>"), Some(1));
    for (text, want) in tokenizer_cases(&r) {
        let enc = tok.encode(text, false).unwrap();
        assert_eq!(enc.get_ids(), want.as_slice(), "{text:?}");
        assert_eq!(
            tok.decode(&want, false).unwrap(),
            text,
            "round trip of {text:?}"
        );
    }
}

#[test]
fn minilm_safetensors_config_and_tokenizer_match_reference() {
    let Some(dir) = balora_assets::for_test("minilm") else {
        return;
    };
    let r = reference("minilm_reference.json");
    let files = SafetensorsFiles::open_dir(&dir).unwrap();
    assert_eq!(
        files.names().len() as u64,
        r["tensor_count"].as_u64().unwrap()
    );
    for tr in r["tensors"].as_array().unwrap() {
        let t = files.load(tr["name"].as_str().unwrap()).unwrap();
        check_tensor(&t.data, &t.shape, tr);
    }
    let e = files
        .load("embeddings.position_ids")
        .unwrap_err()
        .to_string();
    assert!(e.contains("model.safetensors") && e.contains("I64"), "{e}");

    let config = read_hf_config(&dir.join("config.json")).unwrap();
    assert_eq!(config["hidden_size"], 384);
    assert_eq!(config["num_hidden_layers"], 6);
    assert_eq!(config["vocab_size"], 30522);

    let tok = load_tokenizer_json(&dir.join("tokenizer.json")).unwrap();
    assert!(tok.get_padding().is_none() && tok.get_truncation().is_none());
    // vocab.txt (one token a line, id = line number) is a second, file-level reference.
    let vocab = std::fs::read_to_string(dir.join("vocab.txt")).unwrap();
    let line = |w: &str| vocab.lines().position(|l| l == w).unwrap() as u32;
    assert_eq!(
        [
            line("[CLS]"),
            line("hello"),
            line(","),
            line("world"),
            line("!"),
            line("[SEP]")
        ],
        [101, 7592, 1010, 2088, 999, 102]
    );
    for (text, want) in tokenizer_cases(&r) {
        assert_eq!(
            tok.encode(text, true).unwrap().get_ids(),
            want.as_slice(),
            "{text:?}"
        );
    }
    // Longer than the file's truncation (128): not truncated, not padded.
    let long = "word ".repeat(300);
    assert_eq!(tok.encode(long.as_str(), true).unwrap().len(), 302);
}
