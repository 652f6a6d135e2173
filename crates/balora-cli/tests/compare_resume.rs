//! `balora compare` as an experiment runner: a grid killed (`kill -9`) in the middle of a cell
//! and rerun gives the same report as an uninterrupted run; a rerun skips finished cells; a
//! finished cell with another config is refused without `--overwrite`. Tiny llama GGUF from the
//! fuzz corpus, so no downloaded asset is needed.

mod run_common;
use run_common::{balora, scratch};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

fn tiny_gguf() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../balora-fuzz/corpus/gguf/tiny_llama.gguf")
}

fn corpus(dir: &Path) -> PathBuf {
    let words = [
        "the", "whale", "ship", "sea", "captain", "white", "water", "boat",
    ];
    let text: Vec<&str> = (0..6000)
        .map(|i| words[(i * 7 + i / 3) % words.len()])
        .collect();
    let p = dir.join("corpus.txt");
    std::fs::write(&p, text.join(" ")).unwrap();
    p
}

fn args(data: &Path, out: &Path, report: &Path) -> Vec<String> {
    let mut a: Vec<String> = vec!["compare".into()];
    for s in [
        format!("model.path=\"{}\"", tiny_gguf().display()),
        format!("data.path=\"{}\"", data.display()),
        "data.seq_len=16".into(),
        "trainer.batch_size=4".into(),
        "trainer.eval_batches=1".into(),
        "trainer.eval_every=50".into(),
        "trainer.steps=300".into(),
        "adapter.r=2".into(),
    ] {
        a.push("--set".into());
        a.push(s);
    }
    for s in [
        "--lrs",
        "1e-2",
        "--init-scales",
        "2",
        "--alpha-per-scale2",
        "4",
        "--seeds",
        "0,1",
        "--jobs",
        "1",
    ] {
        a.push(s.into());
    }
    a.push("--out".into());
    a.push(out.display().to_string());
    a.push("--report".into());
    a.push(report.display().to_string());
    a
}

/// The report without what legitimately differs between invocations: the command line (other
/// folders) and the timing section.
fn losses_part(report: &Path) -> String {
    let md = std::fs::read_to_string(report).unwrap();
    let md = md.split("## Timing").next().unwrap().to_string();
    md.lines()
        .filter(|l| !l.starts_with("Command:"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn summary(report: &Path) -> serde_json::Value {
    let p = report.with_file_name("report-summary.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn lines(p: &Path) -> usize {
    std::fs::read_to_string(p).map_or(0, |s| s.lines().count())
}

#[test]
fn a_killed_compare_rerun_gives_the_uninterrupted_report() {
    let dir = scratch("compare-kill");
    let data = corpus(&dir);
    // Uninterrupted.
    let (out_a, rep_a) = (dir.join("a"), dir.join("ra/report.md"));
    let a = balora().args(args(&data, &out_a, &rep_a)).output().unwrap();
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    // Killed while the second cell (BaLoRA, seed 0) is training.
    let (out_b, rep_b) = (dir.join("b"), dir.join("rb/report.md"));
    let second = out_b.join("BaLoRA-lr1e-2-scale2e0-seed0");
    let mut child = balora()
        .args(args(&data, &out_b, &rep_b))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while lines(&second.join("metrics.jsonl")) < 5 {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "second cell never started"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "compare ended before the kill"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(out_b.join("LoRA-lr1e-2-scale2e0-seed0/cell.json").exists());
    assert!(
        !second.join("cell.json").exists(),
        "the kill landed after the second cell finished; make the cells longer"
    );
    assert!(!rep_b.exists());
    // Rerun: the first cell is skipped, the second restarted, the rest run.
    let b = balora().args(args(&data, &out_b, &rep_b)).output().unwrap();
    let log = String::from_utf8_lossy(&b.stderr);
    assert!(b.status.success(), "{log}");
    assert!(
        log.contains("3 of 4 cells to run (1 finished before)"),
        "{log}"
    );
    assert_eq!(summary(&rep_a), summary(&rep_b));
    assert_eq!(losses_part(&rep_a), losses_part(&rep_b));
    // Both seeds and both methods are in the summary, with finite best losses.
    let groups = summary(&rep_a)["groups"].as_array().unwrap().clone();
    assert_eq!(groups.len(), 2);
    for g in &groups {
        assert_eq!(g["seeds"], serde_json::json!([0, 1]));
        assert!(g["best"].as_array().unwrap().iter().all(|v| v.is_f64()));
    }
    // A third run only rebuilds the report.
    let c = balora().args(args(&data, &out_b, &rep_b)).output().unwrap();
    let log = String::from_utf8_lossy(&c.stderr);
    assert!(c.status.success(), "{log}");
    assert!(!log.contains("cells to run"), "{log}");
    assert_eq!(summary(&rep_a), summary(&rep_b));
    // The same folders with another config: refused, then rerun with --overwrite.
    let mut changed = args(&data, &out_b, &rep_b);
    changed.extend(["--set".into(), "trainer.warmup_steps=7".into()]);
    let d = balora().args(&changed).output().unwrap();
    let log = String::from_utf8_lossy(&d.stderr);
    assert!(!d.status.success());
    assert!(
        log.contains("holds a finished cell run with another config")
            && log.contains("--overwrite"),
        "{log}"
    );
}
