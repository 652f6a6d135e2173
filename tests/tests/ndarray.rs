//! The conformance checks on the reference backend (ndarray), as ordinary `cargo test` tests so
//! that `cargo test --workspace` runs them; other backends go through `cargo xtask conformance`.

use balora_conformance::{run_backend, BackendKind, Status};

fn check(name: &str) {
    let report = run_backend(BackendKind::Ndarray, Some(name));
    let rows: Vec<_> = report.checks.iter().filter(|c| c.check == name).collect();
    assert_eq!(rows.len(), 1, "check `{name}` not found");
    match &rows[0].status {
        Status::Pass(detail) => println!("{name}: {detail}"),
        Status::Fail(why) => panic!("{name} failed on ndarray: {why}"),
        Status::Skip(why) => panic!("{name} was skipped on ndarray: {why}"),
    }
}

#[test]
fn adapter_fwd_bwd() {
    check("adapter_fwd_bwd");
}

#[test]
fn optimizers() {
    let names: Vec<String> = balora_conformance::check_names()
        .into_iter()
        .filter(|n| n.starts_with("optimizer:"))
        .collect();
    for want in [
        "optimizer:adamw",
        "optimizer:loraplus",
        "optimizer:riemannian",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
    }
    for n in names {
        check(&n);
    }
}

/// Every registered manifold (built-in and plugins), one row each.
#[test]
fn manifolds() {
    let names: Vec<String> = balora_conformance::check_names()
        .into_iter()
        .filter(|n| n.starts_with("manifold:"))
        .collect();
    for want in [
        "manifold:balanced",
        "manifold:unconstrained",
        "manifold:orthonormal",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
    }
    for n in names {
        check(&n);
    }
}

#[test]
fn projection_closest() {
    check("projection:closest");
}

#[test]
fn projection_canonical() {
    check("projection:canonical");
}

#[test]
fn train_20_steps() {
    check("train_20_steps");
}

#[test]
fn merge_unmerge() {
    check("merge_unmerge");
}

#[test]
fn save_load() {
    check("save_load");
}

#[test]
fn every_check_is_covered_here() {
    let covered = [
        "adapter_fwd_bwd",
        "projection:closest",
        "projection:canonical",
        "train_20_steps",
        "merge_unmerge",
        "save_load",
    ];
    for n in balora_conformance::check_names() {
        assert!(
            n.starts_with("optimizer:")
                || n.starts_with("manifold:")
                || covered.contains(&n.as_str()),
            "check `{n}` has no #[test] in tests/tests/ndarray.rs"
        );
    }
}
