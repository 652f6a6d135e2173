//! Optimizer-state transport across re-factorisations `(A, B) → (Q·A, B·P)`, `P·Q = I`.
//!
//! Gradients in the new coordinates are `∇A' = Pᵀ·∇A`, `∇B' = ∇B·Qᵀ`, so a first moment (a
//! running average of gradients) is carried exactly by the same linear maps. A second moment
//! (a running average of `g²`, element-wise) has no exact transport when `P` mixes rows; two
//! cases are exact or principled:
//!
//! * `P` a **signed permutation** (what the canonical SVD gauge produces when it only flips signs
//!   or reorders): `(Pᵀg)² = (P∘P)ᵀ·g²` element by element, so `v_A ← (P∘P)ᵀ·v_A`,
//!   `v_B ← v_B·(Q∘Q)ᵀ` is exact (`∘`: element-wise square);
//! * **any** `P`, treating the gradient's coordinates as independent with zero mean:
//!   `E[(Pᵀg)²] = (P∘P)ᵀ·E[g²]`, the same formula. It keeps `v ≥ 0` and is exact in the
//!   signed-permutation case.
//!
//! [`TransportMode`] chooses among these; `docs/transport.md` has the measurement behind the
//! default.

use crate::rules::StateStore;
use crate::{factor_keys, GaugeTransform, OptimError, Options, OptionsError};
use balora_manifold::{DMatrix, OptionValue};
use burn::tensor::{backend::Backend, Tensor, TensorData};

/// Uploads an r×r host matrix (f64), converted on the host to the backend's float type.
pub fn upload<B: Backend>(m: &DMatrix<f64>, device: &B::Device) -> Tensor<B, 2> {
    let rows: Vec<f64> = m.transpose().iter().copied().collect();
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

/// What an optimizer carries into the manifold's new gauge (option `transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportMode {
    /// Nothing: the moments stay in the old coordinates (`transport = false` / `"off"`).
    Off,
    /// First moments only, exactly; second moments kept (`"first"`).
    First,
    /// First moments; second moments only when the transform is a signed permutation, where
    /// the permutation is exact, and kept otherwise (`"signed"`).
    Signed,
    /// First moments; second moments by `v_A ← (P∘P)ᵀ·v_A`, `v_B ← v_B·(Q∘Q)ᵀ` for every
    /// transform (`"diagonal"`, and what `transport = true` means: see `docs/transport.md`).
    Diagonal,
}

impl TransportMode {
    /// What `transport = true` selects.
    pub const DEFAULT_ON: TransportMode = TransportMode::Diagonal;

    /// The accepted spellings, for option docs and errors.
    pub const CHOICES: &'static str =
        "false | true | \"off\" | \"first\" | \"signed\" | \"diagonal\"";

    /// Parses option `transport` (absent: [`Off`](Self::Off); `true`: [`DEFAULT_ON`](Self::DEFAULT_ON)).
    pub fn from_options(opts: &Options) -> Result<Self, OptimError> {
        let bad = |got: String| {
            OptimError::Options(OptionsError::BadValue {
                key: "transport".into(),
                message: format!("expected {}, got {got}", Self::CHOICES),
            })
        };
        Ok(match opts.0.get("transport") {
            None | Some(OptionValue::Bool(false)) => Self::Off,
            Some(OptionValue::Bool(true)) => Self::DEFAULT_ON,
            Some(OptionValue::Str(s)) => match s.as_str() {
                "off" => Self::Off,
                "first" => Self::First,
                "signed" => Self::Signed,
                "diagonal" => Self::Diagonal,
                _ => return Err(bad(format!("`{s}`"))),
            },
            Some(other) => return Err(bad(format!("{other:?}"))),
        })
    }

    /// Whether first moments are transported.
    pub fn first(self) -> bool {
        self != Self::Off
    }
}

/// Absolute tolerance of [`signed_permutation`] used by the optimizers.
pub const SIGNED_PERMUTATION_TOL: f64 = 1e-4;

/// The signed permutation `p` is, with its entries rounded to exactly `0` and `±1`, when every
/// entry is within `tol` of `0`, `1` or `−1` and every row and column has exactly one entry of
/// magnitude near 1; `None` otherwise.
pub fn signed_permutation(p: &DMatrix<f64>, tol: f64) -> Option<DMatrix<f64>> {
    if !p.is_square() {
        return None;
    }
    let mut out = DMatrix::zeros(p.nrows(), p.ncols());
    for j in 0..p.ncols() {
        for i in 0..p.nrows() {
            let x = p[(i, j)];
            if (x.abs() - 1.0).abs() <= tol {
                out[(i, j)] = x.signum();
            } else if x.abs() > tol || x.is_nan() {
                return None;
            }
        }
    }
    let ones = |v: &[usize]| v.iter().all(|&c| c == 1);
    let rows: Vec<usize> = (0..out.nrows())
        .map(|i| out.row(i).iter().filter(|x| **x != 0.0).count())
        .collect();
    let cols: Vec<usize> = (0..out.ncols())
        .map(|j| out.column(j).iter().filter(|x| **x != 0.0).count())
        .collect();
    (ones(&rows) && ones(&cols)).then_some(out)
}

/// Multiplies buffer `buf` of adapter `key`'s A slot by `left` (`m_A ← left·m_A`) and of its B
/// slot by `right` (`m_B ← m_B·right`). Slots that do not exist yet (no step taken) are left alone.
fn apply_to_slots<B: Backend>(
    store: &mut StateStore<B>,
    key: &str,
    buf: usize,
    left: &DMatrix<f64>,
    right: &DMatrix<f64>,
) {
    let r = left.nrows();
    let (ka, kb) = factor_keys(key);
    if let Some(slot) = store.get_mut(&ka) {
        let m = slot.bufs[buf].clone();
        let n = m.dims()[0];
        let l = upload::<B>(left, &m.device());
        slot.bufs[buf] = l.matmul(m.reshape([r, n / r])).reshape([n]);
    }
    if let Some(slot) = store.get_mut(&kb) {
        let m = slot.bufs[buf].clone();
        let n = m.dims()[0];
        let rt = upload::<B>(right, &m.device());
        slot.bufs[buf] = m.reshape([n / r, r]).matmul(rt).reshape([n]);
    }
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
    let (left, right) = match kind {
        MomentKind::Gradient => (t.p.transpose(), t.q.transpose()),
        MomentKind::Factor => (t.q.clone(), t.p.clone()),
    };
    apply_to_slots(store, key, buf, &left, &right);
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

/// Carries a second-moment buffer `buf` (a running average of squares of buffers of `kind`)
/// per `mode`: for [`MomentKind::Gradient`] `v_A ← (P∘P)ᵀ·v_A`, `v_B ← v_B·(Q∘Q)ᵀ`; for
/// [`MomentKind::Factor`] `v_A ← (Q∘Q)·v_A`, `v_B ← v_B·(P∘P)`. A transform recognised as a
/// signed permutation ([`signed_permutation`]) is rounded first, so the permutation is exact.
/// [`TransportMode::Signed`] leaves other transforms alone; `Off` and `First` do nothing.
pub fn transport_second_moments<B: Backend>(
    store: &mut StateStore<B>,
    key: &str,
    t: &GaugeTransform,
    buf: usize,
    kind: MomentKind,
    mode: TransportMode,
) {
    let (p, q) = match (signed_permutation(&t.p, SIGNED_PERMUTATION_TOL), mode) {
        (_, TransportMode::Off | TransportMode::First) => return,
        // A signed permutation is orthogonal: its inverse is its transpose.
        (Some(s), _) => (s.clone(), s.transpose()),
        (None, TransportMode::Signed) => return,
        (None, TransportMode::Diagonal) => (t.p.clone(), t.q.clone()),
    };
    let sq = |m: &DMatrix<f64>| m.component_mul(m);
    let (left, right) = match kind {
        MomentKind::Gradient => (sq(&p).transpose(), sq(&q).transpose()),
        MomentKind::Factor => (sq(&q), sq(&p)),
    };
    apply_to_slots(store, key, buf, &left, &right);
}

/// Transports an Adam-like pair of buffers (`m` at `m_buf`, `v` at `v_buf`) per `mode`.
pub fn transport_adam<B: Backend>(
    store: &mut StateStore<B>,
    key: &str,
    t: &GaugeTransform,
    (m_buf, v_buf): (usize, usize),
    kind: MomentKind,
    mode: TransportMode,
) {
    if mode.first() {
        transport_buffers(store, key, t, m_buf, kind);
        transport_second_moments(store, key, t, v_buf, kind, mode);
    }
}

/// Carries a [`StateStore`]'s moments per `mode`: with buffers `m` and `v`,
/// [`transport_adam`]; with `m` only, [`transport_buffers`] when `mode` carries first moments;
/// nothing otherwise. What the default [`AdapterOptimizer::on_refactor`](crate::AdapterOptimizer::on_refactor) does.
pub fn transport_store<B: Backend>(
    store: &mut StateStore<B>,
    key: &str,
    t: &GaugeTransform,
    kind: MomentKind,
    mode: TransportMode,
) {
    let at = |n: &str| store.names().iter().position(|x| *x == n);
    match (at("m"), at("v")) {
        (Some(m), Some(v)) => transport_adam(store, key, t, (m, v), kind, mode),
        (Some(m), None) if mode.first() => transport_buffers(store, key, t, m, kind),
        _ => {}
    }
}
