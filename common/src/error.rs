//! Typed errors of the library. Binaries add context with `anyhow`.

use std::path::PathBuf;

/// Every failure the library reports. Messages are one line and name the file or setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system error on a file.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A data file (IDX) that is missing, malformed or inconsistent.
    #[error("{}: {msg}", path.display())]
    Data { path: PathBuf, msg: String },
    /// A checkpoint or optimiser sidecar that cannot be used.
    #[error("{}: {msg}", path.display())]
    Checkpoint { path: PathBuf, msg: String },
    /// An invalid setting (hyperparameter, architecture, flag combination).
    #[error("{0}")]
    Invalid(String),
    /// Training produced a non-finite loss or parameter.
    #[error("training diverged at epoch {epoch}, step {step}: non-finite {what}")]
    Diverged {
        what: String,
        epoch: usize,
        step: usize,
    },
    /// Training was interrupted (Ctrl-C) before it finished.
    #[error("interrupted at epoch {epoch}, step {step}")]
    Interrupted { epoch: usize, step: usize },
    /// The requested device is not usable.
    #[error("{0}")]
    Device(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub fn data(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Data {
            path: path.into(),
            msg: msg.into(),
        }
    }
    pub fn checkpoint(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Checkpoint {
            path: path.into(),
            msg: msg.into(),
        }
    }
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }
}
