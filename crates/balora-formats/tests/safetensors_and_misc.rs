//! safetensors sets, config.json, tokenizer.json and the Llama Q/K un-permutation.

use balora_formats::{
    llama_gguf_to_hf, llama_hf_to_gguf, load_tokenizer_json, read_hf_config, FormatError,
    RawTensor, SafetensorsFiles, TensorSource,
};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::path::{Path, PathBuf};

fn save(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(&str, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (*n, TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn bytes16(v: &[u16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn two_shards(dir: &Path) -> (PathBuf, PathBuf) {
    let a = dir.join("model-00001-of-00002.safetensors");
    let b = dir.join("model-00002-of-00002.safetensors");
    let w: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    save(&a, &[("layer.weight", Dtype::F32, vec![3, 2], w)]);
    // f16 1, -2; bf16 3.140625, -123.5.
    save(
        &b,
        &[
            (
                "layer.bias",
                Dtype::F16,
                vec![2],
                bytes16(&[0x3C00, 0xC000]),
            ),
            (
                "norm.weight",
                Dtype::BF16,
                vec![2],
                bytes16(&[0x4049, 0xC2F7]),
            ),
            ("ids", Dtype::I64, vec![1], 7i64.to_le_bytes().to_vec()),
        ],
    );
    (a, b)
}

#[test]
fn sharded_files_load_as_one_set() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_shards(dir.path());
    let files = SafetensorsFiles::open(&[&a, &b]).unwrap();
    let mut names = files.names();
    names.sort();
    assert_eq!(names, ["ids", "layer.bias", "layer.weight", "norm.weight"]);
    let w = files.load_with_shape("layer.weight", &[3, 2]).unwrap();
    assert_eq!(w.data, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert_eq!(files.load("layer.bias").unwrap().data, [1.0, -2.0]);
    assert_eq!(files.load("norm.weight").unwrap().data, [3.140625, -123.5]);
    let dir_set = SafetensorsFiles::open_dir(dir.path()).unwrap();
    assert_eq!(dir_set.paths(), [a.as_path(), b.as_path()]);

    let e = files.load("ids").unwrap_err().to_string();
    assert!(
        e.contains("model-00002-of-00002.safetensors") && e.contains("`ids`") && e.contains("I64"),
        "{e}"
    );
    let e = files.load("layer.wieght").unwrap_err().to_string();
    assert!(
        e.contains("no tensor named `layer.wieght`") && e.contains("`layer.weight`"),
        "{e}"
    );
    let e = files
        .load_with_shape("layer.weight", &[2, 3])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model-00001-of-00002.safetensors: tensor `layer.weight` has shape [3, 2], expected [2, 3]"),
        "{e}"
    );
}

#[test]
fn bad_safetensors_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = two_shards(dir.path());
    let e = SafetensorsFiles::open(&[&a, &a]).unwrap_err();
    assert!(matches!(e, FormatError::DuplicateTensor { .. }), "{e}");
    assert!(e.to_string().contains("`layer.weight` occurs in both"));

    // Header length larger than the file.
    let junk = dir.path().join("junk.safetensors");
    let mut bytes = 1000u64.to_le_bytes().to_vec();
    bytes.extend(b"{\"a\":");
    std::fs::write(&junk, &bytes).unwrap();
    let e = SafetensorsFiles::open(&[&junk]).unwrap_err().to_string();
    assert!(
        e.contains("junk.safetensors: invalid safetensors file"),
        "{e}"
    );

    // Valid length, invalid JSON header.
    let header = b"{not json}";
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header);
    std::fs::write(&junk, &bytes).unwrap();
    let e = SafetensorsFiles::open(&[&junk]).unwrap_err().to_string();
    assert!(
        e.contains("junk.safetensors: invalid safetensors file"),
        "{e}"
    );

    // Offsets that do not cover the data.
    let header = br#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header);
    bytes.extend([0u8; 8]);
    std::fs::write(&junk, &bytes).unwrap();
    let e = SafetensorsFiles::open(&[&junk]).unwrap_err().to_string();
    assert!(
        e.contains("junk.safetensors: invalid safetensors file"),
        "{e}"
    );
}

#[test]
fn config_json_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("config.json");
    std::fs::write(
        &p,
        r#"{"hidden_size": 384, "architectures": ["BertModel"]}"#,
    )
    .unwrap();
    let c = read_hf_config(&p).unwrap();
    assert_eq!(c["hidden_size"], 384);
    std::fs::write(&p, "{\n  \"hidden_size\": 384,\n  oops\n}").unwrap();
    let e = read_hf_config(&p).unwrap_err().to_string();
    assert!(
        e.contains("config.json: invalid JSON") && e.contains("line 3"),
        "{e}"
    );
    std::fs::write(&p, "[1, 2]").unwrap();
    let e = read_hf_config(&p).unwrap_err().to_string();
    assert!(
        e.contains("config.json") && e.contains("not a JSON object"),
        "{e}"
    );
    let e = read_hf_config(&dir.path().join("missing.json"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.json"), "{e}");
}

#[test]
fn tokenizer_json_loads_without_padding_or_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tokenizer.json");
    let json = r#"{
      "version": "1.0",
      "truncation": {"direction": "Right", "max_length": 2, "strategy": "LongestFirst", "stride": 0},
      "padding": {"strategy": {"Fixed": 8}, "direction": "Right", "pad_to_multiple_of": null,
                  "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"},
      "added_tokens": [],
      "normalizer": null,
      "pre_tokenizer": {"type": "Whitespace"},
      "post_processor": null,
      "decoder": null,
      "model": {"type": "WordLevel", "vocab": {"[PAD]": 0, "[UNK]": 1, "the": 2, "cat": 3, "sat": 4},
                "unk_token": "[UNK]"}
    }"#;
    std::fs::write(&p, json).unwrap();
    let tok = load_tokenizer_json(&p).unwrap();
    assert!(tok.get_padding().is_none() && tok.get_truncation().is_none());
    // With the file's truncation (2) and padding (8) this would be [2, 3] + 6 pads.
    assert_eq!(
        tok.encode("the cat sat dog", false).unwrap().get_ids(),
        [2, 3, 4, 1]
    );

    std::fs::write(&p, "{\"model\": 3}").unwrap();
    let e = load_tokenizer_json(&p).unwrap_err().to_string();
    assert!(e.contains("tokenizer.json: tokenizer"), "{e}");
    let e = load_tokenizer_json(&dir.path().join("nope.json"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope.json"), "{e}");
}

#[test]
fn llama_qk_unpermute_restores_hf_rows() {
    // Two heads of dimension 4, one column: HF rows per head are [x0 x1 | y0 y1] (two halves);
    // llama.cpp stores them interleaved as [x0 y0 x1 y1].
    let hf: Vec<f32> = (0..8).map(|i| i as f32).collect();
    let gguf = vec![0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0];
    let mut t = RawTensor {
        name: "attn_q".into(),
        shape: vec![8, 1],
        data: gguf,
    };
    t.unpermute_llama_qk(2).unwrap();
    assert_eq!(t.data, hf);
    // With 3 columns each row moves as a block.
    let rows = [0usize, 2, 1, 3];
    let mut t = RawTensor {
        name: "attn_k".into(),
        shape: vec![4, 3],
        data: rows
            .iter()
            .flat_map(|&r| (0..3).map(move |c| (r * 10 + c) as f32))
            .collect(),
    };
    t.unpermute_llama_qk(1).unwrap();
    let want: Vec<f32> = (0..4)
        .flat_map(|r| (0..3).map(move |c| (r * 10 + c) as f32))
        .collect();
    assert_eq!(t.data, want);
    assert!(t.unpermute_llama_qk(3).unwrap_err().contains("attn_k"));
}

#[test]
fn llama_names_map_to_hugging_face() {
    let cases = [
        ("token_embd.weight", "model.embed_tokens.weight"),
        ("output_norm.weight", "model.norm.weight"),
        ("output.weight", "lm_head.weight"),
        (
            "blk.0.attn_norm.weight",
            "model.layers.0.input_layernorm.weight",
        ),
        (
            "blk.12.ffn_norm.weight",
            "model.layers.12.post_attention_layernorm.weight",
        ),
        (
            "blk.3.attn_q.weight",
            "model.layers.3.self_attn.q_proj.weight",
        ),
        ("blk.3.attn_k.bias", "model.layers.3.self_attn.k_proj.bias"),
        (
            "blk.3.attn_v.weight",
            "model.layers.3.self_attn.v_proj.weight",
        ),
        (
            "blk.3.attn_output.weight",
            "model.layers.3.self_attn.o_proj.weight",
        ),
        (
            "blk.29.ffn_gate.weight",
            "model.layers.29.mlp.gate_proj.weight",
        ),
        ("blk.29.ffn_up.weight", "model.layers.29.mlp.up_proj.weight"),
        (
            "blk.29.ffn_down.weight",
            "model.layers.29.mlp.down_proj.weight",
        ),
        // Qwen3's q/k norms, Phi-3's fused q/k/v.
        (
            "blk.1.attn_q_norm.weight",
            "model.layers.1.self_attn.q_norm.weight",
        ),
        (
            "blk.1.attn_k_norm.weight",
            "model.layers.1.self_attn.k_norm.weight",
        ),
        (
            "blk.2.attn_qkv.weight",
            "model.layers.2.self_attn.qkv_proj.weight",
        ),
    ];
    for (g, h) in cases {
        assert_eq!(llama_gguf_to_hf(g).as_deref(), Some(h), "{g}");
        assert_eq!(llama_hf_to_gguf(h).as_deref(), Some(g), "{h}");
    }
    assert_eq!(llama_hf_to_gguf("model.layers.x.mlp.up_proj.weight"), None);
    assert_eq!(llama_hf_to_gguf("model.layers.0.mlp.upproj.weight"), None);
    for g in [
        "rope_freqs.weight",
        "blk.x.attn_q.weight",
        "blk.0.ssm_in.weight",
    ] {
        assert_eq!(llama_gguf_to_hf(g), None, "{g}");
    }
}

#[test]
fn write_then_read_round_trips_with_metadata_and_no_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.safetensors");
    let tensors = vec![
        (
            "b.weight".to_string(),
            vec![2, 3],
            vec![1.5, -2.0, 0.0, 4.25, 5.0, -6.5],
        ),
        ("a.bias".to_string(), vec![2], vec![f32::MIN_POSITIVE, 7.0]),
    ];
    balora_formats::write_safetensors(&path, &tensors, &[("format", "pt")]).unwrap();
    let back = balora_formats::read_safetensors(&path).unwrap();
    let mut got: Vec<_> = back
        .into_iter()
        .map(|t| (t.name, t.shape, t.data))
        .collect();
    got.sort_by(|x, y| x.0.cmp(&y.0));
    let mut want = tensors.clone();
    want.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(got, want);
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(meta.metadata().as_ref().unwrap()["format"], "pt");
    // Only the file itself: the temporary file was renamed over it.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    // A shape that does not fit the data is an error naming the file and tensor.
    let bad = vec![("w".to_string(), vec![3], vec![1.0f32])];
    let e = balora_formats::write_safetensors(&path, &bad, &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("out.safetensors") && e.contains("`w`"), "{e}");
    assert_eq!(
        balora_formats::read_safetensors(&path).unwrap().len(),
        2,
        "old file kept"
    );
}
