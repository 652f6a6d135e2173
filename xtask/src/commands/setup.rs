//! `cargo xtask setup tch|bench`: PyTorch (and the benchmark reference's packages) into a venv.

use crate::util::{run, Xtask};
use anyhow::Result;
use std::process::Command;

impl Xtask {
    /// `setup <what>`.
    pub fn setup(&self, what: &str, python: &str) -> Result<()> {
        match what {
            "tch" => self.setup_tch(python),
            "bench" => self.setup_bench(python),
            other => Err(anyhow::anyhow!(
                "unknown setup target `{other}`; known: tch, bench (wgpu needs no setup beyond a Vulkan \
                 driver: `apt-get install mesa-vulkan-drivers libvulkan1` on a machine without GPU)"
            )),
        }
    }

    pub fn setup_tch(&self, python: &str) -> Result<()> {
        let venv = self.tch_venv();
        eprintln!(
            "Installing PyTorch 2.9.0 (the libtorch of burn-tch 0.21 / tch 0.22) into {}.\n\
             PyPI's Linux wheel is the CUDA build: ~900 MB for torch plus ~3 GB of nvidia-* \
             libraries it needs to load, even for CPU use.",
            venv.display()
        );
        if !venv.join("bin/python").exists() {
            run(Command::new(python).args(["-m", "venv"]).arg(&venv))?;
        }
        run(Command::new(venv.join("bin/python")).args(["-m", "pip", "install", "torch==2.9.0"]))?;
        let env = self.tch_env().map_err(|e| anyhow::anyhow!(e))?;
        eprintln!("\nPyTorch is ready. `cargo xtask build --backend tch` and `cargo xtask conformance --backend tch` set this up themselves; by hand:");
        for (k, v) in env {
            eprintln!("  export {k}={v}");
        }
        Ok(())
    }

    /// `setup bench`: the reference's packages into the PyTorch venv (after `setup tch`).
    pub fn setup_bench(&self, python: &str) -> Result<()> {
        self.setup_tch(python)?;
        run(Command::new(self.tch_venv().join("bin/python")).args([
            "-m",
            "pip",
            "install",
            "transformers==5.24.0",
            "peft==0.21.2",
            "gguf==0.19.0",
        ]))
    }
}
