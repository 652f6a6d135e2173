//! Figment layering: defaults < TOML file < `PREFIX…` env (`__` nests) < `--set key=value`.

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{de::DeserializeOwned, Serialize};
use std::path::Path;

/// A configuration error; the message names the key and what is allowed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file does not exist.
    #[error("config file {0} does not exist")]
    MissingFile(String),
    /// A `--set` argument without `=`.
    #[error("--set expects KEY=VALUE, got `{0}`")]
    BadSet(String),
    /// Figment/serde rejected a key or value.
    #[error("invalid configuration{source_desc}: {message}")]
    Invalid {
        /// ` (file …)` or empty.
        source_desc: String,
        /// figment's message(s), each naming the key.
        message: String,
    },
    /// A value that parses but is not allowed.
    #[error("bad value for `{key}`: {message}")]
    BadValue {
        /// Dotted key.
        key: String,
        /// What is allowed.
        message: String,
    },
}

/// Parses one `key=value`; the value is TOML if it parses as TOML, else a string.
pub fn parse_set(s: &str) -> Result<(String, toml::Value), ConfigError> {
    let Some((key, raw)) = s.split_once('=') else {
        return Err(ConfigError::BadSet(s.to_string()));
    };
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    Ok((key.trim().to_string(), value))
}

/// Loads `T` from `defaults`, `file` (if given), env vars with `env_prefix` (`__` separates
/// nesting; with `sections`, only variables whose first segment is one of them are read, so
/// unrelated `BALORA_…` variables are ignored) and `sets`.
pub fn load_layered<T: Serialize + DeserializeOwned>(
    defaults: T,
    file: Option<&Path>,
    env_prefix: &str,
    sections: Option<&'static [&'static str]>,
    sets: &[String],
) -> Result<T, ConfigError> {
    let mut fig = Figment::from(Serialized::defaults(defaults));
    let mut source_desc = String::new();
    if let Some(file) = file {
        if !file.exists() {
            return Err(ConfigError::MissingFile(file.display().to_string()));
        }
        fig = fig.merge(Toml::file_exact(file));
        source_desc = format!(" (file {})", file.display());
    }
    let mut env = Env::prefixed(env_prefix).split("__");
    if let Some(sections) = sections {
        env = env.filter(move |k| {
            let first = k.as_str().split('.').next().unwrap_or("");
            sections.iter().any(|s| s.eq_ignore_ascii_case(first))
        });
    }
    fig = fig.merge(env);
    for s in sets {
        let (key, value) = parse_set(s)?;
        fig = fig.merge(Serialized::default(&key, value));
    }
    fig.extract().map_err(|e| {
        let message = e
            .into_iter()
            .map(|e| {
                let path = e.path.join(".");
                let src = e
                    .metadata
                    .as_ref()
                    .map(|m| format!(" [from {}]", m.name))
                    .unwrap_or_default();
                if path.is_empty() {
                    format!("{}{src}", e.kind)
                } else {
                    format!("key `{path}`: {}{src}", e.kind)
                }
            })
            .collect::<Vec<_>>()
            .join("; ");
        ConfigError::Invalid {
            source_desc,
            message,
        }
    })
}
