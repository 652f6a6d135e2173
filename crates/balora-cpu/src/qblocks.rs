//! A frozen weight kept as ggml quantization blocks (`Q8_0`, `Q4_0`, `Q4_1`), row-major
//! `[rows, cols]` with the blocks running along each row, exactly as a GGUF file stores a linear
//! weight (Hugging Face `[out, in]`: blocks along `in`).
//!
//! Block layouts (ggml's `ggml-common.h`, little-endian, 32 elements a block):
//!
//! | kind | bytes | layout | element `i` |
//! |------|-------|--------|-------------|
//! | `Q8_0` | 34 | `d: f16`, `qs: [i8; 32]` | `qs[i]·d` |
//! | `Q4_0` | 18 | `d: f16`, `qs: [u8; 16]` | `(nib(i) − 8)·d` |
//! | `Q4_1` | 20 | `d: f16`, `m: f16`, `qs: [u8; 16]` | `nib(i)·d + m` |
//!
//! with `nib(i) = qs[i] & 0xF` for `i < 16`, `qs[i − 16] >> 4` otherwise. Dequantisation does
//! the same single f32 operations as ggml (and `balora_formats::dequantize`), so a matrix made
//! from a file's blocks dequantises bit for bit to what the f32 loader reads from that file.
//! [`QuantMatrix::quantize`] is ggml's reference quantizer (`quantize_row_q8_0_ref`,
//! `quantize_row_q4_0_ref`).

use half::f16;
use std::sync::Arc;

/// Elements per block.
pub const QK: usize = 32;

/// A block format the quantized base keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum QuantKind {
    /// 8-bit, one f16 scale per 32 (8.5 bits a weight).
    Q8_0,
    /// 4-bit symmetric, one f16 scale per 32 (4.5 bits a weight).
    Q4_0,
    /// 4-bit with f16 scale and minimum per 32 (5 bits a weight).
    Q4_1,
}

impl QuantKind {
    /// Bytes a block of 32 takes.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::Q8_0 => 34,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
        }
    }

    /// ggml's name (`"Q8_0"`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Q8_0 => "Q8_0",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
        }
    }

    /// Dequantises one block into `out` (32 values).
    #[inline]
    fn block(self, b: &[u8], out: &mut [f32]) {
        let half = |i: usize| f16::from_le_bytes([b[i], b[i + 1]]).to_f32();
        let d = half(0);
        match self {
            Self::Q8_0 => {
                for (o, &q) in out.iter_mut().zip(&b[2..2 + QK]) {
                    *o = (q as i8) as f32 * d;
                }
            }
            Self::Q4_0 => {
                let qs = &b[2..2 + QK / 2];
                for j in 0..QK / 2 {
                    out[j] = ((qs[j] & 0xF) as i32 - 8) as f32 * d;
                    out[j + QK / 2] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
                }
            }
            Self::Q4_1 => {
                let m = half(2);
                let qs = &b[4..4 + QK / 2];
                for j in 0..QK / 2 {
                    out[j] = (qs[j] & 0xF) as f32 * d + m;
                    out[j + QK / 2] = (qs[j] >> 4) as f32 * d + m;
                }
            }
        }
    }
}

/// A `[rows, cols]` matrix of ggml blocks along each row. Cloning shares the bytes.
#[derive(Clone)]
pub struct QuantMatrix(Arc<Inner>);

struct Inner {
    kind: QuantKind,
    rows: usize,
    cols: usize,
    bytes: Vec<u8>,
}

impl std::fmt::Debug for QuantMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "QuantMatrix({} [{}, {}])",
            self.kind().name(),
            self.rows(),
            self.cols()
        )
    }
}

fn check_cols(cols: usize) -> Result<(), String> {
    if cols == 0 || !cols.is_multiple_of(QK) {
        return Err(format!(
            "a row of {cols} values is not a whole number of {QK}-value blocks"
        ));
    }
    Ok(())
}

impl QuantMatrix {
    /// A matrix from a file's blocks (`rows · cols/32` blocks, row after row).
    pub fn from_blocks(
        kind: QuantKind,
        rows: usize,
        cols: usize,
        bytes: Vec<u8>,
    ) -> Result<Self, String> {
        check_cols(cols)?;
        let want = rows
            .checked_mul(cols / QK)
            .and_then(|b| b.checked_mul(kind.block_bytes()));
        if want != Some(bytes.len()) {
            return Err(format!(
                "{} bytes for a [{rows}, {cols}] {} matrix (expected {want:?})",
                bytes.len(),
                kind.name()
            ));
        }
        Ok(Self(Arc::new(Inner {
            kind,
            rows,
            cols,
            bytes,
        })))
    }

    /// ggml's reference quantization of the row-major f32 `[rows, cols]` `data` to `Q8_0` or
    /// `Q4_0` (`Q4_1` is kept from files only: an error here).
    pub fn quantize(
        kind: QuantKind,
        rows: usize,
        cols: usize,
        data: &[f32],
    ) -> Result<Self, String> {
        check_cols(cols)?;
        if data.len() != rows * cols {
            return Err(format!("{} values for [{rows}, {cols}]", data.len()));
        }
        let mut bytes = Vec::with_capacity(data.len() / QK * kind.block_bytes());
        for x in data.chunks_exact(QK) {
            match kind {
                QuantKind::Q8_0 => {
                    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let d = amax / 127.0;
                    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                    bytes.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                    bytes.extend(x.iter().map(|v| (v * id).round() as i8 as u8));
                }
                QuantKind::Q4_0 => {
                    let (mut amax, mut max) = (0f32, 0f32);
                    for &v in x {
                        if amax < v.abs() {
                            amax = v.abs();
                            max = v;
                        }
                    }
                    let d = max / -8.0;
                    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                    bytes.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                    let q = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
                    bytes.extend((0..QK / 2).map(|j| q(x[j]) | (q(x[j + QK / 2]) << 4)));
                }
                QuantKind::Q4_1 => {
                    return Err("Q4_1 blocks are kept from files, not made here".into())
                }
            }
        }
        Self::from_blocks(kind, rows, cols, bytes)
    }

    /// Block format.
    pub fn kind(&self) -> QuantKind {
        self.0.kind
    }
    /// Rows (a linear weight's `out`).
    pub fn rows(&self) -> usize {
        self.0.rows
    }
    /// Columns (a linear weight's `in`).
    pub fn cols(&self) -> usize {
        self.0.cols
    }
    /// Bytes held.
    pub fn bytes(&self) -> &[u8] {
        &self.0.bytes
    }

    fn row_bytes(&self) -> usize {
        self.cols() / QK * self.kind().block_bytes()
    }

    /// Rows `r0..r1`, columns `c0..c1` (multiples of 32) dequantised into `out`, row-major
    /// `[r1 − r0, c1 − c0]`, or column-major (that block transposed) when `transposed`.
    pub fn dequantize_tile(
        &self,
        (r0, r1): (usize, usize),
        (c0, c1): (usize, usize),
        out: &mut [f32],
        transposed: bool,
    ) {
        assert!(r1 <= self.rows() && c1 <= self.cols() && c0.is_multiple_of(QK));
        let (nr, nc) = (r1 - r0, c1 - c0);
        assert!(out.len() >= nr * nc);
        let (bb, rb) = (self.kind().block_bytes(), self.row_bytes());
        let mut blk = [0f32; QK];
        for r in r0..r1 {
            let row = &self.bytes()[r * rb..(r + 1) * rb];
            for (k, c) in (c0..c1).step_by(QK).enumerate() {
                let b = c / QK;
                let n = QK.min(c1 - c);
                self.kind().block(&row[b * bb..(b + 1) * bb], &mut blk);
                if transposed {
                    for (j, &v) in blk[..n].iter().enumerate() {
                        out[(k * QK + j) * nr + (r - r0)] = v;
                    }
                } else {
                    let o = (r - r0) * nc + k * QK;
                    out[o..o + n].copy_from_slice(&blk[..n]);
                }
            }
        }
    }

    /// The whole matrix in f32, row-major `[rows, cols]`.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows() * self.cols()];
        self.dequantize_tile((0, self.rows()), (0, self.cols()), &mut out, false);
        out
    }

    /// The same blocks with rows reordered: row `i` of the result is row `src[i]` of `self`.
    pub fn permute_rows(&self, src: &[usize]) -> Result<Self, String> {
        if src.len() != self.rows() || src.iter().any(|&s| s >= self.rows()) {
            return Err(format!(
                "a row order of {} entries for {} rows",
                src.len(),
                self.rows()
            ));
        }
        let rb = self.row_bytes();
        let mut bytes = Vec::with_capacity(self.bytes().len());
        for &s in src {
            bytes.extend_from_slice(&self.bytes()[s * rb..(s + 1) * rb]);
        }
        Self::from_blocks(self.kind(), self.rows(), self.cols(), bytes)
    }
}
