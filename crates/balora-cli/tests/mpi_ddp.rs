//! Data-parallel training under a real `mpiexec` (feature `mpi`; docs/distributed.md):
//! `mpiexec -n 2 balora train` equals one process with `trainer.grad_accum = 2` bit for bit
//! (adapter bytes, per-step losses and gradient norms, evaluation losses, checkpointed parameters
//! and optimizer state) for LoRA and BaLoRA; a 2-rank run resumed from a checkpoint equals the
//! uninterrupted one; a rank that dies in the middle of a job fails it within seconds; a rank whose
//! adapters and optimizer state drifted is an error on CPU backends, and with the GPU rule
//! (re-broadcast from rank 0, forced by a test hook) the run goes on exactly like an undisturbed one.
//! Tiny llama GGUF from the fuzz corpus and a generated corpus: no downloaded asset needed.
#![cfg(feature = "mpi")]

mod run_common;
use run_common::{balora, corpus, scratch};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const INSTALL: &str = "apt-get install mpich libmpich-dev libclang-dev";

fn tiny_gguf() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../balora-fuzz/corpus/gguf/tiny_llama.gguf")
}

/// The `train` arguments of the tiny job (`manifold`: `balanced` or `unconstrained`).
fn job(data: &Path, manifold: &str, steps: u64) -> Vec<String> {
    let mut a = vec!["train".to_string()];
    for s in [
        format!("model.path=\"{}\"", tiny_gguf().display()),
        format!("data.path=\"{}\"", data.display()),
        "data.max_chars=3000".into(),
        "data.seq_len=8".into(),
        "trainer.batch_size=2".into(),
        "trainer.eval_batches=3".into(),
        "trainer.eval_every=2".into(),
        "trainer.checkpoint_every=2".into(),
        "trainer.keep_checkpoints=3".into(),
        format!("trainer.steps={steps}"),
        "adapter.r=2".into(),
        "adapter.dropout=0.1".into(),
        format!("manifold.name=\"{manifold}\""),
    ] {
        a.push("--set".into());
        a.push(s);
    }
    a
}

/// `mpiexec -n <n> balora <args>` with a clean environment plus `env`; fails (not skips) with the
/// install command when `mpiexec` is missing.
fn mpiexec(n: usize, args: &[String], env: &[(&str, &str)]) -> (Output, Duration) {
    // The caller's config variables must not leak into the ranks (as in `run_common::balora`).
    let mut c = Command::new("mpiexec");
    c.env_clear();
    for (k, v) in std::env::vars() {
        if (!k.starts_with("BALORA_") || k == "BALORA_ASSETS") && k != "NO_COLOR" {
            c.env(k, v);
        }
    }
    c.envs(env.iter().copied());
    c.args(["-n", &n.to_string(), env!("CARGO_BIN_EXE_balora")])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut child = c
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `mpiexec` ({e}): install MPI with `{INSTALL}`"));
    // Drain the pipes while waiting, with a deadline (a hang must fail the test, not block it).
    let (mut so, mut se) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut so, &mut b).ok();
        b
    });
    let err_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut se, &mut b).ok();
        b
    });
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(300) {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = t0.elapsed();
    let out = Output {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    };
    (out, took)
}

fn text(o: &Output) -> String {
    format!(
        "{:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn single(args: &[String], extra: &[&str], out: &Path) {
    let o = balora()
        .args(args)
        .args(extra)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
}

fn two_ranks(args: &[String], extra: &[&str], out: &Path) {
    let mut a = args.to_vec();
    a.extend(extra.iter().map(|s| s.to_string()));
    a.extend(["--out".into(), out.display().to_string()]);
    let (o, _) = mpiexec(2, &a, &[]);
    assert!(o.status.success(), "{}", text(&o));
}

/// The metric records without the timing fields, with every number as its exact f64 bits.
fn records(out: &Path) -> Vec<String> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let mut keys: Vec<String> = Vec::new();
            for (k, x) in v.as_object().unwrap() {
                if ["step_s", "hook_s", "elapsed_s"].contains(&k.as_str()) {
                    continue;
                }
                match x.as_f64() {
                    Some(f) => keys.push(format!("{k}={:016x}", f.to_bits())),
                    None => keys.push(format!("{k}={x}")),
                }
            }
            keys.join(" ")
        })
        .collect()
}

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Everything that must be identical between two finished runs of the tiny job.
fn assert_same_run(a: &Path, b: &Path, what: &str) {
    assert_same_at(a, b, what, 4);
}

/// [`assert_same_run`] with the checkpoint of `step` (the last ones are kept).
fn assert_same_at(a: &Path, b: &Path, what: &str, step: u64) {
    let (ra, rb) = (records(a), records(b));
    assert!(!ra.is_empty());
    assert_eq!(ra, rb, "{what}: metrics differ");
    assert!(
        bytes(&a.join("adapter/adapter_model.safetensors"))
            == bytes(&b.join("adapter/adapter_model.safetensors")),
        "{what}: adapter bytes differ"
    );
    for file in ["params.safetensors", "optimizer.safetensors"] {
        let p = format!("checkpoints/checkpoint-{step:08}/{file}");
        assert!(
            bytes(&a.join(&p)) == bytes(&b.join(&p)),
            "{what}: {p} differs"
        );
    }
}

#[test]
fn two_ranks_equal_one_process_with_grad_accum_2_bit_for_bit() {
    let dir = scratch("mpi-exact");
    let data = corpus(&dir);
    for manifold in ["unconstrained", "balanced"] {
        let args = job(&data, manifold, 4);
        let one = dir.join(format!("{manifold}-one"));
        let two = dir.join(format!("{manifold}-two"));
        single(&args, &["--set", "trainer.grad_accum=2"], &one);
        two_ranks(&args, &[], &two);
        assert_same_run(&one, &two, manifold);
        // The world step really took two micro-batches per step (not two independent runs).
        let one_acc1 = dir.join(format!("{manifold}-acc1"));
        single(&args, &[], &one_acc1);
        assert_ne!(
            records(&one_acc1),
            records(&two),
            "{manifold}: ranks did not combine"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_resumed_two_rank_run_equals_an_uninterrupted_one() {
    let dir = scratch("mpi-resume");
    let data = corpus(&dir);
    let args = job(&data, "balanced", 4);
    let full = dir.join("full");
    two_ranks(&args, &[], &full);
    // A run stopped after step 2: its checkpoint of step 2 and metrics up to there.
    let cut = dir.join("cut");
    two_ranks(&args, &[], &cut);
    std::fs::remove_dir_all(cut.join("adapter")).unwrap();
    std::fs::remove_dir_all(cut.join("checkpoints/checkpoint-00000004")).unwrap();
    let kept: String = std::fs::read_to_string(cut.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
                <= 2
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(cut.join("metrics.jsonl"), kept).unwrap();
    two_ranks(&args, &["--set", "trainer.resume=true"], &cut);
    assert_same_run(&full, &cut, "resumed");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_rank_that_dies_fails_the_job_within_seconds() {
    let dir = scratch("mpi-fault");
    let data = corpus(&dir);
    let mut args = job(&data, "balanced", 200);
    args.extend(["--out".into(), dir.join("run").display().to_string()]);
    let (o, took) = mpiexec(2, &args, &[("BALORA_FUZZ_FAULT_EXIT", "1:2")]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("rank 1 exits"),
        "{}",
        text(&o)
    );
    // Loading the model and two steps take about a second; 200 steps would take far longer,
    // and a hang would run into mpiexec's deadline.
    assert!(
        took < Duration::from_secs(60),
        "took {took:?}\n{}",
        text(&o)
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// 12 steps: the fingerprint check after step 10 (`FINGERPRINT_EVERY`) sees the perturbed rank,
/// and steps 11 and 12 then run on both ranks' state.
const PERTURB: (&str, &str) = ("BALORA_FUZZ_PERTURB", "1:10");

#[test]
fn a_rank_that_drifted_is_an_error_on_cpu() {
    let dir = scratch("mpi-drift-error");
    let data = corpus(&dir);
    let mut args = job(&data, "balanced", 12);
    args.extend(["--out".into(), dir.join("run").display().to_string()]);
    let (o, took) = mpiexec(2, &args, &[PERTURB]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        err.contains("rank 1 perturbs")
            && err.contains("after step 10 the adapters or optimizer state of rank(s) [1] differ"),
        "{}",
        text(&o)
    );
    assert!(took < Duration::from_secs(120), "took {took:?}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn with_the_gpu_rule_a_drifted_rank_gets_rank_0s_state_and_the_run_equals_an_undisturbed_one() {
    let dir = scratch("mpi-drift-rebroadcast");
    let data = corpus(&dir);
    let args = job(&data, "balanced", 12);
    let one = dir.join("one");
    single(&args, &["--set", "trainer.grad_accum=2"], &one);
    let two = dir.join("two");
    let mut a = args.clone();
    a.extend(["--out".into(), two.display().to_string()]);
    let (o, _) = mpiexec(
        2,
        &a,
        &[PERTURB, ("BALORA_FUZZ_ON_MISMATCH", "rebroadcast")],
    );
    assert!(o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("rank 1 perturbs"), "{}", text(&o));
    // Warned once (after step 10); the check after step 12 found the ranks equal again.
    assert_eq!(
        err.matches("re-sending rank 0's adapters and optimizer state")
            .count(),
        1,
        "{}",
        text(&o)
    );
    // Steps 11 and 12 sum both ranks' gradients: rank 1 computed its share with rank 0's state.
    assert_same_at(&one, &two, "re-broadcast", 12);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn nccl_is_refused_for_a_cpu_backend() {
    let dir = scratch("mpi-nccl-cpu");
    let data = corpus(&dir);
    let o = balora()
        .args(job(&data, "balanced", 2))
        .args(["--set", "trainer.collective=\"nccl\"", "--out"])
        .arg(dir.join("run"))
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("trainer.collective = \"nccl\" needs backend = \"cuda\""),
        "{}",
        text(&o)
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// A binary built with `mpi` but not `nccl`: asking for NCCL in a 2-rank job stops every rank
/// with an error naming the feature (before the cuda backend is even needed).
#[cfg(not(feature = "nccl"))]
#[test]
fn nccl_without_the_feature_names_it() {
    let dir = scratch("mpi-nccl-missing");
    let data = corpus(&dir);
    let mut args = job(&data, "balanced", 2);
    for s in ["backend=\"cuda\"", "trainer.collective=\"nccl\""] {
        args.extend(["--set".into(), s.into()]);
    }
    args.extend(["--out".into(), dir.join("run").display().to_string()]);
    let (o, took) = mpiexec(2, &args, &[]);
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.matches("built without it; rebuild with the `nccl` cargo feature")
            .count()
            == 2,
        "{}",
        text(&o)
    );
    assert!(took < Duration::from_secs(60), "took {took:?}");
    std::fs::remove_dir_all(&dir).ok();
}
