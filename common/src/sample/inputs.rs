//! Loading what a sampling tool needs for one record: the checkpoint (checked finite) and its training
//! set (checked against the model's input), with the data sets cached across records.

use crate::data::{dataset_for_checkpoint, Dataset, Split};
use crate::io::{require_file, Checkpoint};
use crate::model::ModelSpec;
use crate::{Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Training sets loaded so far, by kind.
pub struct DataCache {
    pub data_dir: PathBuf,
    /// `--dataset`: overrides the checkpoint's metadata.
    pub explicit: Option<String>,
    /// Keep only the first N training samples.
    pub train_samples: Option<usize>,
    loaded: HashMap<&'static str, Dataset>,
}

impl DataCache {
    pub fn new(data_dir: PathBuf, explicit: Option<String>, train_samples: Option<usize>) -> Self {
        DataCache {
            data_dir,
            explicit,
            train_samples,
            loaded: HashMap::new(),
        }
    }

    /// The checkpoint at `path` (architecture from `model` or its metadata/shapes) and the training
    /// set it is sampled on.
    ///
    /// # Errors
    /// A missing or invalid checkpoint, non-finite parameters, a missing data set, or a data set whose
    /// images do not fit the model's input; every message names the file.
    pub fn load(
        &mut self,
        path: &Path,
        model: Option<&ModelSpec>,
    ) -> Result<(Checkpoint, &Dataset)> {
        require_file(path)?;
        let ck = Checkpoint::load(path, model)?;
        ck.check_finite(path)?;
        let kind = dataset_for_checkpoint(&ck, self.explicit.as_deref())?;
        if !self.loaded.contains_key(kind.name()) {
            let mut d = Dataset::load(kind, &self.data_dir, Split::Train)?;
            if let Some(n) = self.train_samples {
                if n == 0 {
                    return Err(Error::invalid("--train-samples must be at least 1"));
                }
                d.truncate(n);
            }
            self.loaded.insert(kind.name(), d);
        }
        let data = &self.loaded[kind.name()];
        ck.network
            .check_input(data)
            .map_err(|e| Error::checkpoint(path, e.to_string()))?;
        Ok((ck, data))
    }
}
