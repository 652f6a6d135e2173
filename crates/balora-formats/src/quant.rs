//! ggml tensor element types and their conversion to f32.
//!
//! Block layouts (from ggml's `ggml-common.h`), all little-endian, `QK = 32` elements a block:
//!
//! | type | bytes/block | layout | value of element `i` |
//! |------|-------------|--------|----------------------|
//! | `Q8_0` | 34 | `d: f16`, `qs: [i8; 32]` | `qs[i]·d` |
//! | `Q4_0` | 18 | `d: f16`, `qs: [u8; 16]` | `(nib(i) − 8)·d` |
//! | `Q4_1` | 20 | `d: f16`, `m: f16`, `qs: [u8; 16]` | `nib(i)·d + m` |
//!
//! where `nib(i) = qs[i] & 0xF` for `i < 16` and `qs[i − 16] >> 4` for `i ≥ 16`.
//!
//! `Q5_0`, `Q5_1` and the K-quants `Q2_K`, `Q3_K`, `Q4_K`, `Q5_K`, `Q6_K`, `Q8_K` (256-element
//! super-blocks) are documented, block by block, in the `kquant` module's functions.

use half::{bf16, f16};

mod kquant;
use kquant::each_block;

/// A ggml element type (the `type` field of a GGUF tensor), with its block geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types, missing_docs)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    I8,
    I16,
    I32,
    I64,
    F64,
    BF16,
    /// A type id this crate knows no geometry for (the IQ* families and newer ones).
    Other(u32),
}

/// The types [`dequantize`] converts.
pub const SUPPORTED: &str =
    "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K";

impl GgmlType {
    /// The type for a ggml type id; `None` for ids beyond ggml's table (garbage).
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            9 => Self::Q8_1,
            10 => Self::Q2_K,
            11 => Self::Q3_K,
            12 => Self::Q4_K,
            13 => Self::Q5_K,
            14 => Self::Q6_K,
            15 => Self::Q8_K,
            24 => Self::I8,
            25 => Self::I16,
            26 => Self::I32,
            27 => Self::I64,
            28 => Self::F64,
            30 => Self::BF16,
            // 4, 5 were Q4_2/Q4_3 (removed); 16..=23, 29, 31.. are IQ*/TQ*/MXFP4 and later.
            4 | 5 | 16..=23 | 29 | 31..=63 => Self::Other(id),
            _ => return None,
        })
    }

    /// `(elements per block, bytes per block)`, `None` for [`GgmlType::Other`].
    pub fn block(self) -> Option<(usize, usize)> {
        Some(match self {
            Self::F32 | Self::I32 => (1, 4),
            Self::F16 | Self::BF16 | Self::I16 => (1, 2),
            Self::I8 => (1, 1),
            Self::I64 | Self::F64 => (1, 8),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q5_0 => (32, 22),
            Self::Q5_1 => (32, 24),
            Self::Q8_0 => (32, 34),
            Self::Q8_1 => (32, 36),
            Self::Q2_K => (256, 84),
            Self::Q3_K => (256, 110),
            Self::Q4_K => (256, 144),
            Self::Q5_K => (256, 176),
            Self::Q6_K => (256, 210),
            Self::Q8_K => (256, 292),
            Self::Other(_) => return None,
        })
    }

    /// Bytes taken by `n` elements, `None` when the type has no known geometry, `n` is not a
    /// whole number of blocks or the size overflows `usize` (a crafted shape).
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        let (per, bytes) = self.block()?;
        if n.checked_rem(per) != Some(0) {
            return None;
        }
        (n / per).checked_mul(bytes)
    }

    /// Whether [`dequantize`] converts this type to f32 (the types of [`SUPPORTED`]).
    pub fn converts_to_f32(self) -> bool {
        matches!(
            self,
            Self::F32
                | Self::F16
                | Self::BF16
                | Self::Q8_0
                | Self::Q4_0
                | Self::Q4_1
                | Self::Q5_0
                | Self::Q5_1
                | Self::Q2_K
                | Self::Q3_K
                | Self::Q4_K
                | Self::Q5_K
                | Self::Q6_K
                | Self::Q8_K
        )
    }

    /// ggml's name of the type (`"Q4_1"`, `"type 23"` for unknown ones).
    pub fn name(self) -> String {
        match self {
            Self::Other(id) => format!("ggml type {id}"),
            t => format!("{t:?}"),
        }
    }
}

/// Converts `n` elements of type `ty` stored in `bytes` to f32. `bytes` must be exactly
/// `ty.bytes_for(n)` long. Returns `Err(reason)` for types outside [`SUPPORTED`] or a size that
/// does not fit.
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>, String> {
    if !ty.converts_to_f32() {
        return Err(unsupported(ty));
    }
    let need = ty.bytes_for(n).ok_or_else(|| match ty.block() {
        Some((per, _)) if n.is_multiple_of(per) => {
            format!("{n} elements of {} overflow the byte size", ty.name())
        }
        Some((per, _)) => format!(
            "{n} elements are not whole blocks of {} ({per} elements a block)",
            ty.name()
        ),
        None => unsupported(ty),
    })?;
    if bytes.len() != need {
        return Err(format!(
            "{} bytes for {n} elements of {}, expected {need}",
            bytes.len(),
            ty.name()
        ));
    }
    let mut out = Vec::with_capacity(n);
    match ty {
        GgmlType::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        GgmlType::F16 => out.extend(bytes.chunks_exact(2).map(|c| f16_at(c, 0))),
        GgmlType::BF16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        GgmlType::Q8_0 => {
            for b in bytes.chunks_exact(34) {
                let d = f16_at(b, 0);
                out.extend(b[2..34].iter().map(|&q| f32::from(q as i8) * d));
            }
        }
        GgmlType::Q4_0 => {
            for b in bytes.chunks_exact(18) {
                let d = f16_at(b, 0);
                let qs = &b[2..18];
                out.extend(qs.iter().map(|&q| (f32::from(q & 0x0F) - 8.0) * d));
                out.extend(qs.iter().map(|&q| (f32::from(q >> 4) - 8.0) * d));
            }
        }
        GgmlType::Q4_1 => {
            for b in bytes.chunks_exact(20) {
                let d = f16_at(b, 0);
                let m = f16_at(b, 2);
                let qs = &b[4..20];
                out.extend(qs.iter().map(|&q| f32::from(q & 0x0F) * d + m));
                out.extend(qs.iter().map(|&q| f32::from(q >> 4) * d + m));
            }
        }
        GgmlType::Q5_0 => each_block(bytes, &mut out, kquant::q5_0),
        GgmlType::Q5_1 => each_block(bytes, &mut out, kquant::q5_1),
        GgmlType::Q2_K => each_block(bytes, &mut out, kquant::q2_k),
        GgmlType::Q3_K => each_block(bytes, &mut out, kquant::q3_k),
        GgmlType::Q4_K => each_block(bytes, &mut out, kquant::q4_k),
        GgmlType::Q5_K => each_block(bytes, &mut out, kquant::q5_k),
        GgmlType::Q6_K => each_block(bytes, &mut out, kquant::q6_k),
        GgmlType::Q8_K => each_block(bytes, &mut out, kquant::q8_k),
        other => return Err(unsupported(other)),
    }
    Ok(out)
}

fn unsupported(ty: GgmlType) -> String {
    format!(
        "element type {} cannot be converted to f32 (supported: {SUPPORTED})",
        ty.name()
    )
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}
