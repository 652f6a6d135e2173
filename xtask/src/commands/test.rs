//! `cargo xtask test`: what CI runs, set-up included (a Vulkan driver for wgpu, MPICH for the
//! data-parallel tests, the pinned assets), then fmt, workspace tests, conformance on
//! ndarray+flex+wgpu, the CLI's backend dispatch, CUDA type-check, clippy, the MPI tests, docs, and
//! a plugin added as one folder plus one line (tests/add_plugin.sh).

use crate::backend::Backend;
use crate::disk;
use crate::util::{capture, run, show, Xtask};
use crate::vulkan;
use anyhow::{bail, Context, Result};
use std::process::Command;
use std::time::Instant;

impl Xtask {
    pub fn test(&self, wgpu: bool, mpi: bool) -> Result<()> {
        let start = Instant::now();
        disk::report(&self.target, "at the start");
        // Set-up, so that this is the whole test command on a fresh machine: a Vulkan driver for
        // the wgpu checks (installed with apt as root, else one sentence naming the command)…
        if wgpu {
            vulkan::ensure_driver()?;
        }
        // … MPICH and libclang for the data-parallel tests (same rule)…
        if mpi {
            crate::mpi::ensure_mpi()?;
        }
        run(self.cargo().args(["fmt", "--all", "--check"]))?;
        // … and the pinned small real assets (`cargo xtask assets`), after which a test that needs
        // one fails instead of skipping (`BALORA_REQUIRE_ASSETS=1`).
        self.assets(&[])?;
        // Default features (ndarray): what a new user gets; includes the conformance checks on
        // ndarray and the doctests.
        let fuzz_summary = self.target.join("tmp/fuzz-summary.txt");
        let _ = std::fs::remove_file(&fuzz_summary);
        run(self
            .cargo()
            .args(["test", "--workspace"])
            .env("BALORA_REQUIRE_ASSETS", "1"))?;
        // The bounded fuzz run (balora-fuzz) leaves its per-reader counts here.
        match std::fs::read_to_string(&fuzz_summary) {
            Ok(s) => eprintln!("\n{}", s.trim_end()),
            Err(e) => bail!(
                "the fuzz run wrote no summary ({}): {e}",
                fuzz_summary.display()
            ),
        }
        disk::report(&self.target, "after the workspace tests");
        disk::prune_if_low(&self.target, "the workspace tests");
        // The heavy feature set, built once: wgpu runs (lavapipe on CPU machines), cuda is built
        // and reports "skipped: no usable device" without a GPU.
        // CUDA is type-checked only (below): building its kernels' host code would add a third
        // heavy feature set to CI, and no CI machine has a GPU to run it.
        let mut backends = vec![Backend::Ndarray, Backend::Flex];
        let mut require = vec![Backend::Ndarray, Backend::Flex];
        if wgpu {
            backends.push(Backend::Wgpu);
            require.push(Backend::Wgpu);
        }
        backends.sort();
        self.conformance(&backends, None, &require, false)?;
        // The CLI with the same features (reuses the build above): backend dispatch compiles
        // for every GPU backend, and a missing driver is one sentence, not a panic.
        self.build_cli(&backends)?;
        self.cli_backend_smoke(wgpu)?;
        disk::report(&self.target, "after conformance and the CLI smoke runs");
        disk::prune_if_low(&self.target, "conformance and the CLI smoke runs");
        // The opt-in OpenBLAS matmul path type-checks with it (linking needs libopenblas), and
        // with MPICH present the NCCL collective (cudarc, loaded at run time) does too.
        let mut gpu_features =
            "balora-cli/cuda,balora-cli/openblas,balora-conformance/cuda".to_string();
        if mpi {
            gpu_features.push_str(",balora-cli/nccl");
        }
        run(self.cargo().args([
            "check",
            "-p",
            "balora-cli",
            "-p",
            "balora-conformance",
            "--features",
            &gpu_features,
        ]))?;
        run(self.cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
        // Data parallelism under a real mpiexec: the collective's operations on 2 and 3 ranks, and
        // `mpiexec -n 2 balora train` equal to one process with grad_accum = 2 bit for bit.
        if mpi {
            // `nccl` includes `mpi`; without a GPU its test checks that every rank names what is
            // missing (libcuda, NCCL, a device) instead of hanging or panicking.
            run(self
                .cargo()
                .args(["test", "-p", "balora-collective", "--features", "nccl"]))?;
            run(self.cargo().args([
                "test",
                "-p",
                "balora-cli",
                "--features",
                "mpi",
                "--test",
                "mpi_ddp",
            ]))?;
            run(self.cargo().args([
                "clippy",
                "-p",
                "balora-collective",
                "-p",
                "balora-train",
                "-p",
                "balora-cli",
                "--all-targets",
                "--features",
                "balora-cli/mpi,balora-collective/nccl",
                "--",
                "-D",
                "warnings",
            ]))?;
        }
        disk::report(&self.target, "after clippy and the MPI tests");
        disk::prune_if_low(&self.target, "clippy and the MPI tests");
        self.docs(false)?;
        // A plugin is one folder plus one line: a copy of plugins/loraplus added to a copy of
        // the sources is found by name and passes the conformance suite (last: it rebuilds
        // target/debug/balora-conformance from the copy).
        run(Command::new("bash")
            .arg(self.root.join("tests/add_plugin.sh"))
            .env("CARGO", &self.cargo)
            .env("BALORA_ADD_PLUGIN_WGPU", if wgpu { "1" } else { "0" }))?;
        disk::report(&self.target, "after the plugin check");
        eprintln!(
            "\nxtask test: all passed in {:.1} min",
            start.elapsed().as_secs_f64() / 60.0
        );
        Ok(())
    }

    /// `balora synthetic` on each backend the binary has: a short run where a device exists, and
    /// one clear error line (exit 1, no panic) where it does not.
    pub fn cli_backend_smoke(&self, wgpu: bool) -> Result<()> {
        let bin = self.target.join("debug/balora");
        let tiny = |backend: &str, out: &str| {
            let mut c = Command::new(&bin);
            c.current_dir(&self.root).args([
                "synthetic",
                "--backend",
                backend,
                "--set",
                "trajectories=1",
                "--set",
                "lr_count=1",
                "--set",
                "steps=3",
                "--set",
                "seeds=1",
                "--out",
            ]);
            c.arg(self.target.join(out));
            c
        };
        let mut cases = vec![
            ("ndarray", None, "smoke-ndarray"),
            ("flex", None, "smoke-flex"),
        ];
        if wgpu {
            cases.push(("wgpu", None, "smoke-wgpu"));
            // No Vulkan driver: the loader finds no ICD.
            cases.push((
                "wgpu",
                Some(("VK_ICD_FILENAMES", "/nonexistent.json")),
                "smoke-no-vk",
            ));
        }
        if capture("nvidia-smi", &["-L"]).is_none() {
            cases.push(("cuda", None, "smoke-no-cuda"));
        }
        for (backend, env, out) in cases {
            let mut c = tiny(backend, out);
            self.runtime_env(&mut c)?;
            if let Some((k, v)) = env {
                c.env(k, v).env("VK_DRIVER_FILES", v);
            }
            let line = show(&c);
            let o = c.output().with_context(|| format!("starting `{line}`"))?;
            let stderr = String::from_utf8_lossy(&o.stderr);
            let expect_ok = matches!(out, "smoke-ndarray" | "smoke-flex" | "smoke-wgpu");
            if expect_ok {
                if !o.status.success() {
                    bail!("`{line}` failed:\n{stderr}");
                }
                eprintln!("ok: {line}");
            } else {
                let err_line = stderr
                    .lines()
                    .find(|l| l.starts_with("error:"))
                    .unwrap_or("");
                if o.status.code() != Some(1) || stderr.contains("panicked") || err_line.is_empty()
                {
                    bail!(
                        "`{line}` should fail with one `error:` line (exit 1), got {} and:\n{stderr}",
                        o.status
                    );
                }
                eprintln!("ok (clear error): {line}\n    {err_line}");
            }
        }
        Ok(())
    }
}
