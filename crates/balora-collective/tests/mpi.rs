//! The MPI collective under a real `mpiexec` (feature `mpi`): every operation on 2 and 3 ranks,
//! and a rank that exits or aborts while its peers wait in an all-reduce ends the job quickly
//! with a failure instead of hanging.
#![cfg(feature = "mpi")]

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const SELFTEST: &str = env!("CARGO_BIN_EXE_balora-collective-selftest");

/// `mpiexec -n <n> selftest <mode>`, killed after 60 s; the output and how long it took.
fn mpiexec(n: usize, mode: &str) -> (Output, Duration) {
    let n = n.to_string();
    run(&["-n", &n, SELFTEST, mode])
}

/// `mpiexec <args>`, killed after 60 s.
fn run(args: &[&str]) -> (Output, Duration) {
    let t0 = Instant::now();
    let child = Command::new("mpiexec")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `mpiexec` ({e}): install MPI with `apt-get install mpich libmpich-dev \
                 libclang-dev`"
            )
        });
    let mut child = child;
    while child.try_wait().expect("waiting for mpiexec").is_none() {
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("mpiexec output");
    (out, t0.elapsed())
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn every_operation_on_2_and_3_ranks() {
    for n in [2, 3] {
        let (o, _) = mpiexec(n, "ok");
        assert!(o.status.success(), "{}", text(&o));
        assert_eq!(
            String::from_utf8_lossy(&o.stdout)
                .matches("(mpi, local rank")
                .count(),
            n,
            "{}",
            text(&o)
        );
    }
}

#[test]
fn a_rank_that_exits_fails_the_job_fast() {
    let (o, took) = mpiexec(2, "exit");
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        took < Duration::from_secs(30),
        "took {took:?}\n{}",
        text(&o)
    );
}

#[test]
fn abort_ends_every_rank() {
    let (o, took) = mpiexec(3, "abort");
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        took < Duration::from_secs(30),
        "took {took:?}\n{}",
        text(&o)
    );
}

/// NCCL on 2 ranks. Each rank gets its own `NCCL_HOSTID` (as if on two hosts), so the two may share
/// one GPU. Where the NVIDIA driver or libnccl is missing (CI), every rank must stop with an error
/// naming what is missing, and the job must end quickly instead of hanging in NCCL's setup; where
/// both are there, every operation must give the right result.
#[cfg(feature = "nccl")]
#[test]
fn nccl_on_2_ranks_works_or_names_what_is_missing() {
    let rank = |h: &'static str| ["-n", "1", "-env", "NCCL_HOSTID", h, SELFTEST, "ok", "nccl"];
    let args: Vec<&str> = rank("balora-a")
        .into_iter()
        .chain([":"])
        .chain(rank("balora-b"))
        .collect();
    let (o, took) = run(&args);
    assert!(
        took < Duration::from_secs(50),
        "took {took:?}\n{}",
        text(&o)
    );
    // SAFETY: only tries to load the libraries (dlopen).
    let driver = unsafe { cudarc::driver::sys::is_culib_present() };
    let nccl = unsafe { cudarc::nccl::sys::is_culib_present() };
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    if driver && nccl {
        assert!(o.status.success(), "{}", text(&o));
        assert_eq!(out.matches("(nccl, local rank").count(), 2, "{}", text(&o));
    } else {
        assert!(!o.status.success(), "{}", text(&o));
        let missing = if driver { "libnccl.so" } else { "libcuda.so" };
        for r in 0..2 {
            assert!(
                err.contains(&format!("rank {r}: cannot use NCCL:")) && err.contains(missing),
                "rank {r} does not name {missing}:\n{}",
                text(&o)
            );
        }
    }
}
