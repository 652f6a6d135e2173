//! The one adapter configuration of balora, from the TOML `[adapter]` section to each layer.
//!
//! [`LoraConfig`] is the `[adapter]` section of a job file (its serde form), the request the
//! model surgery executes, and — through `balora_models::peft`, which maps PEFT's field names —
//! the content of a PEFT `adapter_config.json`. [`LoraConfig::resolve`] is the one function
//! that turns it into the values of one layer ([`LayerLora`]: rank, α, scale, dropout, the
//! initialisation of A with its standard deviation), applying `rank_pattern` / `alpha_pattern`
//! the way PEFT 0.21 does.
//!
//! ## Patterns
//!
//! PEFT (`peft.utils.other.get_pattern_key`) walks the pattern keys **in insertion order** and
//! takes the first key `k` for which `re.match(rf"(.*\.)?({k})$", module_path)` succeeds: `k` is
//! a regex that must match a whole dotted suffix of the path. A JSON object keeps its order, so
//! patterns read from `adapter_config.json` (and the TOML array form below) follow exactly that
//! rule. A TOML table does not: the configuration layers (figment) hold tables as sorted maps,
//! so the order written in the file is gone before balora sees it. For the table form balora
//! therefore requires the match to be unambiguous: if two keys with different values match one
//! module, [`LoraConfig::resolve`] fails naming the module and both keys. To rely on PEFT's
//! first-match order in TOML, use the ordered array form:
//!
//! ```toml
//! rank_pattern = [["layers.0.self_attn.q_proj", 16], ["q_proj", 4]]   # first match wins
//! rank_pattern = { q_proj = 4, "layers\\.0\\..*" = 16 }               # must not overlap
//! ```
//!
//! ## Initialisation of A
//!
//! `init = "kaiming"` (PEFT's `init_lora_weights = true`): `U(-1/√in, 1/√in)`.
//! `init = "gaussian"`: `N(0, σ²)` with σ = `init_std` when set — the same absolute σ for every
//! adapted layer, whatever its rank — and otherwise PEFT's σ = 1/r with the layer's own r (its
//! `rank_pattern` entry if one matches). `init_std` with `init = "kaiming"` is an error.
//!
//! ```
//! use balora_adapter::{LoraConfig, ModuleSelector, LayerInit};
//! let mut cfg = LoraConfig::new(8, 16.0, ModuleSelector::List(vec!["q_proj".into()])).unwrap();
//! cfg.init = balora_adapter::AdapterInit::Gaussian;
//! cfg.rank_pattern = balora_adapter::Patterns::ordered(vec![("layers.0.q_proj".into(), 4)]);
//! let l0 = cfg.resolve("model.layers.0.q_proj").unwrap();
//! assert_eq!((l0.r(), l0.scale()), (4, 4.0));
//! assert_eq!(l0.init(), LayerInit::Gaussian { std: 0.25 });
//! assert_eq!(cfg.resolve("model.layers.1.q_proj").unwrap().r(), 8);
//! let err = LoraConfig::new(0, 16.0, ModuleSelector::List(vec![])).unwrap_err();
//! assert!(err.to_string().contains("adapter.r"));
//! ```

use regex::Regex;
use serde::{Deserialize, Serialize};

pub use crate::patterns::Patterns;

/// A bad adapter setting: names the field (`adapter.r`, `adapter.rank_pattern."q_proj"`...).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct LoraConfigError {
    /// The field, in the TOML spelling (`adapter.<key>`).
    pub field: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

pub(crate) fn bad(field: impl Into<String>, message: impl Into<String>) -> LoraConfigError {
    LoraConfigError {
        field: field.into(),
        message: message.into(),
    }
}

/// How A is initialised (B always starts at zero, so the initial product is zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AdapterInit {
    /// PEFT's default: Kaiming-uniform with a = √5, i.e. `U(-1/√in, 1/√in)`.
    #[default]
    Kaiming,
    /// `A ~ N(0, σ²)`: σ = `init_std`, or PEFT's 1/r of the layer's own rank.
    Gaussian,
}

/// Which modules: a list of names (each matching the whole path or a dotted suffix of it), or
/// one regex that must match the whole path. `"all-linear"` (alone) selects every linear layer
/// except the output head. The same rule as PEFT's `target_modules` / `exclude_modules`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ModuleSelector {
    /// Names matched exactly or as a dotted suffix (`q_proj` matches `model.layers.0.self_attn.q_proj`).
    List(Vec<String>),
    /// A regex that must match the whole module path (or `"all-linear"`).
    Regex(String),
}

impl Default for ModuleSelector {
    fn default() -> Self {
        Self::List(Vec::new())
    }
}

impl ModuleSelector {
    /// Whether this is PEFT's `"all-linear"` shorthand.
    pub fn is_all_linear(&self) -> bool {
        match self {
            Self::List(v) => v.len() == 1 && v[0] == "all-linear",
            Self::Regex(s) => s == "all-linear",
        }
    }

    /// Whether nothing is selected (an empty list).
    pub fn is_empty(&self) -> bool {
        matches!(self, Self::List(v) if v.is_empty())
    }

    /// Whether `path` is selected (`all-linear` is handled by [`LoraConfig::selects`]).
    /// `field` names the setting in errors (a bad regex).
    pub fn matches(&self, path: &str, field: &str) -> Result<bool, LoraConfigError> {
        Ok(match self {
            Self::List(v) => name_matches(path, v),
            Self::Regex(r) => Regex::new(&format!("^(?:{r})$"))
                .map_err(|e| bad(field, format!("bad regex `{r}`: {e}")))?
                .is_match(path),
        })
    }
}

impl std::fmt::Display for ModuleSelector {
    /// A list as `["q_proj", "v_proj"]`, a regex as `"regex"`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::List(v) => write!(f, "{v:?}"),
            Self::Regex(r) => write!(f, "{r:?}"),
        }
    }
}

/// Whether `path` equals one of `names` or ends with `.name` (PEFT's list rule).
pub fn name_matches(path: &str, names: &[String]) -> bool {
    names.iter().any(|n| {
        path == n
            || (path.len() > n.len()
                && path.ends_with(n.as_str())
                && path.as_bytes()[path.len() - n.len() - 1] == b'.')
    })
}

/// The adapters of a model (PEFT's `LoraConfig`, with the TOML `[adapter]` key names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraConfig {
    /// Default rank (≥ 1).
    pub r: usize,
    /// Default α (> 0); the scale is α/r, or α/√r with `rslora`.
    pub alpha: f64,
    /// rsLoRA scaling α/√r.
    pub rslora: bool,
    /// Dropout probability on the adapter input, in [0, 1).
    pub dropout: f64,
    /// Which linear layers get adapters (PEFT's `target_modules`).
    pub targets: ModuleSelector,
    /// Layers never adapted even if targeted (PEFT's `exclude_modules`; empty: none).
    pub exclude: ModuleSelector,
    /// Only these layer indices (empty: all).
    pub layers_to_transform: Vec<usize>,
    /// Per-module rank overrides (see the module doc for the matching rule).
    pub rank_pattern: Patterns<usize>,
    /// Per-module α overrides.
    pub alpha_pattern: Patterns<f64>,
    /// Modules trained in full and saved with the adapter (e.g. a classifier head); matched
    /// like a target list.
    pub modules_to_save: Vec<String>,
    /// Initialisation of A.
    pub init: AdapterInit,
    /// σ of the gaussian initialisation for every layer (default: 1/r of each layer's rank).
    pub init_std: Option<f64>,
    /// Multiplier of A's initialisation (kaiming bound or gaussian σ), finite > 0; default 1.
    /// The BaLoRA paper's `A_scaling` (its configs pair it with `alpha = 8·A_scaling²`).
    pub init_scale: f64,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: 8,
            alpha: 16.0,
            rslora: false,
            dropout: 0.0,
            targets: ModuleSelector::List(vec!["q_proj".into(), "v_proj".into()]),
            exclude: ModuleSelector::default(),
            layers_to_transform: Vec::new(),
            rank_pattern: Patterns::default(),
            alpha_pattern: Patterns::default(),
            modules_to_save: Vec::new(),
            init: AdapterInit::Kaiming,
            init_std: None,
            init_scale: 1.0,
        }
    }
}

/// The initialisation of one layer's A.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LayerInit {
    /// `U(-1/√in, 1/√in)`.
    Kaiming,
    /// `N(0, std²)`.
    Gaussian {
        /// σ.
        std: f64,
    },
}

/// The resolved adapter of one layer, from [`LoraConfig::resolve`]: always valid (r ≥ 1,
/// finite positive scale, dropout in [0, 1)).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerLora {
    r: usize,
    alpha: f64,
    scale: f64,
    dropout: f64,
    init: LayerInit,
    init_scale: f64,
}

impl LayerLora {
    /// Rank.
    pub fn r(&self) -> usize {
        self.r
    }
    /// α.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }
    /// The scale s applied to `B·A`: α/r, or α/√r with rsLoRA.
    pub fn scale(&self) -> f64 {
        self.scale
    }
    /// Dropout probability on the adapter input.
    pub fn dropout(&self) -> f64 {
        self.dropout
    }
    /// Initialisation of A.
    pub fn init(&self) -> LayerInit {
        self.init
    }
    /// Multiplier of A's initialisation (the kaiming bound or the gaussian σ).
    pub fn init_scale(&self) -> f64 {
        self.init_scale
    }
}

fn check_rank(field: &str, r: usize) -> Result<(), LoraConfigError> {
    if r == 0 {
        return Err(bad(
            field,
            "rank 0 is not allowed (it would give an infinite scale α/r); use r ≥ 1",
        ));
    }
    Ok(())
}

fn check_alpha(field: &str, a: f64) -> Result<(), LoraConfigError> {
    if !(a.is_finite() && a > 0.0) {
        return Err(bad(field, format!("must be a finite number > 0, got {a}")));
    }
    Ok(())
}

impl LoraConfig {
    /// Rank `r`, α and the targets, everything else PEFT's defaults; checked ([`Self::validate`]).
    pub fn new(r: usize, alpha: f64, targets: ModuleSelector) -> Result<Self, LoraConfigError> {
        let cfg = Self {
            r,
            alpha,
            targets,
            ..Self::default()
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every setting (fields named `adapter.<key>`): r ≥ 1 (also in `rank_pattern`),
    /// α finite > 0 (also in `alpha_pattern`), dropout in [0, 1), `init_std` finite > 0 and only
    /// with `init = "gaussian"`, targets not empty, regexes valid.
    pub fn validate(&self) -> Result<(), LoraConfigError> {
        check_rank("adapter.r", self.r)?;
        check_alpha("adapter.alpha", self.alpha)?;
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(bad(
                "adapter.dropout",
                format!("must be in [0, 1), got {}", self.dropout),
            ));
        }
        if self.targets.is_empty() {
            return Err(bad(
                "adapter.targets",
                "list at least one module name (or a regex, or \"all-linear\")",
            ));
        }
        if !(self.init_scale.is_finite() && self.init_scale > 0.0) {
            return Err(bad(
                "adapter.init_scale",
                format!("must be a finite number > 0, got {}", self.init_scale),
            ));
        }
        if let Some(s) = self.init_std {
            if !(s.is_finite() && s > 0.0) {
                return Err(bad("adapter.init_std", format!("must be > 0, got {s}")));
            }
            if self.init != AdapterInit::Gaussian {
                return Err(bad(
                    "adapter.init_std",
                    "is only used with init = \"gaussian\" (kaiming's bound is 1/√in)",
                ));
            }
        }
        for (field, sel) in [
            ("adapter.targets", &self.targets),
            ("adapter.exclude", &self.exclude),
        ] {
            if !sel.is_all_linear() {
                sel.matches("", field)?;
            }
        }
        for (k, r) in self.rank_pattern.iter() {
            check_rank(&format!("adapter.rank_pattern.\"{k}\""), *r)?;
        }
        for (k, a) in self.alpha_pattern.iter() {
            check_alpha(&format!("adapter.alpha_pattern.\"{k}\""), *a)?;
        }
        self.rank_pattern.compile("adapter.rank_pattern")?;
        self.alpha_pattern.compile("adapter.alpha_pattern")?;
        Ok(())
    }

    /// Whether the linear layer at `path` (in block `layer`, `is_head` for the output head)
    /// gets an adapter: selected by `targets`, not by `exclude`, in `layers_to_transform`.
    /// `modules_to_save` is not considered (see [`Self::saves`]).
    pub fn selects(
        &self,
        path: &str,
        layer: Option<usize>,
        is_head: bool,
    ) -> Result<bool, LoraConfigError> {
        let hit = if self.targets.is_all_linear() {
            !is_head
        } else {
            self.targets.matches(path, "adapter.targets")?
        };
        if !hit || self.exclude.matches(path, "adapter.exclude")? {
            return Ok(false);
        }
        Ok(self.layers_to_transform.is_empty()
            || layer.is_some_and(|l| self.layers_to_transform.contains(&l)))
    }

    /// Whether the module at `path` is trained in full (`modules_to_save`).
    pub fn saves(&self, path: &str) -> bool {
        name_matches(path, &self.modules_to_save)
    }

    /// The adapter of the layer at `path`: rank from `rank_pattern` or `r`, α from
    /// `alpha_pattern` or `alpha` (PEFT's matching, see the module doc), scale α/r (α/√r with
    /// rsLoRA), dropout, and the initialisation of A with σ from `init_std` or 1/(this layer's
    /// r). The one place these values are computed.
    pub fn resolve(&self, path: &str) -> Result<LayerLora, LoraConfigError> {
        let r = self
            .rank_pattern
            .lookup(path, "adapter.rank_pattern")?
            .unwrap_or(self.r);
        let alpha = self
            .alpha_pattern
            .lookup(path, "adapter.alpha_pattern")?
            .unwrap_or(self.alpha);
        let field = if r == self.r {
            "adapter.r".to_string()
        } else {
            format!("adapter.rank_pattern (for `{path}`)")
        };
        check_rank(&field, r)?;
        check_alpha("adapter.alpha", alpha)?;
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(bad(
                "adapter.dropout",
                format!("must be in [0, 1), got {}", self.dropout),
            ));
        }
        let scale = if self.rslora {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        };
        let init = match (self.init, self.init_std) {
            (AdapterInit::Kaiming, None) => LayerInit::Kaiming,
            (AdapterInit::Kaiming, Some(_)) => {
                return Err(bad(
                    "adapter.init_std",
                    "is only used with init = \"gaussian\"",
                ))
            }
            (AdapterInit::Gaussian, None) => LayerInit::Gaussian {
                std: 1.0 / r as f64,
            },
            (AdapterInit::Gaussian, Some(std)) if std.is_finite() && std > 0.0 => {
                LayerInit::Gaussian { std }
            }
            (AdapterInit::Gaussian, Some(std)) => {
                return Err(bad("adapter.init_std", format!("must be > 0, got {std}")))
            }
        };
        Ok(LayerLora {
            r,
            alpha,
            scale,
            dropout: self.dropout,
            init,
            init_scale: if self.init_scale.is_finite() && self.init_scale > 0.0 {
                self.init_scale
            } else {
                return Err(bad(
                    "adapter.init_scale",
                    format!("must be a finite number > 0, got {}", self.init_scale),
                ));
            },
        })
    }
}
