//! Config layering, shared with the job configs in `balora-config`.

use anyhow::Result;
use serde::{de::DeserializeOwned, Serialize};
use std::path::Path;

/// Loads `T` from defaults, the file (if it exists; `configs/synthetic.toml` may be absent),
/// env vars with `env_prefix` (`__` separates nesting) and `--set` overrides.
pub fn load<T: Serialize + DeserializeOwned>(
    defaults: T,
    file: &Path,
    env_prefix: &str,
    sets: &[String],
) -> Result<T> {
    let file = (file.exists() || file != Path::new("configs/synthetic.toml")).then_some(file);
    Ok(balora_config::load_layered(
        defaults, file, env_prefix, None, sets,
    )?)
}
