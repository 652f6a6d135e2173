//! The MPI toolchain the data-parallel tests need (`mpiexec`, MPICH's headers for the `mpi`
//! crate, libclang for its bindgen): installed with apt when we may (root on an apt system),
//! else one sentence naming the command.

use crate::util::{capture, run};
use crate::vulkan::on_path;
use anyhow::{bail, Result};
use std::process::Command;

/// What `apt-get install` needs for `--features mpi` (docs/distributed.md).
pub const APT_PACKAGES: &[&str] = &["mpich", "libmpich-dev", "libclang-dev"];

/// Whether `mpiexec`, `mpicc` (headers) and a libclang are present.
fn present() -> bool {
    let libclang = capture("ldconfig", &["-p"]).is_some_and(|s| s.contains("libclang"));
    on_path("mpiexec") && on_path("mpicc") && libclang
}

/// Makes sure the MPI tests can build and run; see the module doc.
pub fn ensure_mpi() -> Result<()> {
    if present() {
        return Ok(());
    }
    let root = capture("id", &["-u"]).as_deref() == Some("0");
    let packages = APT_PACKAGES.join(" ");
    if !(root && on_path("apt-get")) {
        bail!(
            "the data-parallel (MPI) tests need MPICH and libclang: run `sudo apt-get install \
             {packages}`, or pass `--no-mpi` to skip them"
        );
    }
    eprintln!("No MPI toolchain for the data-parallel tests: installing {packages}.");
    let apt = |args: &[&str]| {
        let mut c = Command::new("apt-get");
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    run(&mut apt(&["update", "-qq"]))?;
    let mut install = apt(&["install", "-y", "-qq", "--no-install-recommends"]);
    install.args(APT_PACKAGES);
    run(&mut install)?;
    if !present() {
        bail!("installed {packages} but `mpiexec`, `mpicc` or libclang is still missing");
    }
    Ok(())
}
