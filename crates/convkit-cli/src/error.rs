//! The CLI's error: everything a command can fail with, printed as one line.

use convkit::ConvError;
use std::path::Path;

/// A command failure; `main` prints it on one line and exits non-zero.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The convolution itself is invalid.
    #[error("{0}")]
    Conv(#[from] ConvError),
    /// A file could not be read, parsed or written.
    #[error("{path}: {msg}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        msg: String,
    },
    /// Flags that do not fit together.
    #[error("{0}")]
    Usage(String),
}

impl CliError {
    /// A file error for `path`.
    pub fn file(path: &Path, msg: impl std::fmt::Display) -> Self {
        CliError::File {
            path: path.display().to_string(),
            msg: msg.to_string(),
        }
    }
}

/// Result of a command.
pub type CliResult<T = ()> = Result<T, CliError>;
