//! `cargo xtask build`: the `balora` binary (and the conformance runner) with backend features.

use crate::backend::Backend;
use crate::util::{run, Xtask};
use anyhow::Result;
use std::process::Command;

impl Xtask {
    /// `cargo build` of the `balora` binary and the conformance runner in ONE invocation with
    /// the same backend features: cargo resolves dependency features per invocation, so building
    /// them separately compiled the whole wgpu/cubecl stack twice (≈ 8 min of CI on 2 cores).
    pub fn build_bins_cmd(&self, backends: &[Backend]) -> Command {
        let mut cmd = self.cargo();
        cmd.args(["build", "-p", "balora-cli", "-p", "balora-conformance"]);
        let f: Vec<String> = backends
            .iter()
            .filter_map(|b| b.feature())
            .flat_map(|f| [format!("balora-cli/{f}"), format!("balora-conformance/{f}")])
            .collect();
        if !f.is_empty() {
            cmd.args(["--features", &f.join(",")]);
        }
        cmd
    }

    pub fn build_cli(&self, backends: &[Backend]) -> Result<()> {
        let mut cmd = self.build_bins_cmd(backends);
        if backends.contains(&Backend::Tch) {
            cmd.envs(self.tch_env().map_err(|e| anyhow::anyhow!(e))?);
        }
        run(&mut cmd)?;
        eprintln!(
            "built {} with backends: {}",
            self.target.join("debug/balora").display(),
            backends
                .iter()
                .map(|b| b.name())
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(())
    }
}
