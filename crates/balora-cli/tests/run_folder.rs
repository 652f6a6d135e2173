//! `balora train` run folders: reuse refused without --overwrite, outputs never written over
//! inputs, resume checks (no checkpoint, changed config, damaged newest checkpoint), stale
//! staging folders removed, one run per folder (lock), SIGINT → final checkpoint, logs on stderr.
//! The runs train one adapted projection of the real SmolLM2 asset for a few 8-token steps.

mod run_common;
use run_common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

/// The test's scratch folder `dir` (named after `name`) with the corpus `data` in it, the run
/// folder `out` (`<dir>/run`, not created) and the SmolLM2 asset `gguf`, as
/// `(gguf, dir, data, out)`; `None` when the asset is absent and not required
/// (`balora_assets::for_test`: a failure under `BALORA_REQUIRE_ASSETS=1`).
fn setup(name: &str) -> Option<(PathBuf, Scratch, PathBuf, PathBuf)> {
    let gguf = balora_assets::for_test("smollm2")?;
    let dir = scratch(name);
    let data = corpus(&dir);
    let out = dir.join("run");
    Some((gguf, dir, data, out))
}

/// `balora train <args> --out <out>` in the background, stderr piped.
fn spawn_run(args: &[String], out: &Path) -> Child {
    balora()
        .args(args)
        .arg("--out")
        .arg(out)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn a_used_folder_is_refused_and_overwrite_replaces_the_run() {
    let Some((gguf, dir, data, out)) = setup("reuse") else {
        return;
    };
    let first = run(&job(&gguf, &data, 2), &[], &out);
    assert!(first.status.success(), "{}", err(&first));
    // Logs (and the no-terminal progress lines) are on stderr, without colour codes; stdout has
    // only the summary.
    let (stdout, stderr) = (String::from_utf8_lossy(&first.stdout), err(&first));
    assert!(
        !stderr.contains('\x1b'),
        "ANSI codes in piped stderr: {stderr:?}"
    );
    assert!(stderr.contains("step 2/2"), "no progress line: {stderr}");
    assert!(
        !stdout.contains("INFO") && stdout.contains("trained 2 steps"),
        "{stdout}"
    );
    assert_eq!(train_steps(&out), [1, 2]);

    // Same folder again: refused before anything is loaded or written.
    let before = std::fs::read(out.join("metrics.jsonl")).unwrap();
    let again = run(&job(&gguf, &data, 3), &[], &out);
    let e = err(&again);
    assert!(!again.status.success());
    assert!(
        e.contains("not empty") && e.contains("--overwrite") && e.contains(&*out.to_string_lossy()),
        "{e}"
    );
    assert_eq!(std::fs::read(out.join("metrics.jsonl")).unwrap(), before);

    // --overwrite: the old run's metrics and checkpoints are gone, the new run's are complete.
    let over = run(&job(&gguf, &data, 3), &["--overwrite"], &out);
    assert!(over.status.success(), "{}", err(&over));
    assert_eq!(train_steps(&out), [1, 2, 3]);
    let cks: Vec<u64> = checkpoints(&out).iter().map(|c| c.0).collect();
    assert_eq!(cks, [3], "the previous run's checkpoint-2 must not survive");
    assert_eq!(assert_checkpoint_intact(&checkpoints(&out)[0].1), 3);
    let stored = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(stored.contains("steps = 3"), "{stored}");

    // Resume under another schedule: refused, naming each change as `field: old → new`.
    let changed = run(
        &job(&gguf, &data, 5),
        &["--set", "trainer.resume=true", "--set", "trainer.seed=4"],
        &out,
    );
    let e = err(&changed);
    assert!(!changed.status.success());
    assert!(e.contains("trainer.steps: 3 → 5"), "{e}");
    assert!(e.contains("trainer.seed: 0 → 4"), "{e}");
    assert!(e.contains("--allow-config-change"), "{e}");

    // An adapter left aside by a swap killed between two renames (file systems without
    // RENAME_EXCHANGE) is put back when the folder is next opened, even by a refused run.
    let bytes = std::fs::read(out.join("adapter/adapter_model.safetensors")).unwrap();
    let aside = out.join(".adapter.old-77-0");
    std::fs::rename(out.join("adapter"), &aside).unwrap();
    let refused = run(
        &job(&gguf, &data, 5),
        &["--set", "trainer.resume=true"],
        &out,
    );
    assert!(!refused.status.success());
    assert!(!aside.exists(), "{}", err(&refused));
    assert_eq!(
        std::fs::read(out.join("adapter/adapter_model.safetensors")).unwrap(),
        bytes
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn outputs_never_go_over_inputs() {
    let Some((gguf, dir, data, _)) = setup("inputs") else {
        return;
    };
    let config = dir.join("job.toml");
    std::fs::write(&config, "[trainer]\nsteps = 2\n").unwrap();
    let config_bytes = std::fs::read(&config).unwrap();
    // `--out .` in the folder holding the config file and the data (with --overwrite, too).
    let o = balora()
        .current_dir(&dir)
        .args(job(&gguf, &data, 2))
        .args(["--config", "job.toml", "--out", ".", "--overwrite"])
        .output()
        .unwrap();
    let e = err(&o);
    assert!(!o.status.success());
    assert!(
        e.contains("refusing") && (e.contains("job.toml") || e.contains("corpus.txt")),
        "{e}"
    );
    assert_eq!(std::fs::read(&config).unwrap(), config_bytes);
    assert!(!dir.join("config.toml").exists() && !dir.join("metrics.jsonl").exists());
    // An output folder above the data file.
    let o = run(&job(&gguf, &data, 2), &[], &dir);
    let e = err(&o);
    assert!(
        !o.status.success() && e.contains("data") && e.contains("corpus.txt"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn resume_without_a_checkpoint_is_an_error() {
    let Some((gguf, dir, data, out)) = setup("nockpt") else {
        return;
    };
    let o = run(
        &job(&gguf, &data, 2),
        &["--set", "trainer.resume=true"],
        &out,
    );
    let e = err(&o);
    assert!(!o.status.success());
    assert!(
        e.contains("no checkpoint") && e.contains("trainer.resume"),
        "{e}"
    );
    assert!(train_steps(&out).is_empty());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn damaged_newest_checkpoint_falls_back_and_stale_staging_is_removed() {
    let Some((gguf, dir, data, out)) = setup("fallback") else {
        return;
    };
    let full = dir.join("full");
    let args = job(&gguf, &data, 4);
    let ck = [
        "--set",
        "trainer.checkpoint_every=2",
        "--set",
        "trainer.keep_checkpoints=3",
    ];
    let a = run(&args, &ck, &full);
    assert!(a.status.success(), "{}", err(&a));
    let reference = adapter(&full.join("adapter")).unwrap();
    copy_tree(&full, &out);
    std::fs::remove_dir_all(out.join("adapter")).unwrap();
    // Damage the newest checkpoint (one flipped byte) and leave staging folders of killed saves.
    let newest = checkpoints(&out)
        .last()
        .unwrap()
        .1
        .join("params.safetensors");
    let mut bytes = std::fs::read(&newest).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x40;
    std::fs::write(&newest, bytes).unwrap();
    let stale = [
        out.join("checkpoints/.tmp-checkpoint-00000006-99"),
        out.join("checkpoints/.checkpoint-00000006.staging-99-0"),
        out.join(".adapter.staging-99-0"),
    ];
    for s in &stale {
        std::fs::create_dir_all(s).unwrap();
        std::fs::write(s.join("params.safetensors"), b"partial").unwrap();
    }
    let mut resume = ck.to_vec();
    resume.extend(["--set", "trainer.resume=true"]);
    let b = run(&args, &resume, &out);
    let e = err(&b);
    assert!(b.status.success(), "{e}");
    assert!(
        e.contains("skipping damaged checkpoint") && e.contains("checkpoint-00000004"),
        "{e}"
    );
    assert!(
        e.contains("checkpoint-00000002"),
        "resumed from step 2: {e}"
    );
    for s in &stale {
        assert!(!s.exists(), "{} not removed", s.display());
    }
    // Steps 3 and 4 were trained again: one record per step, and the same adapter as the
    // uninterrupted run (resuming replays the trajectory).
    assert_eq!(train_steps(&out), [1, 2, 3, 4]);
    let resumed = adapter(&out.join("adapter")).unwrap();
    assert_eq!(resumed.0, reference.0);
    assert_close(&resumed.1, &reference.1, 1e-5);
    for (_, c) in checkpoints(&out) {
        assert_checkpoint_intact(&c);
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Waits until `out` has at least `n` train records (or panics after a minute).
fn wait_for_steps(out: &Path, n: usize, child: &mut Child) {
    let t0 = std::time::Instant::now();
    while train_steps(out).len() < n {
        if let Ok(Some(s)) = child.try_wait() {
            panic!("the run ended early: {s}");
        }
        assert!(
            t0.elapsed().as_secs() < 60,
            "no progress in {}",
            out.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_second_run_in_the_same_folder_fails_and_the_first_finishes_intact() {
    let Some((gguf, dir, data, out)) = setup("lock") else {
        return;
    };
    let mut first = spawn_run(&job(&gguf, &data, 12), &out);
    wait_for_steps(&out, 1, &mut first);
    for extra in [
        &[][..],
        &["--overwrite"][..],
        &["--set", "trainer.resume=true"][..],
    ] {
        let second = run(&job(&gguf, &data, 12), extra, &out);
        let e = err(&second);
        assert!(!second.status.success(), "{extra:?}");
        assert!(
            e.contains("in use by another balora run")
                && e.contains(&format!("pid {}", first.id())),
            "{extra:?}: {e}"
        );
    }
    let o = first.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(train_steps(&out), (1..=12).collect::<Vec<_>>());
    assert!(adapter(&out.join("adapter")).is_some());
    assert_checkpoint_intact(&checkpoints(&out).last().unwrap().1);
    std::fs::remove_dir_all(&dir).ok();
}

#[cfg(unix)]
#[test]
fn sigint_writes_a_final_checkpoint_and_the_printed_resume_finishes() {
    let Some((gguf, dir, data, out)) = setup("sigint") else {
        return;
    };
    // checkpoint_every = 0: only the signal's checkpoint can exist mid-run.
    let mut args = job(&gguf, &data, 30);
    args.extend(["--set".into(), "trainer.checkpoint_every=0".into()]);
    let mut child = spawn_run(&args, &out);
    wait_for_steps(&out, 2, &mut child);
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let o = child.wait_with_output().unwrap();
    let e = err(&o);
    assert_eq!(o.status.code(), Some(130), "{e}");
    assert!(
        e.contains("interrupted by SIGINT") && e.contains("trainer.resume=true"),
        "{e}"
    );
    assert!(
        !out.join("adapter").exists(),
        "no adapter for an unfinished run"
    );
    let cks = checkpoints(&out);
    assert_eq!(cks.len(), 1, "{cks:?}");
    let step = assert_checkpoint_intact(&cks[0].1);
    let done = train_steps(&out);
    assert_eq!(
        done,
        (1..=step).collect::<Vec<_>>(),
        "checkpoint = last finished step"
    );
    assert!((2..30).contains(&step), "{step}");
    // The printed resume command continues the run to the end.
    let line = e.lines().find(|l| l.starts_with("resume with: ")).unwrap();
    assert!(line.contains("--set trainer.resume=true"), "{line}");
    let r = run(&args, &["--set", "trainer.resume=true"], &out);
    assert!(r.status.success(), "{}", err(&r));
    assert_eq!(train_steps(&out), (1..=30).collect::<Vec<_>>());
    assert!(adapter(&out.join("adapter")).is_some());
    std::fs::remove_dir_all(&dir).ok();
}

#[cfg(unix)]
#[test]
fn sigterm_also_checkpoints_and_exits_143() {
    let Some((gguf, dir, data, out)) = setup("sigterm") else {
        return;
    };
    let mut child = spawn_run(&job(&gguf, &data, 30), &out);
    wait_for_steps(&out, 1, &mut child);
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let o = child.wait_with_output().unwrap();
    let e = err(&o);
    assert_eq!(o.status.code(), Some(143), "{e}");
    assert!(e.contains("interrupted by SIGTERM"), "{e}");
    let last = checkpoints(&out).last().unwrap().1.clone();
    let step = assert_checkpoint_intact(&last);
    assert_eq!(train_steps(&out), (1..=step).collect::<Vec<_>>());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_run_that_failed_before_its_first_step_does_not_block_the_folder() {
    let Some((gguf, dir, data, out)) = setup("failedstart") else {
        return;
    };
    // The text corpus read as JSONL fails to load, after the folder was opened.
    let bad = run(
        &job(&gguf, &data, 1),
        &["--set", "data.format=\"jsonl\""],
        &out,
    );
    let e = err(&bad);
    assert!(!bad.status.success() && e.contains("corpus.txt:1"), "{e}");
    let good = run(&job(&gguf, &data, 1), &[], &out);
    assert!(good.status.success(), "{}", err(&good));
    assert_eq!(train_steps(&out), [1]);
    std::fs::remove_dir_all(&dir).ok();
}
