//! Checks of registered plugins that have no closed-form reference here: every optimizer and
//! every manifold that is linked (balora-plugins links all of `plugins/`) runs on every backend.
//!
//! * `optimizer:<name>` (no f64 reference in `optimizer.rs`): three steps with default options
//!   (plus `transport = true` where accepted) on
//!   an adapter pair and an ordinary parameter, with a gauge change (`on_refactor`) after step 2,
//!   against the same optimizer on ndarray (the reference backend); and its checkpoint state
//!   (`state` → fresh optimizer → `load_state`) continues bit for bit like the original.
//! * `manifold:<name>`: default options on device-computed Grams of a random pair: `P·Q = I`,
//!   the product `B·A` unchanged after applying `(Q·A, B·P)` on the device, and a zero product
//!   (`B = 0`) left alone.

use super::support::{dev, dev1, host, host1, rel_within, I};
use super::Ctx;
use crate::reference::{self as r, Gen, M};
use balora_manifold::{build_manifold, GaugeTransform, OptionValue, Options, PairGrams};
use balora_optim::{build_optimizer, AdapterOptimizer, PairStep, RegistryBackend};
use burn::backend::NdArray;
use burn::tensor::backend::{AutodiffBackend, Backend};

const KEY: &str = "layer.adapter";

/// One step of `opt` on backend `X`, all on host matrices: `(A', B', v')`.
fn step<X: Backend>(
    opt: &mut dyn AdapterOptimizer<X>,
    d: &X::Device,
    (a, b, v): (&M, &M, &[f64]),
    (ga, gb, gv): (&M, &M, &[f64]),
) -> Result<(M, M, Vec<f64>), String> {
    let grams = opt
        .wants_grams()
        .then(|| PairGrams::from_factors(a, b))
        .transpose()
        .map_err(|e| e.to_string())?;
    let pair = PairStep {
        a: dev::<X>(a, d),
        b: dev::<X>(b, d),
        grad_a: dev::<X>(ga, d),
        grad_b: dev::<X>(gb, d),
        grams,
    };
    let (na, nb) = opt.step_pair(KEY, 0.05, pair);
    let nv = opt.step_param("head.bias", 0.05, dev1::<X>(v, d), dev1::<X>(gv, d));
    Ok((host(na), host(nb), host1(nv)))
}

/// A well-conditioned gauge change of rank `r` (`P = I + 0.3·N`, `Q = P⁻¹`).
fn gauge(gen: &mut Gen, rank: usize) -> Result<GaugeTransform, String> {
    let p = M::identity(rank, rank) + gen.normal(rank, rank, 0.3);
    let q = p.clone().try_inverse().ok_or("singular test gauge")?;
    Ok(GaugeTransform { p, q })
}

/// `optimizer:<name>` for an optimizer without an f64 reference (see the module docs).
pub(super) fn optimizer_consistency<B: AutodiffBackend>(
    ctx: &Ctx<B>,
    name: &str,
) -> Result<String, String>
where
    B::InnerBackend: RegistryBackend,
{
    let d = &ctx.device;
    let nd = Default::default();
    // Moment transport on where the optimizer has the conventional `transport` option, so that
    // `on_refactor` has something to do; default options otherwise.
    let with_transport = Options::default().with("transport", OptionValue::Bool(true));
    let opts = match build_optimizer::<NdArray>(name, &with_transport) {
        Ok(_) => with_transport,
        Err(_) => Options::default(),
    };
    let mut opt = build_optimizer::<I<B>>(name, &opts).map_err(|e| e.to_string())?;
    let mut reference = build_optimizer::<NdArray>(name, &opts).map_err(|e| e.to_string())?;
    let mut gen = Gen::new(41);
    let (rank, din, dout, nv) = (3, 5, 4, 6);
    let (mut a, mut b) = (gen.normal(rank, din, 1.0), gen.normal(dout, rank, 1.0));
    let mut v: Vec<f64> = gen.normal(1, nv, 1.0).iter().copied().collect();
    let (mut ra, mut rb, mut rv) = (a.clone(), b.clone(), v.clone());
    // Per step: ≤ 12 element-wise ops, r×r preconditioners (two matmul stages), across 3 steps;
    // ×8 for the difference of two such computations and the growth through the moments.
    let tol = 8.0
        * (ctx.precision.elementwise_bound(36) + ctx.precision.matmul_bound(3 * (din + rank), 6));
    let mut worst = 0.0f64;
    let mut saved = None;
    for k in 1..=3 {
        let g = (
            gen.away_from_zero(rank, din, 0.1, 1.0),
            gen.away_from_zero(dout, rank, 0.1, 1.0),
            gen.away_from_zero(1, nv, 0.1, 1.0)
                .iter()
                .copied()
                .collect::<Vec<f64>>(),
        );
        let gr = (&g.0, &g.1, g.2.as_slice());
        if k == 3 {
            saved = Some((opt.state(), a.clone(), b.clone(), v.clone()));
        }
        (a, b, v) = step(opt.as_mut(), d, (&a, &b, &v), gr)?;
        (ra, rb, rv) = step(reference.as_mut(), &nd, (&ra, &rb, &rv), gr)?;
        for (what, got, want) in [("A", &a, &ra), ("B", &b, &rb)] {
            worst = worst.max(rel_within(&format!("step {k}: {what}"), got, want, tol)?);
        }
        let (vh, rvh) = (M::from_row_slice(1, nv, &v), M::from_row_slice(1, nv, &rv));
        worst = worst.max(rel_within(&format!("step {k}: param"), &vh, &rvh, tol)?);
        if k == 2 {
            // The manifold moved the pair: both optimizers carry their moments (or not) alike.
            let t = gauge(&mut gen, rank)?;
            opt.on_refactor(KEY, &t);
            reference.on_refactor(KEY, &t);
            (a, b) = t.apply(&a, &b);
            (ra, rb) = t.apply(&ra, &rb);
        }
        if k == 3 {
            let (state, sa, sb, sv) = saved.take().ok_or("no saved state")?;
            let mut fresh = build_optimizer::<I<B>>(name, &opts).map_err(|e| e.to_string())?;
            fresh
                .load_state(state.clone(), d)
                .map_err(|e| format!("load_state of its own state: {e}"))?;
            let names = |s: &[(String, _)]| s.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
            if names(&fresh.state()) != names(&state) {
                return Err("state → load_state → state changed the entry names".into());
            }
            let (fa, fb, fv) = step(fresh.as_mut(), d, (&sa, &sb, &sv), gr)?;
            if fa != a || fb != b || fv != v {
                return Err("a restored optimizer's step differs from the original's".into());
            }
        }
    }
    Ok(format!(
        "3 steps + on_refactor vs ndarray, worst {worst:.3} of tol {tol:.1e}; state round trip exact"
    ))
}

/// `manifold:<name>`: the [`Manifold`](balora_manifold::Manifold) contract on this backend.
pub(super) fn manifold_contract<B: AutodiffBackend>(
    ctx: &Ctx<B>,
    name: &str,
) -> Result<String, String> {
    let d = &ctx.device;
    let m = build_manifold(name, &Options::default()).map_err(|e| e.to_string())?;
    let mut gen = Gen::new(43);
    let (rank, din, dout) = (3, 7, 5);
    let (a, b) = (gen.normal(rank, din, 1.0), gen.normal(dout, rank, 0.5));
    let (at, bt) = (dev::<I<B>>(&a, d), dev::<I<B>>(&b, d));
    let grams_of = |at: &burn::tensor::Tensor<I<B>, 2>, bt: &burn::tensor::Tensor<I<B>, 2>| {
        PairGrams::new(
            host(at.clone().matmul(at.clone().transpose())),
            host(bt.clone().transpose().matmul(bt.clone())),
        )
        .map_err(|e| e.to_string())
    };
    let mut detail = String::new();
    match m
        .refactor(&grams_of(&at, &bt)?)
        .map_err(|e| e.to_string())?
    {
        None => detail.push_str("leaves the pair as it is"),
        Some(rf) => {
            let (p, q) = (&rf.transform.p, &rf.transform.q);
            let pq = r::rel(&(p * q), &M::identity(rank, rank));
            if pq > 1e-9 {
                return Err(format!("‖P·Q − I‖/‖I‖ = {pq:.1e}"));
            }
            let (na, nb) = (dev::<I<B>>(q, d).matmul(at), bt.matmul(dev::<I<B>>(p, d)));
            let got = host(nb.matmul(na));
            // Three matmul stages of depth ≤ in + 2r; P and Q scale the rounding by their norms.
            let cond = (p.norm() * q.norm() / rank as f64).max(1.0);
            let tol = 4.0 * cond * ctx.precision.matmul_bound(din + 2 * rank, 3);
            let w = rel_within("B'·A' vs B·A", &got, &(&b * &a), tol)?;
            detail.push_str(&format!(
                "P·Q = I to {pq:.0e}; product kept, {w:.3} of tol {tol:.1e}"
            ));
        }
    }
    let zero = dev::<I<B>>(&M::zeros(dout, rank), d);
    let at = dev::<I<B>>(&a, d);
    if let Some(rf) = m
        .refactor(&grams_of(&at, &zero)?)
        .map_err(|e| e.to_string())?
    {
        let identity = GaugeTransform::identity(rank);
        if rf.active_rank > 0 && rf.transform != identity {
            return Err("re-factored a zero product (B = 0): it must be left alone".into());
        }
    }
    Ok(format!("{detail}; zero product left alone"))
}
