//! Helpers shared by the CLI test targets (each target compiles its own copy: `mod common;`).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

/// Tensors by name: shape and f32 values.
pub type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// The F32 tensors of a safetensors file, read with the `safetensors` crate (independent of
/// balora's own reader). Files may hold other dtypes (MiniLM's I64 `position_ids`); everything
/// balora writes is F32, so a missing tensor shows up at its lookup.
#[allow(dead_code)] // each test target compiles its own copy; not all of them read tensors
pub fn read_f32_tensors(path: &Path) -> Tensors {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    st.tensors()
        .into_iter()
        .filter(|(_, v)| v.dtype() == safetensors::Dtype::F32)
        .map(|(n, v)| {
            let d = v
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (n, (v.shape().to_vec(), d))
        })
        .collect()
}

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
