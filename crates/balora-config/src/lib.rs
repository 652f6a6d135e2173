//! The balora job configuration.
//!
//! One TOML file describes a fine-tuning job in sections `model`, `adapter`, `manifold`,
//! `optimizer`, `data`, `trainer`, `output` and the key `backend`. [`JobConfig::load`] layers
//! `defaults < TOML file < BALORA_… environment < --set key=value` with figment; unknown keys
//! and bad values are rejected with a message that names the key and what is allowed.
//!
//! ```
//! use balora_config::JobConfig;
//! let cfg = JobConfig::load(None, &["trainer.lr=3e-4".into(), "adapter.r=4".into()]).unwrap();
//! assert_eq!(cfg.trainer.lr, 3e-4);
//! assert_eq!(cfg.adapter.r, 4);
//! let err = JobConfig::load(None, &["trainer.lrr=1".into()]).unwrap_err().to_string();
//! assert!(err.contains("lrr") && err.contains("lr"), "{err}");
//! ```

mod layered;
mod schema;

pub use balora_adapter::{AdapterInit, LoraConfig, ModuleSelector, Patterns};
pub use balora_manifold::{OptionValue, Options};
pub use layered::{
    env_key, load_layered, parse_set, unknown_env_vars, ConfigError, NON_CONFIG_ENV,
};
pub use schema::*;

impl JobConfig {
    /// Environment prefix (`BALORA_TRAINER_LR=1e-4` or `BALORA_TRAINER__LR=1e-4` sets `trainer.lr`).
    pub const ENV_PREFIX: &'static str = "BALORA_";

    /// Defaults < `file` < `BALORA_…` env < `sets` (`key=value`, value parsed as TOML), validated.
    pub fn load(file: Option<&std::path::Path>, sets: &[String]) -> Result<Self, ConfigError> {
        let cfg: JobConfig = load_layered(
            JobConfig::default(),
            file,
            Self::ENV_PREFIX,
            Some(SECTIONS),
            sets,
        )?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The merged config as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}"))
    }
}
