//! The MPI toolchain the data-parallel tests need (`mpiexec`, MPICH's headers for the `mpi`
//! crate, libclang for its bindgen): installed with apt when we may (root on an apt system),
//! else one sentence naming the command.

use crate::util::{apt_install, can_apt_install, capture};
use crate::vulkan::on_path;
use anyhow::{bail, Result};

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
    let packages = APT_PACKAGES.join(" ");
    if !can_apt_install() {
        bail!(
            "the data-parallel (MPI) tests need MPICH and libclang: run `sudo apt-get install \
             {packages}`, or pass `--no-mpi` to skip them"
        );
    }
    eprintln!("No MPI toolchain for the data-parallel tests: installing {packages}.");
    apt_install(APT_PACKAGES)?;
    if !present() {
        bail!("installed {packages} but `mpiexec`, `mpicc` or libclang is still missing");
    }
    Ok(())
}
