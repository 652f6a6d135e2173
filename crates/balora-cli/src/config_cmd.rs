//! `balora config show` and the arguments shared by job subcommands.

use anyhow::Result;
use balora_config::JobConfig;
use std::path::PathBuf;

/// A job's config file and overrides.
#[derive(clap::Args, Debug, Clone)]
pub struct JobArgs {
    /// TOML job config (default: the built-in SmolLM2 + BaLoRA job).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override a key, e.g. `--set trainer.lr=1e-4` (repeatable; env `BALORA_TRAINER_LR` too).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Output directory (sets `output.dir`; default: the config's).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `balora config …`.
#[derive(clap::Subcommand, Debug)]
pub enum ConfigCommand {
    /// Print the merged config (defaults < file < BALORA_ env < --set, then --out as
    /// `output.dir`) as TOML: what `balora train` with the same arguments would run.
    Show(JobArgs),
}

/// Runs a config subcommand.
pub fn run(cmd: ConfigCommand) -> Result<()> {
    match cmd {
        ConfigCommand::Show(a) => {
            let mut cfg = JobConfig::load(a.config.as_deref(), &a.sets)?;
            if let Some(out) = a.out {
                cfg.output.dir = out;
            }
            print!("{}", cfg.to_toml());
            Ok(())
        }
    }
}
