//! `balora-conformance`: runs the conformance checks on the backends compiled into this binary.
//!
//! Usually driven by `cargo xtask conformance`, which builds it with the right features, merges
//! the per-backend JSON reports into `target/conformance/matrix.json` and prints the matrix.

use anyhow::{bail, Context, Result};
use balora_conformance::{run_backend, BackendKind, Status};
use clap::Parser;
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "Cross-backend conformance checks of balora against f64 host references")]
struct Args {
    /// Comma-separated backends (ndarray, flex, wgpu, cuda, tch); default: every compiled-in backend.
    #[arg(long, value_delimiter = ',')]
    backend: Vec<String>,
    /// Only checks whose name contains this.
    #[arg(long)]
    filter: Option<String>,
    /// Write the reports as JSON here (written atomically).
    #[arg(long)]
    json: Option<PathBuf>,
    /// List the check names and exit.
    #[arg(long)]
    list: bool,
}

fn main() {
    match run() {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    }
}

fn run() -> Result<bool> {
    let args = Args::parse();
    if args.list {
        for n in balora_conformance::check_names() {
            println!("{n}");
        }
        return Ok(true);
    }
    let kinds: Vec<BackendKind> = if args.backend.is_empty() {
        BackendKind::ALL
            .into_iter()
            .filter(|k| k.compiled_in())
            .collect()
    } else {
        args.backend
            .iter()
            .map(|s| {
                BackendKind::parse(s).with_context(|| {
                    format!("unknown backend `{s}`; known: ndarray, flex, wgpu, cuda, tch")
                })
            })
            .collect::<Result<_>>()?
    };
    let mut reports = Vec::new();
    let mut ok = true;
    for kind in kinds {
        let report = run_backend(kind, args.filter.as_deref());
        for c in &report.checks {
            let (tag, detail) = match &c.status {
                Status::Pass(d) => ("pass", d),
                Status::Fail(d) => {
                    ok = false;
                    ("FAIL", d)
                }
                Status::Skip(d) => ("skipped", d),
            };
            println!(
                "{:<8} {:<22} {:<8} {:>6.1}s  {detail}",
                kind.name(),
                c.check,
                tag,
                c.seconds
            );
        }
        reports.push(report);
    }
    if reports.iter().all(|r| r.checks.is_empty()) {
        bail!("no check matched the filter");
    }
    if let Some(path) = args.json {
        let text = serde_json::to_string_pretty(&reports)?;
        let tmp = path.with_extension("json.tmp");
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ok)
}
