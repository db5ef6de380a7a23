//! Library error type. Every variant names what went wrong and where (tensor, file, shape), so the
//! CLI can print a one-line cause with `anyhow` context and never panics on bad input.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{path}: not a valid safetensors file: {msg}")]
    Safetensors { path: PathBuf, msg: String },

    #[error("tensor `{name}` is missing from the checkpoint ({where_})")]
    MissingTensor { name: String, where_: String },

    #[error("tensor `{name}` has shape {got:?}, but the config implies {expected:?}")]
    ShapeMismatch {
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },

    #[error(
        "tensor `{name}` has dtype {dtype}, which is not supported (expected F32, BF16 or F16)"
    )]
    UnsupportedDtype { name: String, dtype: String },

    #[error("config error in {path}: {msg}")]
    Config { path: PathBuf, msg: String },

    #[error("tokenizer error: {0}")]
    Tokenizer(String),

    #[error("invalid input: {0}")]
    Input(String),

    #[error("model `{0}` could not be resolved: {1}")]
    Resolve(String, String),

    #[error("{0}")]
    Unsupported(String),

    #[error("backend `{backend}` op `{op}`: {msg}")]
    Backend {
        backend: &'static str,
        op: &'static str,
        msg: String,
    },

    /// A device allocation the device had no room for: recoverable (the device stays usable),
    /// so a batch job can retry with fewer rows (`extract`'s backoff).
    #[error("backend `{backend}` op `{op}`: out of device memory: {msg}")]
    OutOfMemory {
        backend: &'static str,
        op: &'static str,
        msg: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub fn config(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Config {
            path: path.into(),
            msg: msg.into(),
        }
    }
    /// Whether this is a device allocation that did not fit (`Error::OutOfMemory`).
    pub fn is_out_of_memory(&self) -> bool {
        matches!(self, Error::OutOfMemory { .. })
    }
}
