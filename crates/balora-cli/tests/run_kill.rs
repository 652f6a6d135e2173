//! `kill -9` at many points of a resumed run — while loading, while training, while a checkpoint
//! is being written and while the adapter is being replaced — always leaves a run folder that is
//! either the old complete state or the new complete state, and the run resumes to the result of
//! an uninterrupted run. The resumed run changes `adapter.alpha` (16 → 32), so an adapter whose
//! config and weights came from different saves would be caught.

mod run_common;
use run_common::*;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// A staging folder of an in-progress save, if any (adapter or checkpoint).
fn saving(out: &Path, adapter: bool) -> bool {
    let (dir, prefix) = if adapter {
        (out.to_path_buf(), ".adapter.staging-")
    } else {
        (out.join("checkpoints"), ".checkpoint-")
    };
    std::fs::read_dir(dir).is_ok_and(|rd| {
        rd.flatten().any(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            n.starts_with(prefix) && n.contains(".staging-")
        })
    })
}

#[test]
fn kill_9_anywhere_leaves_the_old_or_the_new_state_and_resume_completes() {
    let Some(gguf) = balora_assets::for_test("smollm2") else {
        return;
    };
    let dir = scratch("kill");
    let data = corpus(&dir);
    let ck = [
        "--set",
        "trainer.checkpoint_every=2",
        "--set",
        "trainer.keep_checkpoints=3",
    ];
    // The old state: a finished 4-step run with α = 16.
    let base = dir.join("base");
    let b = run(&job(&gguf, &data, 4), &ck, &base);
    assert!(b.status.success(), "{}", err(&b));
    let old = adapter(&base.join("adapter")).unwrap();
    assert_eq!(old.0, 16.0);
    // The new state: the same run resumed to 8 steps with α = 32, uninterrupted.
    let resume_args = job(&gguf, &data, 8);
    let mut resume_extra = ck.to_vec();
    resume_extra.extend([
        "--set",
        "trainer.resume=true",
        "--set",
        "adapter.alpha=32",
        "--allow-config-change",
    ]);
    let reference = dir.join("reference");
    copy_tree(&base, &reference);
    let r = run(&resume_args, &resume_extra, &reference);
    assert!(r.status.success(), "{}", err(&r));
    let new = adapter(&reference.join("adapter")).unwrap();
    assert_eq!(new.0, 32.0);

    // (trigger, label): kill when a checkpoint / the adapter save is in progress, or after a delay.
    let points: [(&str, u64); 7] = [
        ("delay", 150),
        ("delay", 1200),
        ("delay", 2500),
        ("checkpoint", 0),
        ("checkpoint", 1),
        ("adapter", 0),
        ("adapter", 1),
    ];
    let mut mid_save = 0;
    for (i, &(trigger, arg)) in points.iter().enumerate() {
        let w = dir.join(format!("kill{i}"));
        copy_tree(&base, &w);
        let mut child = balora()
            .args(&resume_args)
            .args(&resume_extra)
            .arg("--out")
            .arg(&w)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        let mut seen = 0u64;
        loop {
            if child.try_wait().unwrap().is_some() {
                break; // finished before the trigger: the new state
            }
            let fire = match trigger {
                "delay" => t0.elapsed() >= Duration::from_millis(arg),
                // The (arg+1)-th checkpoint save seen (steps 6 and 8).
                "checkpoint" => {
                    if saving(&w, false) {
                        seen += 1;
                        while saving(&w, false) && seen <= arg {
                            std::hint::spin_loop();
                        }
                    }
                    seen > arg
                }
                _ => {
                    saving(&w, true) && {
                        seen += 1;
                        seen > arg
                    }
                }
            };
            if fire {
                child.kill().unwrap(); // SIGKILL
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(120), "run {i} hangs");
            std::thread::sleep(Duration::from_micros(100));
        }
        child.wait().unwrap();
        if saving(&w, true) || saving(&w, false) {
            mid_save += 1;
        }
        // The adapter is the old pair or the new pair, never a mix.
        let now = adapter(&w.join("adapter")).expect("adapter/ missing or without its config");
        if now.0 == 16.0 {
            assert_eq!(
                now.1, old.1,
                "point {i}: α 16 with other weights than the old run's"
            );
        } else {
            assert_eq!(now.0, 32.0, "point {i}");
            assert_close(&now.1, &new.1, 1e-5);
        }
        for (_, c) in checkpoints(&w) {
            assert_checkpoint_intact(&c);
        }
        toml::from_str::<toml::Table>(&std::fs::read_to_string(w.join("config.toml")).unwrap())
            .unwrap();
        // Resuming (the same command) finishes with the uninterrupted run's result.
        let again = run(&resume_args, &resume_extra, &w);
        assert!(again.status.success(), "point {i}: {}", err(&again));
        assert_eq!(train_steps(&w), (1..=8).collect::<Vec<_>>(), "point {i}");
        let fin = adapter(&w.join("adapter")).unwrap();
        assert_eq!(fin.0, 32.0);
        assert_close(&fin.1, &new.1, 1e-5);
        for (_, c) in checkpoints(&w) {
            assert_checkpoint_intact(&c);
        }
        std::fs::remove_dir_all(&w).ok();
    }
    eprintln!(
        "{} kill points, {mid_save} landed while a save was in progress",
        points.len()
    );
    std::fs::remove_dir_all(&dir).ok();
}
