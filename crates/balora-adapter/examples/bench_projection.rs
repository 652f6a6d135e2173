//! Benchmark: one BaLoRA projection of a Llama-3.2-3B-shaped adapter set on CPU (burn-ndarray).
//!
//! 28 layers × {q 3072→3072, k/v 3072→1024, o 3072→3072, gate/up 3072→8192, down 8192→3072}, r = 16.
//! Compares, in the same run:
//! * `batched`: `apply_manifold` as training runs it. On burn-ndarray that is the host path: each
//!   adapter's factors are read in place, Grams, r×r decision and the two thin products run adapter
//!   by adapter on every core;
//! * `batched, tensor-op path`: the path every other backend takes — all Grams in one transfer,
//!   r×r math on the host, one upload, two thin burn matmuls per adapter;
//! * (a) `per-module Algorithm 1`: per adapter, download A and B, polar decompositions by two thin
//!   SVDs plus the SVD of the r×r core (three SVDs, f64 nalgebra), upload the new factors;
//! * (b) `copy floor`: one plain copy of every factor tensor into fresh tensors, and (b') the same
//!   bytes copied into buffers allocated once (memory bandwidth alone, no page faults).
//!
//! Run: `cargo run -p balora-adapter --example bench_projection [-- --layers 28 --reps 5]`
//! (`--only K` times only the K-th method, for a profiler);
//! add `--features openblas` (needs `libopenblas-dev`) for BLAS-backed ndarray matmuls.

use balora_adapter::{apply_manifold_with, collect_params, HookPath, LoraAdapter};
use balora_manifold::balanced::{Balanced, Gauge};
use burn::backend::NdArray;
use burn::tensor::{Distribution, Tensor, TensorData, TensorMetadata, TensorPrimitive};
use burn_ndarray::NdArrayTensor;
use nalgebra::DMatrix;
use std::time::Instant;

type B = NdArray;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn to_host(t: Tensor<B, 2>) -> DMatrix<f64> {
    let [r, c] = t.dims();
    DMatrix::from_row_slice(r, c, &t.into_data().iter::<f64>().collect::<Vec<_>>())
}

fn to_dev(m: &DMatrix<f64>) -> Tensor<B, 2> {
    let v: Vec<f32> = m.transpose().iter().map(|&x| x as f32).collect();
    Tensor::from_data(
        TensorData::new(v, [m.nrows(), m.ncols()]),
        &Default::default(),
    )
}

/// Algorithm 1 of the paper on dense host factors, with three SVDs.
fn algorithm1(a: &DMatrix<f64>, b: &DMatrix<f64>) -> (DMatrix<f64>, DMatrix<f64>) {
    // Polar A = S_A R_A from A's thin SVD (A = U Σ Vᵀ → S_A = UΣUᵀ, R_A = UVᵀ); B = R_B S_B likewise.
    let sa = a.clone().svd(true, true);
    let (ua, sig_a, vta) = (sa.u.unwrap(), sa.singular_values, sa.v_t.unwrap());
    let s_a = &ua * DMatrix::from_diagonal(&sig_a) * ua.transpose();
    let r_a = &ua * vta;
    let sb = b.clone().svd(true, true);
    let (ub, sig_b, vtb) = (sb.u.unwrap(), sb.singular_values, sb.v_t.unwrap());
    let s_b = vtb.transpose() * DMatrix::from_diagonal(&sig_b) * &vtb;
    let r_b = ub * vtb;
    let core = (s_b * s_a).svd(true, true);
    let sq = DMatrix::from_diagonal(&core.singular_values.map(f64::sqrt));
    let (u, vt) = (core.u.unwrap(), core.v_t.unwrap());
    (&sq * vt * r_a, r_b * u * &sq)
}

fn main() {
    let layers = arg("--layers", 28);
    let reps = arg("--reps", 5).max(1);
    let r = 16;
    let shapes = [
        (3072, 3072),
        (3072, 1024),
        (3072, 1024),
        (3072, 3072),
        (3072, 8192),
        (3072, 8192),
        (8192, 3072),
    ];
    let device = Default::default();
    let adapters: Vec<LoraAdapter<B>> = (0..layers)
        .flat_map(|_| shapes.iter())
        .map(|&(d_in, d_out)| {
            let a = Tensor::random(
                [r, d_in],
                Distribution::Normal(0.0, 1.0 / (d_in as f64).sqrt()),
                &device,
            );
            let b = Tensor::random([d_out, r], Distribution::Normal(0.0, 0.01), &device);
            LoraAdapter::from_tensors(a, b, 2.0, 0.0)
        })
        .collect();
    let floats: usize = adapters
        .iter()
        .map(|a| a.lora_a.val().shape().num_elements() + a.lora_b.val().shape().num_elements())
        .sum();
    println!(
        "{} adapters, r = {r}, {:.1} M factor floats ({:.0} MB f32)",
        adapters.len(),
        floats as f64 / 1e6,
        floats as f64 * 4.0 / 1e6
    );
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| "unset".into());
    if cfg!(feature = "openblas") {
        println!(
            "ndarray matmul: system OpenBLAS (OPENBLAS_NUM_THREADS={})",
            env("OPENBLAS_NUM_THREADS")
        );
    } else {
        println!(
            "ndarray matmul: matrixmultiply (MATMUL_NUM_THREADS={}); `--features openblas` for BLAS",
            env("MATMUL_NUM_THREADS")
        );
    }
    println!(
        "host r×r decisions on {} rayon threads",
        rayon::current_num_threads()
    );
    let manifold = Balanced {
        gauge: Gauge::Closest,
        ..Default::default()
    };
    let run = |path: HookPath| {
        let (out, rep) =
            apply_manifold_with(adapters.clone(), &manifold, 1, path).expect("projection");
        assert_eq!(rep.refactored, adapters.len());
        // Force the lazy results on backends that defer work.
        let _ = collect_params(&out)
            .pairs
            .last()
            .map(|p| p.b.clone().into_data());
    };
    type Method<'a> = (&'static str, Box<dyn FnMut() + 'a>);
    let mut methods: Vec<Method<'_>> = vec![
        (
            "batched (apply_manifold, host path)",
            Box::new(|| run(HookPath::Auto)),
        ),
        (
            "batched, tensor-op path",
            Box::new(|| run(HookPath::TensorOps)),
        ),
        (
            "  tensor-op path: Grams + transfer",
            Box::new(|| {
                let _ = balora_adapter::pair_grams(&adapters);
            }),
        ),
        (
            "(a) per-module Algorithm 1",
            Box::new(|| {
                for ad in &adapters {
                    let (a, b) = (to_host(ad.lora_a.val()), to_host(ad.lora_b.val()));
                    let (a2, b2) = algorithm1(&a, &b);
                    let _ = (to_dev(&a2), to_dev(&b2));
                }
            }),
        ),
        (
            "(b) one copy of all factors",
            Box::new(|| {
                let copies: Vec<_> = adapters
                    .iter()
                    .map(|ad| {
                        (
                            ad.lora_a.val().mul_scalar(1.0),
                            ad.lora_b.val().mul_scalar(1.0),
                        )
                    })
                    .collect();
                let _ = copies.last().map(|(_, b)| b.clone().into_data());
            }),
        ),
    ];
    // (b') the same bytes copied into buffers allocated once, outside the timing: pure memory
    // bandwidth, without the page faults that fresh tensors (the projection's outputs too) pay.
    let views: Vec<NdArrayTensor> = adapters
        .iter()
        .flat_map(|ad| [ad.lora_a.val(), ad.lora_b.val()])
        .map(|t| match t.into_primitive() {
            TensorPrimitive::Float(p) => p,
            TensorPrimitive::QFloat(_) => unreachable!("f32 factors"),
        })
        .collect();
    let mut buffers: Vec<Vec<f32>> = views
        .iter()
        .map(|v| vec![1.0; v.shape().num_elements()])
        .collect();
    methods.push((
        "(b') copy into preallocated buffers",
        Box::new(move || {
            for (src, dst) in views.iter().zip(buffers.iter_mut()) {
                match src {
                    NdArrayTensor::F32(s) => {
                        dst.copy_from_slice(s.view().as_slice().expect("contiguous factor"))
                    }
                    _ => unreachable!("f32 factors"),
                }
            }
            std::hint::black_box(&buffers);
        }),
    ));
    // Interleaved repetitions (best of `reps` each), so every method sees the same allocator
    // and cache history: fresh large allocations page-fault, reused ones do not.
    // `--only K` times method K alone (for profilers).
    let only = arg("--only", usize::MAX);
    let mut best = vec![f64::INFINITY; methods.len()];
    for _ in 0..reps {
        for (i, (_, f)) in methods.iter_mut().enumerate() {
            if only != usize::MAX && i != only {
                continue;
            }
            let t = Instant::now();
            f();
            best[i] = best[i].min(t.elapsed().as_secs_f64());
        }
    }
    let names: Vec<&str> = methods.iter().map(|(n, _)| *n).collect();
    drop(methods);
    let (batched, naive, copy, bandwidth) = (best[0], best[3], best[4], best[5]);
    println!("{:<38} {:>10}  {:>12}", "method", "time (s)", "÷ batched");
    for (name, t) in names.iter().zip(&best) {
        println!("{name:<38} {t:>10.3}  {:>12.2}", t / batched);
    }
    println!(
        "batched is {:.1}× faster than (a), {:.1}× a copy into fresh tensors (b), {:.1}× a copy \
         into preallocated buffers (b')",
        naive / batched,
        batched / copy,
        batched / bandwidth
    );
}
