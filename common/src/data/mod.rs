//! Data: IDX files, the MNIST and Fashion-MNIST data sets, normalisation and minibatches.

mod dataset;
pub(crate) mod idx;
pub mod synthetic;

pub use dataset::{Dataset, DatasetKind, Split};
pub use idx::{encode_idx, read_idx, IdxArray, IDX_MAGIC_IMAGES, IDX_MAGIC_LABELS};

use crate::{Error, Result};

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
