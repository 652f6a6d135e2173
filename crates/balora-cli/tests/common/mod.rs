//! Helpers shared by the CLI test targets (each target compiles its own copy: `mod common;`).

use std::process::{Command, Output};

/// The `balora` binary with the caller's `BALORA_*` settings removed (except the asset location
/// and `BALORA_REQUIRE_ASSETS`), so a developer's environment cannot change what a test sees.
pub fn balora() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_balora"));
    for (k, _) in std::env::vars() {
        if k.starts_with("BALORA_") && k != "BALORA_ASSETS" && k != "BALORA_REQUIRE_ASSETS" {
            c.env_remove(k);
        }
    }
    c
}

/// `balora generate` on the real SmolLM2 asset, greedy, two tokens after
/// "The capital of France is" (the numpy reference `tools/reference/models_golden.py` continues
/// it with " Paris."). `None` when the asset is absent and not required (`for_test`: a failure
/// under `BALORA_REQUIRE_ASSETS=1`).
pub fn generate_capital_of_france() -> Option<Output> {
    let gguf = balora_assets::for_test("smollm2")?;
    Some(
        balora()
            .arg("generate")
            .arg("--model")
            .arg(&gguf)
            .args(["--prompt", "The capital of France is", "--max-tokens", "2"])
            .output()
            .unwrap(),
    )
}
