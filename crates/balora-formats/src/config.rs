//! Hugging Face `config.json`.

use crate::error::FormatError;
use std::path::Path;

/// Reads and parses a `config.json` (any JSON object). Errors name the file (and line/column
/// for syntax errors).
pub fn read_hf_config(path: &Path) -> Result<serde_json::Value, FormatError> {
    let text = std::fs::read_to_string(path).map_err(|e| FormatError::io(path, e))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| FormatError::Json {
            path: path.to_path_buf(),
            source,
        })?;
    if !value.is_object() {
        return Err(FormatError::Invalid {
            path: path.to_path_buf(),
            what: "config".into(),
            msg: "the top level is not a JSON object".into(),
        });
    }
    Ok(value)
}
