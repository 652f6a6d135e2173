//! Reading and tokenizing data files.

use crate::assets::{chatterbot_pairs, record_asset_format, rotten_tomatoes_reviews};
use crate::batch::Example;
use crate::template::{ChatMessage, ChatTemplate};
use balora_config::{ChatTemplateName, DataFormat, DataSection};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Errors while loading data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A malformed line (with `max_bad_fraction = 0`, the first one fails the load).
    #[error("{}:{line}: {reason}", path.display())]
    Malformed {
        /// File.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// More malformed lines than `data.max_bad_fraction` allows.
    #[error("{}: {bad} of {total} lines are malformed (more than data.max_bad_fraction = {max}); first: {first}", path.display())]
    TooManyBad {
        /// File.
        path: PathBuf,
        /// Bad lines.
        bad: usize,
        /// All non-empty lines.
        total: usize,
        /// The allowed fraction.
        max: f64,
        /// The first bad line's message.
        first: String,
    },
    /// Nothing usable.
    #[error("{}: {reason}", path.display())]
    Empty {
        /// File.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The data does not fit the model (see [`Dataset::check_fits`]).
    #[error("{}: {reason}", path.display())]
    DoesNotFit {
        /// Data file.
        path: PathBuf,
        /// Which id, example or setting, and the model's limit.
        reason: String,
    },
}

/// A tokenizer plus the special ids the data pipeline needs.
pub struct Encoder {
    /// The tokenizer.
    pub tokenizer: tokenizers::Tokenizer,
    /// Padding id.
    pub pad_id: u32,
}

impl Encoder {
    /// Wraps a tokenizer; the pad id is its padding token, else `<|endoftext|>`, `[PAD]`,
    /// `<pad>`, else 0.
    pub fn new(tokenizer: tokenizers::Tokenizer) -> Self {
        let pad_id = tokenizer
            .get_padding()
            .map(|p| p.pad_id)
            .or_else(|| {
                ["<|endoftext|>", "[PAD]", "<pad>"]
                    .iter()
                    .find_map(|t| tokenizer.token_to_id(t))
            })
            .unwrap_or(0);
        Self { tokenizer, pad_id }
    }

    /// Loads `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self, DataError> {
        tokenizers::Tokenizer::from_file(path)
            .map(Self::new)
            .map_err(|e| DataError::Tokenizer(format!("{}: {e}", path.display())))
    }

    /// Token ids of `text` (`special`: add the tokenizer's template tokens, e.g. BERT's CLS/SEP).
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>, DataError> {
        self.tokenizer
            .encode(text, special)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| DataError::Tokenizer(e.to_string()))
    }
}

/// Where a record came from (for messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineSource {
    /// File.
    pub path: PathBuf,
    /// 1-based line.
    pub line: usize,
}

/// Training and validation examples.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Training examples.
    pub train: Vec<Example>,
    /// Validation examples.
    pub valid: Vec<Example>,
    /// Class names by index (classification only).
    pub classes: Vec<String>,
    /// Padding id.
    pub pad_id: u32,
}

fn read(path: &Path) -> Result<String, DataError> {
    std::fs::read_to_string(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn format_of(cfg: &DataSection, path: &Path) -> DataFormat {
    match cfg.format {
        DataFormat::Auto => match path.extension().and_then(|e| e.to_str()) {
            Some("jsonl") | Some("json") => DataFormat::Jsonl,
            _ => DataFormat::Text,
        },
        f => f,
    }
}

/// Loads `path` (and `cfg.validation_path`, if set) per `cfg`, tokenized with `encoder`.
/// Without a validation file, `validation_fraction` of the examples (the tail of a text
/// corpus; a seeded random subset of JSONL examples) is held out.
pub fn load_dataset(
    cfg: &DataSection,
    path: &Path,
    encoder: &Encoder,
    seed: u64,
) -> Result<Dataset, DataError> {
    let mut classes = BTreeMap::new();
    let asset = record_asset(cfg, path)?;
    let format = match asset {
        Some((_, f)) => f,
        None => format_of(cfg, path),
    };
    let mut train = examples_of(cfg, format, path, asset, encoder, &mut classes)?;
    let valid = match &cfg.validation_path {
        Some(vp) => examples_of(cfg, format_of(cfg, vp), vp, None, encoder, &mut classes)?,
        None => {
            if format != DataFormat::Text {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed_da7a);
                train.shuffle(&mut rng);
            }
            let n_valid = ((train.len() as f64) * cfg.validation_fraction).round() as usize;
            let n_valid = if cfg.validation_fraction > 0.0 {
                n_valid.max(1)
            } else {
                0
            };
            if n_valid >= train.len() {
                return Err(DataError::Empty {
                    path: path.to_path_buf(),
                    reason: format!(
                        "{} examples are too few to hold out {} for validation",
                        train.len(),
                        n_valid
                    ),
                });
            }
            train.split_off(train.len() - n_valid)
        }
    };
    if cfg.max_examples > 0 {
        train.truncate(cfg.max_examples);
    }
    let mut names: Vec<(usize, String)> = classes.into_iter().map(|(k, v)| (v, k)).collect();
    names.sort();
    Ok(Dataset {
        train,
        valid,
        classes: names.into_iter().map(|(_, n)| n).collect(),
        pad_id: encoder.pad_id,
    })
}

/// The record asset `cfg` reads from `path` (`data.asset` without `data.path`, one of
/// [`RECORD_ASSETS`](crate::assets::RECORD_ASSETS)) and the format it yields; an error when
/// `data.format` asks for another one.
fn record_asset<'a>(
    cfg: &'a DataSection,
    path: &Path,
) -> Result<Option<(&'a str, DataFormat)>, DataError> {
    let Some(name) = cfg.asset.as_deref().filter(|_| cfg.path.is_none()) else {
        return Ok(None);
    };
    let Some(yields) = record_asset_format(name) else {
        return Ok(None);
    };
    if cfg.format != DataFormat::Auto && cfg.format != yields {
        let fmt = |f: DataFormat| format!("{f:?}").to_lowercase();
        return Err(DataError::Empty {
            path: path.to_path_buf(),
            reason: format!(
                "data.asset = \"{name}\" yields {} examples: set data.format = \"{}\" (or \"auto\"), not \"{}\"",
                fmt(yields),
                fmt(yields),
                fmt(cfg.format)
            ),
        });
    }
    Ok(Some((name, yields)))
}

/// One record (a JSONL line or an asset's item) before it becomes an example.
struct Raw {
    source: LineSource,
    record: Result<Map<String, Value>, String>,
}

fn examples_of(
    cfg: &DataSection,
    format: DataFormat,
    path: &Path,
    asset: Option<(&str, DataFormat)>,
    encoder: &Encoder,
    classes: &mut BTreeMap<String, usize>,
) -> Result<Vec<Example>, DataError> {
    let at = |source: LineSource, record: Map<String, Value>| Raw {
        source,
        record: Ok(record),
    };
    let raws: Vec<Raw> = match asset.map(|(n, _)| n) {
        Some("chatterbot") => chatterbot_pairs(path)?
            .into_iter()
            .map(|p| {
                let mut m = Map::new();
                m.insert("prompt".into(), Value::String(p.prompt));
                m.insert("completion".into(), Value::String(p.completion));
                at(p.source, m)
            })
            .collect(),
        Some(_) => rotten_tomatoes_reviews(path)?
            .into_iter()
            .map(|r| {
                let mut m = Map::new();
                m.insert("text".into(), Value::String(r.text));
                m.insert("label".into(), Value::String(r.label));
                at(r.source, m)
            })
            .collect(),
        None => {
            let text = read(path)?;
            if matches!(format, DataFormat::Text | DataFormat::Auto) {
                return text_chunks(cfg, path, &text, encoder);
            }
            jsonl_lines(path, &text)
        }
    };
    records(cfg, format, path, raws, encoder, classes)
}

fn text_chunks(
    cfg: &DataSection,
    path: &Path,
    text: &str,
    encoder: &Encoder,
) -> Result<Vec<Example>, DataError> {
    let text = if cfg.max_chars > 0 && text.len() > cfg.max_chars {
        let mut end = cfg.max_chars;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        &text[..end]
    } else {
        text
    };
    if cfg.seq_len == 0 {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
            reason: "data.seq_len = 0: sequences need at least one token".into(),
        });
    }
    let ids = encoder.encode(text, false)?;
    let chunks: Vec<Example> = ids
        .chunks_exact(cfg.seq_len)
        .map(|c| Example::lm(c.to_vec(), vec![true; c.len()]))
        .collect();
    if chunks.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
            reason: format!(
                "{} tokens is shorter than one sequence of data.seq_len = {}",
                ids.len(),
                cfg.seq_len
            ),
        });
    }
    Ok(chunks)
}

fn str_field<'a>(obj: &'a serde_json::Map<String, Value>, key: &str) -> Result<&'a str, String> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(format!("field `{key}` must be a string, got {other}")),
        None => Err(format!("missing field `{key}`")),
    }
}

/// The non-empty lines of a JSONL file, each parsed as a JSON object.
fn jsonl_lines(path: &Path, text: &str) -> Vec<Raw> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| Raw {
            source: LineSource {
                path: path.to_path_buf(),
                line: i + 1,
            },
            record: match serde_json::from_str(line) {
                Ok(Value::Object(obj)) => Ok(obj),
                Ok(_) => Err("expected a JSON object".into()),
                Err(e) => Err(format!("invalid JSON: {e}")),
            },
        })
        .collect()
}

fn records(
    cfg: &DataSection,
    format: DataFormat,
    path: &Path,
    raws: Vec<Raw>,
    encoder: &Encoder,
    classes: &mut BTreeMap<String, usize>,
) -> Result<Vec<Example>, DataError> {
    let template = match cfg.chat_template {
        ChatTemplateName::Chatml => ChatTemplate::ChatMl,
        ChatTemplateName::Plain => ChatTemplate::Plain,
    };
    let mut out = Vec::new();
    let mut bad: Vec<(LineSource, String)> = Vec::new();
    let total = raws.len();
    for raw in raws {
        let parsed = raw
            .record
            .and_then(|obj| parse_record(cfg, format, obj, encoder, &template, classes));
        match parsed {
            Ok(ex) => out.push(ex),
            Err(reason) => {
                let LineSource { path: file, line } = raw.source;
                if cfg.max_bad_fraction == 0.0 {
                    return Err(DataError::Malformed {
                        path: file,
                        line,
                        reason,
                    });
                }
                tracing::warn!(
                    "{}:{line}: skipping malformed record: {reason}",
                    file.display()
                );
                bad.push((LineSource { path: file, line }, reason));
            }
        }
    }
    if total == 0 {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
            reason: "no JSONL records".into(),
        });
    }
    if !bad.is_empty() && bad.len() as f64 > cfg.max_bad_fraction * total as f64 {
        let (src, reason) = &bad[0];
        let first = if src.path == path {
            format!("line {}: {reason}", src.line)
        } else {
            format!("{}:{}: {reason}", src.path.display(), src.line)
        };
        return Err(DataError::TooManyBad {
            path: path.to_path_buf(),
            bad: bad.len(),
            total,
            max: cfg.max_bad_fraction,
            first,
        });
    }
    Ok(out)
}

fn parse_record(
    cfg: &DataSection,
    format: DataFormat,
    obj: Map<String, Value>,
    encoder: &Encoder,
    template: &ChatTemplate,
    classes: &mut BTreeMap<String, usize>,
) -> Result<Example, String> {
    let enc = |s: &str, special: bool| encoder.encode(s, special).map_err(|e| e.to_string());
    if format == DataFormat::Classification {
        let text = str_field(&obj, "text")?;
        let label = match obj.get("label") {
            Some(Value::Number(n)) => n
                .as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| format!("field `label` must be a class index ≥ 0, got {n}"))?,
            Some(Value::String(s)) => {
                let next = classes.len();
                *classes.entry(s.clone()).or_insert(next)
            }
            Some(other) => {
                return Err(format!(
                    "field `label` must be an integer or a string, got {other}"
                ))
            }
            None => return Err("missing field `label`".into()),
        };
        if let Some(extra) = obj.keys().find(|k| *k != "text" && *k != "label") {
            return Err(format!(
                "unknown field `{extra}`; classification lines have `text` and `label`"
            ));
        }
        let mut ids = enc(text, true)?;
        ids.truncate(cfg.seq_len);
        return Ok(Example::class(ids, label));
    }
    let segments: Vec<(String, bool)> = if let Some(messages) = obj.get("messages") {
        let msgs: Vec<ChatMessage> = serde_json::from_value(messages.clone()).map_err(|e| {
            format!("field `messages`: {e} (expected [{{\"role\", \"content\"}}…])")
        })?;
        if msgs.is_empty() {
            return Err("field `messages` is empty".into());
        }
        if let Some(m) = msgs
            .iter()
            .find(|m| !matches!(m.role.as_str(), "system" | "user" | "assistant"))
        {
            return Err(format!(
                "message role `{}`; allowed: system, user, assistant",
                m.role
            ));
        }
        if !msgs.iter().any(|m| m.role == "assistant") {
            return Err("no `assistant` message to train on".into());
        }
        template.segments(&msgs)
    } else if obj.contains_key("prompt") || obj.contains_key("completion") {
        template.prompt_completion(str_field(&obj, "prompt")?, str_field(&obj, "completion")?)
    } else if obj.contains_key("text") {
        vec![(str_field(&obj, "text")?.to_string(), true)]
    } else {
        let keys: Vec<&String> = obj.keys().collect();
        return Err(format!(
            "unrecognised record with keys {keys:?}; expected {{\"text\"}}, {{\"prompt\",\"completion\"}} or {{\"messages\"}}"
        ));
    };
    let mut ids = Vec::new();
    let mut target = Vec::new();
    for (text, trained) in segments {
        let seg = enc(&text, false)?;
        target.extend(std::iter::repeat_n(trained || !cfg.mask_prompt, seg.len()));
        ids.extend(seg);
    }
    ids.truncate(cfg.seq_len);
    target.truncate(cfg.seq_len);
    if ids.len() < 2 || !target.iter().skip(1).any(|&t| t) {
        return Err(format!(
            "no trainable tokens within data.seq_len = {} (the prompt fills the window)",
            cfg.seq_len
        ));
    }
    Ok(Example::lm(ids, target))
}
