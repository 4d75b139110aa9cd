//! Loading what an analysis tool needs for one record: the checkpoint (checked finite) and its data
//! set (checked against the model's input), with the data sets cached across records. `llc` and
//! `wbic` sample on the training split; `hessian-trace` measures on either split, in the folder each
//! record names.

use crate::data::{dataset_for_checkpoint, DataChoice, Dataset, Split};
use crate::io::{require_file, Checkpoint};
use crate::model::ModelSpec;
use crate::{Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Data sets loaded so far, by kind and folder.
pub struct DataCache {
    pub data_dir: PathBuf,
    /// `--dataset`: overrides the checkpoint's metadata.
    pub explicit: Option<String>,
    /// Keep only the first N samples.
    pub train_samples: Option<usize>,
    /// The split loaded: the training set unless [`DataCache::with_split`] chose another.
    pub split: Split,
    /// `--data` / `--normalize`: a data file instead of the IDX data sets (else the checkpoint's
    /// recorded data file, if any).
    pub choice: DataChoice,
    /// `--loss` (else the checkpoint's metadata `loss`, else the targets').
    pub loss: Option<String>,
    loaded: HashMap<(String, PathBuf), Dataset>,
}

impl DataCache {
    pub fn new(data_dir: PathBuf, explicit: Option<String>, train_samples: Option<usize>) -> Self {
        DataCache {
            data_dir,
            explicit,
            train_samples,
            split: Split::Train,
            choice: DataChoice::default(),
            loss: None,
            loaded: HashMap::new(),
        }
    }

    /// The same cache reading `choice` (a data file) and measuring with `loss` when given.
    pub fn with_data(mut self, choice: DataChoice, loss: Option<String>) -> Self {
        self.choice = choice;
        self.loss = loss;
        self
    }

    /// The same cache loading `split` instead of the training set.
    pub fn with_split(mut self, split: Split) -> Self {
        self.split = split;
        self
    }

    /// The checkpoint at `path` (architecture from `model` or its metadata/shapes) and the data set
    /// it is analysed on, from [`DataCache::data_dir`].
    ///
    /// # Errors
    /// A missing or invalid checkpoint, non-finite parameters, a missing data set, or a data set whose
    /// images do not fit the model's input; every message names the file.
    pub fn load(
        &mut self,
        path: &Path,
        model: Option<&ModelSpec>,
    ) -> Result<(Checkpoint, &Dataset)> {
        let data_dir = self.data_dir.clone();
        self.load_in(path, model, &data_dir)
    }

    /// As [`DataCache::load`], with the data set read from `data_dir` (a folder chosen per record).
    ///
    /// # Errors
    /// As [`DataCache::load`].
    pub fn load_in(
        &mut self,
        path: &Path,
        model: Option<&ModelSpec>,
        data_dir: &Path,
    ) -> Result<(Checkpoint, &Dataset)> {
        require_file(path)?;
        let explicit_loss = self
            .loss
            .as_deref()
            .map(crate::model::Loss::parse)
            .transpose()?;
        let mut ck = Checkpoint::load_for_loss(path, model, explicit_loss)?;
        ck.check_finite(path)?;
        let choice = self
            .choice
            .for_checkpoint(&ck, path, self.explicit.as_deref())?;
        let key = match &choice.file {
            Some(f) => (
                format!(
                    "file {}",
                    choice
                        .normalize
                        .as_ref()
                        .map(|n| n.to_text())
                        .unwrap_or_default()
                ),
                f.clone(),
            ),
            None => {
                let kind = dataset_for_checkpoint(&ck, self.explicit.as_deref())?;
                (kind.name().to_string(), data_dir.to_path_buf())
            }
        };
        if !self.loaded.contains_key(&key) {
            let kind = match choice.file {
                Some(_) => crate::data::DatasetKind::Mnist,
                None => dataset_for_checkpoint(&ck, self.explicit.as_deref())?,
            };
            let mut d = choice.load(kind, data_dir, self.split)?;
            if let Some(n) = self.train_samples {
                if n == 0 {
                    return Err(Error::invalid("--train-samples must be at least 1"));
                }
                d.truncate(n);
            }
            self.loaded.insert(key.clone(), d);
        }
        let data = &self.loaded[&key];
        ck.network.loss = crate::model::Loss::resolve(
            self.loss.as_deref(),
            ck.meta
                .get("loss")
                .and_then(|v| v.as_str())
                .or(ck.network.arch.named_loss()),
            data.float_targets(),
        )?;
        ck.network
            .check_input(data)
            .map_err(|e| Error::checkpoint(path, e.to_string()))?;
        Ok((ck, data))
    }
}
