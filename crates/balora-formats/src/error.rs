//! The one error type of this crate: every variant names the file it is about.

use std::path::PathBuf;

/// What went wrong reading a model file. Every variant names the file and, where it applies,
/// the tensor or metadata key and the shapes involved, so a message alone is enough to act on.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The file could not be opened, mapped or read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating-system error.
        #[source]
        source: std::io::Error,
    },
    /// The first four bytes are not `GGUF`.
    #[error("{}: not a GGUF file (magic bytes {found:02x?}, expected \"GGUF\" = [47, 47, 55, 46])", path.display())]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The four bytes found.
        found: [u8; 4],
    },
    /// A GGUF version this reader does not handle (only 2 and 3 are; big-endian files read as a huge version).
    #[error("{}: unsupported GGUF version {version} (supported: 2, 3; a big-endian file reads as a huge version)", path.display())]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version field as read (little-endian).
        version: u32,
    },
    /// The file ends before a structure it announces.
    #[error("{}: truncated while reading {what}: needs bytes {start}..{end} but the file has {len} bytes", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// What was being read (header, a metadata key, a tensor's data).
        what: String,
        /// First byte needed.
        start: u64,
        /// One past the last byte needed.
        end: u64,
        /// File length.
        len: u64,
    },
    /// Structurally invalid content (bad UTF-8, impossible counts, unknown value type...).
    #[error("{}: invalid {what}: {msg}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is invalid (a metadata key, a tensor, the header).
        what: String,
        /// Why.
        msg: String,
    },
    /// A metadata key that is needed is absent.
    #[error("{}: metadata key `{key}` is missing", path.display())]
    MissingMetadata {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// A metadata key has another type than the one asked for.
    #[error("{}: metadata key `{key}` is {found}, expected {expected}", path.display())]
    MetadataType {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// The type asked for.
        expected: &'static str,
        /// The type (and value, when short) found.
        found: String,
    },
    /// A tensor type id that is not a known ggml type.
    #[error("{}: tensor `{tensor}` has unknown ggml type id {type_id}", path.display())]
    UnknownTensorType {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The type id.
        type_id: u32,
    },
    /// A known tensor element type that this crate cannot convert to f32.
    #[error("{}: tensor `{tensor}` has element type {dtype}, which cannot be converted to f32 (supported: {supported})", path.display())]
    UnsupportedType {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The element type's name.
        dtype: String,
        /// The supported types.
        supported: &'static str,
    },
    /// The requested tensor is not in the file(s).
    #[error("{}: no tensor named `{tensor}` ({count} tensors; e.g. {examples})", path.display())]
    MissingTensor {
        /// The file (the first one, for several safetensors files).
        path: PathBuf,
        /// The name asked for.
        tensor: String,
        /// How many tensors there are.
        count: usize,
        /// A few available names (closest first).
        examples: String,
    },
    /// A tensor's shape does not match its byte size or the shape expected by the caller.
    #[error("{}: tensor `{tensor}` has shape {found:?}, expected {expected}", path.display())]
    ShapeMismatch {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The shape found (row-major, HF order).
        found: Vec<usize>,
        /// What was expected (a shape, or a byte count).
        expected: String,
    },
    /// The same tensor name occurs in two safetensors files.
    #[error("tensor `{tensor}` occurs in both {} and {}", first.display(), second.display())]
    DuplicateTensor {
        /// The name.
        tensor: String,
        /// The first file.
        first: PathBuf,
        /// The second file.
        second: PathBuf,
    },
    /// A safetensors header that the `safetensors` crate rejects.
    #[error("{}: invalid safetensors file: {msg}", path.display())]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        msg: String,
    },
    /// A tokenizer could not be built or loaded.
    #[error("{}: tokenizer: {msg}", path.display())]
    Tokenizer {
        /// The file (GGUF or tokenizer.json).
        path: PathBuf,
        /// Why.
        msg: String,
    },
    /// A JSON file (config.json) that does not parse.
    #[error("{}: invalid JSON: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's error (with line and column).
        #[source]
        source: serde_json::Error,
    },
}

impl FormatError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        FormatError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// "a, b, c" from the names closest to `wanted` (shared prefix length, then order), at most `n`.
pub(crate) fn examples<'a>(names: impl Iterator<Item = &'a str>, wanted: &str, n: usize) -> String {
    let mut v: Vec<(usize, usize, &str)> = names
        .enumerate()
        .map(|(i, s)| {
            let common = s
                .bytes()
                .zip(wanted.bytes())
                .take_while(|(a, b)| a == b)
                .count();
            (usize::MAX - common, i, s)
        })
        .collect();
    v.sort();
    let list: Vec<String> = v.iter().take(n).map(|(_, _, s)| format!("`{s}`")).collect();
    if list.is_empty() {
        "none".to_string()
    } else {
        list.join(", ")
    }
}
