//! A GGUF file written byte by byte in the test, parsed end to end; malformed variants of it.

use balora_formats::{
    tokenizer_from_gguf, FormatError, GgmlType, GgufFile, GgufValue, TensorSource,
};
use std::path::{Path, PathBuf};

/// Minimal GGUF writer following the spec (little-endian, u64 lengths).
struct Writer {
    version: u32,
    kv: Vec<(String, Vec<u8>)>,
    tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
    alignment: usize,
}

fn s(x: &str) -> Vec<u8> {
    let mut v = (x.len() as u64).to_le_bytes().to_vec();
    v.extend(x.as_bytes());
    v
}

impl Writer {
    fn new(version: u32) -> Self {
        Self {
            version,
            kv: vec![],
            tensors: vec![],
            alignment: 32,
        }
    }
    fn kv(&mut self, key: &str, ty: u32, value: Vec<u8>) -> &mut Self {
        let mut v = ty.to_le_bytes().to_vec();
        v.extend(value);
        self.kv.push((key.to_string(), v));
        self
    }
    fn str_array(&mut self, key: &str, items: &[&str]) -> &mut Self {
        let mut v = 8u32.to_le_bytes().to_vec();
        v.extend((items.len() as u64).to_le_bytes());
        for i in items {
            v.extend(s(i));
        }
        self.kv(key, 9, v)
    }
    fn i32_array(&mut self, key: &str, items: &[i32]) -> &mut Self {
        let mut v = 5u32.to_le_bytes().to_vec();
        v.extend((items.len() as u64).to_le_bytes());
        for i in items {
            v.extend(i.to_le_bytes());
        }
        self.kv(key, 9, v)
    }
    fn tensor(&mut self, name: &str, ne: &[u64], ty: u32, data: Vec<u8>) -> &mut Self {
        self.tensors.push((name.to_string(), ne.to_vec(), ty, data));
        self
    }
    /// Bytes of the file; also returns the data-section offset.
    fn bytes(&self) -> (Vec<u8>, usize) {
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.kv.len() as u64).to_le_bytes());
        for (k, v) in &self.kv {
            out.extend(s(k));
            out.extend(v);
        }
        let mut offset = 0usize;
        let mut offsets = vec![];
        for (name, ne, ty, data) in &self.tensors {
            out.extend(s(name));
            out.extend((ne.len() as u32).to_le_bytes());
            for d in ne {
                out.extend(d.to_le_bytes());
            }
            out.extend(ty.to_le_bytes());
            out.extend((offset as u64).to_le_bytes());
            offsets.push(offset);
            offset = (offset + data.len()).div_ceil(self.alignment) * self.alignment;
        }
        let data_start = out.len().div_ceil(self.alignment) * self.alignment;
        out.resize(data_start, 0);
        for ((_, _, _, data), off) in self.tensors.iter().zip(offsets) {
            out.resize(data_start + off, 0);
            out.extend(data);
        }
        (out, data_start)
    }
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The test model: metadata of every value type, five tensors, a 9-token byte-level BPE vocabulary.
fn model(version: u32) -> Writer {
    let mut w = Writer::new(version);
    w.alignment = 64;
    w.kv("general.architecture", 8, s("llama"))
        .kv("general.alignment", 4, 64u32.to_le_bytes().to_vec())
        .kv("llama.block_count", 4, 2u32.to_le_bytes().to_vec())
        .kv("llama.embedding_length", 10, 32u64.to_le_bytes().to_vec())
        .kv("llama.rope.freq_base", 6, 10000.0f32.to_le_bytes().to_vec())
        .kv("test.u8", 0, vec![200])
        .kv("test.i8", 1, vec![0xFE])
        .kv("test.u16", 2, 65535u16.to_le_bytes().to_vec())
        .kv("test.i16", 3, (-300i16).to_le_bytes().to_vec())
        .kv("test.i32", 5, (-7i32).to_le_bytes().to_vec())
        .kv("test.bool", 7, vec![1])
        .kv("test.i64", 11, (-5_000_000_000i64).to_le_bytes().to_vec())
        .kv("test.f64", 12, 0.1f64.to_le_bytes().to_vec())
        .kv("tokenizer.chat_template", 8, s("{{ messages }}"))
        .kv("tokenizer.ggml.model", 8, s("gpt2"))
        .kv("tokenizer.ggml.pre", 8, s("smollm"))
        .str_array(
            "tokenizer.ggml.tokens",
            &["<|endoftext|>", "a", "b", "c", "Ġ", "ab", "abc", "Ġa", "1"],
        )
        .i32_array("tokenizer.ggml.token_type", &[3, 1, 1, 1, 1, 1, 1, 1, 1])
        .str_array("tokenizer.ggml.merges", &["a b", "ab c", "Ġ a"])
        .kv(
            "tokenizer.ggml.eos_token_id",
            4,
            0u32.to_le_bytes().to_vec(),
        );
    // Q8_0 [2, 32] (ne = [32, 2]): row r = q·d with d = 0.5 (f16 0x3800), q = r·10 + j − 16.
    let mut q8 = vec![];
    for r in 0..2i32 {
        q8.extend(0x3800u16.to_le_bytes());
        q8.extend((0..32).map(|j| (r * 10 + j - 16) as i8 as u8));
    }
    w.tensor("blk.0.attn_q.weight", &[32, 2], 8, q8);
    w.tensor("blk.0.attn_norm.weight", &[3], 0, f32s(&[1.0, -2.5, 4.0]));
    // F16 [2, 2]: 1, -2, 0.5, 0.25.
    let f16: Vec<u8> = [0x3C00u16, 0xC000, 0x3800, 0x3400]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    w.tensor("f16", &[2, 2], 1, f16);
    // Q4_1, 32 values: d = 1, m = -8 → element i = nib(i) − 8; nib(i) = i for i < 16, 15 − (i−16) after.
    let mut q41 = 0x3C00u16.to_le_bytes().to_vec();
    q41.extend(0xC800u16.to_le_bytes()); // -8.0
    q41.extend((0..16u8).map(|i| i | ((15 - i) << 4)));
    w.tensor("q41", &[32], 3, q41);
    // Q8_1 (id 9): known geometry, not convertible (ggml's dot-product intermediate).
    w.tensor("q81", &[32], 9, vec![0; 36]);
    w
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn parses_metadata_tensors_and_data_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    for version in [2, 3] {
        let (bytes, data_start) = model(version).bytes();
        let path = write(dir.path(), &format!("m{version}.gguf"), &bytes);
        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.version(), version);
        assert_eq!(f.alignment(), 64);
        assert_eq!(f.data_offset(), data_start as u64);
        assert_eq!(f.data_offset() % 64, 0);
        assert_eq!(f.architecture().unwrap(), "llama");
        assert_eq!(f.arch_u32("block_count").unwrap(), 2);
        assert_eq!(f.arch_u32("embedding_length").unwrap(), 32); // stored as u64
        assert_eq!(f.arch_f32("rope.freq_base").unwrap(), 10000.0);
        assert_eq!(f.get("test.u8"), Some(&GgufValue::U8(200)));
        assert_eq!(f.get("test.i8"), Some(&GgufValue::I8(-2)));
        assert_eq!(f.get("test.u16"), Some(&GgufValue::U16(65535)));
        assert_eq!(f.get("test.i16"), Some(&GgufValue::I16(-300)));
        assert_eq!(f.get("test.i32"), Some(&GgufValue::I32(-7)));
        assert!(f.get_bool("test.bool").unwrap());
        assert_eq!(f.get("test.i64"), Some(&GgufValue::I64(-5_000_000_000)));
        assert_eq!(f.get("test.f64"), Some(&GgufValue::F64(0.1)));
        assert_eq!(f.chat_template(), Some("{{ messages }}"));
        assert_eq!(
            f.get_str_array("tokenizer.ggml.merges").unwrap(),
            ["a b", "ab c", "Ġ a"]
        );
        assert_eq!(f.get_int_array("tokenizer.ggml.token_type").unwrap()[0], 3);
        assert_eq!(f.get_array("tokenizer.ggml.tokens").unwrap().len(), 9);
        assert_eq!(f.metadata().len(), 20);

        // Type errors and missing keys name the file and the key.
        let e = f.get_u32("test.i32").unwrap_err().to_string();
        assert!(
            e.contains("m") && e.contains("`test.i32`") && e.contains("i32 -7"),
            "{e}"
        );
        let e = f.get_str("nope.key").unwrap_err().to_string();
        assert!(
            e.contains(&format!("m{version}.gguf")) && e.contains("`nope.key` is missing"),
            "{e}"
        );

        let names = f.names();
        assert_eq!(
            names,
            [
                "blk.0.attn_q.weight",
                "blk.0.attn_norm.weight",
                "f16",
                "q41",
                "q81"
            ]
        );
        let info = &f.tensor_infos()[0];
        assert_eq!(info.shape, [2, 32]); // ne [32, 2] reversed
        assert_eq!(info.ggml_type, GgmlType::Q8_0);
        assert_eq!(info.n_bytes, Some(68));
        assert_eq!(info.offset, data_start as u64);

        let q = f.load("blk.0.attn_q.weight").unwrap();
        assert_eq!(q.shape, [2, 32]);
        for r in 0..2 {
            for j in 0..32 {
                assert_eq!(
                    q.data[r * 32 + j],
                    ((r as i32) * 10 + j as i32 - 16) as f32 * 0.5
                );
            }
        }
        assert_eq!(
            f.load("blk.0.attn_norm.weight").unwrap().data,
            [1.0, -2.5, 4.0]
        );
        let h = f.load_with_shape("f16", &[2, 2]).unwrap();
        assert_eq!(h.data, [1.0, -2.0, 0.5, 0.25]);
        let q41 = f.load("q41").unwrap();
        let want: Vec<f32> = (0..16)
            .chain((0..16).map(|i| 15 - i))
            .map(|n| n as f32 - 8.0)
            .collect();
        assert_eq!(q41.data, want);

        let e = f.load("q81").unwrap_err().to_string();
        assert!(
            e.contains("`q81`") && e.contains("Q8_1") && e.contains("Q6_K"),
            "{e}"
        );
        let e = f.load("blk.0.attn_k.weight").unwrap_err().to_string();
        assert!(
            e.contains(&format!("m{version}.gguf"))
                && e.contains("no tensor named `blk.0.attn_k.weight`")
                && e.contains("`blk.0.attn_q.weight`"),
            "{e}"
        );
        let e = f.load_with_shape("f16", &[4]).unwrap_err();
        assert!(matches!(e, FormatError::ShapeMismatch { .. }));
        let e = e.to_string();
        assert!(e.contains("`f16` has shape [2, 2], expected [4]"), "{e}");
    }
}

#[test]
fn tokenizer_from_metadata_runs_byte_level_bpe() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "tok.gguf", &model(3).bytes().0);
    let f = GgufFile::open(&path).unwrap();
    let tok = tokenizer_from_gguf(&f).unwrap();
    // "abc a" → pieces "abc", " a" → byte-level "abc", "Ġa" → merges a+b, ab+c, Ġ+a.
    let enc = tok.encode("abc a", false).unwrap();
    assert_eq!(enc.get_ids(), [6, 7]);
    // The control token is matched as one special token; "ba" has no merge.
    let enc = tok.encode("<|endoftext|>ba", false).unwrap();
    assert_eq!(enc.get_ids(), [0, 2, 1]);
    // smollm pre-tokenizer splits digits one by one: "11" → "1", "1".
    assert_eq!(tok.encode("11", false).unwrap().get_ids(), [8, 8]);
    assert_eq!(tok.decode(&[6, 7], false).unwrap(), "abc a");
    assert_eq!(tok.decode(&[0, 6], true).unwrap(), "abc");
    assert_eq!(tok.get_vocab_size(true), 9);
}

#[test]
fn malformed_files_give_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (good, data_start) = model(3).bytes();

    // Every truncation point fails cleanly (no panic) and names the file.
    let cut_path = dir.path().join("cut.gguf");
    let mut cuts: Vec<usize> = (0..60).collect();
    cuts.extend((60..good.len()).step_by(37));
    cuts.extend([data_start - 1, data_start + 10, good.len() - 1]);
    for cut in cuts {
        std::fs::write(&cut_path, &good[..cut]).unwrap();
        let e = GgufFile::open(&cut_path)
            .expect_err(&format!("cut at {cut}"))
            .to_string();
        assert!(e.contains("cut.gguf"), "cut {cut}: {e}");
        assert!(
            e.contains("truncated") || e.contains("not a GGUF"),
            "cut {cut}: {e}"
        );
    }
    // The last tensor's data is cut: the message names the tensor and the byte ranges.
    std::fs::write(&cut_path, &good[..good.len() - 1]).unwrap();
    let e = GgufFile::open(&cut_path).unwrap_err().to_string();
    assert!(
        e.contains("data of tensor `q81`")
            && e.contains(&format!("file has {} bytes", good.len() - 1)),
        "{e}"
    );

    let mut bad = good.clone();
    bad[..4].copy_from_slice(b"GGML");
    let e = GgufFile::open(write(dir.path(), "magic.gguf", &bad))
        .unwrap_err()
        .to_string();
    assert!(e.contains("magic.gguf: not a GGUF file"), "{e}");

    let mut bad = good.clone();
    bad[4..8].copy_from_slice(&1u32.to_le_bytes());
    let e = GgufFile::open(write(dir.path(), "v1.gguf", &bad))
        .unwrap_err()
        .to_string();
    assert!(e.contains("v1.gguf: unsupported GGUF version 1"), "{e}");

    let mut w = Writer::new(3);
    w.tensor("weird", &[4], 99, vec![0; 16]);
    let e = GgufFile::open(write(dir.path(), "type.gguf", &w.bytes().0))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("type.gguf: tensor `weird` has unknown ggml type id 99"),
        "{e}"
    );

    let mut w = Writer::new(3);
    w.tensor("ragged", &[33], 8, vec![0; 34]); // Q8_0 needs multiples of 32
    let e = GgufFile::open(write(dir.path(), "ragged.gguf", &w.bytes().0))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(
            "ragged.gguf: tensor `ragged` has shape [33], expected a whole number of Q8_0 blocks"
        ),
        "{e}"
    );

    let mut w = Writer::new(3);
    w.kv("general.alignment", 4, 48u32.to_le_bytes().to_vec());
    let e = GgufFile::open(write(dir.path(), "align.gguf", &w.bytes().0))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("align.gguf") && e.contains("general.alignment") && e.contains("power of two"),
        "{e}"
    );

    let mut w = Writer::new(3);
    w.kv("bad.type", 42, vec![0; 8]);
    let e = GgufFile::open(write(dir.path(), "vtype.gguf", &w.bytes().0))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("vtype.gguf: invalid metadata `bad.type`: unknown value type 42"),
        "{e}"
    );

    // A string length far beyond the file.
    let mut w = Writer::new(3);
    w.kv("huge", 8, u64::MAX.to_le_bytes().to_vec());
    let e = GgufFile::open(write(dir.path(), "huge.gguf", &w.bytes().0))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("huge.gguf: truncated while reading metadata `huge`"),
        "{e}"
    );

    let e = GgufFile::open(dir.path().join("absent.gguf"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("absent.gguf"), "{e}");
}

#[test]
fn tokenizer_bos_template_and_llama3_pre_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = model(3);
    w.kv.retain(|(k, _)| k != "tokenizer.ggml.pre");
    w.kv("tokenizer.ggml.pre", 8, s("llama-bpe"))
        .kv("tokenizer.ggml.add_bos_token", 7, vec![1])
        .kv(
            "tokenizer.ggml.bos_token_id",
            4,
            0u32.to_le_bytes().to_vec(),
        );
    let f = GgufFile::open(write(dir.path(), "bos.gguf", &w.bytes().0)).unwrap();
    let tok = tokenizer_from_gguf(&f).unwrap();
    // The Llama-3 split compiles with the pure-Rust regex engine and gives the same pieces here.
    assert_eq!(tok.encode("abc a", true).unwrap().get_ids(), [0, 6, 7]);
    assert_eq!(tok.encode("abc a", false).unwrap().get_ids(), [6, 7]);
}

#[test]
fn tokenizer_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = model(3);
    w.kv.retain(|(k, _)| k != "tokenizer.ggml.pre");
    w.kv("tokenizer.ggml.pre", 8, s("mystery"));
    let f = GgufFile::open(write(dir.path(), "pre.gguf", &w.bytes().0)).unwrap();
    let e = tokenizer_from_gguf(&f).unwrap_err().to_string();
    assert!(
        e.contains("pre.gguf: tokenizer") && e.contains("\"mystery\""),
        "{e}"
    );

    let mut w = model(3);
    w.kv.retain(|(k, _)| !k.starts_with("tokenizer.ggml.merges"));
    w.str_array("tokenizer.ggml.merges", &["ab"]);
    let f = GgufFile::open(write(dir.path(), "merges.gguf", &w.bytes().0)).unwrap();
    let e = tokenizer_from_gguf(&f).unwrap_err().to_string();
    assert!(
        e.contains("merges.gguf") && e.contains("tokenizer.ggml.merges[0]"),
        "{e}"
    );
}
