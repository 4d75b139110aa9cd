//! The tools' `main`: one place that turns a run's outcome into an exit status and its error into one
//! line on stderr.
//!
//! | status | when |
//! |---|---|
//! | 0 | the run finished (or, for a [`ClosedStdout::Quiet`] tool, its reader went away) |
//! | 1 | an error: `TOOL: message: cause: ...` on one line (the `{:#}` of the anyhow chain) |
//! | 2 | a usage error: clap reports it and exits before [`run_main`] is reached (`Args::parse()`) |
//! | 130 | interrupted (Ctrl-C): [`Error::Interrupted`](crate::Error::Interrupted) or [`Stop::Interrupted`] |
//! | 141 | stdout was closed before the run finished (a [`ClosedStdout::Fail`] tool) |
//!
//! A closed stdout is an I/O error of kind `BrokenPipe` anywhere in the chain, or a [`Stopped`]
//! error with [`Stop::StdoutClosed`].
//!
//! The flags several tools share are defined here once and flattened into each tool's arguments
//! (`#[command(flatten)]`): [`DeviceArgs`] (`--device`) and [`DataArgs`] (`--data`, `--normalize`,
//! `--loss`).

use crate::data::{DataChoice, Streaming};
use crate::device::DeviceBackend;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// `--device`, which every computing tool takes.
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct DeviceArgs {
    /// Where to compute: cpu, cuda, cuda:N or auto. auto is the CPU when this build has no CUDA,
    /// no CUDA driver or device answers, or (until the CUDA backend is implemented, issue #17)
    /// always; an explicit cuda or cuda:N is refused with the reason (built without CUDA, no
    /// driver or device, or not yet implemented).
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub device: String,
}

impl DeviceArgs {
    /// The backend for `--device` ([`crate::device::open`]).
    ///
    /// # Errors
    /// [`crate::Error::Device`] as [`crate::device::open`].
    pub fn open(&self, tool: &str) -> crate::Result<DeviceBackend> {
        crate::device::open(&self.device, tool)
    }
}

/// `--data`, `--normalize` and `--loss`: a data file instead of the IDX data sets, its
/// normalisation, and the loss, for every tool that reads data. The tool must also have a
/// `--dataset` flag (`--data` conflicts with it).
// The field docs are the tools' help text, where `[n, k]` is a shape, not a link.
#[allow(rustdoc::broken_intra_doc_links)]
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct DataArgs {
    /// A data file instead of --dataset: safetensors with x [n, …] (float32, float64 or uint8
    /// numbers; other integer types are token ids, for a model whose first layer is an embedding),
    /// y [n] integer labels (or [n, T], a label at every position, for a model whose output is
    /// per position [T, classes]: cross-entropy averaged over positions, accuracy per token) or
    /// [n] / [n, k] / [n, T, k] float targets, optional x_test, y_test (the test split) [default:
    /// the data file the checkpoint's metadata records, if any (train: the --init checkpoint's)].
    #[arg(long, value_name = "FILE", conflicts_with = "dataset")]
    pub data: Option<PathBuf>,
    /// Normalise a --data file's inputs per channel: MEAN,STD for every channel, or the means then
    /// the stds of each (uint8 inputs are divided by 255 first, as torchvision's ToTensor)
    /// [default: the normalisation the checkpoint records, if any].
    #[arg(long, value_name = "MEAN,STD", allow_hyphen_values = true)]
    pub normalize: Option<String>,
    /// Read the --data file's inputs from disk minibatch by minibatch instead of into memory (files
    /// over 1 GiB are streamed without it): memory stays bounded by a batch, and the numbers are the
    /// same.
    #[arg(long)]
    pub stream: bool,
    /// Loss: cross_entropy or mse (PyTorch's F.mse_loss, the mean over all n·k elements)
    /// [default: the checkpoint's (train: the --init checkpoint's), else cross_entropy for integer
    /// labels and mse for float targets].
    #[arg(long)]
    pub loss: Option<String>,
}

impl DataArgs {
    /// `--data` and `--normalize` checked ([`DataChoice::new`]), streamed with `--stream` (else
    /// past the size where a file is streamed anyway, [`Streaming::Auto`]).
    ///
    /// # Errors
    /// As [`DataChoice::new`]: `--normalize` without `--data`, or a malformed `--normalize`.
    pub fn choice(&self) -> crate::Result<DataChoice> {
        Ok(
            DataChoice::new(self.data.clone(), self.normalize.as_deref())?.with_streaming(
                if self.stream {
                    Streaming::Always
                } else {
                    Streaming::Auto
                },
            ),
        )
    }
}

/// Exit status of an interrupted run (128 + SIGINT, as a shell reports it).
pub const EXIT_INTERRUPTED: u8 = 130;

/// Exit status when stdout was closed before the run finished (128 + SIGPIPE, as a shell reports a
/// process killed by it), so that `set -o pipefail` sees the run stopped early.
pub const EXIT_BROKEN_PIPE: u8 = 141;

/// What a tool does when its stdout is closed by the reader (`tool | head -1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClosedStdout {
    /// Exit 0 without a word, as a filter does (`llc`, `wbic`, `hessian-trace`, `report`): every
    /// record written before is complete, and the reader asked for no more.
    Quiet,
    /// Print the error (which says what is complete and how to continue) and exit 141 (`train`,
    /// `switch`): a training run that stopped early must not look finished.
    Fail,
}

/// Why a run stopped before it finished, for an error that carries its own message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Interrupted (Ctrl-C): exit 130.
    Interrupted,
    /// Stdout was closed by its reader: as [`ClosedStdout`] says.
    StdoutClosed,
}

/// A run that stopped on purpose, with the line to print (say what is complete and how to continue).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Stopped {
    pub why: Stop,
    pub message: String,
}

impl Stopped {
    pub fn new(why: Stop, message: impl Into<String>) -> Self {
        Stopped {
            why,
            message: message.into(),
        }
    }
}

/// What a run returns on success: `()` (status 0) or its own status (e.g. 1 when some records failed
/// and were reported one by one).
pub trait Outcome {
    fn exit_code(self) -> ExitCode;
}

impl Outcome for () {
    fn exit_code(self) -> ExitCode {
        ExitCode::SUCCESS
    }
}

impl Outcome for ExitCode {
    fn exit_code(self) -> ExitCode {
        self
    }
}

/// The status and the stderr line (if any) for a run's error.
fn failure(tool: &str, closed: ClosedStdout, e: &anyhow::Error) -> (u8, Option<String>) {
    let line = Some(format!("{tool}: {e:#}"));
    let stopped = e.chain().find_map(|c| c.downcast_ref::<Stopped>());
    let interrupted = stopped.is_some_and(|s| s.why == Stop::Interrupted)
        || e.chain().any(|c| {
            matches!(
                c.downcast_ref::<crate::Error>(),
                Some(crate::Error::Interrupted { .. })
            )
        });
    let stdout_closed = stopped.is_some_and(|s| s.why == Stop::StdoutClosed)
        || e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        });
    if stdout_closed {
        match closed {
            ClosedStdout::Quiet => (0, None),
            ClosedStdout::Fail => (EXIT_BROKEN_PIPE, line),
        }
    } else if interrupted {
        (EXIT_INTERRUPTED, line)
    } else {
        (1, line)
    }
}

/// Runs a tool's `run` and turns its outcome into the exit status of the table above, printing an
/// error as one line `TOOL: message: cause: ...` on stderr (a closed stderr is ignored rather than
/// a panic).
///
/// ```no_run
/// # fn run() -> anyhow::Result<()> { Ok(()) }
/// fn main() -> std::process::ExitCode {
///     common::cli::run_main("train", common::cli::ClosedStdout::Fail, run)
/// }
/// ```
pub fn run_main<T: Outcome>(
    tool: &str,
    closed: ClosedStdout,
    run: impl FnOnce() -> anyhow::Result<T>,
) -> ExitCode {
    match run() {
        Ok(outcome) => outcome.exit_code(),
        Err(e) => {
            let (status, line) = failure(tool, closed, &e);
            if let Some(line) = line {
                let _ = writeln!(std::io::stderr().lock(), "{line}");
            }
            ExitCode::from(status)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broken_pipe() -> anyhow::Error {
        anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
    }

    #[test]
    fn an_error_is_status_1_with_its_chain_on_one_line() {
        let e = anyhow::Error::from(crate::Error::invalid("bad --lr")).context("reading x");
        let (status, line) = failure("train", ClosedStdout::Fail, &e);
        assert_eq!(status, 1);
        assert_eq!(line.as_deref(), Some("train: reading x: bad --lr"));
    }

    #[test]
    fn an_interruption_is_status_130_through_context() {
        let e = anyhow::Error::from(crate::Error::Interrupted { epoch: 2, step: 7 }).context("run");
        let (status, line) = failure("train", ClosedStdout::Fail, &e);
        assert_eq!(status, EXIT_INTERRUPTED);
        assert_eq!(
            line.as_deref(),
            Some("train: run: interrupted at epoch 2, step 7")
        );
        let e = anyhow::Error::from(Stopped::new(Stop::Interrupted, "interrupted; all complete"));
        assert_eq!(
            failure("switch", ClosedStdout::Fail, &e),
            (130, Some("switch: interrupted; all complete".into()))
        );
    }

    #[test]
    fn a_closed_stdout_is_quiet_0_or_a_line_and_141() {
        let e = broken_pipe().context("stdout was closed; continue with --resume");
        assert_eq!(failure("llc", ClosedStdout::Quiet, &e), (0, None));
        assert_eq!(
            failure("train", ClosedStdout::Fail, &e),
            (
                141,
                Some("train: stdout was closed; continue with --resume: broken pipe".into())
            )
        );
        let e = anyhow::Error::from(Stopped::new(Stop::StdoutClosed, "stdout was closed"));
        assert_eq!(
            failure("switch", ClosedStdout::Fail, &e),
            (141, Some("switch: stdout was closed".into()))
        );
        assert_eq!(failure("switch", ClosedStdout::Quiet, &e), (0, None));
    }

    #[derive(clap::Parser, Debug)]
    struct Tool {
        #[command(flatten)]
        device: DeviceArgs,
        #[arg(long)]
        dataset: Option<String>,
        #[command(flatten)]
        data: DataArgs,
    }

    /// The shared flags parse as one tool's own did: `--device` defaults to cpu, `--data`
    /// conflicts with `--dataset`, `--normalize` takes a leading minus, and `--normalize`
    /// without `--data` is refused when the choice is made.
    #[test]
    fn the_shared_flags_parse_in_a_tool() {
        use clap::Parser;
        let t = Tool::try_parse_from(["tool"]).unwrap();
        assert_eq!(t.device.device, "cpu");
        assert_eq!(t.data.data, None);
        let t = Tool::try_parse_from([
            "tool",
            "--device",
            "auto",
            "--data",
            "d.safetensors",
            "--normalize",
            "-0.5,2",
            "--loss",
            "mse",
        ])
        .unwrap();
        assert_eq!(t.device.device, "auto");
        assert!(matches!(
            t.device.open("tool"),
            Ok(crate::device::DeviceBackend::Cpu(_))
        ));
        assert_eq!(t.data.data, Some(PathBuf::from("d.safetensors")));
        assert_eq!(t.data.normalize.as_deref(), Some("-0.5,2"));
        assert_eq!(t.data.loss.as_deref(), Some("mse"));
        assert!(t.data.choice().is_ok());
        let e = Tool::try_parse_from(["tool", "--data", "d", "--dataset", "mnist"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
        let t = Tool::try_parse_from(["tool", "--normalize", "0.5,0.5"]).unwrap();
        let e = t.data.choice().unwrap_err().to_string();
        assert!(e.contains("--normalize applies to a --data file"), "{e}");
    }

    #[test]
    fn a_run_chooses_its_own_status() {
        assert_eq!(
            run_main("llc", ClosedStdout::Quiet, || Ok(ExitCode::FAILURE)),
            ExitCode::FAILURE
        );
        assert_eq!(
            run_main("llc", ClosedStdout::Quiet, || Ok(())),
            ExitCode::SUCCESS
        );
    }
}
