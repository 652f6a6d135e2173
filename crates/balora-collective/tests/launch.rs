//! Under an MPI launcher, a build without the `mpi` feature refuses to run as a lone process
//! (it would train alone, writing to the same run folder as its siblings).
#![cfg(not(feature = "mpi"))]

use balora_collective::{from_env, CollectiveError};

#[test]
fn launched_by_mpiexec_without_the_feature_is_an_error_naming_it() {
    // This test binary holds only this test: setting the variable races with nothing.
    std::env::set_var("PMI_RANK", "0");
    std::env::set_var("PMI_SIZE", "2");
    let e = from_env().unwrap_err();
    assert!(
        matches!(e, CollectiveError::NotBuiltWithMpi { size: 2, .. }),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("--features mpi") && msg.contains("PMI_SIZE=2") && msg.contains("apt-get"),
        "{msg}"
    );
    std::env::set_var("PMI_SIZE", "1");
    assert_eq!(
        from_env().unwrap().world_size(),
        1,
        "one rank: no MPI needed"
    );
}
