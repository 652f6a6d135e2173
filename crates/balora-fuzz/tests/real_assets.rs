//! The new checks on the real assets: no false positive on SmolLM2 (GGUF) and MiniLM (HF
//! folder), and the cost of the finite check of base weights, measured on SmolLM2.
//! Skipped without the assets, failing under `BALORA_REQUIRE_ASSETS=1` (see `for_test`).

mod common;

use balora_formats::{GgufFile, TensorSource};
use balora_models::validate::first_non_finite;
use common::B;
use std::time::Instant;

#[test]
fn smollm2_passes_every_check_and_the_finite_check_is_cheap() {
    let Some(path) = balora_assets::for_test("smollm2") else {
        return;
    };
    let t = Instant::now();
    let lm = balora_models::load::load_llama_gguf::<B>(&path, &Default::default()).unwrap();
    let load = t.elapsed().as_secs_f64();
    // Published SmolLM2-135M settings (HF config.json): 30 layers, 49152 tokens, 8192 positions.
    assert_eq!(
        (
            lm.config.num_layers,
            lm.config.vocab_size,
            lm.config.max_position
        ),
        (30, 49152, 8192)
    );
    // The check alone, over every tensor as f32 (dequantised first, not timed).
    let f = GgufFile::open(&path).unwrap();
    let tensors: Vec<Vec<f32>> = f.names().iter().map(|n| f.load(n).unwrap().data).collect();
    let values: usize = tensors.iter().map(Vec::len).sum();
    let t = Instant::now();
    for d in &tensors {
        assert_eq!(first_non_finite(d), None);
    }
    let check = t.elapsed().as_secs_f64();
    println!(
        "SmolLM2: load {load:.2} s (finite check included); finite check alone {:.1} ms over {values} values ({:.2} % of the load)",
        check * 1e3,
        100.0 * check / load
    );
    let ids = lm
        .tokenizer
        .encode("Hello", false)
        .unwrap()
        .get_ids()
        .to_vec();
    balora_models::generate::check_prompt(&lm.model, &ids).unwrap();
}

#[test]
fn minilm_passes_every_check() {
    let Some(dir) = balora_assets::for_test("minilm") else {
        return;
    };
    let (_m, cfg, _tok) =
        balora_models::load::load_bert_hf_dir::<B>(&dir, &Default::default()).unwrap();
    // all-MiniLM-L6-v2's config.json: 6 layers, 384 wide, 30522 tokens, 512 positions.
    assert_eq!(
        (
            cfg.num_layers,
            cfg.hidden_size,
            cfg.vocab_size,
            cfg.max_position
        ),
        (6, 384, 30522, 512)
    );
}
