//! The whole conformance suite on burn-flex, balora's default CPU backend, as one `cargo test`
//! test (the checks compare against f64 host references and, for training, the ndarray run).

use balora_conformance::{run_backend, BackendKind, Status};

#[test]
fn every_check_passes_on_flex() {
    let report = run_backend(BackendKind::Flex, None);
    assert!(report.checks.len() >= 9, "{} checks", report.checks.len());
    let mut failed = Vec::new();
    for c in &report.checks {
        match &c.status {
            Status::Pass(detail) => println!("{}: {detail} ({:.1}s)", c.check, c.seconds),
            Status::Fail(why) => failed.push(format!("{}: {why}", c.check)),
            Status::Skip(why) => failed.push(format!("{} skipped: {why}", c.check)),
        }
    }
    assert!(failed.is_empty(), "on flex:\n{}", failed.join("\n"));
}
