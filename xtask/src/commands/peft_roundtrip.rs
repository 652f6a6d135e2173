//! `cargo xtask peft-roundtrip`: balora → PEFT interop against the real PyTorch + PEFT.
//!
//! 1. `cargo run -p balora-models --example peft_roundtrip` writes balora adapters (random
//!    factors; plain and balanced by `balora balance`'s code) on the tiny HF base models of
//!    `crates/balora-models/tests/fixtures/peft_real`, with balora's outputs;
//! 2. the `balora` binary merges each (`balora merge`);
//! 3. `tools/reference/peft_roundtrip.py` loads each adapter with `PeftModel.from_pretrained`,
//!    prints max abs/rel differences of the outputs and of the merged weights against
//!    `merge_and_unload`, and fails on a mismatch.
//!
//! Needs the venv of `cargo xtask setup bench` (torch, transformers, PEFT).

use crate::util::{capture, run, Xtask};
use anyhow::{bail, Result};
use std::process::Command;

const FIXTURES: &str = "crates/balora-models/tests/fixtures/peft_real";

impl Xtask {
    /// `peft-roundtrip`.
    pub fn peft_roundtrip(&self) -> Result<()> {
        let py = self.tch_venv().join("bin/python");
        let probe = capture(
            &py.to_string_lossy(),
            &[
                "-c",
                "import torch, transformers, peft; print(peft.__version__)",
            ],
        );
        let Some(peft) = probe else {
            bail!(
                "{} lacks torch + transformers + peft: run `cargo xtask setup bench`",
                py.display()
            );
        };
        eprintln!("PEFT {peft} from {}", py.display());
        let fixtures = self.root.join(FIXTURES);
        let out = self.target.join("peft-roundtrip");
        let _ = std::fs::remove_dir_all(&out);
        run(self
            .cargo()
            .args([
                "run",
                "-q",
                "-p",
                "balora-models",
                "--example",
                "peft_roundtrip",
                "--",
            ])
            .arg(&fixtures)
            .arg(&out))?;
        run(self.cargo().args(["build", "-q", "-p", "balora-cli"]))?;
        let balora = self.target.join("debug/balora");
        for family in ["llama", "qwen2", "bert"] {
            for variant in ["lora", "balanced"] {
                let dir = out.join(family);
                run(Command::new(&balora)
                    .arg("merge")
                    .arg("--base")
                    .arg(fixtures.join(family).join("base"))
                    .arg("--adapter")
                    .arg(dir.join(variant))
                    .arg("--out")
                    .arg(dir.join(format!("{variant}.merged.safetensors"))))?;
            }
        }
        run(Command::new(&py)
            .arg(self.root.join("tools/reference/peft_roundtrip.py"))
            .arg(&fixtures)
            .arg(&out))
    }
}
