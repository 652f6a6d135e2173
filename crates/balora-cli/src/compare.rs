//! `balora compare`: LoRA vs BaLoRA (and other manifolds/optimizers) on one job, same seed and
//! data, over a learning-rate × init-scale grid; writes a markdown report with SVG plots.

use crate::config_cmd::JobArgs;
use crate::train::{backend_of, load_base, resolve, run_method, MethodOpts};
use anyhow::{Context, Result};
use balora_config::{AdapterInit, JobConfig, Options};
use balora_train::plot::{line_plot, Series};
use balora_train::MetricRecord;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Arguments of `balora compare`.
#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// The job (config file, --set overrides, output dir).
    #[command(flatten)]
    pub job: JobArgs,
    /// Methods as `label=manifold[:optimizer]` (repeatable).
    #[arg(long = "method", default_values_t = ["LoRA=unconstrained".to_string(), "BaLoRA=balanced".to_string()])]
    pub methods: Vec<String>,
    /// Learning rates of the grid.
    #[arg(long, value_delimiter = ',', default_values_t = [1e-3, 3e-3])]
    pub lrs: Vec<f64>,
    /// Standard deviations of A's Gaussian initialisation (PEFT's gaussian uses 1/r).
    #[arg(long, value_delimiter = ',', default_values_t = [0.01, 0.05])]
    pub init_stds: Vec<f64>,
    /// Markdown report path (plots are written beside it).
    #[arg(long, default_value = "runs/compare/report.md")]
    pub report: PathBuf,
    /// Replace previous runs in the grid cells' folders.
    #[arg(long)]
    pub overwrite: bool,
}

struct Method {
    label: String,
    manifold: String,
    optimizer: Option<String>,
}

fn parse_method(s: &str) -> Result<Method> {
    let (label, rest) = s
        .split_once('=')
        .with_context(|| format!("--method expects label=manifold[:optimizer], got `{s}`"))?;
    let (manifold, optimizer) = match rest.split_once(':') {
        Some((m, o)) => (m.to_string(), Some(o.to_string())),
        None => (rest.to_string(), None),
    };
    Ok(Method {
        label: label.into(),
        manifold,
        optimizer,
    })
}

struct Cell {
    method: String,
    lr: f64,
    init_std: f64,
    history: Vec<MetricRecord>,
    train_s: f64,
    hook_s: f64,
    steps: usize,
}

impl Cell {
    fn evals(&self) -> Vec<&MetricRecord> {
        self.history.iter().filter(|r| r.kind == "eval").collect()
    }
    fn best(&self) -> f64 {
        self.evals()
            .iter()
            .map(|r| r.loss)
            .fold(f64::INFINITY, f64::min)
    }
    fn last(&self) -> f64 {
        self.evals().last().map_or(f64::NAN, |r| r.loss)
    }
    fn reach(&self, target: f64) -> Option<u64> {
        self.evals()
            .iter()
            .find(|r| r.loss <= target + 1e-12)
            .map(|r| r.step)
    }
}

/// The config of one grid cell: `base` with the method, lr and init std applied, validated like
/// `balora train` validates its config.
fn cell_config(base: &JobConfig, m: &Method, lr: f64, std: f64, dir: &Path) -> Result<JobConfig> {
    let mut cfg = base.clone();
    cfg.trainer.lr = lr;
    cfg.trainer.progress = false;
    cfg.trainer.checkpoint_every = 0;
    cfg.trainer.resume = false;
    cfg.adapter.init = AdapterInit::Gaussian;
    cfg.adapter.init_std = Some(std);
    cfg.manifold.name = m.manifold.clone();
    if m.manifold != base.manifold.name {
        cfg.manifold.options = Options::default();
    }
    if let Some(o) = &m.optimizer {
        cfg.optimizer.name = o.clone();
        cfg.optimizer.options = Options::default();
    }
    cfg.output.dir = dir.to_path_buf();
    cfg.validate().map_err(|e| {
        let e = e.to_string();
        let e = e.replace("`trainer.lr`", "`--lrs` (trainer.lr)");
        let e = e.replace("`adapter.init_std`", "`--init-stds` (adapter.init_std)");
        anyhow::anyhow!("{} lr {lr:e} init std {std:e}: {e}", m.label)
    })?;
    let manifolds: Vec<&str> = balora_manifold::manifold_entries()
        .map(|e| e.name)
        .collect();
    if !manifolds.contains(&cfg.manifold.name.as_str()) {
        anyhow::bail!(
            "--method {}: unknown manifold `{}`; allowed: {}",
            m.label,
            cfg.manifold.name,
            manifolds.join(", ")
        );
    }
    let optimizers: Vec<&str> = balora_optim::optimizer_entries().map(|e| e.name).collect();
    if !optimizers.contains(&cfg.optimizer.name.as_str()) {
        anyhow::bail!(
            "--method {}: unknown optimizer `{}`; allowed: {}",
            m.label,
            cfg.optimizer.name,
            optimizers.join(", ")
        );
    }
    Ok(cfg)
}

/// Runs the comparison.
pub fn run(args: CompareArgs) -> Result<()> {
    let mut base_cfg = JobConfig::load(args.job.config.as_deref(), &args.job.sets)?;
    base_cfg.output.overwrite = args.overwrite;
    let methods: Vec<Method> = args
        .methods
        .iter()
        .map(|m| parse_method(m))
        .collect::<Result<_>>()?;
    if methods.is_empty() || args.lrs.is_empty() || args.init_stds.is_empty() {
        anyhow::bail!(
            "the grid is empty: give at least one --method, --lrs value and --init-stds value"
        );
    }
    let out = args
        .job
        .out
        .clone()
        .unwrap_or_else(|| base_cfg.output.dir.join("compare"));
    let cell_dir =
        |m: &Method, lr: f64, std: f64| out.join(format!("{}-lr{lr:e}-std{std:e}", m.label));
    // Every cell's config is checked before anything is loaded or trained.
    for &lr in &args.lrs {
        for &std in &args.init_stds {
            for m in &methods {
                cell_config(&base_cfg, m, lr, std, &cell_dir(m, lr, std))?;
            }
        }
    }
    let res = resolve(&base_cfg)?;
    let backend = backend_of(base_cfg.backend);
    let t0 = Instant::now();
    let total = methods.len() * args.lrs.len() * args.init_stds.len();
    let cells: Vec<Cell> = crate::backend::dispatch!(backend, |B, device| {
        let (base, data) = load_base::<B>(&base_cfg, &res, &device)?;
        let mut cells = Vec::new();
        for &lr in &args.lrs {
            for &std in &args.init_stds {
                for m in &methods {
                    let dir = cell_dir(m, lr, std);
                    let cfg = cell_config(&base_cfg, m, lr, std, &dir)?;
                    let inputs = res.inputs(&cfg, args.job.config.as_deref());
                    let _held = crate::run_dir::open(&dir, &cfg, &inputs, false)?;
                    tracing::info!(
                        "[{}/{total}] {} lr {lr:e} init std {std:e}",
                        cells.len() + 1,
                        m.label
                    );
                    let o =
                        run_method::<B>(&cfg, &base, &data, &dir, MethodOpts::default(), &device)?;
                    cells.push(Cell {
                        method: m.label.clone(),
                        lr,
                        init_std: std,
                        steps: o.history.iter().filter(|r| r.kind == "train").count(),
                        history: o.history,
                        train_s: o.train_s,
                        hook_s: o.hook_s,
                    });
                    tracing::info!(
                        "  best eval {:.4}, {:.1}s",
                        cells.last().map_or(f64::NAN, Cell::best),
                        cells.last().map_or(0.0, |c| c.train_s)
                    );
                }
            }
        }
        cells
    })?;
    let wall = t0.elapsed().as_secs_f64();
    let cmd = std::env::args().collect::<Vec<_>>().join(" ");
    let md = write_report(&args.report, &base_cfg, &methods, &cells, wall, &cmd)?;
    println!("{md}");
    println!("report: {}", args.report.display());
    Ok(())
}

fn write_report(
    path: &Path,
    cfg: &JobConfig,
    methods: &[Method],
    cells: &[Cell],
    wall: f64,
    cmd: &str,
) -> Result<String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("report");
    // Best cell per method (lowest best eval loss).
    let best: Vec<&Cell> = methods
        .iter()
        .filter_map(|m| {
            cells
                .iter()
                .filter(|c| c.method == m.label)
                .min_by(|a, b| a.best().total_cmp(&b.best()))
        })
        .collect();
    let step_svg = dir.join(format!("{stem}-eval-vs-step.svg"));
    let time_svg = dir.join(format!("{stem}-eval-vs-time.svg"));
    let curve = |c: &Cell, time: bool| -> Vec<(f64, f64)> {
        c.evals()
            .iter()
            .map(|r| (if time { r.elapsed_s } else { r.step as f64 }, r.loss))
            .collect()
    };
    let series = |time: bool| -> Vec<Series> {
        best.iter()
            .map(|c| Series {
                label: format!("{} (lr {:e}, init std {:e})", c.method, c.lr, c.init_std),
                points: curve(c, time),
                thin: false,
            })
            .collect()
    };
    let title = format!(
        "eval loss, best grid cell per method ({})",
        cfg.model.asset.clone().unwrap_or_default()
    );
    line_plot(&step_svg, &title, "step", "eval loss", &series(false))
        .map_err(|e| anyhow::anyhow!("{}: {e}", step_svg.display()))?;
    line_plot(
        &time_svg,
        &title,
        "training seconds",
        "eval loss",
        &series(true),
    )
    .map_err(|e| anyhow::anyhow!("{}: {e}", time_svg.display()))?;
    let lora_best = cells
        .iter()
        .filter(|c| c.method == methods[0].label)
        .map(Cell::best)
        .fold(f64::INFINITY, f64::min);
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# LoRA vs BaLoRA on {}\n",
        cfg.model
            .asset
            .clone()
            .or(cfg.model.path.as_ref().map(|p| p.display().to_string()))
            .unwrap_or_default()
    );
    let _ = writeln!(
        md,
        "Data `{}`, seq_len {}, batch {}×{}, {} steps, schedule {:?} (warmup {}), optimizer `{}`, r = {}, α = {}, targets {}, seed {}; {} runs in {:.0} s on `{:?}`.\n",
        cfg.data.asset.clone().or(cfg.data.path.as_ref().map(|p| p.display().to_string())).unwrap_or_default(),
        cfg.data.seq_len, cfg.trainer.batch_size, cfg.trainer.grad_accum, cfg.trainer.steps,
        cfg.trainer.schedule, cfg.trainer.warmup_steps, cfg.optimizer.name, cfg.adapter.r, cfg.adapter.alpha,
        cfg.adapter.targets, cfg.trainer.seed, cells.len(), wall, cfg.backend
    );
    let _ = writeln!(md, "Command: `{cmd}`\n");
    let _ = writeln!(md, "## Best eval loss per method\n");
    let _ = writeln!(md, "| method | best eval loss | at (lr, init std) | final eval loss | steps to reach {}'s best ({lora_best:.4}) | projection+transport / step time |", methods[0].label);
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for c in &best {
        let reach = c
            .reach(lora_best)
            .map_or("not reached".to_string(), |s| s.to_string());
        let overhead = if c.train_s > 0.0 {
            100.0 * c.hook_s / c.train_s
        } else {
            0.0
        };
        let _ = writeln!(
            md,
            "| {} | {:.4} | ({:e}, {:e}) | {:.4} | {} | {:.2}% |",
            c.method,
            c.best(),
            c.lr,
            c.init_std,
            c.last(),
            reach,
            overhead
        );
    }
    let _ = writeln!(
        md,
        "\n![eval loss vs step]({})\n\n![eval loss vs time]({})\n",
        step_svg.file_name().and_then(|s| s.to_str()).unwrap_or(""),
        time_svg.file_name().and_then(|s| s.to_str()).unwrap_or("")
    );
    let _ = writeln!(md, "## All grid cells\n");
    let _ = writeln!(md, "| method | lr | init std | best eval | final eval | train s | s/step | hook s/step | hook share |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
    for c in cells {
        let n = c.steps.max(1) as f64;
        let _ = writeln!(
            md,
            "| {} | {:e} | {:e} | {:.4} | {:.4} | {:.1} | {:.3} | {:.4} | {:.2}% |",
            c.method,
            c.lr,
            c.init_std,
            c.best(),
            c.last(),
            c.train_s,
            c.train_s / n,
            c.hook_s / n,
            100.0 * c.hook_s / c.train_s.max(1e-12)
        );
    }
    let _ = writeln!(md, "\nThe hook time is the manifold step (Gram transfer, f64 r×r gauge, two thin matmuls) plus the optimizer-moment transport, measured with the host clock around `TrainStepper`'s hook (exact on the synchronous CPU backend).");
    balora_train::report::write_atomic(path, md.as_bytes())?;
    Ok(md)
}
