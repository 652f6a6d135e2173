//! `cargo xtask bench-backends`: the synthetic experiment's training time per backend, ratios
//! to ndarray (`--no-record` leaves docs/backends.md alone).

use crate::backend::Backend;
use crate::util::{capture, machine, replace_section, run, Xtask};
use anyhow::{Context, Result};
use serde_json::Value;
use std::process::Command;

impl Xtask {
    pub fn bench(
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
}
