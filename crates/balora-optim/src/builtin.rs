//! Built-in optimizers: SGD (momentum), AdamW (with optional first-moment transport), sign descent.

use crate::rules::{adamw_update, sgd_update, sign_update, AdamWParams, StateStore};
use crate::{
    AdapterOptimizer, GaugeTransform, OptimError, OptimizerEntry, OptimizerFactory, Options,
    PairStep,
};
use balora_manifold::OptionDoc;
use burn::tensor::{backend::Backend, Tensor, TensorData};

/// State keys of an adapter's factors: `{key}.lora_a`, `{key}.lora_b`.
pub fn factor_keys(key: &str) -> (String, String) {
    (format!("{key}.lora_a"), format!("{key}.lora_b"))
}

/// Uploads an r×r host matrix (f64) as an f32 tensor.
pub fn upload<B: Backend>(m: &balora_manifold::DMatrix<f64>, device: &B::Device) -> Tensor<B, 2> {
    let rows: Vec<f32> = m.transpose().iter().map(|&v| v as f32).collect();
    Tensor::from_data(TensorData::new(rows, [m.nrows(), m.ncols()]), device)
}

/// How a state buffer changes when the manifold re-factors `(A, B) → (Q·A, B·P)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MomentKind {
    /// The buffer is a running average of raw gradients (AdamW's `m`, SGD's momentum), which
    /// transform like gradients: `m_A ← Pᵀ·m_A`, `m_B ← m_B·Qᵀ`.
    Gradient,
    /// The buffer is a running average of *update directions that transform like the factors
    /// themselves*: `m_A ← Q·m_A`, `m_B ← m_B·P`. Riemannian-preconditioned gradients
    /// `(BᵀB)⁻¹∇A`, `∇B(AAᵀ)⁻¹` are of this kind (exactly for δ = 0).
    Factor,
}

/// Carries buffer `buf` of adapter `key`'s two factor slots into the new gauge (see [`MomentKind`]).
/// Slots that do not exist yet (no step taken) are left alone.
pub fn transport_buffers<B: Backend>(
    store: &mut StateStore<B>,
    key: &str,
    t: &GaugeTransform,
    buf: usize,
    kind: MomentKind,
) {
    let r = t.p.nrows();
    let (ka, kb) = factor_keys(key);
    let (left_a, right_b) = match kind {
        MomentKind::Gradient => (t.p.transpose(), t.q.transpose()),
        MomentKind::Factor => (t.q.clone(), t.p.clone()),
    };
    if let Some(slot) = store.slots.get_mut(&ka) {
        let m = slot.bufs[buf].clone();
        let n = m.dims()[0];
        let left = upload::<B>(&left_a, &m.device());
        slot.bufs[buf] = left.matmul(m.reshape([r, n / r])).reshape([n]);
    }
    if let Some(slot) = store.slots.get_mut(&kb) {
        let m = slot.bufs[buf].clone();
        let n = m.dims()[0];
        let right = upload::<B>(&right_b, &m.device());
        slot.bufs[buf] = m.reshape([n / r, r]).matmul(right).reshape([n]);
    }
}

/// Carries a first-moment buffer of A (`m_A ← Pᵀ·m_A`) or B (`m_B ← m_B·Qᵀ`) into new coordinates.
pub fn transport_first_moments<B: Backend>(
    store: &mut StateStore<B>,
    key: &str,
    t: &GaugeTransform,
    buf: usize,
) {
    transport_buffers(store, key, t, buf, MomentKind::Gradient);
}

/// AdamW (decoupled weight decay). Option `transport`: carry first moments across re-factorisations.
#[derive(Debug, Clone)]
pub struct AdamW<B: Backend> {
    /// Hyper-parameters.
    pub hp: AdamWParams,
    /// Transport first moments when the manifold re-factors.
    pub transport: bool,
    store: StateStore<B>,
}

impl<B: Backend> AdamW<B> {
    /// A fresh optimizer.
    pub fn new(hp: AdamWParams, transport: bool) -> Self {
        Self {
            hp,
            transport,
            store: StateStore::new(&["m", "v"]),
        }
    }
}

/// Parses AdamW options (`beta1`, `beta2`, `eps`, `weight_decay`) with extra allowed keys.
pub fn adamw_params(
    opts: &Options,
    section: &str,
    extra: &[&str],
) -> Result<AdamWParams, OptimError> {
    let mut allowed = vec!["beta1", "beta2", "eps", "weight_decay"];
    allowed.extend_from_slice(extra);
    opts.reject_unknown(section, &allowed)?;
    let d = AdamWParams::default();
    let hp = AdamWParams {
        beta1: opts.f64_or("beta1", d.beta1)?,
        beta2: opts.f64_or("beta2", d.beta2)?,
        eps: opts.f64_or("eps", d.eps)?,
        weight_decay: opts.f64_or("weight_decay", d.weight_decay)?,
    };
    for (k, v) in [("beta1", hp.beta1), ("beta2", hp.beta2)] {
        if !(0.0..1.0).contains(&v) {
            return Err(OptionsError(k, format!("must be in [0, 1), got {v}")));
        }
    }
    if hp.eps <= 0.0 || hp.weight_decay < 0.0 {
        return Err(OptionsError(
            "eps",
            "eps must be > 0 and weight_decay ≥ 0".into(),
        ));
    }
    Ok(hp)
}

#[allow(non_snake_case)]
fn OptionsError(key: &str, message: String) -> OptimError {
    OptimError::Options(crate::OptionsError::BadValue {
        key: key.into(),
        message,
    })
}

impl<B: Backend> AdapterOptimizer<B> for AdamW<B> {
    fn name(&self) -> &str {
        "adamw"
    }
    fn step_pair(&mut self, key: &str, lr: f64, p: PairStep<B>) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let (ka, kb) = factor_keys(key);
        (
            adamw_update(&mut self.store, &ka, &self.hp, lr, p.a, p.grad_a),
            adamw_update(&mut self.store, &kb, &self.hp, lr, p.b, p.grad_b),
        )
    }
    fn step_param(&mut self, key: &str, lr: f64, v: Tensor<B, 1>, g: Tensor<B, 1>) -> Tensor<B, 1> {
        adamw_update(&mut self.store, key, &self.hp, lr, v, g)
    }
    fn on_refactor(&mut self, key: &str, t: &GaugeTransform) {
        if self.transport {
            transport_first_moments(&mut self.store, key, t, 0);
        }
    }
    fn state(&self) -> Vec<(String, TensorData)> {
        self.store.export()
    }
    fn load_state(
        &mut self,
        s: Vec<(String, TensorData)>,
        d: &B::Device,
    ) -> Result<(), OptimError> {
        self.store.import(s, d)
    }
}

/// SGD with optional momentum and decoupled weight decay.
#[derive(Debug, Clone)]
pub struct Sgd<B: Backend> {
    /// Momentum μ (0 = plain gradient descent).
    pub momentum: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Transport the momentum buffer across re-factorisations.
    pub transport: bool,
    store: StateStore<B>,
}

impl<B: Backend> Sgd<B> {
    /// A fresh optimizer.
    pub fn new(momentum: f64, weight_decay: f64, transport: bool) -> Self {
        Self {
            momentum,
            weight_decay,
            transport,
            store: StateStore::new(&["m"]),
        }
    }
}

impl<B: Backend> AdapterOptimizer<B> for Sgd<B> {
    fn name(&self) -> &str {
        "sgd"
    }
    fn step_pair(&mut self, key: &str, lr: f64, p: PairStep<B>) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let (ka, kb) = factor_keys(key);
        let (mu, wd) = (self.momentum, self.weight_decay);
        (
            sgd_update(&mut self.store, &ka, mu, wd, lr, p.a, p.grad_a),
            sgd_update(&mut self.store, &kb, mu, wd, lr, p.b, p.grad_b),
        )
    }
    fn step_param(&mut self, key: &str, lr: f64, v: Tensor<B, 1>, g: Tensor<B, 1>) -> Tensor<B, 1> {
        sgd_update(
            &mut self.store,
            key,
            self.momentum,
            self.weight_decay,
            lr,
            v,
            g,
        )
    }
    fn on_refactor(&mut self, key: &str, t: &GaugeTransform) {
        if self.transport {
            transport_first_moments(&mut self.store, key, t, 0);
        }
    }
    fn state(&self) -> Vec<(String, TensorData)> {
        self.store.export()
    }
    fn load_state(
        &mut self,
        s: Vec<(String, TensorData)>,
        d: &B::Device,
    ) -> Result<(), OptimError> {
        self.store.import(s, d)
    }
}

/// Sign descent `θ ← θ − η·g/(|g| + ε)`: the paper's synthetic-experiment optimizer (stateless).
#[derive(Debug, Clone)]
pub struct SignDescent {
    /// ε.
    pub eps: f64,
}

impl<B: Backend> AdapterOptimizer<B> for SignDescent {
    fn name(&self) -> &str {
        "sign"
    }
    fn step_pair(&mut self, _key: &str, lr: f64, p: PairStep<B>) -> (Tensor<B, 2>, Tensor<B, 2>) {
        (
            sign_update(self.eps, lr, p.a, p.grad_a),
            sign_update(self.eps, lr, p.b, p.grad_b),
        )
    }
    fn step_param(
        &mut self,
        _key: &str,
        lr: f64,
        v: Tensor<B, 1>,
        g: Tensor<B, 1>,
    ) -> Tensor<B, 1> {
        sign_update(self.eps, lr, v, g)
    }
    fn state(&self) -> Vec<(String, TensorData)> {
        Vec::new()
    }
    fn load_state(
        &mut self,
        s: Vec<(String, TensorData)>,
        _d: &B::Device,
    ) -> Result<(), OptimError> {
        match s.first() {
            None => Ok(()),
            Some((k, _)) => Err(OptimError::State(format!(
                "sign descent is stateless; got `{k}`"
            ))),
        }
    }
}

struct AdamWFactory {
    hp: AdamWParams,
    transport: bool,
}
impl OptimizerFactory for AdamWFactory {
    fn build<B: Backend>(&self) -> Box<dyn AdapterOptimizer<B>> {
        Box::new(AdamW::<B>::new(self.hp, self.transport))
    }
}

struct SgdFactory {
    momentum: f64,
    weight_decay: f64,
    transport: bool,
}
impl OptimizerFactory for SgdFactory {
    fn build<B: Backend>(&self) -> Box<dyn AdapterOptimizer<B>> {
        Box::new(Sgd::<B>::new(
            self.momentum,
            self.weight_decay,
            self.transport,
        ))
    }
}

struct SignFactory(f64);
impl OptimizerFactory for SignFactory {
    fn build<B: Backend>(&self) -> Box<dyn AdapterOptimizer<B>> {
        Box::new(SignDescent { eps: self.0 })
    }
}

inventory::submit! {
    OptimizerEntry {
        name: "adamw",
        description: "AdamW (decoupled weight decay); optional first-moment transport across re-factorisations",
        options: &[
            OptionDoc { key: "beta1", default: "0.9", help: "first-moment decay" },
            OptionDoc { key: "beta2", default: "0.999", help: "second-moment decay" },
            OptionDoc { key: "eps", default: "1e-8", help: "denominator ε" },
            OptionDoc { key: "weight_decay", default: "0", help: "decoupled weight decay λ" },
            OptionDoc { key: "transport", default: "false", help: "carry first moments into the manifold's new gauge (m_A ← Pᵀm_A, m_B ← m_B Qᵀ)" },
        ],
        build: |opts| {
            let hp = adamw_params(opts, "optimizer.adamw", &["transport"])?;
            Ok(Box::new(AdamWFactory { hp, transport: opts.bool_or("transport", false)? }))
        },
    }
}

inventory::submit! {
    OptimizerEntry {
        name: "sgd",
        description: "SGD with optional momentum and decoupled weight decay",
        options: &[
            OptionDoc { key: "momentum", default: "0", help: "momentum μ" },
            OptionDoc { key: "weight_decay", default: "0", help: "decoupled weight decay λ" },
            OptionDoc { key: "transport", default: "false", help: "carry the momentum buffer into the manifold's new gauge" },
        ],
        build: |opts| {
            opts.reject_unknown("optimizer.sgd", &["momentum", "weight_decay", "transport"])?;
            Ok(Box::new(SgdFactory {
                momentum: opts.f64_or("momentum", 0.0)?,
                weight_decay: opts.f64_or("weight_decay", 0.0)?,
                transport: opts.bool_or("transport", false)?,
            }))
        },
    }
}

inventory::submit! {
    OptimizerEntry {
        name: "sign",
        description: "sign descent g/(|g|+ε), the paper's synthetic-experiment optimizer",
        options: &[OptionDoc { key: "eps", default: "1e-8", help: "ε in g/(|g|+ε)" }],
        build: |opts| {
            opts.reject_unknown("optimizer.sign", &["eps"])?;
            Ok(Box::new(SignFactory(opts.f64_or("eps", 1e-8)?)))
        },
    }
}
