//! `cargo xtask`: project automation for balora (an alias in `.cargo/config.toml`).
//!
//! * `build [--backend …]`: the `balora` binary with the backends' cargo features.
//! * `conformance [--backend a,b|--all]`: the cross-backend conformance matrix (prints it, writes
//!   `target/conformance/matrix.json`, `--record` also writes it into `docs/backends.md`).
//! * `setup tch`: PyTorch 2.9.0 (the libtorch of burn-tch 0.21) into a venv under `target/`.
//! * `bench-backends`: the synthetic experiment's training time per backend, ratios to ndarray.
//! * `peft-roundtrip`: balora adapters loaded by real PEFT, outputs and merges compared.
//! * `assets`: `balora assets` (downloads/caches the small real assets tests use).
//! * `docs`: rustdoc with broken intra-doc links denied, the docs/ pages' links, doctests.
//! * `test`: what CI runs, set-up included (a Vulkan driver for wgpu if none, the assets), then fmt,
//!   workspace tests, conformance on ndarray+flex+wgpu, cuda build, clippy, docs.
//!
//! Deliberately light: it depends on no part of burn and only drives cargo.

mod backend;
mod commands;
mod disk;
mod mpi;
mod util;
mod vulkan;

use backend::{parse_backends, Backend};
use clap::{Parser, Subcommand};
use commands::bench_torch;
use util::Xtask;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "balora project automation")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
pub struct Backends {
    /// Comma-separated backends: ndarray, wgpu, cuda, tch.
    #[arg(long, value_delimiter = ',')]
    pub backend: Vec<String>,
    /// Every backend (ndarray, wgpu, cuda, tch).
    #[arg(long, conflicts_with = "backend")]
    pub all: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the `balora` binary with the backends' features (default: ndarray only).
    Build {
        #[command(flatten)]
        backends: Backends,
    },
    /// Run the conformance suite per backend and print the matrix (default: ndarray).
    Conformance {
        #[command(flatten)]
        backends: Backends,
        /// Only checks whose name contains this.
        #[arg(long)]
        filter: Option<String>,
        /// Backends that must run: a skip on one of these fails the command.
        #[arg(long, value_delimiter = ',')]
        require: Vec<String>,
        /// Also write the matrix into docs/backends.md (between its conformance markers).
        #[arg(long)]
        record: bool,
    },
    /// Install an optional backend's native dependencies.
    Setup {
        /// `tch`: PyTorch 2.9.0 from PyPI into target/tch-venv (several GB with its CUDA
        /// libraries); `bench`: that plus transformers, PEFT and gguf for `bench-torch`.
        what: String,
        /// Python interpreter to create the venv with.
        #[arg(long, default_value = "python3")]
        python: String,
    },
    /// Time the synthetic experiment's training per backend and write the table to docs/backends.md.
    BenchBackends {
        #[command(flatten)]
        backends: Backends,
        /// Trajectories of the bench configuration (the paper uses 8).
        #[arg(long, default_value_t = 2)]
        trajectories: usize,
        /// Learning rates of the bench configuration (the paper uses 50).
        #[arg(long, default_value_t = 5)]
        lr_count: usize,
        /// Do not rewrite docs/backends.md.
        #[arg(long)]
        no_record: bool,
    },
    /// balora against PyTorch + transformers + PEFT on this machine (training and decoding
    /// workloads, alternating runs), tokens/s ratios and peak RSS; needs `cargo xtask setup bench`.
    BenchTorch {
        /// balora backends (default: flex; `tch` needs `cargo xtask setup tch`).
        #[command(flatten)]
        backends: Backends,
        /// Workloads: lm-train, lm-train-long, cls-train, decode (default: all).
        #[arg(long, value_delimiter = ',')]
        workloads: Vec<String>,
        /// Alternating rounds per workload (the best of them is reported).
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// Timed steps per training run.
        #[arg(long, default_value_t = 10)]
        steps: u64,
        /// Write the table into docs/benchmarks.md (between its `torch` markers).
        #[arg(long)]
        record: bool,
    },
    /// balora adapters (plain and balanced) loaded by real PEFT: outputs and `balora merge`
    /// compared with PyTorch's; needs `cargo xtask setup bench`.
    PeftRoundtrip,
    /// Fetch the small real assets (`balora assets`).
    Assets {
        /// Passed to `balora assets`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build the API docs (broken intra-doc links are errors), check the docs/ pages' links, run doctests.
    Docs {
        /// Skip the doctests (when `cargo test` already ran them).
        #[arg(long)]
        no_doctests: bool,
    },
    /// The CI test command, set-up included: a Vulkan driver and MPICH if none (apt, as root), the
    /// assets; then fmt, workspace tests, conformance on ndarray+flex+wgpu, the MPI data-parallel
    /// tests, CUDA build, clippy, docs.
    Test {
        /// Skip the wgpu conformance run and its Vulkan driver set-up (e.g. no driver can be installed).
        #[arg(long)]
        no_wgpu: bool,
        /// Skip the data-parallel (MPI) tests and their MPICH set-up.
        #[arg(long)]
        no_mpi: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    let x = Xtask::new();
    let result = match cli.cmd {
        Cmd::Build { backends } => {
            parse_backends(&backends, &[Backend::Ndarray]).and_then(|b| x.build_cli(&b))
        }
        Cmd::Conformance {
            backends,
            filter,
            require,
            record,
        } => parse_backends(&backends, &[Backend::Ndarray, Backend::Flex]).and_then(|b| {
            let require = require
                .iter()
                .map(|s| Backend::parse(s))
                .collect::<anyhow::Result<Vec<_>>>()?;
            x.conformance(&b, filter.as_deref(), &require, record)
        }),
        Cmd::Setup { what, python } => x.setup(&what, &python),
        Cmd::BenchBackends {
            backends,
            trajectories,
            lr_count,
            no_record,
        } => parse_backends(&backends, &[Backend::Ndarray, Backend::Wgpu])
            .and_then(|b| x.bench(&b, trajectories, lr_count, !no_record)),
        Cmd::BenchTorch {
            backends,
            workloads,
            rounds,
            steps,
            record,
        } => parse_backends(&backends, &[Backend::Flex]).and_then(|backends| {
            let workloads = if workloads.is_empty() {
                bench_torch::WORKLOADS
                    .iter()
                    .map(|w| w.0.to_string())
                    .collect()
            } else {
                workloads
            };
            x.bench_torch(&bench_torch::BenchTorch {
                backends,
                workloads,
                rounds,
                steps,
                record,
            })
        }),
        Cmd::PeftRoundtrip => x.peft_roundtrip(),
        Cmd::Assets { args } => x.assets(&args),
        Cmd::Docs { no_doctests } => x.docs(!no_doctests),
        Cmd::Test { no_wgpu, no_mpi } => x.test(!no_wgpu, !no_mpi),
    };
    if let Err(e) = result {
        eprintln!("xtask error: {e:#}");
        std::process::exit(1);
    }
}
