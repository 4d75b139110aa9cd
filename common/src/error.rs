//! Typed errors of the library. Binaries add context with `anyhow`.

use std::path::PathBuf;

/// Every failure the library reports. Messages are one line and name the file or setting at fault.
///
/// A variant that wraps another error ([`Error::Io`]) returns it as its `source()` and does not repeat
/// it in its own message, so that a report of the whole chain (anyhow's `{:#}`, or
/// [`Error::full_message`]) names each cause once: `runs/x: File exists (os error 17)`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system error on a file: the message is the path, the cause its `source()`.
    #[error("{}", path.display())]
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
    /// A model spec (JSON) that is malformed or describes an impossible model: `at` is the JSON
    /// path of the problem (`layers[3].layers[0].out`).
    #[error("{at}: {msg}")]
    Spec { at: String, msg: String },
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
    /// A bug: code that should never panic did, and the panic was caught at a record boundary
    /// ([`crate::io::process_stream`]). The message is the panic's, with its location.
    #[error("internal error (a bug; please report it): {0}")]
    Panicked(String),
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
    pub fn spec(at: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Spec {
            at: at.into(),
            msg: msg.into(),
        }
    }
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }

    /// The message followed by each cause, joined by `: ` on one line (what anyhow's `{:#}` prints):
    /// for records and logs that hold one string.
    pub fn full_message(&self) -> String {
        let mut out = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            out.push_str(": ");
            out.push_str(&c.to_string());
            cause = c.source();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What anyhow's `{:#}` prints for an error: each message of the chain once, joined by `: `.
    fn chain(e: &(dyn std::error::Error + 'static)) -> String {
        let mut parts = vec![e.to_string()];
        let mut cause = e.source();
        while let Some(c) = cause {
            parts.push(c.to_string());
            cause = c.source();
        }
        parts.join(": ")
    }

    #[test]
    fn an_io_error_names_its_cause_once() {
        let os = std::io::Error::from_raw_os_error(17);
        let os_text = os.to_string();
        let e = Error::io("runs/x", os);
        let whole = chain(&e);
        assert_eq!(whole, format!("runs/x: {os_text}"));
        assert_eq!(whole.matches(&os_text).count(), 1, "{whole}");
        assert_eq!(e.full_message(), whole);
        // The cause stays reachable, so that a broken pipe can still be recognised by its kind.
        let src = std::error::Error::source(&e).expect("the io::Error is the source");
        assert!(src.downcast_ref::<std::io::Error>().is_some());
    }

    #[test]
    fn no_variant_repeats_a_cause() {
        let variants = [
            Error::io("p", std::io::Error::other("disk on fire")),
            Error::data("d", "bad magic"),
            Error::checkpoint("c", "no tensors"),
            Error::invalid("--x must be positive"),
            Error::Diverged {
                what: "loss".into(),
                epoch: 1,
                step: 2,
            },
            Error::Interrupted { epoch: 1, step: 2 },
            Error::Device("no GPU".into()),
            Error::Panicked("boom at a.rs:1:2".into()),
        ];
        for e in &variants {
            let own = e.to_string();
            if let Some(src) = std::error::Error::source(e) {
                assert!(
                    !own.contains(&src.to_string()),
                    "{own:?} repeats its source {src}"
                );
            }
            assert!(!e.full_message().contains('\n'));
        }
    }
}
