//! `cargo xtask assets`: `balora assets`, which downloads and caches the pinned small real assets.

use crate::util::{run, Xtask};
use anyhow::{Context, Result};

impl Xtask {
    pub fn assets(&self, args: &[String]) -> Result<()> {
        let mut cmd = self.cargo();
        cmd.args(["run", "-p", "balora-cli", "--", "assets"])
            .args(args);
        run(&mut cmd).context(
            "`balora assets` failed; if clap reported an unrecognized subcommand, the assets \
             command is not part of this checkout",
        )
    }
}
