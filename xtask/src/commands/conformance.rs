//! `cargo xtask conformance`: the conformance runner per backend, merged into one matrix
//! (printed, written to `target/conformance/matrix.json`, `--record`: into docs/backends.md).

use crate::backend::Backend;
use crate::util::{capture, machine, replace_section, run, show, write_atomic, Xtask};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Instant;

impl Xtask {
    pub fn conformance(
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
}

/// A report for a backend that did not run (or crashed): every check with the same status.
fn synthetic_report(b: Backend, names: &[String], status: &str, why: &str) -> Value {
    json!({
        "backend": b.name(),
        "checks": names.iter().map(|n| json!({"check": n, "status": status, "detail": why, "seconds": 0.0})).collect::<Vec<_>>(),
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
