//! `balora_cpu::token_nll_sum` on burn-flex, checked against an f64 computation written here from
//! the math and against burn's `log_softmax(..).gather(..)` on burn-ndarray.

mod common;

use balora_cpu::token_nll_sum;
use burn::backend::{Autodiff, Flex, NdArray};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use common::*;
use rand::{rngs::StdRng, Rng, SeedableRng};

type AdFlex = Autodiff<Flex>;
type AdNd = Autodiff<NdArray>;

// ---------------------------------------------------------------------------------------------
// token_nll_sum
//
// Tolerance. Per row the f32 kernel forms lse = m + ln Σⱼ exp(ℓⱼ − m) (m the row maximum,
// exact): each exp is within ~(|ℓⱼ − m| + 2)·u relative, their sum of V = 1000 positive terms
// within γ_V ≈ V·u ≈ 6.0e-5 relative (worst case, any order), so ln(sum) is within ≈ 6.1e-5
// absolute and lse within that plus u·|lse|; the loss term wᵢ·(lse − ℓₜ) is then within
// 1e-4·|wᵢ|·(1 + |lse| + |ℓₜ|) with room to spare. The gradient g·wᵢ·exp(ℓⱼ − lse) inherits
// the same ≈ 6.1e-5 (plus ~15u from |ℓⱼ − lse| ≤ 15 here) as a relative error of pⱼ, so
// |err| ≤ 1e-4·|g·wᵢ|·(pⱼ + [j = t]). burn's log_softmax on ndarray has the same structure,
// so flex vs ndarray may differ by twice that: REL_XENT = 2e-4 on these bounds covers both.
// Rows with weight 0 have a zero bound: their gradient must be exactly 0.

const REL_XENT: f64 = 2e-4;

/// The incoming gradient of the loss: `(loss · G).backward()`.
const G: f64 = 0.5;

/// `[rows, vocab]` logits in [-6, 6], random targets, weights in [0.25, 1.75] with two zeros.
fn xent_inputs(rng: &mut StdRng, rows: usize, vocab: usize) -> (Mat, Vec<usize>, Vec<f32>) {
    let logits = Mat::random(rng, rows, vocab, 6.0);
    let targets = (0..rows).map(|_| rng.random_range(0..vocab)).collect();
    let mut weights: Vec<f32> = (0..rows)
        .map(|_| 0.25 + 1.5 * rng.random::<f32>())
        .collect();
    weights[2] = 0.0;
    weights[rows - 3] = 0.0;
    (logits, targets, weights)
}

/// `(loss, its bound, d loss·g / d logits, its bound)` in f64 from the math.
fn xent_reference(l: &Mat, targets: &[usize], weights: &[f32], g: f64) -> (f64, f64, Mat, Mat) {
    let (mut loss, mut loss_bound) = (0.0, 0.0);
    let mut d = Mat::from_fn(l.rows, l.cols, |_, _| 0.0);
    let mut d_bound = d.clone();
    for i in 0..l.rows {
        let row = &l.v[i * l.cols..(i + 1) * l.cols];
        let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + row.iter().map(|&x| (x - m).exp()).sum::<f64>().ln();
        let (w, t) = (f64::from(weights[i]), targets[i]);
        loss += w * (lse - row[t]);
        loss_bound += w.abs() * (1.0 + lse.abs() + row[t].abs());
        for (j, &x) in row.iter().enumerate() {
            let p = (x - lse).exp();
            let hot = if j == t { 1.0 } else { 0.0 };
            d.v[i * l.cols + j] = g * w * (p - hot);
            d_bound.v[i * l.cols + j] = (g * w).abs() * (p + hot);
        }
    }
    (loss, loss_bound, d, d_bound)
}

fn scalar<B: Backend>(t: Tensor<B, 1>) -> f64 {
    assert_eq!(t.dims(), [1], "the loss is a [1] tensor");
    f64::from(t.into_data().to_vec::<f32>().unwrap()[0])
}

fn assert_loss(what: &str, got: f64, want: f64, bound: f64) {
    let err = (got - want).abs();
    assert!(
        err <= REL_XENT * bound,
        "{what}: loss {got:.9e}, want {want:.9e}, |err| {err:.3e} > {REL_XENT:e} · {bound:.3e}"
    );
}

#[test]
fn token_nll_sum_matches_f64_and_ndarray() {
    let mut rng = StdRng::seed_from_u64(10);
    let (rows, vocab) = (9, 1000);
    let (l, targets, weights) = xent_inputs(&mut rng, rows, vocab);
    let (want, want_bound, want_d, d_bound) = xent_reference(&l, &targets, &weights, G);

    // Fused, Autodiff<Flex>.
    let logits = tensor::<AdFlex>(&l).require_grad();
    let Ok(nll) = token_nll_sum(logits.clone(), &targets, &weights) else {
        panic!("token_nll_sum declined Autodiff<Flex>");
    };
    let grads = (nll.clone() * G).backward();
    let (loss, d) = (scalar(nll), host(logits.grad(&grads).expect("d logits")));
    assert_loss("flex vs f64", loss, want, want_bound);
    assert_close("flex vs f64 d logits", &d, &want_d, &d_bound, REL_XENT);

    // burn's generic formulation on Autodiff<NdArray>.
    let dev = Default::default();
    let logits_nd = tensor::<AdNd>(&l).require_grad();
    let t: Vec<i64> = targets.iter().map(|&t| t as i64).collect();
    let t = Tensor::<AdNd, 2, Int>::from_data(TensorData::new(t, [rows, 1]), &dev);
    let w = Tensor::<AdNd, 2>::from_data(TensorData::new(weights.clone(), [rows, 1]), &dev);
    let nll_nd = (log_softmax(logits_nd.clone(), 1).gather(1, t) * w)
        .sum()
        .neg();
    let grads = (nll_nd.clone() * G).backward();
    let (loss_nd, d_nd) = (
        scalar(nll_nd),
        host(logits_nd.grad(&grads).expect("d logits")),
    );
    assert_loss("ndarray vs f64", loss_nd, want, want_bound);
    assert_close(
        "ndarray vs f64 d logits",
        &d_nd,
        &want_d,
        &d_bound,
        REL_XENT,
    );
    assert_loss("flex vs ndarray", loss, loss_nd, want_bound);
    assert_close("flex vs ndarray d logits", &d, &d_nd, &d_bound, REL_XENT);

    // Plain Flex: the loss alone.
    let Ok(nll) = token_nll_sum(tensor::<Flex>(&l), &targets, &weights) else {
        panic!("token_nll_sum declined Flex");
    };
    assert_loss("Flex vs f64", scalar(nll), want, want_bound);
}

#[test]
fn token_nll_sum_declines_what_does_not_fit() {
    let mut rng = StdRng::seed_from_u64(11);
    let (rows, vocab) = (9, 1000);
    let (l, targets, weights) = xent_inputs(&mut rng, rows, vocab);
    let handed_back = |r: Result<Tensor<AdFlex, 1>, Tensor<AdFlex, 2>>, what: &str| match r {
        Err(back) => assert_eq!(host(back), l, "{what}: logits handed back"),
        Ok(_) => panic!("token_nll_sum took {what}"),
    };
    let logits = || tensor::<AdFlex>(&l).require_grad();

    let mut bad = targets.clone();
    bad[4] = vocab;
    handed_back(token_nll_sum(logits(), &bad, &weights), "a target = vocab");
    handed_back(
        token_nll_sum(logits(), &targets[..rows - 1], &weights),
        "one target short",
    );
    let mut long = weights.clone();
    long.push(1.0);
    handed_back(
        token_nll_sum(logits(), &targets, &long),
        "one weight too many",
    );
    handed_back(
        token_nll_sum(logits(), &targets, &weights[..rows - 1]),
        "one weight short",
    );
    match token_nll_sum(tensor::<NdArray>(&l), &targets, &weights) {
        Err(back) => assert_eq!(host(back), l, "NdArray: logits handed back"),
        Ok(_) => panic!("token_nll_sum took NdArray"),
    }
}
