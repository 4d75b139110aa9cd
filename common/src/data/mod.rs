//! Data: IDX files, the MNIST and Fashion-MNIST data sets, normalisation and minibatches.

mod dataset;
pub(crate) mod idx;

pub use dataset::{Dataset, DatasetKind, Split};
pub use idx::{encode_idx, read_idx, IdxArray, IDX_MAGIC_IMAGES, IDX_MAGIC_LABELS};

use crate::model::Network;
use crate::{Error, Result};

/// Checks that a data set's samples fit a network's input (pixels per image) and its labels its
/// outputs.
pub fn check_input(data: &Dataset, net: &Network) -> Result<()> {
    if data.features() != net.input_features() {
        return Err(Error::data(
            &data.folder,
            format!(
                "{} images have {}×{} = {} pixels but the model {} expects {} inputs",
                data.kind.name(),
                data.rows,
                data.cols,
                data.features(),
                net.arch.name(),
                net.input_features()
            ),
        ));
    }
    // A label at or past the model's outputs would index past its logits.
    if net.classes() < data.classes {
        return Err(Error::data(
            &data.folder,
            format!(
                "{} has {} classes but the model {} has {} outputs",
                data.kind.name(),
                data.classes,
                net.arch.name(),
                net.classes()
            ),
        ));
    }
    Ok(())
}

/// The data set a checkpoint was trained on: `--dataset` when given, else the checkpoint's metadata,
/// else MNIST.
pub fn dataset_for_checkpoint(
    checkpoint: &crate::io::Checkpoint,
    explicit: Option<&str>,
) -> Result<DatasetKind> {
    match explicit {
        Some(d) => DatasetKind::parse(d),
        None => match checkpoint.dataset() {
            Some(d) => DatasetKind::parse(d),
            None => Ok(DatasetKind::Mnist),
        },
    }
}
