//! Data: the MNIST and Fashion-MNIST data sets (IDX files), data files (safetensors), normalisation
//! and minibatches. A data source is one file here: [`idx`] (with [`dataset`]'s IDX loader) and
//! [`file`].

mod dataset;
pub mod file;
pub mod icl;
pub(crate) mod idx;
pub mod modular;
pub mod stream;
pub mod synthetic;

pub use dataset::{DataFile, Dataset, DatasetKind, Inputs, Normaliser, Source, Split, TargetData};
pub use file::{
    data_from_bytes, load_data_file, load_data_file_split, load_data_file_streaming, Normalize,
};
pub use idx::{encode_idx, read_idx, IdxArray, IDX_MAGIC_IMAGES, IDX_MAGIC_LABELS};
pub use stream::{StreamedInputs, Streaming, STREAM_ABOVE_BYTES};

use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// The data a tool reads: a data file (`--data`, normalised by `--normalize`), else the IDX data
/// set (`--dataset`, `--data-dir`) as before data files existed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DataChoice {
    pub file: Option<PathBuf>,
    pub normalize: Option<Normalize>,
    /// Whether a data file is streamed from disk ([`stream`]); the numbers are the same either way.
    pub streaming: Streaming,
}

impl DataChoice {
    /// `--data` and `--normalize` (text), checked: `--normalize` needs `--data` (the IDX data sets
    /// have their fixed normalisation).
    ///
    /// # Errors
    /// [`Error::Invalid`] for `--normalize` without `--data` or a malformed `--normalize`.
    pub fn new(file: Option<PathBuf>, normalize: Option<&str>) -> Result<Self> {
        if normalize.is_some() && file.is_none() {
            return Err(Error::invalid(
                "--normalize applies to a --data file (MNIST and Fashion-MNIST have their fixed normalisation)",
            ));
        }
        Ok(DataChoice {
            file,
            normalize: normalize.map(Normalize::parse).transpose()?,
            streaming: Streaming::Auto,
        })
    }

    /// The same choice with a data file streamed as `streaming` says (`--stream`: always; the
    /// IDX data sets are read into memory, and [`DataChoice::load`] refuses `--stream` for them).
    pub fn with_streaming(mut self, streaming: Streaming) -> Self {
        self.streaming = streaming;
        self
    }

    /// The choice for a checkpoint: `--data` / `--normalize` when given, else the data file its
    /// metadata records (`data_file`, `data_normalize`), else the IDX data sets.
    ///
    /// # Errors
    /// [`Error::Checkpoint`] for a recorded `data_normalize` that does not parse, or an explicit
    /// `--dataset` (`explicit_dataset`) for a checkpoint trained on a data file.
    pub fn for_checkpoint(
        &self,
        checkpoint: &crate::io::Checkpoint,
        path: &Path,
        explicit_dataset: Option<&str>,
    ) -> Result<Self> {
        if self.file.is_some() {
            return Ok(self.clone());
        }
        let Some(file) = checkpoint.meta.get("data_file").and_then(|v| v.as_str()) else {
            return Ok(self.clone());
        };
        if let Some(d) = explicit_dataset {
            return Err(Error::checkpoint(
                path,
                format!(
                    "--dataset {d}: the checkpoint was trained on the data file {file} (its metadata's `data_file`); leave --dataset out, or pass --data"
                ),
            ));
        }
        // Absent, or null (metadata stores it as the text `null`): no normalisation.
        let recorded = checkpoint
            .meta
            .get("data_normalize")
            .and_then(|v| v.as_str())
            .filter(|t| *t != "null");
        let normalize =
            match recorded {
                Some(t) => Some(Normalize::parse(t).map_err(|e| {
                    Error::checkpoint(path, format!("metadata `data_normalize`: {e}"))
                })?),
                None => None,
            };
        Ok(DataChoice {
            file: Some(PathBuf::from(file)),
            normalize,
            streaming: self.streaming,
        })
    }

    fn check_streaming(&self) -> Result<()> {
        if self.streaming == Streaming::Always && self.file.is_none() {
            return Err(Error::invalid(
                "--stream applies to a data file (--data, or a checkpoint's recorded data file); MNIST and Fashion-MNIST are read into memory",
            ));
        }
        Ok(())
    }

    /// Loads `split`: the data file, else the IDX data set `kind` from `data_dir`.
    ///
    /// # Errors
    /// As [`load_data_file`] and [`Dataset::load`].
    pub fn load(&self, kind: DatasetKind, data_dir: &Path, split: Split) -> Result<Dataset> {
        self.check_streaming()?;
        match &self.file {
            Some(f) => load_data_file_streaming(f, split, self.normalize.as_ref(), self.streaming)?
                .ok_or_else(|| Error::data(f, "has no test split (tensors x_test and y_test)")),
            None => Dataset::load(kind, data_dir, split),
        }
    }

    /// The test split, or `None` for a data file without one (x_test, y_test).
    ///
    /// # Errors
    /// As [`DataChoice::load`].
    pub fn load_test(&self, kind: DatasetKind, data_dir: &Path) -> Result<Option<Dataset>> {
        self.check_streaming()?;
        match &self.file {
            Some(f) => {
                load_data_file_streaming(f, Split::Test, self.normalize.as_ref(), self.streaming)
            }
            None => Dataset::load(kind, data_dir, Split::Test).map(Some),
        }
    }
}

/// The data set a checkpoint was trained on: its metadata's `dataset`, else `--dataset` (`explicit`),
/// else MNIST. A `--dataset` naming another data set than the metadata is refused: the tools would
/// otherwise measure (or continue training) the model on data it was not trained on.
///
/// # Errors
/// [`Error::Invalid`] for an unknown `--dataset`, or one that disagrees with the metadata.
pub fn dataset_for_checkpoint(
    checkpoint: &crate::io::Checkpoint,
    explicit: Option<&str>,
) -> Result<DatasetKind> {
    let recorded = checkpoint.dataset().map(DatasetKind::parse);
    match (explicit.map(DatasetKind::parse).transpose()?, recorded) {
        (Some(e), Some(Ok(r))) if e != r => Err(Error::invalid(format!(
            "--dataset {}: the checkpoint was trained on {} (its metadata's `dataset`); leave --dataset out, or pass --dataset {}",
            e.name(),
            r.name(),
            r.name()
        ))),
        (Some(e), _) => Ok(e),
        (None, Some(r)) => r,
        (None, None) => Ok(DatasetKind::Mnist),
    }
}
