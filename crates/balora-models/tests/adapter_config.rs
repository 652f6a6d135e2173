//! `adapter_config.json` ↔ `LoraConfig`: the file's pattern order is PEFT's order (kept on read
//! and on write), `r = 0` and bad patterns are errors naming the file and the PEFT field.

use balora_models::peft::parse_config;

fn with_patterns(patterns: &str, r: usize) -> String {
    format!(
        r#"{{"peft_type": "LORA", "r": {r}, "lora_alpha": 8, "target_modules": ["q_proj"],
            "rank_pattern": {patterns}, "alpha_pattern": {{}}, "init_lora_weights": true}}"#
    )
}

#[test]
fn the_files_key_order_decides_like_peft() {
    // PEFT 0.21.2 get_pattern_key on these dicts (checked with the installed package):
    // {"q_proj": 4, "layers.0.self_attn.q_proj": 16} → layer 0 gets 4;
    // {"layers.0.self_attn.q_proj": 16, "q_proj": 4} → layer 0 gets 16.
    let path = "model.layers.0.self_attn.q_proj";
    let generic_first = parse_config(
        &with_patterns(r#"{"q_proj": 4, "layers.0.self_attn.q_proj": 16}"#, 8),
        "a.json",
    )
    .unwrap();
    assert!(generic_first.rank_pattern.is_ordered());
    assert_eq!(generic_first.resolve(path).unwrap().r(), 4);
    let specific_first = parse_config(
        &with_patterns(r#"{"layers.0.self_attn.q_proj": 16, "q_proj": 4}"#, 8),
        "a.json",
    )
    .unwrap();
    assert_eq!(specific_first.resolve(path).unwrap().r(), 16);
    assert_eq!(
        specific_first
            .resolve("model.layers.1.self_attn.q_proj")
            .unwrap()
            .r(),
        4
    );
}

#[test]
fn rank_zero_and_bad_patterns_name_the_file_and_field() {
    let e = parse_config(&with_patterns("{}", 0), "dir/adapter_config.json")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("dir/adapter_config.json") && e.contains("`r`"),
        "{e}"
    );
    let e = parse_config(&with_patterns(r#"{"q_proj": 0}"#, 8), "c.json")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("c.json") && e.contains("rank_pattern.\"q_proj\""),
        "{e}"
    );
    let e = parse_config(&with_patterns(r#"{"(q": 2}"#, 8), "c.json")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("rank_pattern.\"(q\"") && e.contains("regex"),
        "{e}"
    );
}
