//! Block dequantisers for ggml's 5-bit (`Q5_0`, `Q5_1`) and K-quant (`Q2_K` … `Q8_K`) types.
//!
//! Written from the block layouts of ggml's `ggml-common.h` / `dequantize_row_*` in
//! `ggml-quants.c` and gguf-py's `gguf/quants.py`. Every function takes one whole block as a
//! fixed-size array and fills a fixed-size output, so no index can go out of bounds; the caller
//! ([`super::dequantize`]) checks the buffer length and element count first.
//!
//! Each value is computed in f32 with the same operations, in the same order, as ggml and
//! gguf-py (`(d·sc)·q − dmin·m`; no fused multiply-add), so results are bit-identical to theirs.
//! All multi-byte fields are little-endian; `QK_K = 256` elements a super-block.

use half::f16;

/// Elements in a K-quant super-block.
pub(crate) const QK_K: usize = 256;

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// `Q5_0`, 22 bytes, 32 elements: `d: f16`, `qh: u32` (bit `i` = 5th bit of element `i`),
/// `qs: [u8; 16]` (element `j < 16` in the low nibble of `qs[j]`, element `j + 16` in the high
/// nibble). Element `i` = `(q(i) − 16)·d` with `q(i) = nibble | bit << 4`.
pub(crate) fn q5_0(b: &[u8; 22], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let qh = u32_at(b, 2);
    for j in 0..16 {
        let lo = (b[6 + j] & 0x0F) | ((((qh >> j) & 1) as u8) << 4);
        let hi = (b[6 + j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
        y[j] = f32::from(lo as i8 - 16) * d;
        y[j + 16] = f32::from(hi as i8 - 16) * d;
    }
}

/// `Q5_1`, 24 bytes, 32 elements: `d: f16`, `m: f16`, `qh: u32`, `qs: [u8; 16]` as in
/// [`q5_0`]. Element `i` = `q(i)·d + m` with `q(i)` in `0..32`.
pub(crate) fn q5_1(b: &[u8; 24], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qh = u32_at(b, 4);
    for j in 0..16 {
        let lo = (b[8 + j] & 0x0F) | ((((qh >> j) & 1) as u8) << 4);
        let hi = (b[8 + j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
        y[j] = f32::from(lo) * d + m;
        y[j + 16] = f32::from(hi) * d + m;
    }
}

/// `Q2_K`, 84 bytes, 256 elements in 16 groups of 16: `scales: [u8; 16]` (low nibble = scale,
/// high nibble = min of group `g`), `qs: [u8; 64]`, `d: f16`, `dmin: f16`. Element
/// `e = 128h + 32s + l` (`h < 2`, `s < 4`, `l < 32`) has `q = (qs[32h + l] >> 2s) & 3` and value
/// `(d·sc[g])·q − dmin·min[g]`, `g = e / 16`.
pub(crate) fn q2_k(b: &[u8; 84], y: &mut [f32; QK_K]) {
    let d = f16_at(b, 80);
    let dmin = f16_at(b, 82);
    for (e, v) in y.iter_mut().enumerate() {
        let (h, s, l) = (e / 128, (e / 32) % 4, e % 32);
        let sc = b[e / 16];
        let q = (b[16 + 32 * h + l] >> (2 * s)) & 3;
        let dl = d * f32::from(sc & 0x0F);
        let ml = dmin * f32::from(sc >> 4);
        *v = dl * f32::from(q) - ml;
    }
}

/// `Q3_K`, 110 bytes, 256 elements in 16 groups of 16: `hmask: [u8; 32]`, `qs: [u8; 64]`,
/// `scales: [u8; 12]` (16 six-bit scales: low 4 bits of scale `j` in nibble `j / 8` of
/// `scales[j % 8]`, high 2 bits in bits `2(j / 4)..` of `scales[8 + j % 4]`; stored + 32),
/// `d: f16`. Element `e = 128h + 32s + l` has low bits `(qs[32h + l] >> 2s) & 3`, and 4 is
/// subtracted when bit `e / 32` of `hmask[l]` is *clear*; value `(d·(sc[g] − 32))·q`, `g = e / 16`.
pub(crate) fn q3_k(b: &[u8; 110], y: &mut [f32; QK_K]) {
    let d = f16_at(b, 108);
    let sc = |j: usize| {
        let lo = (b[96 + j % 8] >> (4 * (j / 8))) & 0x0F;
        let hi = (b[104 + j % 4] >> (2 * (j / 4))) & 0x03;
        (lo | (hi << 4)) as i8 - 32
    };
    for (e, v) in y.iter_mut().enumerate() {
        let (h, s, l) = (e / 128, (e / 32) % 4, e % 32);
        let low = ((b[32 + 32 * h + l] >> (2 * s)) & 3) as i8;
        let high = (b[l] >> (e / 32)) & 1;
        let q = if high == 1 { low } else { low - 4 };
        let dl = d * f32::from(sc(e / 16));
        *v = dl * f32::from(q);
    }
}

/// The 6-bit scale and min of sub-block `j < 8` from the 12 packed bytes of `Q4_K`/`Q5_K`
/// (ggml's `get_scale_min_k4`): for `j < 4` the low 6 bits of bytes `j` and `j + 4`; for
/// `j ≥ 4` the nibbles of byte `j + 4` plus the top 2 bits of bytes `j − 4` and `j`.
fn scale_min_k4(s: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// `Q4_K`, 144 bytes, 256 elements in 8 sub-blocks of 32: `d: f16`, `dmin: f16`,
/// `scales: [u8; 12]` (see [`scale_min_k4`]), `qs: [u8; 128]`. Sub-block `j = 2c + t` takes
/// nibble `t` (low, then high) of `qs[32c..32c + 32]`; value `(d·sc[j])·q − dmin·min[j]`.
pub(crate) fn q4_k(b: &[u8; 144], y: &mut [f32; QK_K]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    for j in 0..8 {
        let (sc, m) = scale_min_k4(&b[4..16], j);
        let d1 = d * f32::from(sc);
        let m1 = dmin * f32::from(m);
        for l in 0..32 {
            let q = (b[16 + 32 * (j / 2) + l] >> (4 * (j % 2))) & 0x0F;
            y[32 * j + l] = d1 * f32::from(q) - m1;
        }
    }
}

/// `Q5_K`, 176 bytes, 256 elements in 8 sub-blocks of 32: `d: f16`, `dmin: f16`,
/// `scales: [u8; 12]` (as `Q4_K`), `qh: [u8; 32]`, `qs: [u8; 128]`. Element `l` of sub-block
/// `j` has the nibble of [`q4_k`] plus bit `j` of `qh[l]` as its 5th bit;
/// value `(d·sc[j])·q − dmin·min[j]`.
pub(crate) fn q5_k(b: &[u8; 176], y: &mut [f32; QK_K]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    for j in 0..8 {
        let (sc, m) = scale_min_k4(&b[4..16], j);
        let d1 = d * f32::from(sc);
        let m1 = dmin * f32::from(m);
        for l in 0..32 {
            let lo = (b[48 + 32 * (j / 2) + l] >> (4 * (j % 2))) & 0x0F;
            let hi = (b[16 + l] >> j) & 1;
            y[32 * j + l] = d1 * f32::from(lo | (hi << 4)) - m1;
        }
    }
}

/// `Q6_K`, 210 bytes, 256 elements in 16 groups of 16: `ql: [u8; 128]`, `qh: [u8; 64]`,
/// `scales: [i8; 16]`, `d: f16`. Element `e = 128h + 32t + l` (`t < 4`, `l < 32`) has low nibble
/// `t / 2` of `ql[64h + 32(t % 2) + l]`, high 2 bits `(qh[32h + l] >> 2t) & 3`;
/// value `(d·scales[e / 16])·(q − 32)`.
pub(crate) fn q6_k(b: &[u8; 210], y: &mut [f32; QK_K]) {
    let d = f16_at(b, 208);
    for (e, v) in y.iter_mut().enumerate() {
        let (h, t, l) = (e / 128, (e / 32) % 4, e % 32);
        let lo = (b[64 * h + 32 * (t % 2) + l] >> (4 * (t / 2))) & 0x0F;
        let hi = (b[128 + 32 * h + l] >> (2 * t)) & 3;
        let q = (lo | (hi << 4)) as i8 - 32;
        let sc = b[192 + e / 16] as i8;
        *v = d * f32::from(sc) * f32::from(q);
    }
}

/// `Q8_K`, 292 bytes, 256 elements: `d: f32`, `qs: [i8; 256]`, `bsums: [i16; 16]` (sums of
/// 16 `qs` each, used by ggml's dot products, not needed here). Element `i` = `d·qs[i]`.
pub(crate) fn q8_k(b: &[u8; 292], y: &mut [f32; QK_K]) {
    let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    for (i, v) in y.iter_mut().enumerate() {
        *v = d * f32::from(b[4 + i] as i8);
    }
}

/// Runs `f` on every `B`-byte block of `bytes` (whose length the caller checked to be a
/// multiple of `B`) and appends the `Q` values of each to `out`.
pub(crate) fn each_block<const B: usize, const Q: usize>(
    bytes: &[u8],
    out: &mut Vec<f32>,
    f: fn(&[u8; B], &mut [f32; Q]),
) {
    let mut y = [0f32; Q];
    for chunk in bytes.chunks_exact(B) {
        // `chunks_exact` yields exactly `B` bytes, so the conversion cannot fail.
        if let Ok(block) = <&[u8; B]>::try_from(chunk) {
            f(block, &mut y);
            out.extend_from_slice(&y);
        }
    }
}
