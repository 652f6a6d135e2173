//! The `balora` binary lists the plugin crates linked into it (registered at link time in their
//! own crates, outside the core crates) next to the built-ins.

use std::process::Command;

#[test]
fn balora_plugins_lists_builtins_and_linked_plugins() {
    let out = Command::new(env!("CARGO_BIN_EXE_balora"))
        .arg("plugins")
        .output()
        .expect("run balora plugins");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let (optimizers, manifolds) = text
        .split_once("manifolds:")
        .expect("two sections: optimizers and manifolds");
    for name in ["adamw", "sgd", "sign", "loraplus", "riemannian"] {
        assert!(
            optimizers.lines().any(|l| l.trim_start().starts_with(name)),
            "optimizer `{name}` missing from:\n{text}"
        );
    }
    for name in ["unconstrained", "balanced", "orthonormal"] {
        assert!(
            manifolds.lines().any(|l| l.trim_start().starts_with(name)),
            "manifold `{name}` missing from:\n{text}"
        );
    }
    // Options are listed under each plugin.
    assert!(
        optimizers.contains("ratio") && optimizers.contains("delta"),
        "{text}"
    );
}
