//! Reading and tokenizing data files.

use crate::batch::Example;
use crate::template::{ChatMessage, ChatTemplate};
use balora_config::{ChatTemplateName, DataFormat, DataSection};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::Value;
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
#[derive(Debug, Clone)]
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
    let format = format_of(cfg, path);
    let mut train = examples_of(cfg, format, path, encoder, &mut classes)?;
    let valid = match &cfg.validation_path {
        Some(vp) => examples_of(cfg, format_of(cfg, vp), vp, encoder, &mut classes)?,
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

fn examples_of(
    cfg: &DataSection,
    format: DataFormat,
    path: &Path,
    encoder: &Encoder,
    classes: &mut BTreeMap<String, usize>,
) -> Result<Vec<Example>, DataError> {
    let text = read(path)?;
    match format {
        DataFormat::Text | DataFormat::Auto => text_chunks(cfg, path, &text, encoder),
        DataFormat::Jsonl | DataFormat::Classification => {
            jsonl(cfg, format, path, &text, encoder, classes)
        }
    }
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

fn jsonl(
    cfg: &DataSection,
    format: DataFormat,
    path: &Path,
    text: &str,
    encoder: &Encoder,
    classes: &mut BTreeMap<String, usize>,
) -> Result<Vec<Example>, DataError> {
    let template = match cfg.chat_template {
        ChatTemplateName::Chatml => ChatTemplate::ChatMl,
        ChatTemplateName::Plain => ChatTemplate::Plain,
    };
    let mut out = Vec::new();
    let mut bad: Vec<(usize, String)> = Vec::new();
    let mut total = 0usize;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        total += 1;
        let parsed = parse_line(cfg, format, line, encoder, &template, classes);
        match parsed {
            Ok(ex) => out.push(ex),
            Err(reason) => {
                if cfg.max_bad_fraction == 0.0 {
                    return Err(DataError::Malformed {
                        path: path.to_path_buf(),
                        line: i + 1,
                        reason,
                    });
                }
                tracing::warn!(
                    "{}:{}: skipping malformed line: {reason}",
                    path.display(),
                    i + 1
                );
                bad.push((i + 1, reason));
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
        let (line, reason) = &bad[0];
        return Err(DataError::TooManyBad {
            path: path.to_path_buf(),
            bad: bad.len(),
            total,
            max: cfg.max_bad_fraction,
            first: format!("line {line}: {reason}"),
        });
    }
    Ok(out)
}

fn parse_line(
    cfg: &DataSection,
    format: DataFormat,
    line: &str,
    encoder: &Encoder,
    template: &ChatTemplate,
    classes: &mut BTreeMap<String, usize>,
) -> Result<Example, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    let Value::Object(obj) = v else {
        return Err("expected a JSON object".into());
    };
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
