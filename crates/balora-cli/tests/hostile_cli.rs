//! The `balora` binary on hostile inputs (issue 13): `inspect`, `balance` and `generate` exit
//! non-zero with a message naming the file and the field or shape, instead of hanging, panicking
//! or printing nothing with exit 0. Inputs: the seed corpus of `balora-fuzz`.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn corpus(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../balora-fuzz/corpus")
        .join(rel)
}

fn balora(args: &[&str]) -> Output {
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_balora"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "{args:?} took {:?}",
        t.elapsed()
    );
    out
}

/// Fails unless the command exited non-zero and its stderr holds every needle.
fn refused(args: &[&str], needles: &[&str]) {
    let out = balora(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} exited 0; stderr: {err}");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: expected `{n}` in: {err}");
    }
}

/// `balora generate --model <model> --prompt <prompt> <extra…>` must be [`refused`] with every
/// needle.
fn generate_refused(model: &str, prompt: &str, extra: &[&str], needles: &[&str]) {
    let mut args = vec!["generate", "--model", model, "--prompt", prompt];
    args.extend_from_slice(extra);
    refused(&args, needles);
}

/// A fresh adapter folder holding corpus weights `weights` and a valid rank-4 q_proj config.
fn adapter_dir(weights: &str, tag: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "hostile-cli-{tag}-{weights}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(
        corpus("safetensors").join(weights),
        d.join("adapter_model.safetensors"),
    )
    .unwrap();
    std::fs::copy(
        corpus("adapter_config/ok.json"),
        d.join("adapter_config.json"),
    )
    .unwrap();
    d
}

#[test]
fn inspect_and_balance_refuse_empty_huge_rank_zero_and_non_finite_adapters() {
    for (file, needle) in [
        ("zero_by_2pow40.safetensors", "[0, 1099511627776]"),
        ("rank0.safetensors", "[0, 8]"),
        ("nan.safetensors", "NaN"),
        ("inf.safetensors", "inf"),
    ] {
        let p = corpus("safetensors").join(file);
        refused(&["inspect", p.to_str().unwrap()], &[file, needle]);
        let dir = adapter_dir(file, "balance");
        let out = dir.join("out");
        refused(
            &["balance", dir.to_str().unwrap(), out.to_str().unwrap()],
            &["adapter_model.safetensors", needle],
        );
        assert!(!out.join("adapter_model.safetensors").exists());
    }
}

#[test]
fn generate_refuses_bad_prompts_options_and_models() {
    let tiny = corpus("gguf/tiny_llama.gguf");
    let tiny = tiny.to_str().unwrap();
    generate_refused(tiny, "", &[], &["--prompt is empty"]);
    generate_refused(tiny, "abc", &["--temperature", "nan"], &["temperature NaN"]);
    // 40 letters are 40 tokens (one per letter, no merges): more than the 32 positions.
    let long = "a".repeat(40);
    generate_refused(
        tiny,
        &long,
        &[],
        &["tiny_llama.gguf", "40 tokens", "context is 32"],
    );
    for (file, needle) in [
        ("nan_weight.gguf", "blk.0.ffn_up.weight"),
        ("rope_base_zero.gguf", "llama.rope.freq_base"),
        ("block_count_ffffffff.gguf", "llama.block_count"),
    ] {
        let p = corpus("gguf").join(file);
        generate_refused(p.to_str().unwrap(), "abc", &[], &[file, needle]);
    }
    let nan_adapter = adapter_dir("nan.safetensors", "generate");
    generate_refused(
        tiny,
        "abc",
        &["--adapter", nan_adapter.to_str().unwrap()],
        &["adapter_model.safetensors", "NaN"],
    );
    // The valid tiny model generates: the prompt, then letters a…p only.
    let out = balora(&[
        "generate",
        "--model",
        tiny,
        "--prompt",
        "abc",
        "--max-tokens",
        "5",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let text = text.trim_end();
    assert!(text.starts_with("abc") && text.len() == 8, "{text:?}");
    assert!(text.chars().all(|c| ('a'..='p').contains(&c)), "{text:?}");
}

#[test]
fn train_refuses_seq_len_beyond_the_context_and_a_rank_beyond_the_layer() {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("hostile-cli-train-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let data = tmp.join("letters.txt");
    let text: Vec<&str> = (0..3000).map(|i| ["a", "b", "c", "d"][i % 4]).collect();
    std::fs::write(&data, text.join(" ")).unwrap();
    let model = format!("model.path={:?}", corpus("gguf/tiny_llama.gguf"));
    let data_set = format!("data.path={data:?}");
    let run = |extra: &[&str], out: &str| {
        let out = tmp.join(out);
        let mut args = vec!["train", "--set", &model, "--set", &data_set];
        args.extend_from_slice(extra);
        let out = out.to_str().unwrap().to_string();
        let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        v.extend(["--out".to_string(), out]);
        v
    };
    let a = run(&["--set", "data.seq_len=64", "--set", "adapter.r=4"], "seq");
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    refused(&a, &["letters.txt", "data.seq_len = 64", "context of 32"]);
    let a = run(
        &["--set", "data.seq_len=16", "--set", "adapter.r=100000"],
        "rank",
    );
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    refused(&a, &["adapter.r = 100000", "1..=8", "q_proj"]);
}
