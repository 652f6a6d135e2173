//! Option maps for registered plugins (manifolds, optimizers), read from config tables.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A scalar option value from a config table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OptionValue {
    /// `true` / `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
}

/// Named options of one plugin (`[manifold]` or `[optimizer]` table minus its `name`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Options(pub BTreeMap<String, OptionValue>);

/// Documentation of one option, shown by `balora plugins`.
#[derive(Debug, Clone, Copy)]
pub struct OptionDoc {
    /// Key in the config table.
    pub key: &'static str,
    /// Default, as text.
    pub default: &'static str,
    /// What it does.
    pub help: &'static str,
}

/// A bad option: names the key and what is allowed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OptionsError {
    /// A key the plugin does not know.
    #[error("unknown key `{section}.{key}`; allowed keys: {allowed}")]
    UnknownKey {
        /// Config section, e.g. `manifold.balanced`.
        section: String,
        /// The offending key.
        key: String,
        /// Allowed keys.
        allowed: String,
    },
    /// A value of the wrong type or out of range.
    #[error("bad value for `{key}`: {message}")]
    BadValue {
        /// The offending key.
        key: String,
        /// What is allowed.
        message: String,
    },
}

impl Options {
    /// Builds options from `(key, value)` pairs.
    pub fn from_pairs<I: IntoIterator<Item = (String, OptionValue)>>(pairs: I) -> Self {
        Self(pairs.into_iter().collect())
    }

    /// Sets a key (builder style).
    pub fn with(mut self, key: &str, value: OptionValue) -> Self {
        self.0.insert(key.to_string(), value);
        self
    }

    /// Errors on the first key that is not in `allowed`.
    pub fn reject_unknown(&self, section: &str, allowed: &[&str]) -> Result<(), OptionsError> {
        for key in self.0.keys() {
            if !allowed.contains(&key.as_str()) {
                return Err(OptionsError::UnknownKey {
                    section: section.to_string(),
                    key: key.clone(),
                    allowed: if allowed.is_empty() {
                        "(none)".into()
                    } else {
                        allowed.join(", ")
                    },
                });
            }
        }
        Ok(())
    }

    /// A float option (integers are accepted).
    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64, OptionsError> {
        match self.0.get(key) {
            None => Ok(default),
            Some(OptionValue::Float(v)) => Ok(*v),
            Some(OptionValue::Int(v)) => Ok(*v as f64),
            Some(other) => Err(bad(key, format!("expected a number, got {other:?}"))),
        }
    }

    /// A float option that must satisfy `valid`, e.g. `|v| (0.0..1.0).contains(&v)` with
    /// `must_be = "in [0, 1)"`; otherwise [`OptionsError::BadValue`] saying
    /// "must be {must_be}, got {v}". NaN fails every range written with comparisons.
    ///
    /// ```
    /// use balora_manifold::{OptionValue, Options};
    /// let opts = Options::default().with("ratio", OptionValue::Float(-1.0));
    /// let err = opts.f64_where("ratio", 16.0, "> 0", |v| v > 0.0).unwrap_err();
    /// assert_eq!(err.to_string(), "bad value for `ratio`: must be > 0, got -1");
    /// ```
    pub fn f64_where(
        &self,
        key: &str,
        default: f64,
        must_be: &str,
        valid: impl FnOnce(f64) -> bool,
    ) -> Result<f64, OptionsError> {
        let v = self.f64_or(key, default)?;
        if valid(v) {
            Ok(v)
        } else {
            Err(bad(key, format!("must be {must_be}, got {v}")))
        }
    }

    /// A non-negative integer option.
    pub fn u64_or(&self, key: &str, default: u64) -> Result<u64, OptionsError> {
        match self.0.get(key) {
            None => Ok(default),
            Some(OptionValue::Int(v)) if *v >= 0 => Ok(*v as u64),
            Some(other) => Err(bad(
                key,
                format!("expected a non-negative integer, got {other:?}"),
            )),
        }
    }

    /// A boolean option.
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool, OptionsError> {
        match self.0.get(key) {
            None => Ok(default),
            Some(OptionValue::Bool(v)) => Ok(*v),
            Some(other) => Err(bad(key, format!("expected true or false, got {other:?}"))),
        }
    }

    /// A string option restricted to `allowed` values.
    pub fn choice_or<'a>(
        &'a self,
        key: &str,
        default: &'a str,
        allowed: &[&str],
    ) -> Result<&'a str, OptionsError> {
        let v = match self.0.get(key) {
            None => default,
            Some(OptionValue::Str(s)) => s.as_str(),
            Some(other) => {
                return Err(bad(
                    key,
                    format!("expected one of {}, got {other:?}", allowed.join(" | ")),
                ));
            }
        };
        if allowed.contains(&v) {
            Ok(v)
        } else {
            Err(bad(
                key,
                format!("`{v}` is not one of {}", allowed.join(" | ")),
            ))
        }
    }
}

/// When a manifold's hook runs: after step `start_step` (1-based) and every `every`-th step
/// after it — the `every` / `start_step` options every manifold shares.
///
/// ```
/// use balora_manifold::{OptionValue, Options, Schedule};
/// let s = Schedule::from_options(&Options::default().with("every", OptionValue::Int(2))).unwrap();
/// assert_eq!((1..=5).filter(|&k| s.applies_at(k)).collect::<Vec<_>>(), [1, 3, 5]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Run after every `every`-th step (≥ 1).
    pub every: u64,
    /// First step (1-based) after which to run.
    pub start_step: u64,
}

impl Default for Schedule {
    fn default() -> Self {
        Self {
            every: 1,
            start_step: 1,
        }
    }
}

impl Schedule {
    /// The option keys it reads, for [`Options::reject_unknown`] lists.
    pub const KEYS: [&'static str; 2] = ["every", "start_step"];

    /// From options `every` (default 1, must be ≥ 1) and `start_step` (default 1; 0 means 1).
    pub fn from_options(opts: &Options) -> Result<Self, OptionsError> {
        let every = opts.u64_or("every", 1)?;
        if every == 0 {
            return Err(bad("every", "must be ≥ 1".into()));
        }
        Ok(Self {
            every,
            start_step: opts.u64_or("start_step", 1)?.max(1),
        })
    }

    /// Whether the hook runs after optimizer step `step` (1-based).
    pub fn applies_at(&self, step: u64) -> bool {
        step >= self.start_step && (step - self.start_step).is_multiple_of(self.every)
    }
}

fn bad(key: &str, message: String) -> OptionsError {
    OptionsError::BadValue {
        key: key.to_string(),
        message,
    }
}
