//! Riemannian-preconditioned LoRA (Zhang & Pilanci, ICML 2024) as a balora optimizer plugin.
//!
//! Before the base update, the gradients are preconditioned with the r×r Grams of the pair:
//!
//! ```text
//! ∇A ← (BᵀB + δI)⁻¹ ∇A        ∇B ← ∇B (AAᵀ + δI)⁻¹
//! ```
//!
//! then SGD (with momentum) or AdamW is applied with the element-wise rules of
//! [`balora_optim::rules`]. The Grams come from the driver's one batched transfer for all adapters
//! ([`AdapterOptimizer::wants_grams`]); the two r×r inverses are computed on the host in f64
//! (Cholesky) and uploaded, so the device work is two thin matmuls per adapter.
//!
//! **Gauge equivariance.** With δ = 0 the preconditioned gradients transform like the factors
//! themselves under `(A, B) → (Q·A, B·P)`: `(B'ᵀB')⁻¹∇A' = Q·(BᵀB)⁻¹∇A`. So buffers that
//! average preconditioned gradients are carried with `m_A ← Q·m_A`, `m_B ← m_B·P`
//! ([`MomentKind::Factor`]), not like raw gradients; option `transport` does that. The AdamW
//! base's second moment averages the squares of those directions, so it is carried with
//! `v_A ← (Q∘Q)·v_A`, `v_B ← v_B·(P∘P)` (exact when `P` is a signed permutation — then
//! `Q = Pᵀ` and this coincides with the raw-gradient rule — and the independent-coordinates
//! approximation otherwise; see [`TransportMode`]). With δ > 0 all of this holds up to O(δ).
//!
//! ```
//! extern crate balora_plugin_riemannian;
//! use balora_optim::{build_optimizer, OptionValue, Options};
//! use burn::backend::NdArray;
//! let opts = Options::default()
//!     .with("base", OptionValue::Str("sgd".into()))
//!     .with("delta", OptionValue::Float(1e-4));
//! let opt = build_optimizer::<NdArray>("riemannian", &opts).unwrap();
//! assert!(opt.wants_grams());
//! ```

use balora_manifold::DMatrix;
use balora_optim::rules::{adamw_update, sgd_update, AdamWParams, SgdParams, StateStore};
use balora_optim::{
    adamw_params, factor_keys, sgd_params, upload, AdapterOptimizer, MomentKind, OptimError,
    OptimizerFactory, OptionDoc, Options, PairGrams, PairStep, TransportMode,
};
use burn::tensor::{backend::Backend, Tensor};

/// Default damping δ.
pub const DEFAULT_DELTA: f64 = 1e-6;

/// The update applied to the preconditioned gradients.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BaseRule {
    /// SGD with momentum μ (0 = none) and decoupled weight decay.
    Sgd(SgdParams),
    /// AdamW.
    AdamW(AdamWParams),
}

/// `(M + δI)⁻¹` of a symmetric PSD r×r matrix, in f64.
///
/// Cholesky first; if `M + δI` is not numerically positive definite (δ tiny against rounding
/// noise), the symmetric eigen-decomposition with eigenvalues clamped at δ.
pub fn damped_inverse(m: &DMatrix<f64>, delta: f64) -> DMatrix<f64> {
    let r = m.nrows();
    let damped = m + DMatrix::identity(r, r) * delta;
    match damped.clone().cholesky() {
        Some(ch) => ch.inverse(),
        None => {
            let (vals, vecs) = balora_manifold::linalg::sym_eig_desc(m);
            let inv = vals.map(|v| 1.0 / (v.max(0.0) + delta));
            &vecs * DMatrix::from_diagonal(&inv) * vecs.transpose()
        }
    }
}

/// Riemannian-preconditioned SGD / AdamW.
#[derive(Debug, Clone)]
pub struct Riemannian<B: Backend> {
    /// Base rule.
    pub base: BaseRule,
    /// Damping δ > 0.
    pub delta: f64,
    /// What is carried into the manifold's new gauge (as [`MomentKind::Factor`] buffers).
    pub transport: TransportMode,
    store: StateStore<B>,
}

impl<B: Backend> Riemannian<B> {
    /// A fresh optimizer.
    pub fn new(base: BaseRule, delta: f64, transport: TransportMode) -> Self {
        let names: &'static [&'static str] = match base {
            BaseRule::Sgd(_) => &["m"],
            BaseRule::AdamW(_) => &["m", "v"],
        };
        Self {
            base,
            delta,
            transport,
            store: StateStore::new(names),
        }
    }

    fn update<const D: usize>(
        &mut self,
        key: &str,
        lr: f64,
        param: Tensor<B, D>,
        grad: Tensor<B, D>,
    ) -> Tensor<B, D> {
        match self.base {
            BaseRule::Sgd(SgdParams {
                momentum,
                weight_decay,
            }) => sgd_update(
                &mut self.store,
                key,
                momentum,
                weight_decay,
                lr,
                param,
                grad,
            ),
            BaseRule::AdamW(hp) => adamw_update(&mut self.store, key, &hp, lr, param, grad),
        }
    }
}

/// Grams computed on the device when the caller did not supply them.
fn grams_on_device<B: Backend>(a: &Tensor<B, 2>, b: &Tensor<B, 2>) -> PairGrams {
    let r = a.dims()[0];
    let host = |t: Tensor<B, 2>| -> DMatrix<f64> {
        let v: Vec<f64> = t.into_data().iter::<f64>().collect();
        DMatrix::from_row_slice(r, r, &v)
    };
    let aat = host(a.clone().matmul(a.clone().transpose()));
    let btb = host(b.clone().transpose().matmul(b.clone()));
    PairGrams::measured(aat, btb)
}

impl<B: Backend> AdapterOptimizer<B> for Riemannian<B> {
    fn name(&self) -> &str {
        "riemannian"
    }

    fn wants_grams(&self) -> bool {
        true
    }

    fn step_pair(&mut self, key: &str, lr: f64, p: PairStep<B>) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let grams = p.grams.unwrap_or_else(|| grams_on_device(&p.a, &p.b));
        let device = p.a.device();
        let inv_b = upload::<B>(&damped_inverse(&grams.btb, self.delta), &device);
        let inv_a = upload::<B>(&damped_inverse(&grams.aat, self.delta), &device);
        let grad_a = inv_b.matmul(p.grad_a);
        let grad_b = p.grad_b.matmul(inv_a);
        let (ka, kb) = factor_keys(key);
        (
            self.update(&ka, lr, p.a, grad_a),
            self.update(&kb, lr, p.b, grad_b),
        )
    }

    /// Parameters that are not LoRA factors get the base rule without preconditioning.
    fn step_param(&mut self, key: &str, lr: f64, v: Tensor<B, 1>, g: Tensor<B, 1>) -> Tensor<B, 1> {
        self.update(key, lr, v, g)
    }

    fn moment_transport(&self) -> Option<TransportMode> {
        let no_momentum = matches!(self.base, BaseRule::Sgd(hp) if hp.momentum == 0.0);
        (!no_momentum).then_some(self.transport)
    }

    /// The buffers average preconditioned directions, which transform like the factors.
    fn moment_kind(&self) -> MomentKind {
        MomentKind::Factor
    }

    // State, checkpoints and moment transport (`m`, and `v` for the AdamW base, per
    // `transport` and `moment_kind`): the trait's defaults over this store.
    fn store(&self) -> Option<&StateStore<B>> {
        Some(&self.store)
    }

    fn store_mut(&mut self) -> Option<&mut StateStore<B>> {
        Some(&mut self.store)
    }
}

/// Parsed options; builds a [`Riemannian`] for any backend.
#[derive(Debug, Clone, Copy)]
pub struct RiemannianFactory {
    /// Base rule.
    pub base: BaseRule,
    /// δ.
    pub delta: f64,
    /// Moment transport.
    pub transport: TransportMode,
}

impl RiemannianFactory {
    /// From config options: `base`, `delta`, `transport`, and the base rule's keys
    /// (`momentum`, `weight_decay` for SGD; `beta1`, `beta2`, `eps`, `weight_decay` for AdamW).
    pub fn from_options(opts: &Options) -> Result<Self, OptimError> {
        const SECTION: &str = "optimizer.riemannian";
        const OWN: [&str; 3] = ["base", "delta", "transport"];
        let base = match opts.choice_or("base", "adamw", &["sgd", "adamw"])? {
            "sgd" => BaseRule::Sgd(sgd_params(opts, SECTION, &OWN)?),
            _ => BaseRule::AdamW(adamw_params(opts, SECTION, &OWN)?),
        };
        Ok(Self {
            base,
            delta: opts.f64_where("delta", DEFAULT_DELTA, "a positive number", |v| {
                v.is_finite() && v > 0.0
            })?,
            transport: TransportMode::from_options(opts)?,
        })
    }
}

impl OptimizerFactory for RiemannianFactory {
    fn build<B: Backend>(&self) -> Box<dyn AdapterOptimizer<B>> {
        Box::new(Riemannian::<B>::new(self.base, self.delta, self.transport))
    }
}

balora_optim::register_optimizer! {
    name: "riemannian",
    description: "Riemannian-preconditioned LoRA: ∇A ← (BᵀB+δI)⁻¹∇A, ∇B ← ∇B(AAᵀ+δI)⁻¹, then SGD or AdamW (Zhang & Pilanci, 2024)",
    options: &[
        OptionDoc { key: "base", default: "adamw", help: "sgd | adamw: the update applied to the preconditioned gradients" },
        OptionDoc { key: "delta", default: "1e-6", help: "damping δ > 0 of the r×r preconditioners" },
        OptionDoc { key: "transport", default: "false", help: "carry the moments into the manifold's new gauge: \"first\" (m_A ← Q·m_A, m_B ← m_B·P), \"signed\", \"diagonal\" (= true; also v_A ← (Q∘Q)·v_A, v_B ← v_B·(P∘P) for the adamw base)" },
        OptionDoc { key: "momentum", default: "0", help: "SGD momentum μ (base = sgd)" },
        OptionDoc { key: "weight_decay", default: "0", help: "decoupled weight decay" },
        OptionDoc { key: "beta1", default: "0.9", help: "AdamW first-moment decay (base = adamw)" },
        OptionDoc { key: "beta2", default: "0.999", help: "AdamW second-moment decay (base = adamw)" },
        OptionDoc { key: "eps", default: "1e-8", help: "AdamW ε (base = adamw)" },
    ],
    build: |opts| Ok(Box::new(RiemannianFactory::from_options(opts)?)),
}
