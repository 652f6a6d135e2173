//! The paper's synthetic experiment (its Fig. 3), on any burn backend.
//!
//! One `d×d` layer with frozen `W0 ~ N(0,1)`, target `T ~ N(0,1)`, loss `½‖W0 + B·A − T‖²_F`,
//! rank r, `B = 0`, `A ~ N(0,1)`, scale 1. With the paper's protocol ([`Protocol::Paper`], as in
//! the official `synthetic/synthetic_loss.py`) `W0` and `T` are drawn once per seed and the
//! trajectories differ only in `A0`; [`Protocol::Resample`] draws a new `(W0, T, A0)` for every
//! trajectory. Every method and optimizer of a trajectory starts from the same `A0` (the official
//! code draws a fresh init for each method; pairing them removes that noise from the comparison).
//! Per trajectory the learning rate is the one of
//! `linspace(lr_min, lr_max, lr_count)` with the lowest final loss (runs whose loss exceeds
//! `discard_above` or becomes non-finite are discarded). Reported: `loss − ½Σ_{i>r} σᵢ(T − W0)²`
//! (the optimal rank-r loss, computed in f64 on the host), median and quartiles over trajectories.
//!
//! The model is a real [`LoraLinear`] fed the identity matrix, so its output is `(W0 + B·A)ᵀ`;
//! the step is the same [`TrainStepper`] the real trainer uses.

use crate::{TrainError, TrainStepper};
use balora_adapter::{LoraAdapter, LoraLinear};
use balora_manifold::{OptionValue, Options};
use balora_optim::RegistryBackend;
use burn::module::Param;
use burn::nn::Linear;
use burn::optim::GradientsParams;
use burn::tensor::{backend::AutodiffBackend, ElementConversion, Tensor, TensorData};
use nalgebra::DMatrix;
use serde::{Deserialize, Serialize};

pub use crate::synthetic_problem::{Problem, Protocol};

/// One method of the comparison: a label and a manifold with options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodSpec {
    /// Label in tables and plots.
    pub label: String,
    /// Registered manifold name.
    pub manifold: String,
    /// Manifold options.
    #[serde(default)]
    pub options: Options,
}

/// One optimizer of the comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerSpec {
    /// Label in tables and plots.
    pub label: String,
    /// Registered optimizer name.
    pub name: String,
    /// Optimizer options.
    #[serde(default)]
    pub options: Options,
}

/// Configuration of the synthetic experiment (`configs/synthetic.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyntheticConfig {
    /// Compute backend name (`ndarray`, `wgpu`, `cuda`, `tch`), resolved by the CLI.
    pub backend: Option<String>,
    /// Layer size d (the layer is d×d).
    pub dim: usize,
    /// Adapter rank r.
    pub rank: usize,
    /// Optimizer steps per run.
    pub steps: usize,
    /// Trajectories per seed (LoRA inits with [`Protocol::Paper`], whole problems with `Resample`).
    pub trajectories: usize,
    /// How trajectories are drawn.
    pub protocol: Protocol,
    /// Smallest learning rate of the grid.
    pub lr_min: f64,
    /// Largest learning rate of the grid.
    pub lr_max: f64,
    /// Grid size.
    pub lr_count: usize,
    /// Runs whose loss exceeds this are discarded.
    pub discard_above: f64,
    /// First seed.
    pub seed: u64,
    /// Number of seeds (`seed`, `seed + 1`, …): one problem each under [`Protocol::Paper`]; the
    /// report gives every seed's median and the median and range of those medians.
    pub seeds: usize,
    /// Worker threads (0 = all cores).
    pub workers: usize,
    /// Methods (manifolds).
    pub methods: Vec<MethodSpec>,
    /// Optimizers.
    pub optimizers: Vec<OptimizerSpec>,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        let gauge = |g: &str| Options::default().with("gauge", OptionValue::Str(g.into()));
        Self {
            backend: None,
            dim: 20,
            rank: 4,
            steps: 100,
            trajectories: 8,
            protocol: Protocol::Paper,
            lr_min: 1e-5,
            lr_max: 0.3,
            lr_count: 50,
            discard_above: 1e5,
            seed: 0,
            seeds: 4,
            workers: 0,
            methods: vec![
                MethodSpec {
                    label: "LoRA".into(),
                    manifold: "unconstrained".into(),
                    options: Options::default(),
                },
                MethodSpec {
                    label: "BaLoRA-canonical".into(),
                    manifold: "balanced".into(),
                    options: gauge("canonical"),
                },
                MethodSpec {
                    label: "BaLoRA-closest".into(),
                    manifold: "balanced".into(),
                    options: gauge("closest"),
                },
            ],
            optimizers: vec![
                OptimizerSpec {
                    label: "sign".into(),
                    name: "sign".into(),
                    options: Options::default(),
                },
                OptimizerSpec {
                    label: "adamw".into(),
                    name: "adamw".into(),
                    options: Options::default().with("weight_decay", OptionValue::Float(0.0)),
                },
            ],
        }
    }
}

impl SyntheticConfig {
    /// The learning-rate grid `linspace(lr_min, lr_max, lr_count)`.
    pub fn lr_grid(&self) -> Vec<f64> {
        let n = self.lr_count.max(1);
        if n == 1 {
            return vec![self.lr_min];
        }
        (0..n)
            .map(|i| self.lr_min + (self.lr_max - self.lr_min) * i as f64 / (n - 1) as f64)
            .collect()
    }

    /// The seeds of the experiment: `seed, seed + 1, …` (`seeds` of them, at least one).
    pub fn seed_list(&self) -> Vec<u64> {
        (0..self.seeds.max(1) as u64)
            .map(|i| self.seed.wrapping_add(i))
            .collect()
    }

    /// The problems of seed `seed` under this configuration's protocol.
    pub fn problems(&self, seed: u64) -> Vec<Problem> {
        (0..self.trajectories)
            .map(|i| match self.protocol {
                Protocol::Paper => Problem::paper(self.dim, self.rank, seed, i),
                Protocol::Resample => Problem::sample(self.dim, self.rank, seed, i),
            })
            .collect()
    }
}

fn to_tensor<B: burn::tensor::backend::Backend>(
    m: &DMatrix<f64>,
    device: &B::Device,
) -> Tensor<B, 2> {
    let rows: Vec<f32> = m.transpose().iter().map(|&v| v as f32).collect();
    Tensor::from_data(TensorData::new(rows, [m.nrows(), m.ncols()]), device)
}

/// Loss trajectory of one run: `losses[k]` is the loss after k steps (k = 0..=steps).
pub fn run_once<B: AutodiffBackend>(
    problem: &Problem,
    method: &MethodSpec,
    optimizer: &OptimizerSpec,
    lr: f64,
    steps: usize,
    device: &B::Device,
) -> Result<Vec<f64>, TrainError>
where
    B::InnerBackend: RegistryBackend,
{
    let dim = problem.w0.nrows();
    let rank = problem.a0.nrows();
    let base = Linear {
        weight: Param::from_tensor(to_tensor::<B>(&problem.w0.transpose(), device)),
        bias: None,
    };
    let a = to_tensor::<B>(&problem.a0, device);
    let mut model = LoraLinear::from_base(base);
    model.adapter = Some(LoraAdapter::from_tensors(
        a,
        Tensor::zeros([dim, rank], device),
        1.0,
        0.0,
    ));
    let eye = Tensor::<B, 2>::eye(dim, device);
    let target_t = to_tensor::<B>(&problem.target.transpose(), device);
    let mut stepper = TrainStepper::<B>::from_names_quiet(
        &optimizer.name,
        &optimizer.options,
        &method.manifold,
        &method.options,
    )?;
    let mut losses = Vec::with_capacity(steps + 1);
    for k in 0..=steps {
        let diff = model.forward(eye.clone()) - target_t.clone();
        let loss = diff.powi_scalar(2).sum().mul_scalar(0.5);
        let value: f64 = loss.clone().into_scalar().elem::<f64>();
        losses.push(value);
        if k == steps || !value.is_finite() {
            break;
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = stepper.step(lr, model, grads)?.0;
    }
    Ok(losses)
}

/// Curves of one (method, optimizer) cell: per trajectory, the best run's gap curve.
#[derive(Debug, Clone, Serialize)]
pub struct CellResult {
    /// Method label.
    pub method: String,
    /// Optimizer label.
    pub optimizer: String,
    /// Chosen learning rate per trajectory (None if every run diverged).
    pub chosen_lr: Vec<Option<f64>>,
    /// Gap `loss − optimal` per trajectory and step (empty if every run diverged).
    pub gaps: Vec<Vec<f64>>,
}

impl CellResult {
    /// (q1, median, q3) of the gap over trajectories at each step.
    pub fn quartiles(&self) -> Vec<(f64, f64, f64)> {
        let steps = self.gaps.iter().map(Vec::len).max().unwrap_or(0);
        (0..steps)
            .map(|k| {
                let mut col: Vec<f64> =
                    self.gaps.iter().filter_map(|g| g.get(k).copied()).collect();
                col.sort_by(f64::total_cmp);
                (
                    quantile(&col, 0.25),
                    quantile(&col, 0.5),
                    quantile(&col, 0.75),
                )
            })
            .collect()
    }
}

/// Linear-interpolation quantile of sorted data (numpy's default).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// The results of one seed: its problems and its cells.
#[derive(Debug, Clone)]
pub struct SeedResult {
    /// The seed.
    pub seed: u64,
    /// Its trajectories' problems, in trajectory order.
    pub problems: Vec<Problem>,
    /// One cell per (method, optimizer).
    pub cells: Vec<CellResult>,
}

/// Runs the grid for every seed of [`SyntheticConfig::seed_list`]; `progress(done, total)` counts
/// runs over all seeds.
pub fn run_seeds<B: AutodiffBackend>(
    cfg: &SyntheticConfig,
    device: &B::Device,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Vec<SeedResult>, TrainError>
where
    B::InnerBackend: RegistryBackend,
{
    let seeds = cfg.seed_list();
    let per_seed = cfg.methods.len() * cfg.optimizers.len() * cfg.trajectories * cfg.lr_count;
    warn_cells::<B>(cfg)?;
    let mut out = Vec::new();
    for (i, &seed) in seeds.iter().enumerate() {
        let one = SyntheticConfig {
            seed,
            ..cfg.clone()
        };
        let offset = i * per_seed;
        let total = per_seed * seeds.len();
        let cells = run_grid::<B>(&one, device, &|done, _| progress(offset + done, total))?;
        out.push(SeedResult {
            seed,
            problems: one.problems(seed),
            cells,
        });
    }
    Ok(out)
}

/// Runs the whole grid for `cfg.seed`. `progress(done, total)` is called after each run.
pub fn run_experiment<B: AutodiffBackend>(
    cfg: &SyntheticConfig,
    device: &B::Device,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Vec<CellResult>, TrainError>
where
    B::InnerBackend: RegistryBackend,
{
    warn_cells::<B>(cfg)?;
    run_grid::<B>(cfg, device, progress)
}

/// The runs build their steppers quietly; this warns once per cell.
fn warn_cells<B: AutodiffBackend>(cfg: &SyntheticConfig) -> Result<(), TrainError>
where
    B::InnerBackend: RegistryBackend,
{
    for m in &cfg.methods {
        for o in &cfg.optimizers {
            let stepper =
                TrainStepper::<B>::from_names_quiet(&o.name, &o.options, &m.manifold, &m.options)?;
            if let Some(w) = stepper.transport_warning() {
                tracing::warn!("{} with {}: {w}", m.label, o.label);
            }
        }
    }
    Ok(())
}

fn run_grid<B: AutodiffBackend>(
    cfg: &SyntheticConfig,
    device: &B::Device,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Vec<CellResult>, TrainError>
where
    B::InnerBackend: RegistryBackend,
{
    let problems = cfg.problems(cfg.seed);
    let grid = cfg.lr_grid();
    let mut jobs = Vec::new();
    for (mi, _) in cfg.methods.iter().enumerate() {
        for (oi, _) in cfg.optimizers.iter().enumerate() {
            for ti in 0..problems.len() {
                for (li, _) in grid.iter().enumerate() {
                    jobs.push((mi, oi, ti, li));
                }
            }
        }
    }
    let total = jobs.len();
    let workers = if cfg.workers == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        cfg.workers
    }
    .min(total.max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: std::sync::Mutex<Vec<Option<Vec<f64>>>> = std::sync::Mutex::new(vec![None; total]);
    let first_err: std::sync::Mutex<Option<TrainError>> = std::sync::Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let j = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if j >= total {
                    break;
                }
                let (mi, oi, ti, li) = jobs[j];
                match run_once::<B>(
                    &problems[ti],
                    &cfg.methods[mi],
                    &cfg.optimizers[oi],
                    grid[li],
                    cfg.steps,
                    device,
                ) {
                    Ok(curve) => {
                        let mut r = results.lock().unwrap_or_else(|e| e.into_inner());
                        r[j] = Some(curve);
                        let done = r.iter().filter(|x| x.is_some()).count();
                        drop(r);
                        progress(done, total);
                    }
                    Err(e) => {
                        first_err
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(e);
                        next.store(total, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
    });
    if let Some(e) = first_err.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    let results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut cells = Vec::new();
    for (mi, m) in cfg.methods.iter().enumerate() {
        for (oi, o) in cfg.optimizers.iter().enumerate() {
            let mut chosen_lr = Vec::new();
            let mut gaps = Vec::new();
            for (ti, p) in problems.iter().enumerate() {
                let mut best: Option<(f64, &Vec<f64>)> = None;
                for (li, lr) in grid.iter().enumerate() {
                    let j =
                        ((mi * cfg.optimizers.len() + oi) * problems.len() + ti) * grid.len() + li;
                    let Some(curve) = results[j].as_ref() else {
                        continue;
                    };
                    let ok = curve.len() == cfg.steps + 1
                        && curve
                            .iter()
                            .all(|v| v.is_finite() && *v <= cfg.discard_above);
                    let last = curve[curve.len() - 1];
                    if ok && best.is_none_or(|(_, b)| last < b[b.len() - 1]) {
                        best = Some((*lr, curve));
                    }
                }
                match best {
                    Some((lr, curve)) => {
                        chosen_lr.push(Some(lr));
                        gaps.push(curve.iter().map(|v| v - p.optimal_loss).collect());
                    }
                    None => chosen_lr.push(None),
                }
            }
            cells.push(CellResult {
                method: m.label.clone(),
                optimizer: o.label.clone(),
                chosen_lr,
                gaps,
            });
        }
    }
    Ok(cells)
}
