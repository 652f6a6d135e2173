//! The quantized base ([`QuantMatrix`], [`quant_lora_linear`]) against independent references:
//! `balora_formats::dequantize` (itself checked against the `gguf` Python package) for the
//! block decoding, ggml's reference quantizers re-written here in f64 for `quantize`, and the
//! f64 math of the linear layer (`tests/linear.rs`' bounds: every value is a sum of products of
//! f32 inputs, checked within `REL · (the same sum on absolute values)`, REL = 1e-4 above the
//! worst f32 accumulation error γ₆₄₀ ≈ 3.8e-5 of these shapes) on the dequantised weight.

mod common;

use balora_cpu::{quant_lora_linear, QuantKind, QuantMatrix};
use balora_formats::GgmlType;
use burn::backend::{Autodiff, Flex, NdArray};
use burn::tensor::Tensor;
use common::*;
use half::f16;
use rand::{rngs::StdRng, Rng, SeedableRng};

type AdFlex = Autodiff<Flex>;
const REL: f64 = 1e-4;
const KINDS: [QuantKind; 3] = [QuantKind::Q8_0, QuantKind::Q4_0, QuantKind::Q4_1];

fn ggml(k: QuantKind) -> GgmlType {
    match k {
        QuantKind::Q8_0 => GgmlType::Q8_0,
        QuantKind::Q4_0 => GgmlType::Q4_0,
        QuantKind::Q4_1 => GgmlType::Q4_1,
    }
}

/// Random valid blocks: f16 scales (and minima) of a realistic size, random quants.
fn random_blocks(rng: &mut StdRng, k: QuantKind, rows: usize, cols: usize) -> QuantMatrix {
    let mut bytes = Vec::new();
    for _ in 0..rows * cols / 32 {
        let d = f16::from_f32(rng.random::<f32>() * 0.01 + 1e-4);
        bytes.extend_from_slice(&d.to_le_bytes());
        if k == QuantKind::Q4_1 {
            let m = f16::from_f32(-rng.random::<f32>() * 0.05);
            bytes.extend_from_slice(&m.to_le_bytes());
        }
        let n = if k == QuantKind::Q8_0 { 32 } else { 16 };
        bytes.extend((0..n).map(|_| rng.random::<u8>()));
    }
    QuantMatrix::from_blocks(k, rows, cols, bytes).unwrap()
}

#[test]
fn blocks_dequantise_like_balora_formats_whole_and_in_tiles() {
    let mut rng = StdRng::seed_from_u64(1);
    let (rows, cols) = (7, 96);
    for k in KINDS {
        let q = random_blocks(&mut rng, k, rows, cols);
        let want = balora_formats::quant::dequantize(ggml(k), q.bytes(), rows * cols).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&q.to_f32()), bits(&want), "{k:?}");
        // Rows 2..6, columns 32..96, row-major and transposed.
        let (r0, r1, c0, c1) = (2, 6, 32, 96);
        let (mut t, mut tt) = (vec![0f32; 4 * 64], vec![0f32; 4 * 64]);
        q.dequantize_tile((r0, r1), (c0, c1), &mut t, false);
        q.dequantize_tile((r0, r1), (c0, c1), &mut tt, true);
        for r in r0..r1 {
            for c in c0..c1 {
                let w = want[r * cols + c].to_bits();
                assert_eq!(t[(r - r0) * 64 + c - c0].to_bits(), w, "{k:?} tile");
                assert_eq!(
                    tt[(c - c0) * 4 + r - r0].to_bits(),
                    w,
                    "{k:?} transposed tile"
                );
            }
        }
    }
    assert!(QuantMatrix::from_blocks(QuantKind::Q8_0, 2, 40, vec![0; 68]).is_err());
    assert!(QuantMatrix::from_blocks(QuantKind::Q8_0, 2, 32, vec![0; 67]).is_err());
}

/// ggml's `quantize_row_q8_0_ref` / `quantize_row_q4_0_ref`, then dequantisation, in f64.
fn reference_roundtrip(k: QuantKind, x: &[f32]) -> Vec<f64> {
    let mut out = Vec::new();
    for b in x.chunks(32) {
        let b: Vec<f64> = b.iter().map(|&v| v as f64).collect();
        match k {
            QuantKind::Q8_0 => {
                let amax = b.iter().fold(0f64, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let d16 = f16::from_f64(d).to_f64();
                for v in &b {
                    let q = if d == 0.0 { 0.0 } else { (v / d).round() };
                    out.push(q * d16);
                }
            }
            _ => {
                let max = b
                    .iter()
                    .fold(0f64, |m, &v| if v.abs() > m.abs() { v } else { m });
                let d = max / -8.0;
                let d16 = f16::from_f64(d).to_f64();
                for v in &b {
                    let q = if d == 0.0 {
                        8.0
                    } else {
                        (v / d + 8.5).trunc().min(15.0)
                    };
                    out.push((q - 8.0) * d16);
                }
            }
        }
    }
    out
}

#[test]
fn quantize_matches_ggml_reference_in_f64() {
    let mut rng = StdRng::seed_from_u64(2);
    let (rows, cols) = (16, 256);
    let mut x: Vec<f32> = (0..rows * cols)
        .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * 0.3)
        .collect();
    x[..32].fill(0.0); // an all-zero block: scale 0, every value 0
    for k in [QuantKind::Q8_0, QuantKind::Q4_0] {
        let got = QuantMatrix::quantize(k, rows, cols, &x).unwrap().to_f32();
        let want = reference_roundtrip(k, &x);
        // f32 `x·(1/d)` and f64 `x/d` can round a value sitting on a .5 boundary apart: allow
        // one quantum on at most 0.5 % of the values, none elsewhere.
        let mut off = 0;
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let d = x[i / 32 * 32..i / 32 * 32 + 32]
                .iter()
                .fold(0f32, |m, v| m.max(v.abs()))
                / if k == QuantKind::Q8_0 { 127.0 } else { 8.0 };
            let err = (*g as f64 - w).abs();
            if err > 0.0 {
                off += 1;
                assert!(
                    err <= 1.01 * d as f64,
                    "{k:?}[{i}]: {g} vs {w} (quantum {d})"
                );
            }
        }
        assert!(
            off * 200 <= x.len(),
            "{k:?}: {off} of {} values off by a quantum",
            x.len()
        );
        assert!(got[..32].iter().all(|&v| v == 0.0));
    }
    assert!(QuantMatrix::quantize(QuantKind::Q8_0, 2, 40, &[0.0; 80]).is_err());
    assert!(QuantMatrix::quantize(QuantKind::Q4_1, 1, 32, &[0.0; 32]).is_err());
}

#[test]
fn permute_rows_moves_whole_rows_of_blocks() {
    let mut rng = StdRng::seed_from_u64(3);
    let q = random_blocks(&mut rng, QuantKind::Q4_1, 4, 64);
    let p = q.permute_rows(&[2, 0, 3, 1]).unwrap();
    let (a, b) = (q.to_f32(), p.to_f32());
    for (i, s) in [2, 0, 3, 1].into_iter().enumerate() {
        assert_eq!(b[i * 64..(i + 1) * 64], a[s * 64..(s + 1) * 64]);
    }
    assert!(q.permute_rows(&[0, 1, 2]).is_err());
    assert!(q.permute_rows(&[0, 1, 2, 4]).is_err());
}

struct Out {
    y: Mat,
    dx: Mat,
    da: Mat,
    db: Mat,
}

/// y = x·Wᵀ + b + s·(x·Aᵀ)·Bᵀ and its gradients for loss Σ y ⊙ c, in f64 (`W` `[out, in]`).
fn reference(x: &Mat, w: &Mat, b: &[f64], a: &Mat, bb: &Mat, s: f64, c: &Mat) -> Out {
    let xa = x.mm(&a.t());
    let y = x.mm(&w.t()).plus_row(b).plus(&xa.mm(&bb.t()).scaled(s));
    let g = c.mm(bb);
    Out {
        y,
        dx: c.mm(w).plus(&g.mm(a).scaled(s)),
        da: g.t().mm(x).scaled(s),
        db: c.t().mm(&xa).scaled(s),
    }
}

#[test]
fn quant_lora_linear_matches_f64_on_the_dequantised_weight() {
    let mut rng = StdRng::seed_from_u64(4);
    for (rows, din, dout, r) in [(37, 96, 130, 5), (64, 320, 600, 8)] {
        for k in KINDS {
            let q = random_blocks(&mut rng, k, dout, din);
            let deq = q.to_f32();
            let w = Mat::from_fn(dout, din, |o, i| deq[o * din + i] as f64);
            let x = Mat::random(&mut rng, rows, din, 1.0);
            let b = Mat::random(&mut rng, 1, dout, 0.5).v;
            let a = Mat::random(&mut rng, r, din, 0.2);
            let bb = Mat::random(&mut rng, dout, r, 0.2);
            let c = Mat::random(&mut rng, rows, dout, 1.0);
            let s = 16.0 / r as f64;
            let want = reference(&x, &w, &b, &a, &bb, s, &c);
            let bound = reference(
                &x.abs(),
                &w.abs(),
                &b.iter().map(|v| v.abs()).collect::<Vec<_>>(),
                &a.abs(),
                &bb.abs(),
                s,
                &c.abs(),
            );

            let xt = tensor::<AdFlex>(&x).require_grad();
            let (at, bt) = (
                tensor::<AdFlex>(&a).require_grad(),
                tensor::<AdFlex>(&bb).require_grad(),
            );
            let bias = vector::<AdFlex>(&b);
            let Ok(y) = quant_lora_linear(xt.clone(), &q, Some(&bias), Some((&at, &bt, s))) else {
                panic!("quant_lora_linear declined Autodiff<Flex>");
            };
            let grads = (y.clone() * tensor::<AdFlex>(&c)).sum().backward();
            let what = format!("{k:?} {rows}x{din}->{dout}");
            assert_close(&format!("{what} y"), &host(y), &want.y, &bound.y, REL);
            assert_close(
                &format!("{what} dx"),
                &host(xt.grad(&grads).unwrap()),
                &want.dx,
                &bound.dx,
                REL,
            );
            assert_close(
                &format!("{what} dA"),
                &host(at.grad(&grads).unwrap()),
                &want.da,
                &bound.da,
                REL,
            );
            assert_close(
                &format!("{what} dB"),
                &host(bt.grad(&grads).unwrap()),
                &want.db,
                &bound.db,
                REL,
            );

            // Plain Flex (inference), no adapter: y = x·Wᵀ + b.
            let Ok(y) = quant_lora_linear(tensor::<Flex>(&x), &q, Some(&vector::<Flex>(&b)), None)
            else {
                panic!("quant_lora_linear declined Flex");
            };
            let y0 = x.mm(&w.t()).plus_row(&b);
            let b0 = x
                .abs()
                .mm(&w.abs().t())
                .plus_row(&b.iter().map(|v| v.abs()).collect::<Vec<_>>());
            assert_close(&format!("{what} flex y"), &host(y), &y0, &b0, REL);
        }
    }
}

#[test]
fn other_backends_and_mismatched_inputs_are_declined() {
    let mut rng = StdRng::seed_from_u64(5);
    let q = random_blocks(&mut rng, QuantKind::Q8_0, 8, 64);
    let x = Tensor::<NdArray, 2>::ones([3, 64], &Default::default());
    assert!(quant_lora_linear(x, &q, None, None).is_err());
    let x = Tensor::<Flex, 2>::ones([3, 32], &Default::default());
    assert!(
        quant_lora_linear(x, &q, None, None).is_err(),
        "x has 32 columns, W 64"
    );
    assert!(balora_cpu::is_flex::<AdFlex>() && !balora_cpu::is_flex::<NdArray>());
}
