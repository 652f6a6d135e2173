//! Shared by the fuzz and hostile-input tests: the backend, a word-level encoder, the corpus.
#![allow(dead_code)]

use balora_data::Encoder;
use balora_models::load::load_llama_gguf;
use std::path::{Path, PathBuf};

/// CPU backend for model loads.
pub type B = burn_ndarray::NdArray<f32>;

/// The committed seed corpus of one reader (`corpus/<kind>/*`), sorted by name.
pub fn corpus(kind: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: empty seed corpus", dir.display());
    files
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            (name, std::fs::read(&p).unwrap())
        })
        .collect()
}

/// Words `w0`…`w19` plus `<pad>`: a word-level tokenizer with 21 ids (whitespace split, `[UNK]` = 21).
pub fn encoder() -> Encoder {
    let mut vocab: Vec<String> = (0..20).map(|i| format!("\"w{i}\": {i}")).collect();
    vocab.push("\"<pad>\": 20".into());
    vocab.push("\"[UNK]\": 21".into());
    let json = format!(
        r#"{{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {{"type": "Whitespace"}}, "post_processor": null, "decoder": null,
        "model": {{"type": "WordLevel", "vocab": {{{}}}, "unk_token": "[UNK]"}}}}"#,
        vocab.join(", ")
    );
    Encoder::new(tokenizers::Tokenizer::from_bytes(json.as_bytes()).unwrap())
}

/// `corpus/` of this crate.
pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

/// The error of loading corpus GGUF `name`, checked to name the file.
pub fn gguf_err(name: &str) -> String {
    let p = corpus_dir().join("gguf").join(name);
    let dev = Default::default();
    match load_llama_gguf::<B>(&p, &dev) {
        Ok(_) => panic!("{name} loaded"),
        Err(e) => {
            let e = e.to_string();
            assert!(
                e.contains(p.to_str().unwrap()),
                "the error names the file: {e}"
            );
            e
        }
    }
}

/// Fails unless `e` holds every needle.
pub fn assert_has(e: &str, needles: &[&str]) {
    for n in needles {
        assert!(e.contains(n), "expected `{n}` in: {e}");
    }
}

/// A fresh adapter folder: corpus weights `weights` and config text `config`.
pub fn adapter_dir(weights: &str, config: &str) -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("adapter");
    let w = std::fs::read(corpus_dir().join("safetensors").join(weights)).unwrap();
    balora_fuzz::adapter::write_dir(&dir, config, &w).unwrap();
    (t, dir)
}

/// The model of the corpus' valid tiny GGUF.
pub fn tiny_model() -> balora_models::LlamaForCausalLm<B> {
    let p = corpus_dir().join("gguf").join("tiny_llama.gguf");
    load_llama_gguf::<B>(&p, &Default::default()).unwrap().model
}
