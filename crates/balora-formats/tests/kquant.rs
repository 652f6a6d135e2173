//! Q5_0, Q5_1 and the K-quants (Q2_K … Q8_K) against the reference of
//! `tools/reference/gguf_kquant_reference.py` (gguf-py's `gguf.quants.dequantize`; numpy for
//! Q8_K, which gguf-py does not dequantise), block by block and through a whole GGUF file
//! written by gguf-py's `GGUFWriter`; then hostile sizes and bytes.
//!
//! Bound: **bit-identical** f32. balora computes every value with the same f32 operations in the
//! same order as gguf-py/ggml (`(d·sc)·q − dmin·m`, f16 → f32 exactly, no fused multiply-add),
//! so the difference is 0 ulp; the test also prints max |Δ| and max ulp per type.
//!
//! Regenerate the fixtures: `target/tch-venv/bin/python tools/reference/gguf_kquant_reference.py`.

use balora_formats::quant::dequantize;
use balora_formats::{GgmlType, GgufFile, TensorSource};
use std::path::{Path, PathBuf};

const TYPES: [GgmlType; 8] = [
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::Q8_K,
];

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kquant")
}

/// (raw block bytes, expected f32 values) of one type.
fn fixture(ty: GgmlType) -> (Vec<u8>, Vec<f32>) {
    let stem = ty.name().to_lowercase();
    let blocks = std::fs::read(dir().join(format!("{stem}.blocks"))).unwrap();
    let want = std::fs::read(dir().join(format!("{stem}.f32"))).unwrap();
    let want = want
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (blocks, want)
}

/// Distance in units in the last place between two finite f32 (0 for +0 vs −0).
fn ulps(a: f32, b: f32) -> u64 {
    let key = |x: f32| {
        let i = x.to_bits() as i32;
        i64::from(if i < 0 { i32::MIN - i } else { i })
    };
    key(a).abs_diff(key(b))
}

/// Asserts bit equality and returns (max |Δ|, max ulp) for the report.
fn compare(what: &str, got: &[f32], want: &[f32]) -> (f32, u64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let (mut abs, mut ulp) = (0f32, 0u64);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(g.is_finite() && w.is_finite(), "{what}[{i}]: {g} vs {w}");
        abs = abs.max((g - w).abs());
        ulp = ulp.max(ulps(g, w));
        assert_eq!(
            g.to_bits(),
            w.to_bits(),
            "{what}[{i}]: {g} vs reference {w}"
        );
    }
    (abs, ulp)
}

#[test]
fn every_type_is_bit_identical_to_gguf_py() {
    for ty in TYPES {
        let (blocks, want) = fixture(ty);
        let (per, bytes) = ty.block().unwrap();
        assert_eq!(
            blocks.len() / bytes * per,
            want.len(),
            "{ty:?} fixture sizes"
        );
        assert!(want.len() >= 4 * per, "{ty:?}: at least 4 blocks");
        let got = dequantize(ty, &blocks, want.len()).unwrap();
        let (abs, ulp) = compare(&ty.name(), &got, &want);
        let max = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        eprintln!(
            "{:5} {} blocks: max |Δ| {abs:e}, max ulp {ulp} (max |value| {max})",
            ty.name(),
            blocks.len() / bytes
        );
    }
}

/// Hand-built blocks, independent of the fixtures: the element order of the two most
/// intricate layouts.
#[test]
fn hand_built_q6_k_and_q8_k_blocks() {
    // Q8_K: d = 0.5, qs[i] = i − 128.
    let mut b = 0.5f32.to_le_bytes().to_vec();
    b.extend((0..256i32).map(|i| (i - 128) as i8 as u8));
    b.extend([0u8; 32]);
    let want: Vec<f32> = (0..256).map(|i| (i as f32 - 128.0) * 0.5).collect();
    assert_eq!(dequantize(GgmlType::Q8_K, &b, 256).unwrap(), want);

    // Q6_K: d = 1 (f16 0x3C00), scales[g] = g + 1, ql low nibbles 5 / high nibbles 9, qh bits
    // (t = 0..4) = 0, 1, 2, 3 → q = nibble | t << 4, element e = 128h + 32t + l.
    let mut b = vec![0x95u8; 128];
    b.extend([0b1110_0100u8; 64]);
    b.extend((1..=16u8).map(|g| g as i8 as u8));
    b.extend(0x3C00u16.to_le_bytes());
    let want: Vec<f32> = (0..256usize)
        .map(|e| {
            let t = (e / 32) % 4;
            let nibble = if t < 2 { 5 } else { 9 };
            let q = (nibble | (t << 4)) as f32 - 32.0;
            (e / 16 + 1) as f32 * q
        })
        .collect();
    assert_eq!(dequantize(GgmlType::Q6_K, &b, 256).unwrap(), want);
}

#[test]
fn gguf_written_by_gguf_py_loads_every_type() {
    let f = GgufFile::open(dir().join("kquant.gguf")).unwrap();
    assert_eq!(f.architecture().unwrap(), "kquant-test");
    for ty in TYPES {
        let (blocks, want) = fixture(ty);
        let name = ty.name().to_lowercase();
        let info = f.tensor_info(&name).unwrap();
        assert_eq!(info.ggml_type, ty, "{name}");
        assert_eq!(info.shape, [2, want.len() / 2], "{name}: ne reversed");
        assert_eq!(info.n_bytes, Some(blocks.len() as u64), "{name}");
        assert_eq!(f.tensor_bytes(&name).unwrap(), &blocks[..], "{name}");
        let t = f.load(&name).unwrap();
        assert_eq!(t.shape, info.shape);
        compare(&format!("kquant.gguf `{name}`"), &t.data, &want);
    }
    assert_eq!(f.names().len(), TYPES.len());
}

#[test]
fn wrong_sizes_are_errors_naming_the_type() {
    for ty in TYPES {
        let (blocks, want) = fixture(ty);
        let (per, bytes) = ty.block().unwrap();
        let name = ty.name();
        let n = want.len();
        for len in [0, 1, bytes - 1, blocks.len() - 1, blocks.len() + 1] {
            let e = dequantize(ty, &blocks.repeat(2)[..len], n).unwrap_err();
            assert!(
                e.contains(&format!("{len} bytes for {n} elements of {name}, expected")),
                "{e}"
            );
        }
        for m in [1, per - 1, per + 1, n - 1] {
            let e = dequantize(ty, &blocks, m).unwrap_err();
            assert!(
                e.contains(&format!("{m} elements are not whole blocks of {name}")),
                "{e}"
            );
        }
        // A huge element count from a header: refused (size mismatch, or a byte size that
        // overflows for Q8_K's 292 bytes a 256-element block) before any allocation.
        for m in [usize::MAX / per * per, per << 40] {
            let e = dequantize(ty, &blocks, m).unwrap_err();
            assert!(
                (e.contains("expected") || e.contains("overflow the byte size"))
                    && e.contains(&name),
                "{e}"
            );
        }
        assert_eq!(dequantize(ty, &[], 0).unwrap(), Vec::<f32>::new());
    }
    // Types with more bytes than elements a block can overflow the byte size.
    let e = dequantize(GgmlType::F32, &[], usize::MAX).unwrap_err();
    assert!(e.contains("F32 overflow"), "{e}");
}

#[test]
fn arbitrary_bytes_never_panic() {
    // Any bit pattern is a valid block (NaN/inf scales give NaN/inf values, not panics).
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut bytes = vec![0u8; 292 * 7];
    for b in &mut bytes {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    for ty in TYPES {
        let (per, size) = ty.block().unwrap();
        for k in 0..=7 {
            let got = dequantize(ty, &bytes[..k * size], k * per).unwrap();
            assert_eq!(got.len(), k * per);
        }
        let mut all_ff = vec![0xFFu8; 3 * size];
        all_ff[..2].copy_from_slice(&[0x00, 0x7C]); // an infinite f16 where Q5_*/Q4_K/Q5_K keep d
        assert_eq!(dequantize(ty, &all_ff, 3 * per).unwrap().len(), 3 * per);
    }
}

/// Byte offset of tensor `name`'s `ne[0]` in the tensor-info section of a GGUF file.
fn ne0_offset(file: &[u8], name: &str) -> usize {
    let mut key = (name.len() as u64).to_le_bytes().to_vec();
    key.extend(name.as_bytes());
    key.extend(2u32.to_le_bytes()); // n_dims
    let at = file.windows(key.len()).position(|w| w == key).unwrap();
    at + key.len()
}

#[test]
fn hostile_k_quant_gguf_files_are_errors_naming_tensor_and_type() {
    let good = std::fs::read(dir().join("kquant.gguf")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("hostile.gguf");

    // ne[0] of `q4_k` no longer a multiple of 256.
    let mut bad = good.clone();
    let at = ne0_offset(&bad, "q4_k");
    bad[at..at + 8].copy_from_slice(&511u64.to_le_bytes());
    std::fs::write(&path, &bad).unwrap();
    let e = GgufFile::open(&path).unwrap_err().to_string();
    assert!(
        e.contains("hostile.gguf") && e.contains("`q4_k`") && e.contains("Q4_K blocks"),
        "{e}"
    );

    // ne[0] of `q6_k` huge: its data would run past the end of the file.
    let mut bad = good.clone();
    let at = ne0_offset(&bad, "q6_k");
    bad[at..at + 8].copy_from_slice(&(256u64 << 40).to_le_bytes());
    std::fs::write(&path, &bad).unwrap();
    let e = GgufFile::open(&path).unwrap_err().to_string();
    assert!(
        e.contains("truncated") && e.contains("`q6_k`") && e.contains("Q6_K"),
        "{e}"
    );

    // A shape whose byte size overflows u64/usize.
    let mut bad = good.clone();
    let at = ne0_offset(&bad, "q2_k");
    bad[at..at + 8].copy_from_slice(&(u64::MAX / 256 * 256).to_le_bytes());
    std::fs::write(&path, &bad).unwrap();
    let e = GgufFile::open(&path).unwrap_err().to_string();
    assert!(
        e.contains("`q2_k`") && e.contains("Q2_K shape") && e.contains("overflows"),
        "{e}"
    );

    // The last tensor's data cut short (GGUFWriter pads the file after it: cut inside the data).
    let end = {
        let f = GgufFile::open(dir().join("kquant.gguf")).unwrap();
        let info = f.tensor_info("q8_k").unwrap();
        (info.offset + info.n_bytes.unwrap()) as usize
    };
    std::fs::write(&path, &good[..end - 1]).unwrap();
    let e = GgufFile::open(&path).unwrap_err().to_string();
    assert!(
        e.contains("truncated") && e.contains("data of tensor `q8_k` (Q8_K [2, 512])"),
        "{e}"
    );
}
