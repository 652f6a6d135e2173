//! Errors of model loading, surgery and adapter files.

/// Everything that can go wrong when building, loading or adapting a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A tensor the model needs is not in the file.
    #[error("{file}: missing tensor `{tensor}`")]
    MissingTensor {
        /// File (or source) that was read.
        file: String,
        /// Tensor name.
        tensor: String,
    },
    /// A tensor has a shape that does not match the config.
    #[error("{file}: tensor `{tensor}` has shape {actual:?}, expected {expected:?}")]
    Shape {
        /// File (or source).
        file: String,
        /// Tensor name.
        tensor: String,
        /// Shape the config implies.
        expected: Vec<usize>,
        /// Shape found.
        actual: Vec<usize>,
    },
    /// A config field is missing, has the wrong type, or an unsupported value.
    #[error("{file}: config field `{field}`: {message}")]
    Config {
        /// Config file.
        file: String,
        /// Field name.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A PEFT adapter file or config is malformed or incompatible.
    #[error("{file}: {message}")]
    Adapter {
        /// Adapter file.
        file: String,
        /// What is wrong.
        message: String,
    },
    /// The underlying tensor file could not be read.
    #[error("{file}: {message}")]
    Format {
        /// File.
        file: String,
        /// Cause.
        message: String,
    },
    /// I/O error on a path.
    #[error("{path}: {source}")]
    Io {
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Invalid surgery request (bad regex, unknown module, ...).
    #[error("adapter targets: {0}")]
    Targets(String),
}

impl ModelError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.display().to_string(),
            source,
        }
    }
    /// A `balora-formats` error about `path` (whose messages already name the file).
    pub(crate) fn format(path: &std::path::Path, e: impl std::fmt::Display) -> Self {
        let msg = e.to_string();
        let file = path.display().to_string();
        Self::Format {
            message: msg
                .strip_prefix(&format!("{file}: "))
                .unwrap_or(&msg)
                .to_string(),
            file,
        }
    }
    pub(crate) fn config(file: &str, field: &str, message: impl Into<String>) -> Self {
        Self::Config {
            file: file.to_string(),
            field: field.to_string(),
            message: message.into(),
        }
    }
}

impl From<balora_formats::atomic::AtomicError> for ModelError {
    /// A failed atomic write ([`balora_formats::atomic::write_atomic`]): the path, the operation
    /// and the operating-system error.
    fn from(e: balora_formats::atomic::AtomicError) -> Self {
        Self::Io {
            path: e.path.display().to_string(),
            source: std::io::Error::new(e.source.kind(), format!("{}: {}", e.op, e.source)),
        }
    }
}
