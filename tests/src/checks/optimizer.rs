//! `optimizer:<name>`: three steps of each registered optimizer against its closed-form f64 update.

use super::support::{dev, dev1, host, host1, within, I};
use super::Ctx;
use crate::reference::{self as r, Gen, OptRef, OptState};
use balora_manifold::{OptionValue, Options};
use balora_optim::{build_optimizer, PairStep, RegistryBackend};
use burn::tensor::backend::AutodiffBackend;

/// The options the check builds a registered optimizer with, and its closed-form f64 update.
/// Non-default hyper-parameters so that every term (decay, momentum, bias correction) matters.
pub fn optimizer_reference(name: &str) -> Option<(Options, OptRef)> {
    let f = OptionValue::Float;
    match name {
        "adamw" => Some((
            Options::default()
                .with("beta1", f(0.8))
                .with("beta2", f(0.99))
                .with("eps", f(1e-6))
                .with("weight_decay", f(0.1)),
            OptRef::AdamW {
                beta1: 0.8,
                beta2: 0.99,
                eps: 1e-6,
                wd: 0.1,
            },
        )),
        "sgd" => Some((
            Options::default()
                .with("momentum", f(0.9))
                .with("weight_decay", f(0.01)),
            OptRef::Sgd { mu: 0.9, wd: 0.01 },
        )),
        "sign" => Some((
            Options::default().with("eps", f(1e-8)),
            OptRef::Sign { eps: 1e-8 },
        )),
        _ => None,
    }
}

/// Three steps of a registered optimizer on an adapter pair and an ordinary parameter, with
/// given gradients (entries in ±[0.1, 1], away from sign ambiguity), against the closed-form
/// f64 update. Tolerance: ≤ 12 element-wise ops per step (moments, bias correction, √, ÷,
/// decay, update), errors carried through the state: elementwise bound of 12·step ops relative
/// to `|θ| + η·|direction|`.
pub(super) fn optimizer_step<B: AutodiffBackend>(ctx: &Ctx<B>, name: &str) -> Result<String, String>
where
    B::InnerBackend: RegistryBackend,
{
    let (opts, reference) = optimizer_reference(name)
        .ok_or_else(|| format!("optimizer `{name}` has no f64 reference here"))?;
    let d = &ctx.device;
    let mut opt = build_optimizer::<I<B>>(name, &opts).map_err(|e| e.to_string())?;
    let mut gen = Gen::new(23);
    let (rank, din, dout, nv) = (3, 5, 4, 6);
    let mut a = gen.normal(rank, din, 1.0);
    let mut b = gen.normal(dout, rank, 1.0);
    let mut v: Vec<f64> = gen.normal(1, nv, 1.0).iter().copied().collect();
    let (mut a_t, mut b_t, mut v_t) = (dev::<I<B>>(&a, d), dev::<I<B>>(&b, d), dev1::<I<B>>(&v, d));
    let (mut sa, mut sb, mut sv) = (
        OptState::default(),
        OptState::default(),
        OptState::default(),
    );
    let lr = 0.05;
    let mut worst = 0.0f64;
    for step in 1..=3usize {
        let ga = gen.away_from_zero(rank, din, 0.1, 1.0);
        let gb = gen.away_from_zero(dout, rank, 0.1, 1.0);
        let gv: Vec<f64> = gen
            .away_from_zero(1, nv, 0.1, 1.0)
            .iter()
            .copied()
            .collect();
        let grams = opt
            .wants_grams()
            .then(|| balora_manifold::PairGrams::from_factors(&a, &b))
            .transpose()
            .map_err(|e| e.to_string())?;
        let (na, nb) = opt.step_pair(
            "layer.adapter",
            lr,
            PairStep {
                a: a_t,
                b: b_t,
                grad_a: dev::<I<B>>(&ga, d),
                grad_b: dev::<I<B>>(&gb, d),
                grams,
            },
        );
        let nvt = opt.step_param("head.bias", lr, v_t, dev1::<I<B>>(&gv, d));
        let mut av = r::row_major(&a);
        let scale_a = reference.step(&mut sa, lr, &mut av, &r::row_major(&ga));
        let mut bv = r::row_major(&b);
        let scale_b = reference.step(&mut sb, lr, &mut bv, &r::row_major(&gb));
        let scale_v = reference.step(&mut sv, lr, &mut v, &gv);
        a = r::from_row_major(rank, din, &av);
        b = r::from_row_major(dout, rank, &bv);
        let bound = ctx.precision.elementwise_bound(12 * step);
        worst = worst.max(within(
            &format!("step {step}: A"),
            &host(na.clone()),
            &a,
            &r::from_row_major(rank, din, &scale_a),
            bound,
        )?);
        worst = worst.max(within(
            &format!("step {step}: B"),
            &host(nb.clone()),
            &b,
            &r::from_row_major(dout, rank, &scale_b),
            bound,
        )?);
        worst = worst.max(within(
            &format!("step {step}: ordinary parameter"),
            &r::from_row_major(1, nv, &host1(nvt.clone())),
            &r::from_row_major(1, nv, &v),
            &r::from_row_major(1, nv, &scale_v),
            bound,
        )?);
        (a_t, b_t, v_t) = (na, nb, nvt);
    }
    Ok(format!("3 steps; worst error {worst:.3} of its bound"))
}
