//! `balora compare`: an experiment grid — method × learning rate × init scale × seed — on one
//! job, and a report of it.
//!
//! Every cell is an ordinary run folder `<out>/<method>-lr<lr>-<init>-seed<seed>/` (config,
//! `metrics.jsonl`, adapter) plus `cell.json`, written atomically once the cell has finished. A
//! rerun skips every cell whose `cell.json` holds the same config and restarts a cell that was
//! interrupted, so a killed compare loses at most the cells that were in progress. With
//! `--jobs N > 1` the cells are split over N child processes of this binary, each with its share
//! of the cores. A cell whose loss becomes non-finite is recorded as diverged (the grid goes on).
//! The report is built from the `cell.json` files alone ([`crate::compare_report`]).

use crate::compare_grid::{build_grid, Grid, Spec};
use crate::compare_report::{self, CellRecord, GridMeta};
use crate::config_cmd::JobArgs;
use crate::train::{backend_of, load_base, resolve, run_method, MethodOpts};
use anyhow::{bail, Context, Result};
use balora_config::JobConfig;
use balora_train::MetricRecord;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Arguments of `balora compare`.
#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// The job (config file, --set overrides, output dir).
    #[command(flatten)]
    pub job: JobArgs,
    /// Methods as `label=manifold[:optimizer][,m.key=value][,o.key=value]…` (repeatable); `m.`
    /// options go to the manifold, `o.` options to the optimizer, e.g.
    /// `BaLoRA-late=balanced,m.start_step=20`. The first method is the baseline of the report.
    #[arg(long = "method", default_values_t = ["LoRA=unconstrained".to_string(), "BaLoRA=balanced".to_string()])]
    pub methods: Vec<String>,
    /// Learning rates of the grid.
    #[arg(long, value_delimiter = ',', default_values_t = [1e-3, 3e-3])]
    pub lrs: Vec<f64>,
    /// Multipliers of A's initialisation (`adapter.init_scale`, the paper's `A_scaling`).
    #[arg(long, value_delimiter = ',', conflicts_with = "init_stds")]
    pub init_scales: Vec<f64>,
    /// Alternatively: σ of a Gaussian initialisation of A (`adapter.init_std`).
    #[arg(long, value_delimiter = ',')]
    pub init_stds: Vec<f64>,
    /// With --init-scales: α = this × scale² in each cell (the paper's `lora_alpha = 8·A_scaling²`).
    #[arg(long)]
    pub alpha_per_scale2: Option<f64>,
    /// Seeds (`trainer.seed`: adapter init, data order, dropout); default: the config's.
    #[arg(long, value_delimiter = ',')]
    pub seeds: Vec<u64>,
    /// Cells run at once, in child processes (0: one per 8 cores, 1 on GPU backends).
    #[arg(long, default_value_t = 0)]
    pub jobs: usize,
    /// Markdown report path (plots and `<stem>-summary.json` are written beside it).
    #[arg(long, default_value = "runs/compare/report.md")]
    pub report: PathBuf,
    /// Rerun cells whose folder holds a finished cell with another config.
    #[arg(long)]
    pub overwrite: bool,
    /// Internal: run only cells `k` of every `n` (`k/n`) and write no report (child processes).
    #[arg(long, hide = true)]
    pub cells: Option<String>,
}

/// The finished cell in `dir`, if its `cell.json` holds `config`; an error if it holds another
/// config (unless `overwrite`).
fn finished(dir: &Path, config: &str, overwrite: bool) -> Result<Option<CellRecord>> {
    let path = dir.join(compare_report::CELL_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let rec: CellRecord = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a cell record", path.display()))?;
    if rec.config == config {
        return Ok(Some(rec));
    }
    if !overwrite {
        bail!(
            "{} holds a finished cell run with another config; pass --overwrite to rerun it, or \
             choose another --out",
            dir.display()
        );
    }
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    Ok(None)
}

/// Whether a cell's error is a divergence (non-finite loss or factors).
fn diverged(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.to_string().contains("non-finite"))
}

fn read_metrics(dir: &Path) -> Vec<MetricRecord> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Runs the comparison.
pub fn run(args: CompareArgs) -> Result<()> {
    let grid = build_grid(&args)?;
    // Every cell's config is checked before anything is loaded or trained.
    for s in &grid.cells {
        grid.config(s)?;
    }
    let stripe = match &args.cells {
        Some(c) => {
            let (k, n) = c
                .split_once('/')
                .and_then(|(k, n)| Some((k.parse::<usize>().ok()?, n.parse::<usize>().ok()?)))
                .filter(|&(k, n)| k < n)
                .with_context(|| format!("--cells expects k/n with k < n, got `{c}`"))?;
            Some((k, n))
        }
        None => None,
    };
    let t0 = Instant::now();
    let backend = backend_of(grid.base.backend);
    let jobs = match args.jobs {
        0 if matches!(
            backend,
            crate::backend::BackendKind::Flex | crate::backend::BackendKind::Ndarray
        ) =>
        {
            (num_cpus() / 8).max(1)
        }
        0 => 1,
        j => j,
    };
    if stripe.is_none() && jobs > 1 {
        run_children(jobs)?;
    } else {
        let mine: Vec<Spec> = grid
            .cells
            .iter()
            .enumerate()
            .filter(|(i, _)| stripe.is_none_or(|(k, n)| i % n == k))
            .map(|(_, s)| *s)
            .collect();
        run_cells(&grid, &args, &mine)?;
    }
    if stripe.is_some() {
        return Ok(());
    }
    let mut records = Vec::new();
    for s in &grid.cells {
        let dir = grid.dir(s);
        let cfg = grid.config(s)?.to_toml();
        records
            .push(finished(&dir, &cfg, false)?.with_context(|| {
                format!("cell {} did not finish (no cell.json)", dir.display())
            })?);
    }
    let meta = GridMeta {
        cfg: &grid.base,
        methods: grid.methods.iter().map(|m| m.label.clone()).collect(),
        init_axis: if grid.by_std {
            "init std"
        } else {
            "init scale"
        },
        alpha_per_scale2: grid.alpha_per_scale2,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        wall_s: t0.elapsed().as_secs_f64(),
    };
    let md = compare_report::write(&args.report, &meta, &records)?;
    println!("{md}");
    println!("report: {}", args.report.display());
    Ok(())
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs the grid in `jobs` child processes (`--cells k/jobs`), each with its share of the cores.
fn run_children(jobs: usize) -> Result<()> {
    let exe = std::env::current_exe().context("locating the balora binary")?;
    let mut argv: Vec<String> = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        if a == "--jobs" || a == "--cells" {
            it.next();
        } else if !(a.starts_with("--jobs=") || a.starts_with("--cells=")) {
            argv.push(a);
        }
    }
    let threads = (num_cpus() / jobs).max(1).to_string();
    let mut children = Vec::new();
    for k in 0..jobs {
        let child = std::process::Command::new(&exe)
            .args(&argv)
            .args(["--jobs", "1", "--cells", &format!("{k}/{jobs}")])
            .env("RAYON_NUM_THREADS", &threads)
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        children.push(child);
    }
    let mut failed = Vec::new();
    for (k, mut c) in children.into_iter().enumerate() {
        let st = c.wait().context("waiting for a compare child")?;
        if !st.success() {
            failed.push(format!("cells {k}/{jobs}: {st}"));
        }
    }
    if !failed.is_empty() {
        bail!("compare child processes failed: {}", failed.join("; "));
    }
    Ok(())
}

/// Runs (or skips, when finished) `cells` in this process.
fn run_cells(grid: &Grid, args: &CompareArgs, cells: &[Spec]) -> Result<()> {
    let todo: Vec<(Spec, JobConfig)> = cells
        .iter()
        .map(|s| Ok((*s, grid.config(s)?)))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .filter_map(
            |(s, cfg)| match finished(&grid.dir(&s), &cfg.to_toml(), args.overwrite) {
                Ok(Some(_)) => None,
                Ok(None) => Some(Ok((s, cfg))),
                Err(e) => Some(Err(e)),
            },
        )
        .collect::<Result<_>>()?;
    if todo.is_empty() {
        return Ok(());
    }
    tracing::info!(
        "{} of {} cells to run ({} finished before)",
        todo.len(),
        cells.len(),
        cells.len() - todo.len()
    );
    let res = resolve(&grid.base)?;
    let backend = backend_of(grid.base.backend);
    crate::backend::dispatch!(backend, |B, device| {
        let (base, data) = load_base::<B>(&grid.base, &res, &device)?;
        for (i, (s, cfg)) in todo.iter().enumerate() {
            let dir = grid.dir(s);
            let m = &grid.methods[s.method];
            tracing::info!(
                "[{}/{}] {} lr {:e} init {:e} seed {}",
                i + 1,
                todo.len(),
                m.label,
                s.lr,
                s.init,
                s.seed
            );
            // A folder without cell.json is an interrupted cell: start it over.
            let mut open_cfg = cfg.clone();
            open_cfg.output.overwrite = dir.exists();
            let inputs = res.inputs(&open_cfg, args.job.config.as_deref());
            let held = crate::run_dir::open(&dir, &open_cfg, &inputs, false)?;
            let rec = match run_method::<B>(cfg, &base, &data, &dir, MethodOpts::default(), &device)
            {
                Ok(o) => CellRecord {
                    method: m.label.clone(),
                    lr: s.lr,
                    init: s.init,
                    seed: s.seed,
                    config: cfg.to_toml(),
                    steps: o.history.iter().filter(|r| r.kind == "train").count(),
                    history: o.history,
                    train_s: o.train_s,
                    hook_s: o.hook_s,
                    diverged: None,
                },
                Err(e) if diverged(&e) => {
                    tracing::warn!(
                        "{} lr {:e} init {:e} seed {} diverged: {e:#}",
                        m.label,
                        s.lr,
                        s.init,
                        s.seed
                    );
                    let history = read_metrics(&dir);
                    let train: Vec<&MetricRecord> =
                        history.iter().filter(|r| r.kind == "train").collect();
                    CellRecord {
                        method: m.label.clone(),
                        lr: s.lr,
                        init: s.init,
                        seed: s.seed,
                        config: cfg.to_toml(),
                        steps: train.len(),
                        train_s: train.last().map_or(0.0, |r| r.elapsed_s),
                        hook_s: train.iter().filter_map(|r| r.hook_s).sum(),
                        history,
                        diverged: Some(format!("{e:#}")),
                    }
                }
                Err(e) => return Err(e),
            };
            let json = serde_json::to_string(&rec)?;
            balora_formats::atomic::write_atomic(
                &dir.join(compare_report::CELL_FILE),
                json.as_bytes(),
            )?;
            drop(held);
            tracing::info!(
                "  best eval {:.4}, {:.1}s{}",
                rec.best(),
                rec.train_s,
                if rec.diverged.is_some() {
                    " (diverged)"
                } else {
                    ""
                }
            );
        }
    })?;
    Ok(())
}
