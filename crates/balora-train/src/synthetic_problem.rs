//! The problems of the synthetic experiment ([`crate::synthetic`]): how `W0`, `T` and `A0` are
//! drawn for each seed and trajectory, and the optimal rank-r loss.

use nalgebra::DMatrix;
use rand::{rngs::StdRng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

/// How the trajectories of one seed are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// The official code's protocol: `W0` and `T` drawn once per seed, trajectories differ only in
    /// the LoRA initialisation `A0`; the median is over inits for one problem.
    #[default]
    Paper,
    /// Every trajectory draws its own `(W0, T, A0)`: the median mixes problem-to-problem variance.
    Resample,
}

/// One sampled problem, in f64 on the host.
#[derive(Debug, Clone)]
pub struct Problem {
    /// Frozen weight `W0` (d×d).
    pub w0: DMatrix<f64>,
    /// Target `T` (d×d).
    pub target: DMatrix<f64>,
    /// Initial A (r×d); B starts at zero.
    pub a0: DMatrix<f64>,
    /// Optimal rank-r loss `½Σ_{i>r} σᵢ(T − W0)²`.
    pub optimal_loss: f64,
}

fn gaussian(rng: &mut StdRng, rows: usize, cols: usize) -> DMatrix<f64> {
    DMatrix::from_fn(rows, cols, |_, _| StandardNormal.sample(rng))
}

impl Problem {
    /// Trajectory `index` of seed `seed` with [`Protocol::Resample`]: its own `W0`, `T` and `A0`.
    pub fn sample(dim: usize, rank: usize, seed: u64, index: usize) -> Self {
        let mut rng =
            StdRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(index as u64));
        let w0 = gaussian(&mut rng, dim, dim);
        let target = gaussian(&mut rng, dim, dim);
        let a0 = gaussian(&mut rng, rank, dim);
        Self::new(w0, target, a0)
    }

    /// Trajectory `index` of seed `seed` with [`Protocol::Paper`]: `W0` and `T` depend on the
    /// seed alone (one stream), `A0` on the seed and the trajectory (another stream).
    pub fn paper(dim: usize, rank: usize, seed: u64, index: usize) -> Self {
        let stream =
            |tag: u64| StdRng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ tag);
        let mut shared = stream(0x5EED_0000_0000_0000);
        let w0 = gaussian(&mut shared, dim, dim);
        let target = gaussian(&mut shared, dim, dim);
        let mut init = stream(0x1417_0000_0000_0000 ^ index as u64);
        let a0 = gaussian(&mut init, rank, dim);
        Self::new(w0, target, a0)
    }

    /// A problem from its matrices; computes the optimal rank-r loss (`r` = rows of `a0`).
    pub fn new(w0: DMatrix<f64>, target: DMatrix<f64>, a0: DMatrix<f64>) -> Self {
        let rank = a0.nrows();
        let sv = (&target - &w0).singular_values();
        let mut sv: Vec<f64> = sv.iter().copied().collect();
        sv.sort_by(|a, b| b.total_cmp(a));
        let optimal_loss = 0.5 * sv.iter().skip(rank).map(|s| s * s).sum::<f64>();
        Self {
            w0,
            target,
            a0,
            optimal_loss,
        }
    }
}
