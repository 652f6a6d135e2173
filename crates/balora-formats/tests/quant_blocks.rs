//! Dequantisation of hand-built ggml blocks against values worked out by hand (in f64).

use balora_formats::quant::{dequantize, GgmlType};

/// f16 bit patterns with their exact values: 1.0, 0.5, 0.25, 0.125, -2.0, 0.333251953125.
const F16_ONE: u16 = 0x3C00;
const F16_HALF: u16 = 0x3800;
const F16_QUARTER: u16 = 0x3400;
const F16_EIGHTH: u16 = 0x3000;
const F16_MINUS_TWO: u16 = 0xC000;
const F16_THIRD: u16 = 0x3555; // (1 + 341/1024) · 2^-2

fn assert_close(got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(*g) - w).abs() <= 1e-7 * w.abs().max(1.0),
            "element {i}: got {g}, want {w}"
        );
    }
}

#[test]
fn f32_f16_bf16_elements() {
    let bytes: Vec<u8> = [1.5f32, -0.0, 3.25e-3]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    assert_close(
        &dequantize(GgmlType::F32, &bytes, 3).unwrap(),
        &[1.5, 0.0, 3.25e-3_f32 as f64],
    );

    let f16s = [
        F16_ONE,
        F16_MINUS_TWO,
        F16_THIRD,
        0x0001, /* smallest subnormal 2^-24 */
    ];
    let bytes: Vec<u8> = f16s.iter().flat_map(|x| x.to_le_bytes()).collect();
    assert_close(
        &dequantize(GgmlType::F16, &bytes, 4).unwrap(),
        &[1.0, -2.0, 0.333251953125, 2f64.powi(-24)],
    );

    // bf16 is the top half of an f32: 0x3F80 = 1.0, 0x4049 = 3.140625, 0xC2F7 = -123.5.
    let bf = [0x3F80u16, 0x4049, 0xC2F7];
    let bytes: Vec<u8> = bf.iter().flat_map(|x| x.to_le_bytes()).collect();
    assert_close(
        &dequantize(GgmlType::BF16, &bytes, 3).unwrap(),
        &[1.0, 3.140625, -123.5],
    );
}

#[test]
fn q8_0_block() {
    // d = 0.5; q = -128, -127, ..., cycling through a spread of i8 values.
    let qs: Vec<i8> = (0..32).map(|i| (i * 37 % 256 - 128) as i8).collect();
    let mut block = F16_HALF.to_le_bytes().to_vec();
    block.extend(qs.iter().map(|&q| q as u8));
    // A second block with d = 1/3 (f16) to catch per-block scales.
    block.extend(F16_THIRD.to_le_bytes());
    block.extend(qs.iter().rev().map(|&q| q as u8));
    let want: Vec<f64> = qs
        .iter()
        .map(|&q| f64::from(q) * 0.5)
        .chain(qs.iter().rev().map(|&q| f64::from(q) * 0.333251953125))
        .collect();
    assert_close(&dequantize(GgmlType::Q8_0, &block, 64).unwrap(), &want);
}

#[test]
fn q4_0_block_low_nibbles_first() {
    // Element i < 16 is the low nibble of byte i, element 16 + i the high nibble; value (q − 8)·d.
    let lo: Vec<u8> = (0..16).collect(); // 0..15
    let hi: Vec<u8> = (0..16).map(|i| 15 - i).collect(); // 15..0
    let mut block = F16_QUARTER.to_le_bytes().to_vec();
    block.extend(lo.iter().zip(&hi).map(|(l, h)| l | (h << 4)));
    let want: Vec<f64> = lo
        .iter()
        .chain(&hi)
        .map(|&q| (f64::from(q) - 8.0) * 0.25)
        .collect();
    let got = dequantize(GgmlType::Q4_0, &block, 32).unwrap();
    assert_close(&got, &want);
    assert_eq!(got[0], -2.0); // (0 − 8)/4
    assert_eq!(got[16], 1.75); // (15 − 8)/4
}

#[test]
fn q4_1_block_scale_and_min() {
    // d = 0.125, m = -2.0: value q·d + m.
    let lo: Vec<u8> = (0..16).map(|i| (i * 5) % 16).collect();
    let hi: Vec<u8> = (0..16).map(|i| (i * 3 + 7) % 16).collect();
    let mut block = F16_EIGHTH.to_le_bytes().to_vec();
    block.extend(F16_MINUS_TWO.to_le_bytes());
    block.extend(lo.iter().zip(&hi).map(|(l, h)| l | (h << 4)));
    // Second block: d = 1, m = 0.5.
    block.extend(F16_ONE.to_le_bytes());
    block.extend(F16_HALF.to_le_bytes());
    block.extend([0xF0u8; 16]); // low nibbles 0, high nibbles 15
    let mut want: Vec<f64> = lo
        .iter()
        .chain(&hi)
        .map(|&q| f64::from(q) * 0.125 - 2.0)
        .collect();
    want.extend([0.5; 16]);
    want.extend([15.5; 16]);
    assert_close(&dequantize(GgmlType::Q4_1, &block, 64).unwrap(), &want);
}

#[test]
fn wrong_sizes_and_unsupported_types_are_errors() {
    let e = dequantize(GgmlType::Q8_0, &[0u8; 33], 32).unwrap_err();
    assert!(e.contains("33 bytes") && e.contains("expected 34"), "{e}");
    let e = dequantize(GgmlType::Q4_0, &[0u8; 18], 31).unwrap_err();
    assert!(e.contains("not whole blocks"), "{e}");
    let e = dequantize(GgmlType::Q8_1, &[0u8; 36], 32).unwrap_err();
    assert!(
        e.contains("Q8_1") && e.contains("cannot be converted"),
        "{e}"
    );
}
