//! `--backend` for a backend this binary lacks: one `error:` sentence naming the feature, exit 1,
//! no panic; `balora backends` reports every backend.

use std::process::Command;

fn balora(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_balora"))
        .args(args)
        .output()
        .expect("the balora binary runs")
}

#[test]
fn missing_backend_is_one_clear_error() {
    let missing: Vec<&str> = [
        ("wgpu", cfg!(feature = "wgpu")),
        ("cuda", cfg!(feature = "cuda")),
        ("tch", cfg!(feature = "tch")),
    ]
    .into_iter()
    .filter(|(_, compiled)| !compiled)
    .map(|(name, _)| name)
    .collect();
    // Inside a fresh folder that is removed at the end: the command must not create `out_dir`.
    let parent = tempfile::Builder::new()
        .prefix("balora-backend-test-")
        .tempdir()
        .unwrap();
    let out_dir = parent.path().join("out");
    for name in missing {
        let out = balora(&[
            "synthetic",
            "--backend",
            name,
            "--set",
            "steps=1",
            "--out",
            &out_dir.to_string_lossy(),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{name}: {stderr}");
        assert!(
            errors[0].contains(&format!(
                "the {name} backend is not compiled into this binary"
            )) && errors[0].contains(&format!("--backend {name}")),
            "{name}: {}",
            errors[0]
        );
        assert!(!out_dir.exists(), "{name}: no output may be written");
    }
}

#[test]
fn backends_lists_every_backend_and_the_cpu_ones_work() {
    let out = balora(&["backends"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    for cpu in &lines[..2] {
        assert!(cpu.ends_with(" ok"), "{text}");
    }
    for (line, name) in lines.iter().zip(["flex", "ndarray", "wgpu", "cuda", "tch"]) {
        assert!(line.starts_with(name), "{text}");
    }
}
