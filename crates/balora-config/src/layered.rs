//! Figment layering: defaults < TOML file < `PREFIX…` env < `--set key=value`.
//!
//! Environment keys: `PREFIX<SECTION>__<KEY>` (`__` nests, any depth) or, for the first level,
//! `PREFIX<SECTION>_<KEY>` (`BALORA_TRAINER_STEPS` = `BALORA_TRAINER__STEPS` = `trainer.steps`;
//! section names contain no `_`, so the split is unambiguous). With a section list, every other
//! `PREFIX…` variable is an error naming it, except the tool variables in [`NON_CONFIG_ENV`].

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
    /// `BALORA_…` environment variables that are neither config keys nor tool variables.
    #[error(
        "unknown environment variable(s) {names}: config keys are {prefix}<SECTION>_<KEY> or \
         {prefix}<SECTION>__<KEY> with SECTION one of {sections} (e.g. {prefix}TRAINER_STEPS=100); \
         other {prefix} variables balora reads: {tools}"
    )]
    UnknownEnv {
        /// The offending variable names, comma-separated.
        names: String,
        /// The prefix (`BALORA_`).
        prefix: String,
        /// The allowed sections, comma-separated.
        sections: String,
        /// The tool variables, comma-separated.
        tools: String,
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

/// `BALORA_…` variables that are not job-config keys (asset cache, benchmarks, the synthetic
/// experiment's own config layer, the fuzz tests' budget); names ending in `_` are prefixes.
pub const NON_CONFIG_ENV: &[&str] = &[
    "ASSETS",
    "ASSET_ARCHIVES",
    "PIP",
    "REQUIRE_ASSETS",
    "BENCH_",
    "SYNTHETIC_",
    "FUZZ_",
];

/// The dotted config key of the environment key `key` (prefix stripped, any case), if its first
/// segment is one of `sections`: `trainer__lr` and `trainer_lr` → `trainer.lr`,
/// `adapter__rank_pattern__q_proj` → `adapter.rank_pattern.q_proj`, `backend` → `backend`.
pub fn env_key(key: &str, sections: &[&str]) -> Option<String> {
    let key = key.to_ascii_lowercase();
    let dotted = if key.contains("__") {
        key.replace("__", ".")
    } else if sections.contains(&key.as_str()) {
        key.clone()
    } else {
        let (section, rest) = key.split_once('_')?;
        format!("{section}.{rest}")
    };
    let first = dotted.split('.').next().unwrap_or("");
    sections.contains(&first).then_some(dotted)
}

/// The variables `PREFIX…` in the environment that are neither config keys of `sections` nor
/// [`NON_CONFIG_ENV`] tool variables.
pub fn unknown_env_vars(prefix: &str, sections: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| {
            let Some(rest) = k
                .get(..prefix.len())
                .filter(|p| p.eq_ignore_ascii_case(prefix))
                .map(|_| &k[prefix.len()..])
            else {
                return false;
            };
            let upper = rest.to_ascii_uppercase();
            let tool = NON_CONFIG_ENV.iter().any(|t| {
                if t.ends_with('_') {
                    upper.starts_with(t)
                } else {
                    upper == *t
                }
            });
            !tool && env_key(rest, sections).is_none()
        })
        .collect();
    out.sort();
    out
}

/// Loads `T` from `defaults`, `file` (if given), env vars with `env_prefix` and `sets`. Without
/// `sections`, `__` separates nesting and every `PREFIX…` variable is read. With `sections`, keys
/// map through [`env_key`] (`_` or `__` after the section) and any other `PREFIX…` variable that
/// is not in [`NON_CONFIG_ENV`] is an error naming it.
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
    let env = match sections {
        None => Env::prefixed(env_prefix).split("__"),
        Some(sections) => {
            let unknown = unknown_env_vars(env_prefix, sections);
            if !unknown.is_empty() {
                return Err(ConfigError::UnknownEnv {
                    names: unknown.join(", "),
                    prefix: env_prefix.to_string(),
                    sections: sections.join(", ").to_ascii_uppercase(),
                    tools: NON_CONFIG_ENV
                        .iter()
                        .map(|t| {
                            format!("{env_prefix}{t}{}", if t.ends_with('_') { "*" } else { "" })
                        })
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            Env::prefixed(env_prefix)
                .filter_map(move |k| env_key(k.as_str(), sections).map(Into::into))
        }
    };
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
