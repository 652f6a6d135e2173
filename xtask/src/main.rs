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
//! * `test`: what CI runs (fmt, workspace tests, conformance on ndarray+flex+wgpu, cuda build, clippy,
//!   docs).
//!
//! Deliberately light: it depends on no part of burn and only drives cargo.

mod bench_torch;
mod peft_roundtrip;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "balora project automation")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct Backends {
    /// Comma-separated backends: ndarray, wgpu, cuda, tch.
    #[arg(long, value_delimiter = ',')]
    backend: Vec<String>,
    /// Every backend (ndarray, wgpu, cuda, tch).
    #[arg(long, conflicts_with = "backend")]
    all: bool,
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
    /// The CI test command: fmt, workspace tests, conformance on ndarray+flex+wgpu, CUDA build, clippy, docs.
    Test {
        /// Skip the wgpu conformance run (e.g. no Vulkan driver on this machine).
        #[arg(long)]
        no_wgpu: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Backend {
    Ndarray,
    Flex,
    Wgpu,
    Cuda,
    Tch,
}

impl Backend {
    const ALL: [Backend; 5] = [Self::Ndarray, Self::Flex, Self::Wgpu, Self::Cuda, Self::Tch];
    fn name(self) -> &'static str {
        match self {
            Self::Ndarray => "ndarray",
            Self::Flex => "flex",
            Self::Wgpu => "wgpu",
            Self::Cuda => "cuda",
            Self::Tch => "tch",
        }
    }
    fn parse(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|b| b.name() == s.trim())
            .with_context(|| {
                format!("unknown backend `{s}`; known: ndarray, flex, wgpu, cuda, tch")
            })
    }
    /// The cargo feature (the CPU backends, ndarray and flex, are always compiled).
    fn feature(self) -> Option<&'static str> {
        (!matches!(self, Self::Ndarray | Self::Flex)).then(|| self.name())
    }
}

fn parse_backends(b: &Backends, default: &[Backend]) -> Result<Vec<Backend>> {
    let mut v: Vec<Backend> = if b.all {
        Backend::ALL.to_vec()
    } else if b.backend.is_empty() {
        default.to_vec()
    } else {
        b.backend
            .iter()
            .map(|s| Backend::parse(s))
            .collect::<Result<_>>()?
    };
    v.sort();
    v.dedup();
    Ok(v)
}

struct Xtask {
    root: PathBuf,
    target: PathBuf,
    cargo: String,
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
                .collect::<Result<Vec<_>>>()?;
            x.conformance(&b, filter.as_deref(), &require, record)
        }),
        Cmd::Setup { what, python } => match what.as_str() {
            "tch" => x.setup_tch(&python),
            "bench" => x.setup_bench(&python),
            other => Err(anyhow::anyhow!(
                "unknown setup target `{other}`; known: tch, bench (wgpu needs no setup beyond a Vulkan \
                 driver: `apt-get install mesa-vulkan-drivers libvulkan1` on a machine without GPU)"
            )),
        },
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
        Cmd::Test { no_wgpu } => x.test(!no_wgpu),
    };
    if let Err(e) = result {
        eprintln!("xtask error: {e:#}");
        std::process::exit(1);
    }
}

/// Writes `text` to `path` through a temporary file and a rename.
fn write_atomic(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` with inherited stdio; a non-zero exit is an error naming the command.
fn run(cmd: &mut Command) -> Result<()> {
    let line = show(cmd);
    eprintln!("\n$ {line}");
    let start = Instant::now();
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{line}`"))?;
    eprintln!("  ({line}: {:.0}s)", start.elapsed().as_secs_f64());
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

fn capture(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl Xtask {
    fn new() -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .map(|p| if p.is_absolute() { p } else { root.join(p) })
            .unwrap_or_else(|| root.join("target"));
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        Self {
            root,
            target,
            cargo,
        }
    }

    fn cargo(&self) -> Command {
        let mut c = Command::new(&self.cargo);
        c.current_dir(&self.root);
        c
    }

    /// Environment for running GPU backends: wgpu wants a writable `XDG_RUNTIME_DIR`.
    fn runtime_env(&self, cmd: &mut Command) -> Result<()> {
        if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
            let dir = self.target.join("xdg-runtime");
            std::fs::create_dir_all(&dir)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
            }
            cmd.env("XDG_RUNTIME_DIR", dir);
        }
        Ok(())
    }

    fn tch_venv(&self) -> PathBuf {
        self.target.join("tch-venv")
    }

    /// Build and run environment for burn-tch, or why it is unavailable.
    fn tch_env(&self) -> std::result::Result<Vec<(String, String)>, String> {
        let venv = self.tch_venv();
        let venv_python = venv.join("bin/python");
        let (python, is_venv) = if venv_python.exists() {
            (venv_python.to_string_lossy().into_owned(), true)
        } else {
            ("python3".to_string(), false)
        };
        let probe = "import torch, os; print(torch.__version__); print(os.path.join(os.path.dirname(torch.__file__), 'lib'))";
        let Some(out) = capture(&python, &["-c", probe]) else {
            return Err(
                "libtorch not found (no PyTorch importable): run `cargo xtask setup tch`".into(),
            );
        };
        let mut lines = out.lines();
        let version = lines.next().unwrap_or("").to_string();
        let lib = lines.next().unwrap_or("").to_string();
        if !version.starts_with("2.9.") {
            return Err(format!(
                "{python} has PyTorch {version}, burn-tch 0.21 needs 2.9.x: run `cargo xtask setup tch`"
            ));
        }
        let mut env = vec![("LIBTORCH_USE_PYTORCH".to_string(), "1".to_string())];
        if is_venv {
            let path = std::env::var("PATH").unwrap_or_default();
            env.push(("VIRTUAL_ENV".into(), venv.to_string_lossy().into_owned()));
            env.push((
                "PATH".into(),
                format!("{}:{path}", venv.join("bin").to_string_lossy()),
            ));
        }
        let ld = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
        env.push(("LD_LIBRARY_PATH".into(), format!("{lib}:{ld}")));
        Ok(env)
    }

    /// `cargo build` of the `balora` binary and the conformance runner in ONE invocation with
    /// the same backend features: cargo resolves dependency features per invocation, so building
    /// them separately compiled the whole wgpu/cubecl stack twice (≈ 8 min of CI on 2 cores).
    fn build_bins_cmd(&self, backends: &[Backend]) -> Command {
        let mut cmd = self.cargo();
        cmd.args(["build", "-p", "balora-cli", "-p", "balora-conformance"]);
        let f: Vec<String> = backends
            .iter()
            .filter_map(|b| b.feature())
            .flat_map(|f| [format!("balora-cli/{f}"), format!("balora-conformance/{f}")])
            .collect();
        if !f.is_empty() {
            cmd.args(["--features", &f.join(",")]);
        }
        cmd
    }

    fn build_cli(&self, backends: &[Backend]) -> Result<()> {
        let mut cmd = self.build_bins_cmd(backends);
        if backends.contains(&Backend::Tch) {
            cmd.envs(self.tch_env().map_err(|e| anyhow::anyhow!(e))?);
        }
        run(&mut cmd)?;
        eprintln!(
            "built {} with backends: {}",
            self.target.join("debug/balora").display(),
            backends
                .iter()
                .map(|b| b.name())
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // conformance

    fn conformance(
        &self,
        backends: &[Backend],
        filter: Option<&str>,
        require: &[Backend],
        record: bool,
    ) -> Result<()> {
        let mut pre_skip: BTreeMap<Backend, String> = BTreeMap::new();
        let mut tch_env = Vec::new();
        if backends.contains(&Backend::Tch) {
            match self.tch_env() {
                Ok(env) => tch_env = env,
                Err(why) => {
                    pre_skip.insert(Backend::Tch, why);
                }
            }
        }
        let buildable: Vec<Backend> = backends
            .iter()
            .copied()
            .filter(|b| !pre_skip.contains_key(b))
            .collect();
        let mut cmd = self.build_bins_cmd(&buildable);
        cmd.envs(tch_env.clone());
        run(&mut cmd)?;
        let bin = self.target.join("debug/balora-conformance");
        // A binary built with tch needs libtorch on the loader path even to list its checks.
        let listed = Command::new(&bin)
            .arg("--list")
            .envs(tch_env.clone())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        let names: Vec<String> = listed
            .context("listing the conformance checks")?
            .lines()
            .map(str::to_string)
            .filter(|n| filter.is_none_or(|f| n.contains(f)))
            .collect();
        if names.is_empty() {
            bail!("no conformance check matches the filter");
        }
        let out_dir = self.target.join("conformance");
        std::fs::create_dir_all(&out_dir)?;
        let mut reports: Vec<Value> = Vec::new();
        for &b in backends {
            if let Some(why) = pre_skip.get(&b) {
                reports.push(synthetic_report(b, &names, "skip", why));
                continue;
            }
            let json_path = out_dir.join(format!("{}.json", b.name()));
            let _ = std::fs::remove_file(&json_path);
            let mut cmd = Command::new(&bin);
            cmd.current_dir(&self.root)
                .args(["--backend", b.name(), "--json"])
                .arg(&json_path);
            if let Some(f) = filter {
                cmd.args(["--filter", f]);
            }
            self.runtime_env(&mut cmd)?;
            // A binary built with tch loads libtorch whichever backend it runs.
            cmd.envs(tch_env.clone());
            eprintln!("\n$ {}", show(&cmd));
            let start = Instant::now();
            let status = cmd.status().context("starting balora-conformance")?;
            eprintln!("  ({}: {:.0}s)", b.name(), start.elapsed().as_secs_f64());
            let parsed = std::fs::read_to_string(&json_path)
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .and_then(|v| v.as_array().and_then(|a| a.first().cloned()));
            match parsed {
                Some(r) if matches!(status.code(), Some(0 | 1)) => reports.push(r),
                _ => reports.push(synthetic_report(
                    b,
                    &names,
                    "fail",
                    &format!(
                        "the conformance process for {} crashed ({status}); its output is above",
                        b.name()
                    ),
                )),
            }
        }
        let matrix = json!({
            "date": capture("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default(),
            "machine": machine(),
            "git": capture("git", &["-C", &self.root.to_string_lossy(), "rev-parse", "--short", "HEAD"]).unwrap_or_default(),
            "checks": names,
            "backends": reports,
        });
        let path = out_dir.join("matrix.json");
        write_atomic(&path, &serde_json::to_string_pretty(&matrix)?)?;
        let (table, fails, skips) = render_matrix(&matrix, require);
        println!("\n{table}");
        println!("wrote {}", path.display());
        if record {
            let doc = self.root.join("docs/backends.md");
            replace_section(&doc, "conformance", &markdown_matrix(&matrix))?;
            println!("updated {}", doc.display());
        }
        if fails > 0 {
            bail!("{fails} conformance check(s) FAILED");
        }
        if skips > 0 {
            bail!("{skips} check(s) of a required backend were skipped");
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // setup tch

    fn setup_tch(&self, python: &str) -> Result<()> {
        let venv = self.tch_venv();
        eprintln!(
            "Installing PyTorch 2.9.0 (the libtorch of burn-tch 0.21 / tch 0.22) into {}.\n\
             PyPI's Linux wheel is the CUDA build: ~900 MB for torch plus ~3 GB of nvidia-* \
             libraries it needs to load, even for CPU use.",
            venv.display()
        );
        if !venv.join("bin/python").exists() {
            run(Command::new(python).args(["-m", "venv"]).arg(&venv))?;
        }
        run(Command::new(venv.join("bin/python")).args(["-m", "pip", "install", "torch==2.9.0"]))?;
        let env = self.tch_env().map_err(|e| anyhow::anyhow!(e))?;
        eprintln!("\nPyTorch is ready. `cargo xtask build --backend tch` and `cargo xtask conformance --backend tch` set this up themselves; by hand:");
        for (k, v) in env {
            eprintln!("  export {k}={v}");
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // bench-backends

    fn bench(
        &self,
        backends: &[Backend],
        trajectories: usize,
        lr_count: usize,
        record: bool,
    ) -> Result<()> {
        let backends: Vec<Backend> = if backends.contains(&Backend::Ndarray) {
            backends.to_vec()
        } else {
            [&[Backend::Ndarray][..], backends].concat()
        };
        self.build_cli(&backends)?;
        let tch_env = if backends.contains(&Backend::Tch) {
            self.tch_env().map_err(|e| anyhow::anyhow!(e))?
        } else {
            Vec::new()
        };
        let bin = self.target.join("debug/balora");
        let methods = 3; // the default config's LoRA, BaLoRA-canonical, BaLoRA-closest
        let optimizers = 2; // sign, adamw
        let steps = 100;
        let small = (1usize, 2usize);
        let big = (trajectories.max(2), lr_count.max(3));
        let runs = |(t, l): (usize, usize)| methods * optimizers * t * l;
        let mut rows = Vec::new();
        for &b in &backends {
            let mut secs = Vec::new();
            for (t, l) in [small, big] {
                let out = self.target.join(format!("bench/{}-{t}x{l}", b.name()));
                let mut cmd = Command::new(&bin);
                cmd.current_dir(&self.root).args([
                    "synthetic",
                    "--backend",
                    b.name(),
                    "--set",
                    &format!("trajectories={t}"),
                    "--set",
                    &format!("lr_count={l}"),
                    "--set",
                    &format!("steps={steps}"),
                    "--set",
                    "seeds=1",
                    "--out",
                ]);
                cmd.arg(&out);
                self.runtime_env(&mut cmd)?;
                cmd.envs(tch_env.clone());
                cmd.stdout(std::process::Stdio::null());
                run(&mut cmd)?;
                let summary: Value = serde_json::from_str(
                    &std::fs::read_to_string(out.join("summary.json"))
                        .with_context(|| format!("reading {}/summary.json", out.display()))?,
                )?;
                secs.push(
                    summary["seconds"]
                        .as_f64()
                        .context("summary.json has no `seconds`")?,
                );
            }
            // Marginal cost per run: removes start-up and first-use kernel compilation.
            let per_run = (secs[1] - secs[0]) / (runs(big) - runs(small)) as f64;
            rows.push((b, secs[1], per_run));
        }
        let nd = rows
            .iter()
            .find(|r| r.0 == Backend::Ndarray)
            .map(|r| r.2)
            .unwrap_or(f64::NAN);
        let mut md = format!(
            "Synthetic experiment (20×20 layer, rank 4, {steps} steps per run, 3 methods × 2 \
             optimizers; {} runs = {} trajectories × {} learning rates), `cargo xtask \
             bench-backends` on {} ({}), {}.\n\n\
             | backend | wall time, {} runs (s) | steady state per run (ms) | per step (ms) | time / ndarray |\n\
             |---|---:|---:|---:|---:|\n",
            runs(big),
            big.0,
            big.1,
            machine()["cpu"].as_str().unwrap_or("?"),
            machine()["cores"],
            capture("date", &["-u", "+%Y-%m-%d"]).unwrap_or_default(),
            runs(big),
        );
        for (b, total, per_run) in &rows {
            md.push_str(&format!(
                "| {} | {:.1} | {:.1} | {:.3} | {:.2}× |\n",
                b.name(),
                total,
                per_run * 1e3,
                per_run * 1e3 / steps as f64,
                per_run / nd
            ));
        }
        md.push_str(&format!(
            "\nSteady state = (wall time of the {} runs − wall time of a {}-run warm-up config) / {}: \
             process start and each backend's first-use kernel compilation cancel out. The runs \
             use every core (the experiment's worker threads).\n",
            runs(big),
            runs(small),
            runs(big) - runs(small)
        ));
        println!("\n{md}");
        if record {
            let doc = self.root.join("docs/backends.md");
            replace_section(&doc, "bench", &md)?;
            println!("updated {}", doc.display());
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // assets, docs, test

    fn assets(&self, args: &[String]) -> Result<()> {
        let mut cmd = self.cargo();
        cmd.args(["run", "-p", "balora-cli", "--", "assets"])
            .args(args);
        run(&mut cmd).context(
            "`balora assets` failed; if clap reported an unrecognized subcommand, the assets \
             command is not part of this checkout",
        )
    }

    fn docs(&self, doctests: bool) -> Result<()> {
        let mut cmd = self.cargo();
        cmd.args(["doc", "--workspace", "--no-deps"]).env(
            "RUSTDOCFLAGS",
            "-D rustdoc::broken_intra_doc_links -D rustdoc::private_intra_doc_links -D rustdoc::bare_urls",
        );
        run(&mut cmd)?;
        check_markdown_links(&self.root)?;
        if doctests {
            run(self.cargo().args(["test", "--workspace", "--doc"]))?;
        }
        Ok(())
    }

    fn test(&self, wgpu: bool) -> Result<()> {
        let start = Instant::now();
        run(self.cargo().args(["fmt", "--all", "--check"]))?;
        // Default features (ndarray): what a new user gets; includes the conformance checks on
        // ndarray and the doctests.
        let fuzz_summary = self.target.join("tmp/fuzz-summary.txt");
        let _ = std::fs::remove_file(&fuzz_summary);
        run(self.cargo().args(["test", "--workspace"]))?;
        // The bounded fuzz run (balora-fuzz) leaves its per-reader counts here.
        match std::fs::read_to_string(&fuzz_summary) {
            Ok(s) => eprintln!("\n{}", s.trim_end()),
            Err(e) => bail!(
                "the fuzz run wrote no summary ({}): {e}",
                fuzz_summary.display()
            ),
        }
        // The heavy feature set, built once: wgpu runs (lavapipe on CPU machines), cuda is built
        // and reports "skipped: no usable device" without a GPU.
        // CUDA is type-checked only (below): building its kernels' host code would add a third
        // heavy feature set to CI, and no CI machine has a GPU to run it.
        let mut backends = vec![Backend::Ndarray, Backend::Flex];
        let mut require = vec![Backend::Ndarray, Backend::Flex];
        if wgpu {
            backends.push(Backend::Wgpu);
            require.push(Backend::Wgpu);
        }
        backends.sort();
        self.conformance(&backends, None, &require, false)?;
        // The CLI with the same features (reuses the build above): backend dispatch compiles
        // for every GPU backend, and a missing driver is one sentence, not a panic.
        self.build_cli(&backends)?;
        self.cli_backend_smoke(wgpu)?;
        run(self.cargo().args([
            "check",
            "-p",
            "balora-cli",
            "-p",
            "balora-conformance",
            "--features",
            // The opt-in OpenBLAS matmul path type-checks with it (linking needs libopenblas).
            "balora-cli/cuda,balora-cli/openblas,balora-conformance/cuda",
        ]))?;
        run(self.cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
        self.docs(false)?;
        eprintln!(
            "\nxtask test: all passed in {:.1} min",
            start.elapsed().as_secs_f64() / 60.0
        );
        Ok(())
    }

    /// `balora synthetic` on each backend the binary has: a short run where a device exists, and
    /// one clear error line (exit 1, no panic) where it does not.
    fn cli_backend_smoke(&self, wgpu: bool) -> Result<()> {
        let bin = self.target.join("debug/balora");
        let tiny = |backend: &str, out: &str| {
            let mut c = Command::new(&bin);
            c.current_dir(&self.root).args([
                "synthetic",
                "--backend",
                backend,
                "--set",
                "trajectories=1",
                "--set",
                "lr_count=1",
                "--set",
                "steps=3",
                "--set",
                "seeds=1",
                "--out",
            ]);
            c.arg(self.target.join(out));
            c
        };
        let mut cases = vec![
            ("ndarray", None, "smoke-ndarray"),
            ("flex", None, "smoke-flex"),
        ];
        if wgpu {
            cases.push(("wgpu", None, "smoke-wgpu"));
            // No Vulkan driver: the loader finds no ICD.
            cases.push((
                "wgpu",
                Some(("VK_ICD_FILENAMES", "/nonexistent.json")),
                "smoke-no-vk",
            ));
        }
        if capture("nvidia-smi", &["-L"]).is_none() {
            cases.push(("cuda", None, "smoke-no-cuda"));
        }
        for (backend, env, out) in cases {
            let mut c = tiny(backend, out);
            self.runtime_env(&mut c)?;
            if let Some((k, v)) = env {
                c.env(k, v).env("VK_DRIVER_FILES", v);
            }
            let line = show(&c);
            let o = c.output().with_context(|| format!("starting `{line}`"))?;
            let stderr = String::from_utf8_lossy(&o.stderr);
            let expect_ok = matches!(out, "smoke-ndarray" | "smoke-flex" | "smoke-wgpu");
            if expect_ok {
                if !o.status.success() {
                    bail!("`{line}` failed:\n{stderr}");
                }
                eprintln!("ok: {line}");
            } else {
                let err_line = stderr
                    .lines()
                    .find(|l| l.starts_with("error:"))
                    .unwrap_or("");
                if o.status.code() != Some(1) || stderr.contains("panicked") || err_line.is_empty()
                {
                    bail!(
                        "`{line}` should fail with one `error:` line (exit 1), got {} and:\n{stderr}",
                        o.status
                    );
                }
                eprintln!("ok (clear error): {line}\n    {err_line}");
            }
        }
        Ok(())
    }
}

/// A report for a backend that did not run (or crashed): every check with the same status.
fn synthetic_report(b: Backend, names: &[String], status: &str, why: &str) -> Value {
    json!({
        "backend": b.name(),
        "checks": names.iter().map(|n| json!({"check": n, "status": status, "detail": why, "seconds": 0.0})).collect::<Vec<_>>(),
    })
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let gpu = capture(
        "nvidia-smi",
        &["--query-gpu=name,driver_version", "--format=csv,noheader"],
    );
    let vulkan: Vec<String> = std::fs::read_dir("/usr/share/vulkan/icd.d")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    json!({
        "cpu": cpu,
        "cores": cores,
        "os": capture("uname", &["-srm"]).unwrap_or_default(),
        "nvidia_gpu": gpu,
        "vulkan_icds": vulkan,
    })
}

fn cell(check: &Value) -> (&str, String) {
    let status = check["status"].as_str().unwrap_or("fail");
    let detail = check["detail"].as_str().unwrap_or("").to_string();
    (status, detail)
}

/// The matrix as text, with the number of FAILs and of skips on required backends.
fn render_matrix(m: &Value, require: &[Backend]) -> (String, usize, usize) {
    let names: Vec<&str> = m["checks"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let reports = m["backends"].as_array().cloned().unwrap_or_default();
    let w = names.iter().map(|n| n.len()).max().unwrap_or(5).max(5);
    let mut s = format!("{:<w$}", "check");
    for r in &reports {
        s.push_str(&format!("  {:<8}", r["backend"].as_str().unwrap_or("?")));
    }
    s.push('\n');
    let (mut fails, mut skips) = (0, 0);
    let mut notes = Vec::new();
    for n in &names {
        s.push_str(&format!("{n:<w$}"));
        for r in &reports {
            let backend = r["backend"].as_str().unwrap_or("?");
            let check = r["checks"]
                .as_array()
                .and_then(|a| a.iter().find(|c| c["check"] == *n));
            let (status, detail) = check.map(cell).unwrap_or(("skip", "not run".into()));
            let tag = match status {
                "pass" => "pass",
                "skip" => {
                    if require.iter().any(|b| b.name() == backend) {
                        skips += 1;
                    }
                    "skipped"
                }
                _ => {
                    fails += 1;
                    notes.push(format!("FAIL {backend} / {n}: {detail}"));
                    "FAIL"
                }
            };
            s.push_str(&format!("  {tag:<8}"));
        }
        s.push('\n');
    }
    // One line per backend whose checks were all skipped for the same reason.
    for r in &reports {
        let backend = r["backend"].as_str().unwrap_or("?");
        let checks = r["checks"].as_array().cloned().unwrap_or_default();
        let reasons: std::collections::BTreeSet<String> = checks
            .iter()
            .filter(|c| c["status"] == "skip")
            .map(|c| cell(c).1)
            .collect();
        for why in reasons {
            notes.push(format!("skipped {backend}: {why}"));
        }
    }
    if !notes.is_empty() {
        s.push('\n');
        s.push_str(&notes.join("\n"));
        s.push('\n');
    }
    (s, fails, skips)
}

fn markdown_matrix(m: &Value) -> String {
    let names: Vec<&str> = m["checks"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let reports = m["backends"].as_array().cloned().unwrap_or_default();
    let mach = &m["machine"];
    let mut s = format!(
        "Recorded {} (commit {}) on {} ({} cores, {}){}, with `cargo xtask conformance --record`.\n\n| check |",
        m["date"].as_str().unwrap_or("?"),
        m["git"].as_str().unwrap_or("?"),
        mach["cpu"].as_str().unwrap_or("?"),
        mach["cores"],
        mach["os"].as_str().unwrap_or("?"),
        mach["nvidia_gpu"]
            .as_str()
            .map(|g| format!(", GPU {g}"))
            .unwrap_or_default(),
    );
    for r in &reports {
        s.push_str(&format!(" {} |", r["backend"].as_str().unwrap_or("?")));
    }
    s.push_str("\n|---|");
    s.push_str(&"---|".repeat(reports.len()));
    s.push('\n');
    let mut reasons: Vec<String> = Vec::new();
    for n in &names {
        s.push_str(&format!("| `{n}` |"));
        for r in &reports {
            let check = r["checks"]
                .as_array()
                .and_then(|a| a.iter().find(|c| c["check"] == *n));
            let (status, detail) = check.map(cell).unwrap_or(("skip", "not run".into()));
            let text = match status {
                "pass" => "pass".to_string(),
                "skip" => {
                    let note = format!("{}: {detail}", r["backend"].as_str().unwrap_or("?"));
                    let idx = match reasons.iter().position(|x| *x == note) {
                        Some(i) => i,
                        None => {
                            reasons.push(note);
                            reasons.len() - 1
                        }
                    };
                    format!("skipped ({})", idx + 1)
                }
                _ => "**FAIL**".to_string(),
            };
            s.push_str(&format!(" {text} |"));
        }
        s.push('\n');
    }
    if !reasons.is_empty() {
        s.push('\n');
        for (i, r) in reasons.iter().enumerate() {
            s.push_str(&format!("{}. {r}\n", i + 1));
        }
    }
    s.push_str("\nDetails (how close each check came to its tolerance):\n\n");
    for r in &reports {
        let backend = r["backend"].as_str().unwrap_or("?");
        for c in r["checks"].as_array().cloned().unwrap_or_default() {
            if c["status"] == "pass" || c["status"] == "fail" {
                s.push_str(&format!(
                    "- {backend} `{}` ({:.1}s): {}\n",
                    c["check"].as_str().unwrap_or("?"),
                    c["seconds"].as_f64().unwrap_or(0.0),
                    cell(&c).1
                ));
            }
        }
    }
    s
}

/// Replaces the text between `<!-- xtask:NAME:begin -->` and `<!-- xtask:NAME:end -->`.
fn replace_section(doc: &Path, name: &str, body: &str) -> Result<()> {
    let text =
        std::fs::read_to_string(doc).with_context(|| format!("reading {}", doc.display()))?;
    let (b, e) = (
        format!("<!-- xtask:{name}:begin -->"),
        format!("<!-- xtask:{name}:end -->"),
    );
    let (Some(i), Some(j)) = (text.find(&b), text.find(&e)) else {
        bail!("{} has no `{b}` … `{e}` markers", doc.display());
    };
    if j < i {
        bail!("{}: `{e}` comes before `{b}`", doc.display());
    }
    let new = format!("{}{b}\n{body}{}", &text[..i], &text[j..]);
    write_atomic(doc, &new)
}

/// Every relative link in docs/*.md and README.md points at an existing file.
fn check_markdown_links(root: &Path) -> Result<()> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "md"))
                .collect()
        })
        .unwrap_or_default();
    files.push(root.join("README.md"));
    let mut broken = Vec::new();
    let mut count = 0;
    for f in files.iter().filter(|f| f.exists()) {
        let text = std::fs::read_to_string(f)?;
        let mut rest = text.as_str();
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            let Some(end) = rest.find(')') else { break };
            let target = rest[..end].split_whitespace().next().unwrap_or("");
            rest = &rest[end..];
            if target.is_empty()
                || target.starts_with('#')
                || target.contains("://")
                || target.starts_with("mailto:")
            {
                continue;
            }
            count += 1;
            let path = target.split('#').next().unwrap_or(target);
            let base = f.parent().unwrap_or(root);
            if !base.join(path).exists() {
                broken.push(format!("{}: link to `{target}`", f.display()));
            }
        }
    }
    if !broken.is_empty() {
        bail!("broken links in markdown pages:\n  {}", broken.join("\n  "));
    }
    eprintln!(
        "markdown links: {count} relative links in {} pages, all resolve",
        files.len()
    );
    Ok(())
}
