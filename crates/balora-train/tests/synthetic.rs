//! The synthetic experiment against f64 references, and the paper's effect on a reduced grid.

use balora_train::synthetic::{run_experiment, run_once, Problem, SyntheticConfig};
use burn::backend::{Autodiff, NdArray};
use nalgebra::DMatrix;

type B = Autodiff<NdArray>;

#[test]
fn optimal_loss_matches_eckart_young_via_eigenvalues() {
    let p = Problem::sample(20, 4, 0, 0);
    // Independent route: eigenvalues of MᵀM are σ²; the best rank-4 residual keeps the 16 smallest.
    let m = &p.target - &p.w0;
    let mut ev: Vec<f64> = (m.transpose() * &m)
        .symmetric_eigenvalues()
        .iter()
        .copied()
        .collect();
    ev.sort_by(|a, b| b.total_cmp(a));
    let want = 0.5 * ev[4..].iter().sum::<f64>();
    assert!(
        (p.optimal_loss - want).abs() < 1e-9 * want,
        "{} vs {want}",
        p.optimal_loss
    );
}

#[test]
fn first_sign_step_matches_closed_form() {
    let cfg = SyntheticConfig::default();
    let p = Problem::sample(20, 4, 7, 1);
    let lr = 0.05;
    // From B = 0: ∇B = (W0 − T)·A0ᵀ, ∇A = 0, so one sign step gives B1 = −lr·sign(∇B), A1 = A0.
    let grad_b = (&p.w0 - &p.target) * p.a0.transpose();
    let b1 = grad_b.map(|g| -lr * g / (g.abs() + 1e-8));
    let loss = |b: &DMatrix<f64>| 0.5 * (&p.w0 + b * &p.a0 - &p.target).norm_squared();
    let want = [loss(&DMatrix::zeros(20, 4)), loss(&b1)];
    for method in &cfg.methods {
        let sign = cfg.optimizers.iter().find(|o| o.name == "sign").unwrap();
        let got = run_once::<B>(&p, method, sign, lr, 1, &Default::default()).unwrap();
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-4 * w, "{}: {g} vs {w}", method.label);
        }
    }
}

#[test]
fn balora_beats_lora_with_sign_descent() {
    // A reduced version of the paper's protocol (4 trajectories, 15 learning rates).
    let mut cfg = SyntheticConfig::default();
    cfg.trajectories = 4;
    cfg.lr_count = 15;
    cfg.optimizers.retain(|o| o.name == "sign");
    let cells = run_experiment::<B>(&cfg, &Default::default(), &|_, _| {}).unwrap();
    let gap100 = |label: &str| {
        let c = cells.iter().find(|c| c.method == label).unwrap();
        assert!(
            c.chosen_lr.iter().all(Option::is_some),
            "{label}: a trajectory diverged at every lr"
        );
        c.quartiles()[100].1
    };
    let lora = gap100("LoRA");
    for m in ["BaLoRA-canonical", "BaLoRA-closest"] {
        let g = gap100(m);
        assert!(
            g * 3.0 < lora,
            "{m}: median gap@100 {g:.3e} is not several times below LoRA's {lora:.3e}"
        );
    }
}
