//! What the manifold hook did, as the trainer reports it: the per-step counts of rank-deficient
//! and zero-product adapters in `metrics.jsonl`, and the setup warning for the canonical gauge
//! with untransported moments.

use balora_adapter::{LoraAdapter, LoraLinear};
use balora_config::TrainerSection;
use balora_data::{Batch, Dataset, Example};
use balora_manifold::{OptionValue, Options};
use balora_train::loss::BatchLoss;
use balora_train::{train, Objective, RunOptions, TrainStepper};
use burn::backend::{Autodiff, NdArray};
use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use std::sync::{Arc, Mutex};

type AD = Autodiff<NdArray>;
const D: usize = 4;

/// Three adapters on a 4→4 layer each, rank 2, with known structure:
/// `full` generic; `deficient` with A's row 1 and B's column 1 zero (rank(BA) = 1, and that
/// direction gets zero gradients, so it stays rank 1); `zero` with A = B = 0 (zero product,
/// zero gradients, so it stays zero).
#[derive(Module, Debug)]
struct Pairs<B: Backend> {
    full: LoraLinear<B>,
    deficient: LoraLinear<B>,
    zero: LoraLinear<B>,
}

fn layer<B: Backend>(w: &[f32], a: &[f32], b: &[f32]) -> LoraLinear<B> {
    let dev = Default::default();
    let t = |v: &[f32], shape: [usize; 2]| {
        Tensor::<B, 2>::from_data(TensorData::new(v.to_vec(), shape), &dev)
    };
    let mut l = LoraLinear::from_base(Linear {
        weight: Param::from_tensor(t(w, [D, D])),
        bias: None,
    });
    l.adapter = Some(LoraAdapter::from_tensors(
        t(a, [2, D]),
        t(b, [D, 2]),
        1.0,
        0.0,
    ));
    l
}

fn model() -> Pairs<AD> {
    let w: Vec<f32> = (0..D * D)
        .map(|i| ((i * 7 % 11) as f32 - 5.0) / 10.0)
        .collect();
    Pairs {
        full: layer(
            &w,
            &[0.5, -0.2, 0.1, 0.3, -0.4, 0.6, 0.2, -0.1],
            &[0.3, 0.1, -0.2, 0.4, 0.5, -0.3, 0.1, 0.2],
        ),
        deficient: layer(
            &w,
            &[0.5, -0.2, 0.1, 0.3, 0.0, 0.0, 0.0, 0.0],
            &[0.3, 0.0, -0.2, 0.0, 0.5, 0.0, 0.1, 0.0],
        ),
        zero: layer(&w, &[0.0; 8], &[0.0; 8]),
    }
}

/// `Σ (full(x) + deficient(x) + zero(x) − 1)²` with `x` the batch's ids / 10.
fn loss<B: Backend>(m: &Pairs<B>, batch: &Batch, dev: &B::Device) -> BatchLoss<B> {
    let x: Vec<f32> = batch.input_ids.iter().map(|&i| i as f32 / 10.0).collect();
    let x = Tensor::<B, 2>::from_data(TensorData::new(x, [batch.batch, batch.seq]), dev);
    let y = m.full.forward(x.clone()) + m.deficient.forward(x.clone()) + m.zero.forward(x);
    BatchLoss {
        sum: (y - 1.0).powi_scalar(2).sum(),
        count: batch.batch,
        predictions: None,
    }
}

fn data() -> Dataset {
    let ex = |k: u32| {
        Example::lm(
            (0..D as u32).map(|i| (k + 3 * i) % 10).collect(),
            vec![true; D],
        )
    };
    Dataset {
        train: (0..8).map(ex).collect(),
        valid: Vec::new(),
        classes: Vec::new(),
        pad_id: 0,
    }
}

fn adamw(transport: bool) -> Options {
    Options::default().with("transport", OptionValue::Bool(transport))
}

fn gauge(g: &str) -> Options {
    Options::default().with("gauge", OptionValue::Str(g.into()))
}

#[test]
fn metrics_jsonl_counts_rank_deficient_and_zero_product_pairs_per_step() {
    let dev = Default::default();
    let objective = Objective::<AD, Pairs<AD>> {
        train: loss::<AD>,
        valid: loss::<NdArray>,
        classification: false,
    };
    let cfg = TrainerSection {
        steps: 4,
        batch_size: 2,
        lr: 1e-2,
        eval_every: 0,
        progress: false,
        ..TrainerSection::default()
    };
    for (manifold, counted) in [("balanced", true), ("unconstrained", false)] {
        let dir = tempfile::tempdir().unwrap();
        let mut stepper =
            TrainStepper::<AD>::from_names("adamw", &adamw(true), manifold, &gauge_opts(manifold))
                .unwrap();
        let opts = RunOptions {
            out_dir: Some(dir.path().to_path_buf()),
            method: manifold.into(),
            ..RunOptions::default()
        };
        let out = train(
            model(),
            &mut stepper,
            &data(),
            &cfg,
            &opts,
            &objective,
            &dev,
        )
        .unwrap();
        let text = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
        let train_lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .filter(|v: &serde_json::Value| v["kind"] == "train")
            .collect();
        assert_eq!(train_lines.len(), 4, "{text}");
        for rec in &train_lines {
            if counted {
                assert_eq!(rec["rank_deficient"], 1, "{manifold}: {rec}");
                assert_eq!(rec["zero_product"], 1, "{manifold}: {rec}");
            } else {
                // Plain LoRA: the hook never runs, so there is nothing to count.
                assert!(rec.get("rank_deficient").is_none(), "{manifold}: {rec}");
                assert!(rec.get("zero_product").is_none(), "{manifold}: {rec}");
            }
        }
        // The factors really are as described: the deficient pair kept rank 1 and moved,
        // the zero pair stayed zero.
        let ad = |l: &LoraLinear<AD>| {
            let a = l.adapter.as_ref().unwrap();
            (
                a.lora_a.val().into_data().to_vec::<f32>().unwrap(),
                a.lora_b.val().into_data().to_vec::<f32>().unwrap(),
            )
        };
        let (a, b) = ad(&out.model.deficient);
        let (a0, _) = ad(&model().deficient);
        assert!(
            a.iter().zip(&a0).any(|(x, y)| (x - y).abs() > 1e-4),
            "trained"
        );
        let gram = |m: &[f32], rows: usize, cols: usize, t: bool| {
            // 2×2 Gram of A (rows) or AD (columns) and its determinant.
            let at = |i: usize, j: usize| if t { m[j * cols + i] } else { m[i * cols + j] } as f64;
            let n = if t { rows } else { cols };
            let g = |p: usize, q: usize| (0..n).map(|k| at(p, k) * at(q, k)).sum::<f64>();
            (g(0, 0) * g(1, 1) - g(0, 1) * g(0, 1), g(0, 0) + g(1, 1))
        };
        let (det_a, tr_a) = gram(&a, 2, D, false);
        let (det_b, tr_b) = gram(&b, D, 2, true);
        assert!(
            det_a.abs() < 1e-8 * tr_a * tr_a && det_b.abs() < 1e-8 * tr_b * tr_b,
            "rank 1"
        );
        let (za, zb) = ad(&out.model.zero);
        assert!(
            za.iter().chain(&zb).all(|v| *v == 0.0),
            "zero pair stays zero"
        );
    }
}

fn gauge_opts(manifold: &str) -> Options {
    if manifold == "balanced" {
        gauge("closest")
    } else {
        Options::default()
    }
}

#[test]
fn step_report_counts_match_the_hook() {
    let dev = Default::default();
    let mut stepper =
        TrainStepper::<AD>::from_names("adamw", &adamw(false), "balanced", &gauge("closest"))
            .unwrap();
    let m = model();
    let batch = Batch::collate(&data().train.iter().take(2).collect::<Vec<_>>(), 0);
    let l = loss::<AD>(&m, &batch, &dev).sum;
    let grads = burn::optim::GradientsParams::from_grads::<AD, _>(l.backward(), &m);
    let (_, report) = stepper.step(1e-2, m, grads).unwrap();
    assert_eq!(report.hook.adapters, 3);
    assert_eq!(report.rank_deficient(), Some(1));
    assert_eq!(report.zero_product(), Some(1));
    assert_eq!(
        report.hook.refactored, 2,
        "full and deficient re-factored, zero left alone"
    );
}

/// Log lines written while `f` runs (a fmt subscriber into a buffer).
fn captured_log(f: impl FnOnce()) -> String {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let sub = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(sub, f);
    let out = buf.0.lock().unwrap().clone();
    String::from_utf8(out).unwrap()
}

#[test]
fn canonical_gauge_with_untransported_moments_warns_once_at_setup() {
    let sgd = |mu: f64, transport: bool| {
        Options::default()
            .with("momentum", OptionValue::Float(mu))
            .with("transport", OptionValue::Bool(transport))
    };
    let cases: [(&str, Options, Options, bool); 7] = [
        ("adamw", adamw(false), gauge("canonical"), true),
        ("adamw", Options::default(), gauge("canonical"), true),
        ("sgd", sgd(0.9, false), gauge("canonical"), true),
        ("adamw", adamw(true), gauge("canonical"), false),
        ("adamw", adamw(false), gauge("closest"), false),
        ("sgd", sgd(0.0, false), gauge("canonical"), false),
        ("sign", Options::default(), gauge("canonical"), false),
    ];
    for (name, opt, man, warns) in cases {
        let log = captured_log(|| {
            let st = TrainStepper::<AD>::from_names(name, &opt, "balanced", &man).unwrap();
            assert_eq!(
                st.transport_warning().is_some(),
                warns,
                "{name} {opt:?} {man:?}"
            );
        });
        let n = log.matches("WARN").count();
        assert_eq!(n, usize::from(warns), "{name} {opt:?} {man:?}: {log}");
        if warns {
            assert!(
                log.contains("transport = true") && log.contains(name) && log.contains("canonical"),
                "{log}"
            );
        }
    }
    // The quiet constructor (used for the synthetic experiment's many runs) does not log.
    let log = captured_log(|| {
        TrainStepper::<AD>::from_names_quiet(
            "adamw",
            &adamw(false),
            "balanced",
            &gauge("canonical"),
        )
        .unwrap();
    });
    assert!(log.is_empty(), "{log}");
}
