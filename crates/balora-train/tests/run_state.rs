//! The trainer's run-folder rules on a tiny random-weight model: the stop flag writes a final
//! checkpoint and the resumed run equals the uninterrupted one; resume needs an intact checkpoint
//! and the same schedule; damaged checkpoints are detected by the manifest and skipped.

use balora_adapter::LoraConfig;
use balora_config::{ScheduleName, TrainerSection};
use balora_data::{Dataset, Example};
use balora_manifold::Options;
use balora_train::checkpoint::{list_checkpoints, verify, Checkpoint};
use balora_train::tiny::{TinyLm, TinyLmConfig};
use balora_train::{train, Objective, RunOptions, TrainStepper};
use burn::backend::{Autodiff, NdArray};
use burn::tensor::backend::Backend;
use std::sync::atomic::{AtomicBool, Ordering};

type B = Autodiff<NdArray>;

/// ndarray's RNG is process-global: tests that train run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn dataset() -> Dataset {
    let ex = |start: u32| {
        let mut ids = vec![start % 64];
        for _ in 1..10 {
            let last = *ids.last().unwrap();
            ids.push((5 * last + 3) % 64);
        }
        Example::lm(ids, vec![true; 10])
    };
    Dataset {
        train: (0..16u32).map(|i| ex(i * 3)).collect(),
        valid: (0..4u32).map(|i| ex(i * 3 + 1)).collect(),
        classes: Vec::new(),
        pad_id: 0,
    }
}

fn model() -> TinyLm<B> {
    let dev = Default::default();
    B::seed(&dev, 9);
    let lora = LoraConfig {
        r: 2,
        alpha: 4.0,
        ..Default::default()
    }
    .resolve("q_proj")
    .unwrap();
    TinyLm::new(TinyLmConfig::default(), &lora, &["q_proj", "v_proj"], &dev)
}

fn cfg(steps: u64) -> TrainerSection {
    TrainerSection {
        steps,
        batch_size: 4,
        lr: 1e-2,
        schedule: ScheduleName::Cosine,
        warmup_steps: 1,
        eval_every: 0,
        seed: 2,
        checkpoint_every: 0,
        progress: false,
        ..TrainerSection::default()
    }
}

fn go(
    c: &TrainerSection,
    out: &std::path::Path,
    opts: RunOptions,
) -> Result<balora_train::TrainOutcome<TinyLm<B>>, balora_train::TrainError> {
    let mut st = TrainStepper::<B>::from_names(
        "adamw",
        &Options::default(),
        "balanced",
        &Options::default(),
    )
    .unwrap();
    train(
        model(),
        &mut st,
        &dataset(),
        c,
        &RunOptions {
            out_dir: Some(out.to_path_buf()),
            method: "balora-adamw".into(),
            ..opts
        },
        &Objective::<B, TinyLm<B>>::causal(),
        &Default::default(),
    )
}

fn losses(o: &balora_train::TrainOutcome<TinyLm<B>>) -> Vec<(u64, f64)> {
    o.history
        .iter()
        .filter(|r| r.kind == "train")
        .map(|r| (r.step, r.loss))
        .collect()
}

#[test]
fn stop_flag_checkpoints_the_last_step_and_resume_matches_the_full_run() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let full = go(&cfg(8), a.path(), RunOptions::default()).unwrap();
    assert_eq!(full.interrupted, None);
    // The flag is already set: the run stops before step 1 with a checkpoint of step 0…
    static STOP: AtomicBool = AtomicBool::new(true);
    // A run in `b` that watches the flag.
    let watching = |c: &TrainerSection| {
        go(
            c,
            b.path(),
            RunOptions {
                stop: Some(&STOP),
                ..Default::default()
            },
        )
        .unwrap()
    };
    let stopped = watching(&cfg(8));
    assert_eq!(stopped.interrupted, Some(0));
    let root = b.path().join("checkpoints");
    assert_eq!(
        list_checkpoints(&root)
            .iter()
            .map(|c| c.0)
            .collect::<Vec<_>>(),
        [0]
    );
    // …and after some steps (stop_after stands in for the signal arriving mid-run), the resumed
    // run stops again at once when the flag is still set, then completes when it is cleared.
    let mut c = cfg(8);
    c.resume = true;
    let first = go(
        &c,
        b.path(),
        RunOptions {
            stop_after: Some(3),
            ..Default::default()
        },
    )
    .unwrap();
    let again = watching(&c);
    assert_eq!((again.resumed_from, again.interrupted), (3, Some(3)));
    STOP.store(false, Ordering::SeqCst);
    let rest = watching(&c);
    assert_eq!(rest.resumed_from, 3);
    let mut joined = losses(&first);
    joined.extend(losses(&rest));
    assert_eq!(
        joined,
        losses(&full),
        "interrupted + resumed ≠ uninterrupted"
    );
}

#[test]
fn resume_needs_an_intact_checkpoint_and_the_same_schedule() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let d = tempfile::tempdir().unwrap();
    let mut c = cfg(4);
    c.resume = true;
    let e = go(&c, d.path(), RunOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("no checkpoint"), "{e}");

    c.resume = false;
    c.checkpoint_every = 2;
    c.keep_checkpoints = 3;
    go(&c, d.path(), RunOptions::default()).unwrap();
    // A fresh run into the same folder would prune against the old run's checkpoints: refused.
    let e = go(&c, d.path(), RunOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("earlier run"), "{e}");

    // Another step count, lr and seed: every change is named.
    let mut other = cfg(6);
    other.resume = true;
    other.lr = 2e-2;
    other.seed = 5;
    let e = go(&other, d.path(), RunOptions::default())
        .unwrap_err()
        .to_string();
    for want in [
        "trainer.steps: 4 → 6",
        "trainer.lr: 0.01 → 0.02",
        "trainer.seed: 2 → 5",
    ] {
        assert!(e.contains(want), "{want}: {e}");
    }
    let ok = go(
        &other,
        d.path(),
        RunOptions {
            allow_config_change: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(ok.resumed_from, 4);
}

#[test]
fn damaged_checkpoints_fail_verification_and_are_skipped() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let d = tempfile::tempdir().unwrap();
    let mut c = cfg(6);
    c.checkpoint_every = 2;
    c.keep_checkpoints = 3;
    go(&c, d.path(), RunOptions::default()).unwrap();
    let root = d.path().join("checkpoints");
    let cks = list_checkpoints(&root);
    assert_eq!(cks.iter().map(|c| c.0).collect::<Vec<_>>(), [2, 4, 6]);
    for (_, dir) in &cks {
        verify(dir).unwrap();
    }
    // 6: truncated weights; 4: no manifest (a save cut short). 2 is the newest intact one.
    let p6 = cks[2].1.join("params.safetensors");
    let bytes = std::fs::read(&p6).unwrap();
    std::fs::write(&p6, &bytes[..bytes.len() - 8]).unwrap();
    std::fs::remove_file(cks[1].1.join("manifest.json")).unwrap();
    let e6 = verify(&cks[2].1).unwrap_err().to_string();
    assert!(
        e6.contains("params.safetensors") && e6.contains("bytes"),
        "{e6}"
    );
    let e4 = verify(&cks[1].1).unwrap_err().to_string();
    assert!(e4.contains("manifest.json"), "{e4}");
    let found = Checkpoint::latest_intact(&root);
    assert_eq!(found.found.as_ref().unwrap().1.state.step, 2);
    assert_eq!(found.skipped.len(), 2);
    // A leftover staging folder is removed by the next run, which resumes from step 2.
    let stale = root.join(".checkpoint-00000008.staging-1-0");
    std::fs::create_dir_all(&stale).unwrap();
    c.resume = true;
    let r = go(&c, d.path(), RunOptions::default()).unwrap();
    assert_eq!(r.resumed_from, 2);
    assert!(!stale.exists());
    for (_, dir) in list_checkpoints(&root) {
        verify(&dir).unwrap();
    }
}

/// A swap without `RENAME_EXCHANGE` killed between its two renames leaves the only complete copy
/// aside as `.checkpoint-N.old-*`: it is put back; an aside copy next to an existing folder goes.
#[test]
fn an_interrupted_rename_aside_is_restored() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let d = tempfile::tempdir().unwrap();
    let mut c = cfg(4);
    c.checkpoint_every = 2;
    go(&c, d.path(), RunOptions::default()).unwrap();
    let root = d.path().join("checkpoints");
    let four = list_checkpoints(&root)[1].1.clone();
    let aside = root.join(".checkpoint-00000004.old-77-0");
    std::fs::rename(&four, &aside).unwrap();
    let extra = root.join(".checkpoint-00000002.old-77-1");
    std::fs::create_dir_all(&extra).unwrap();
    let removed = balora_train::checkpoint::clean_stale(&root);
    assert_eq!(removed, std::slice::from_ref(&extra));
    assert!(!aside.exists() && !extra.exists());
    verify(&four).unwrap();
}
