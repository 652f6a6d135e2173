//! Config layering with figment: defaults < TOML file < `BALORA_…` env < `--set key=value`.

use anyhow::{bail, Result};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{de::DeserializeOwned, Serialize};
use std::path::Path;

/// Loads `T` from defaults, the file (if it exists), env vars with `env_prefix`
/// (`__` separates nesting) and `--set` overrides (values parsed as TOML, else strings).
pub fn load<T: Serialize + DeserializeOwned>(
    defaults: T,
    file: &Path,
    env_prefix: &str,
    sets: &[String],
) -> Result<T> {
    let mut fig = Figment::from(Serialized::defaults(defaults));
    if file.exists() {
        fig = fig.merge(Toml::file(file));
    } else if file != Path::new("configs/synthetic.toml") {
        bail!("config file {} does not exist", file.display());
    }
    fig = fig.merge(Env::prefixed(env_prefix).split("__"));
    for s in sets {
        let Some((key, raw)) = s.split_once('=') else {
            bail!("--set expects KEY=VALUE, got `{s}`");
        };
        let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.to_string()));
        fig = fig.merge(Serialized::default(key.trim(), value));
    }
    fig.extract().map_err(|e| {
        let msgs: Vec<String> = e
            .into_iter()
            .map(|e| {
                let key = e.path.join(".");
                let from = match e.metadata.as_ref().map(|m| m.name.to_string()) {
                    Some(n) if n.contains("Value") => "--set".to_string(),
                    Some(n) => n,
                    None => String::new(),
                };
                let key = if key.is_empty() {
                    String::new()
                } else {
                    format!("key `{key}`: ")
                };
                let from = if from.is_empty() {
                    String::new()
                } else {
                    format!(" (from {from})")
                };
                format!("{key}{}{from}", e.kind)
            })
            .collect();
        anyhow::anyhow!(
            "invalid configuration ({}): {}",
            file.display(),
            msgs.join("; ")
        )
    })
}
