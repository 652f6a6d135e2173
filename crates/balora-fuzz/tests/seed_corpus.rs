//! The seed corpus of the fuzz test (`corpus/`): one small file per hostile input of issue 13,
//! written from the builders below by the ignored `write_seed_corpus`
//! (`cargo test -p balora-fuzz --test seed_corpus -- --ignored`), and checked to match them.

mod common;

use balora_fuzz::adapter::{self, keys, q_proj_pair, safetensors_bytes};
use balora_fuzz::gguf::{self, tiny_llama, Gguf, Val};
use common::corpus_dir;

/// The hostile GGUF files of the seed corpus: (file name, builder).
fn gguf_cases() -> Vec<(&'static str, Gguf)> {
    let with = |f: &dyn Fn(&mut Gguf)| {
        let mut g = tiny_llama();
        f(&mut g);
        g
    };
    vec![
        ("tiny_llama.gguf", tiny_llama()),
        (
            "block_count_ffffffff.gguf",
            with(&|g| {
                g.set("llama.block_count", Val::U32(u32::MAX));
            }),
        ),
        (
            "block_count_2.gguf",
            with(&|g| {
                g.set("llama.block_count", Val::U32(2));
            }),
        ),
        (
            "context_length_ffffffff.gguf",
            with(&|g| {
                g.set("llama.context_length", Val::U32(u32::MAX));
            }),
        ),
        (
            "eps_zero.gguf",
            with(&|g| {
                g.set("llama.attention.layer_norm_rms_epsilon", Val::F32(0.0));
            }),
        ),
        (
            "eps_nan.gguf",
            with(&|g| {
                g.set("llama.attention.layer_norm_rms_epsilon", Val::F32(f32::NAN));
            }),
        ),
        (
            "rope_base_zero.gguf",
            with(&|g| {
                g.set("llama.rope.freq_base", Val::F32(0.0));
            }),
        ),
        (
            "nan_weight.gguf",
            with(&|g| {
                g.data_mut("blk.0.ffn_up.weight")[5] = f32::NAN;
            }),
        ),
        (
            "vocab_zero.gguf",
            with(&|g| {
                g.put_tensor("token_embd.weight", vec![0, gguf::D], vec![]);
            }),
        ),
        (
            "tokens_beyond_embedding.gguf",
            with(&|g| {
                let mut t = gguf::tokens();
                t.extend((b'q'..=b'z').map(|c| (c as char).to_string()));
                g.set("tokenizer.ggml.tokens", Val::strs(&t));
            }),
        ),
        (
            "nested_depth_20.gguf",
            with(&|g| {
                g.set("general.nested", Val::Raw(9, gguf::nested_array_body(20)));
            }),
        ),
    ]
}

fn safetensors_cases() -> Vec<(&'static str, Vec<u8>)> {
    let (ka, kb) = keys("model.layers.0.self_attn.q_proj");
    let mut nan = q_proj_pair(4);
    nan[0].2[3] = f32::NAN;
    let mut inf = q_proj_pair(4);
    inf[1].2[0] = f32::INFINITY;
    let mut mismatch = q_proj_pair(4);
    mismatch[1] = (kb.clone(), vec![8, 3], gguf::weights(24, 1));
    vec![
        ("ok_rank4.safetensors", safetensors_bytes(&q_proj_pair(4))),
        (
            "zero_by_2pow40.safetensors",
            safetensors_bytes(&[
                (ka.clone(), vec![0, 1 << 40], vec![]),
                (kb.clone(), vec![1 << 40, 0], vec![]),
            ]),
        ),
        (
            "rank0.safetensors",
            safetensors_bytes(&[
                (ka.clone(), vec![0, 8], vec![]),
                (kb.clone(), vec![8, 0], vec![]),
            ]),
        ),
        ("nan.safetensors", safetensors_bytes(&nan)),
        ("inf.safetensors", safetensors_bytes(&inf)),
        ("rank_mismatch.safetensors", safetensors_bytes(&mismatch)),
    ]
}

fn text_cases() -> Vec<(&'static str, &'static str, String)> {
    vec![
        ("adapter_config", "ok.json", adapter::config_json(4, &["q_proj", "v_proj"])),
        ("adapter_config", "r_100000.json", adapter::config_json(100_000, &["q_proj"])),
        ("adapter_config", "r_0.json", adapter::config_json(0, &["q_proj"])),
        (
            "adapter_config",
            "rank_pattern_huge.json",
            r#"{"peft_type":"LORA","r":4,"lora_alpha":8,"target_modules":"all-linear","rank_pattern":{"down_proj":4294967295},"layers_to_transform":[0,18446744073709551615]}"#.into(),
        ),
        ("toml", "small_job.toml", "[adapter]\nr = 4\nlora_alpha = 8.0\n\n[data]\nseq_len = 16\n\n[trainer]\nlr = 1e-4\n".into()),
        ("toml", "seq_len_max.toml", "[data]\nseq_len = 18446744073709551615\n".into()),
        ("toml", "adapter_r_100000.toml", "[adapter]\nr = 100000\nlora_alpha = 16.0\n".into()),
        ("toml", "lr_nan.toml", "[trainer]\nlr = nan\nmax_steps = 0\n".into()),
        (
            "jsonl",
            "mixed.jsonl",
            concat!(
                "{\"text\": \"w1 w2 w3 w4\"}\n",
                "{\"prompt\": \"w1 w2\", \"completion\": \"w3 w4 w5\"}\n",
                "{\"messages\": [{\"role\": \"user\", \"content\": \"w1\"}, {\"role\": \"assistant\", \"content\": \"w2 w3\"}]}\n",
                "{\"text\": \"w5 w6\", \"label\": 2}\n",
                "{\"text\": \"w7 w8\", \"label\": \"pos\"}\n",
                "not json\n",
            )
            .into(),
        ),
        (
            "jsonl",
            "labels_out_of_range.jsonl",
            "{\"text\": \"w1 w2\", \"label\": 18446744073709551615}\n{\"text\": \"w1\", \"label\": -1}\n".into(),
        ),
    ]
}

/// Regenerates `corpus/` from the builders above (`cargo test -p balora-fuzz --test seed_corpus -- --ignored`).
#[test]
#[ignore]
fn write_seed_corpus() {
    let d = corpus_dir();
    for sub in ["gguf", "safetensors", "adapter_config", "toml", "jsonl"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    for (name, g) in gguf_cases() {
        std::fs::write(d.join("gguf").join(name), g.to_bytes()).unwrap();
    }
    for (name, b) in safetensors_cases() {
        std::fs::write(d.join("safetensors").join(name), b).unwrap();
    }
    for (sub, name, t) in text_cases() {
        std::fs::write(d.join(sub).join(name), t).unwrap();
    }
}

#[test]
fn the_committed_corpus_is_what_the_builders_write() {
    let d = corpus_dir();
    for (name, g) in gguf_cases() {
        assert_eq!(
            std::fs::read(d.join("gguf").join(name)).unwrap(),
            g.to_bytes(),
            "{name}"
        );
    }
    for (name, b) in safetensors_cases() {
        assert_eq!(
            std::fs::read(d.join("safetensors").join(name)).unwrap(),
            b,
            "{name}"
        );
    }
    for (sub, name, t) in text_cases() {
        assert_eq!(
            std::fs::read_to_string(d.join(sub).join(name)).unwrap(),
            t,
            "{name}"
        );
    }
}
