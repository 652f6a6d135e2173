//! A name registered by two crates is an error naming both, at the first lookup (its own test
//! binary: the duplicate would break every other lookup in the process).

use balora_manifold::{build_manifold, register_manifold, Options, RegistryError, Unconstrained};

register_manifold! {
    name: "unconstrained",
    description: "a second `unconstrained`, from this test crate",
    options: &[],
    build: |_opts| Ok(Box::new(Unconstrained)),
}

#[test]
fn a_duplicate_name_is_an_error_naming_both_crates() {
    let err = balora_plugins::link().unwrap_err();
    match &err {
        RegistryError::Duplicate {
            name,
            first,
            second,
            ..
        } => {
            assert_eq!(*name, "unconstrained");
            let mut origins = [*first, *second];
            origins.sort();
            assert_eq!(origins, ["balora_manifold", "duplicate_manifold"]);
        }
        other => panic!("expected a duplicate, got {other:?}"),
    }
    // Every lookup fails, not only the duplicated name's, and the message names both crates.
    let msg = build_manifold("balanced", &Options::default())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("`balora_manifold`") && msg.contains("`duplicate_manifold`"),
        "{msg}"
    );
    // The listing shows both, so `balora plugins` helps find them.
    let n = balora_manifold::manifold_entries()
        .filter(|e| e.name == "unconstrained")
        .count();
    assert_eq!(n, 2);
}
