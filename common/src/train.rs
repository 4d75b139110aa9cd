//! The training loop shared by `train` and `switch`.
//!
//! One epoch is a pass over the training set in minibatches (the last one partial, as PyTorch's
//! `DataLoader(drop_last=False)`), in an order drawn from the `(seed, Shuffle, epoch)` stream or in file
//! order. After each epoch (and every `save_every` steps) the loop evaluates on the test set, writes a
//! checkpoint and its optimiser sidecar atomically, and emits one record.

use crate::data::Dataset;
use crate::device::{Backend, CpuBackend};
use crate::io::{
    load_optimizer_state, optimizer_sidecar_path, save_optimizer_state, Checkpoint, OptimizerState,
    Record,
};
use crate::model::Network;
use crate::optim::{describe, Batch, Optimizer};
use crate::rng::{stream, Purpose};
use crate::{Error, Result};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Everything that shapes a training run besides the model and optimiser.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    /// The run's name (records, metadata).
    pub run: String,
    /// Folder for checkpoints and the run log.
    pub out_dir: PathBuf,
    pub data_dir: PathBuf,
    pub seed: u64,
    /// Train until this many epochs are complete.
    pub epochs: usize,
    pub batch_size: usize,
    /// Shuffle each epoch (else file order).
    pub shuffle: bool,
    /// Only the first N training samples, when set.
    pub train_samples: Option<usize>,
    /// Also checkpoint every N steps.
    pub save_every: Option<usize>,
    /// BLAS threads.
    pub threads: usize,
    /// Extra fields put in every record and in checkpoint metadata (e.g. `branch`, `switched_at`).
    pub extra: Map<String, Value>,
    /// Report the steps of each epoch on stderr (when the process has [`crate::progress::enable`]d it).
    pub progress: bool,
    /// Also evaluate the whole training set at each checkpoint, as the test set is: records gain
    /// `train_eval_loss` and `train_acc` (the training loss in `train_loss` is the mean over the
    /// epoch's minibatches before each step, not at the checkpoint). Off, records are as before.
    pub eval_train: bool,
}

/// Where training starts.
#[derive(Clone, Debug)]
pub struct Start {
    pub params: Vec<f32>,
    /// Epochs already completed.
    pub epoch: usize,
    /// Global steps already taken.
    pub step: usize,
    /// Steps already taken in epoch `epoch + 1` (resuming from a mid-epoch checkpoint).
    pub step_in_epoch: usize,
    /// Where the initial weights came from (`seed N` or a checkpoint path).
    pub init: String,
}

/// What a finished run leaves.
#[derive(Clone, Debug)]
pub struct Summary {
    pub records: Vec<Record>,
    pub last_checkpoint: Option<PathBuf>,
}

/// The settings that shape a run's numbers, as a checkpoint's metadata records them. `--resume`
/// continues a run exactly only when the new command's settings are the same; `--epochs` is not one
/// of them (a run may be continued further).
#[derive(Clone, Debug, PartialEq)]
pub struct RunSettings {
    /// The run's name (records, metadata): not a number, but one run's log keeps one name.
    pub run: String,
    /// [`Dataset::identity`]: `mnist`, `fashion-mnist`, or `file:<fingerprint>`.
    pub dataset: String,
    /// Seed of the data order (and of any optimiser noise).
    pub seed: u64,
    pub batch_size: usize,
    pub shuffle: bool,
    /// Training samples actually used (after `--train-samples`).
    pub train_samples: usize,
    pub blas_threads: usize,
    /// The optimiser's name and hyperparameters ([`describe`]).
    pub optimizer: Value,
}

/// One setting that differs between a checkpoint and the command continuing it.
#[derive(Clone, Debug, PartialEq)]
pub struct SettingChange {
    /// The `train` flag that sets it (`--lr`, `--batch-size`, `--ngd-alpha`, …).
    pub flag: String,
    /// The checkpoint's value and the new one (`null` where one side does not have it).
    pub from: Value,
    pub to: Value,
}

impl SettingChange {
    fn to_json(&self, at_step: usize) -> Value {
        serde_json::json!({"at_step": at_step, "flag": self.flag, "from": self.from, "to": self.to})
    }
}

/// The `train` flag of a run setting or an optimiser hyperparameter (a key of [`describe`]'s object).
fn setting_flag(key: &str, in_optimizer: bool) -> String {
    let flag = match (in_optimizer, key) {
        (false, "blas_threads") => "threads",
        (false, "shuffle") => "no-shuffle",
        (true, "name") => "optimizer",
        (true, "alpha" | "eta" | "epsilon" | "delta" | "rank" | "update_period") => {
            return format!("--ngd-{}", key.replace('_', "-"));
        }
        (true, "ngd_dtype") => "ngd-dtype",
        (true, "shadow_f64") => "ngd-shadow-f64",
        (true, "damping" | "damping_value") => "damping/--damping-relative",
        (true, "fisher_seed" | "direction_noise_seed") => "seed",
        (true, "direction_noise_tensors") => "direction-noise-tensor",
        _ => key,
    };
    format!("--{}", flag.replace('_', "-"))
}

impl RunSettings {
    /// The settings a checkpoint's metadata records.
    ///
    /// # Errors
    /// [`Error::Checkpoint`] naming the file and the first setting the metadata lacks.
    pub fn from_metadata(path: &Path, meta: &Map<String, Value>) -> Result<Self> {
        let missing = |k: &str| {
            Error::checkpoint(
                path,
                format!("the metadata does not record `{k}`, so --resume cannot check that the run continues exactly"),
            )
        };
        let u = |k: &str| {
            meta.get(k)
                .and_then(Value::as_u64)
                .ok_or_else(|| missing(k))
        };
        Ok(RunSettings {
            run: meta
                .get("run")
                .and_then(Value::as_str)
                .ok_or_else(|| missing("run"))?
                .to_string(),
            dataset: match (meta.get("dataset"), meta.get("data_fingerprint")) {
                (Some(Value::String(d)), _) => d.clone(),
                (None, Some(Value::String(f))) => format!("file:{f}"),
                _ => return Err(missing("dataset")),
            },
            seed: u("seed")?,
            batch_size: u("batch_size")? as usize,
            shuffle: meta
                .get("shuffle")
                .and_then(Value::as_bool)
                .ok_or_else(|| missing("shuffle"))?,
            train_samples: u("train_samples")? as usize,
            blas_threads: u("blas_threads")? as usize,
            optimizer: meta
                .get("optimizer")
                .filter(|o| o.is_object())
                .cloned()
                .ok_or_else(|| missing("optimizer"))?,
        })
    }

    /// Every setting of `new` that differs from `self`, named by its `train` flag.
    pub fn changes(&self, new: &RunSettings) -> Vec<SettingChange> {
        let mut out = Vec::new();
        let mut cmp = |key: &str, in_optimizer: bool, a: Value, b: Value| {
            if a != b {
                out.push(SettingChange {
                    flag: setting_flag(key, in_optimizer),
                    from: a,
                    to: b,
                });
            }
        };
        cmp(
            "run",
            false,
            self.run.clone().into(),
            new.run.clone().into(),
        );
        cmp(
            "dataset",
            false,
            self.dataset.clone().into(),
            new.dataset.clone().into(),
        );
        cmp("seed", false, self.seed.into(), new.seed.into());
        cmp(
            "batch_size",
            false,
            self.batch_size.into(),
            new.batch_size.into(),
        );
        cmp("shuffle", false, self.shuffle.into(), new.shuffle.into());
        cmp(
            "train_samples",
            false,
            self.train_samples.into(),
            new.train_samples.into(),
        );
        cmp(
            "blas_threads",
            false,
            self.blas_threads.into(),
            new.blas_threads.into(),
        );
        let empty = Map::new();
        let a = self.optimizer.as_object().unwrap_or(&empty);
        let b = new.optimizer.as_object().unwrap_or(&empty);
        let mut seen = std::collections::BTreeSet::new();
        for key in a.keys().chain(b.keys()) {
            if seen.insert(key.as_str()) {
                let va = a.get(key).cloned().unwrap_or(Value::Null);
                let vb = b.get(key).cloned().unwrap_or(Value::Null);
                cmp(key, true, va, vb);
            }
        }
        out
    }
}

/// The metadata keys [`Checkpoint::to_bytes`] adds to a checkpoint's own (the sidecar lacks them).
const CHECKPOINT_ONLY_KEYS: [&str; 6] = [
    "format",
    "arch",
    "param_order",
    "num_params",
    "dtype",
    "torch_module",
];

/// A metadata value as it is stored (a plain string, else its JSON text).
fn stored_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Checks that a sidecar was written with its checkpoint: both carry the same metadata (the run, its
/// seed, step and epoch first, then every other key).
///
/// # Errors
/// [`Error::Checkpoint`] naming both files and the first field that differs.
pub fn check_sidecar_matches(
    checkpoint: &Path,
    checkpoint_meta: &Map<String, Value>,
    sidecar: &Path,
    sidecar_meta: &Map<String, Value>,
) -> Result<()> {
    let keys = ["run", "seed", "step", "epoch"]
        .into_iter()
        .map(str::to_string)
        .chain(checkpoint_meta.keys().cloned())
        .chain(sidecar_meta.keys().cloned())
        .filter(|k| !CHECKPOINT_ONLY_KEYS.contains(&k.as_str()));
    for key in keys {
        let a = checkpoint_meta.get(&key).map(stored_text);
        let b = sidecar_meta.get(&key).map(stored_text);
        if a != b {
            let show = |v: Option<String>| v.unwrap_or_else(|| "absent".to_string());
            return Err(Error::checkpoint(
                checkpoint,
                format!(
                    "its optimiser sidecar {} belongs to another checkpoint: `{key}` is {} here and {} in the sidecar (a sidecar from another run, or a write that failed); resume from a checkpoint whose sidecar matches",
                    sidecar.display(),
                    show(a),
                    show(b)
                ),
            ));
        }
    }
    Ok(())
}

/// A run to continue exactly: where its checkpoint stopped, its optimiser state and its settings.
#[derive(Clone, Debug)]
pub struct Resume {
    pub checkpoint: PathBuf,
    pub start: Start,
    pub optimizer_state: OptimizerState,
    pub settings: RunSettings,
    /// Earlier accepted changes (`resumed_with_changes` in the metadata), kept in the new records.
    pub earlier_changes: Vec<Value>,
}

impl Resume {
    /// Loads the optimiser sidecar of `checkpoint` (already loaded as `ck`), checks that the two are
    /// one pair ([`check_sidecar_matches`]) and reads where the run stopped.
    ///
    /// # Errors
    /// [`Error::Io`] / [`Error::Checkpoint`] for a missing, corrupt or mismatched sidecar, or
    /// metadata that does not record the run's settings.
    pub fn load(checkpoint: &Path, ck: &Checkpoint) -> Result<Self> {
        let sidecar = optimizer_sidecar_path(checkpoint);
        let (state, sidecar_meta) = load_optimizer_state(&sidecar).map_err(|e| {
            Error::checkpoint(
                checkpoint,
                format!("--resume needs its optimiser sidecar: {e}"),
            )
        })?;
        check_sidecar_matches(checkpoint, &ck.meta, &sidecar, &sidecar_meta)?;
        let settings = RunSettings::from_metadata(checkpoint, &ck.meta)?;
        let u = |k: &str| ck.meta.get(k).and_then(Value::as_u64).unwrap_or(0) as usize;
        let complete = ck
            .meta
            .get("epoch_complete")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let epoch = u("epoch");
        let start = Start {
            params: ck.params.clone(),
            epoch: if complete {
                epoch
            } else {
                epoch.saturating_sub(1)
            },
            step: u("step"),
            step_in_epoch: if complete { 0 } else { u("step_in_epoch") },
            init: ck
                .meta
                .get("init")
                .and_then(Value::as_str)
                .unwrap_or("resumed")
                .to_string(),
        };
        Ok(Resume {
            checkpoint: checkpoint.to_path_buf(),
            start,
            optimizer_state: state,
            settings,
            earlier_changes: ck
                .meta
                .get("resumed_with_changes")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
        })
    }

    /// Compares the new command's settings with the checkpoint's. A change is refused unless
    /// `accept_changes`; accepted ones are returned as the `resumed_with_changes` value to put in every
    /// record and checkpoint that follows (the earlier ones, then these, each with the step it took
    /// effect at).
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the first changed flag, the checkpoint's value and the new one.
    pub fn check_settings(&self, new: &RunSettings, accept_changes: bool) -> Result<Option<Value>> {
        let changes = self.settings.changes(new);
        if let (Some(c), false) = (changes.first(), accept_changes) {
            let show = |v: &Value| match v {
                Value::Null => "unset".to_string(),
                v => v.to_string(),
            };
            return Err(Error::invalid(format!(
                "{} was {} in {} and is {} now; --resume continues a run exactly, so pass the checkpoint's value (or --resume-with-changes to change it and record the change)",
                c.flag,
                show(&c.from),
                self.checkpoint.display(),
                show(&c.to)
            )));
        }
        if changes.is_empty() && self.earlier_changes.is_empty() {
            return Ok(None);
        }
        let mut all = self.earlier_changes.clone();
        all.extend(changes.iter().map(|c| c.to_json(self.start.step)));
        Ok(Some(Value::Array(all)))
    }

    /// The run continued from this checkpoint: its start, its optimiser state and the changes
    /// [`Resume::check_settings`] accepted.
    ///
    /// # Errors
    /// As [`Resume::check_settings`].
    pub fn continuation(&self, new: &RunSettings, accept_changes: bool) -> Result<Continuation> {
        Ok(Continuation {
            start: self.start.clone(),
            optimizer_state: Some(self.optimizer_state.clone()),
            changes: self.check_settings(new, accept_changes)?,
        })
    }
}

/// Where a run starts and what it carries over from the run it continues: the one value `train` and
/// `switch` hand to [`train`]. A fresh start carries nothing; a resume carries its sidecar's optimiser
/// state and the `resumed_with_changes` of the settings it accepted ([`Resume::continuation`]).
#[derive(Clone, Debug)]
pub struct Continuation {
    pub start: Start,
    /// The optimiser state to load (`--resume`); `None`: the optimiser starts fresh.
    pub optimizer_state: Option<OptimizerState>,
    /// `resumed_with_changes` for every record and checkpoint that follows, when this resume (or an
    /// earlier one) accepted changed settings.
    pub changes: Option<Value>,
}

impl Continuation {
    /// A run that starts at `start` with a fresh optimiser.
    pub fn fresh(start: Start) -> Self {
        Continuation {
            start,
            optimizer_state: None,
            changes: None,
        }
    }

    /// Loads the carried optimiser state into `optimizer` and appends `resumed_with_changes` to the
    /// run's `extra` fields.
    ///
    /// # Errors
    /// The optimiser's, for a state that does not fit it.
    pub fn apply<B: Backend>(
        &self,
        optimizer: &mut dyn Optimizer<B>,
        extra: &mut Map<String, Value>,
    ) -> Result<()> {
        if let Some(state) = &self.optimizer_state {
            optimizer.load_state(state)?;
        }
        if let Some(changes) = &self.changes {
            extra.insert("resumed_with_changes".into(), changes.clone());
        }
        Ok(())
    }
}

/// How a run uses its output folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputMode {
    /// A new run: the folder must not hold a run's files yet.
    Fresh,
    /// A new run replacing the one in the folder: its checkpoints, sidecars and run.jsonl are removed
    /// first (other files are left alone).
    Overwrite,
    /// Continuing the run from a checkpoint: its files past the resume point are removed and
    /// run.jsonl keeps only the records up to it, so that the folder describes one run.
    Resume,
}

/// A file a run writes into its output folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RunFile {
    Log,
    /// `epoch-NNNN.safetensors` (or its sidecar): the epoch number.
    Epoch(usize),
    /// `step-NNNNNNN.safetensors` (or its sidecar): the global step.
    Step(usize),
}

fn run_file_kind(name: &str) -> Option<RunFile> {
    if name == "run.jsonl" {
        return Some(RunFile::Log);
    }
    let stem = name
        .strip_suffix(".safetensors.optim.safetensors")
        .or_else(|| name.strip_suffix(".safetensors"))?;
    let number = |digits: &str| {
        (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| digits.parse().ok())
            .flatten()
    };
    if let Some(d) = stem.strip_prefix("epoch-") {
        return number(d).map(RunFile::Epoch);
    }
    stem.strip_prefix("step-")
        .and_then(number)
        .map(RunFile::Step)
}

/// The run files in `dir` (plain files only), sorted by name.
fn run_files(dir: &Path) -> Result<Vec<(PathBuf, RunFile)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        if !entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
            continue;
        }
        if let Some(kind) = entry.file_name().to_str().and_then(run_file_kind) {
            out.push((entry.path(), kind));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// The last complete epoch's checkpoint in `dir` that has its optimiser sidecar, if any (where
/// `switch --resume` continues a branch).
pub fn last_epoch_checkpoint(dir: &Path) -> Result<Option<PathBuf>> {
    let mut best: Option<(usize, PathBuf)> = None;
    for (path, kind) in run_files(dir)? {
        if let RunFile::Epoch(e) = kind {
            let is_model = !path.to_string_lossy().ends_with(".optim.safetensors");
            if is_model
                && optimizer_sidecar_path(&path).is_file()
                && best.as_ref().is_none_or(|(b, _)| e > *b)
            {
                best = Some((e, path));
            }
        }
    }
    Ok(best.map(|(_, p)| p))
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Gets `dir` ready for a run: creates it, checks it is writable, removes temporary files a killed
/// run left ([`crate::io::remove_stale_temp_files`]), then applies `mode`. `keep` is a checkpoint the
/// run reads (`--init`), which [`OutputMode::Overwrite`] must not remove; `resume` is where a resumed
/// run starts and `run`/`seed` who it is ([`OutputMode::Resume`]).
///
/// # Errors
/// [`Error::Invalid`] when a fresh run's folder already holds a run (naming the folder, what it holds
/// and the flags that decide), when `--overwrite` would remove `keep`, or when a resumed run's folder
/// holds another run's log; I/O errors naming the file.
pub fn prepare_output(
    dir: &Path,
    mode: OutputMode,
    keep: Option<&Path>,
    resume: Option<(&Start, &RunSettings)>,
) -> Result<()> {
    crate::io::check_writable_dir(dir)?;
    crate::io::remove_stale_temp_files(dir)?;
    let files = run_files(dir)?;
    match mode {
        OutputMode::Fresh => {
            if let Some((first, _)) = files.first() {
                let checkpoints = files.iter().filter(|(_, k)| *k != RunFile::Log).count();
                return Err(Error::invalid(format!(
                    "{} already holds a run ({} checkpoint and sidecar files{}, first {}); pass --resume to continue it, --overwrite to replace it, or another --out",
                    dir.display(),
                    checkpoints,
                    if files.iter().any(|(_, k)| *k == RunFile::Log) { " and run.jsonl" } else { "" },
                    first.file_name().unwrap_or_default().to_string_lossy()
                )));
            }
        }
        OutputMode::Overwrite => {
            if let Some(k) = keep {
                let k_sidecar = optimizer_sidecar_path(k);
                if let Some((p, _)) = files
                    .iter()
                    .find(|(p, _)| same_file(p, k) || same_file(p, &k_sidecar))
                {
                    return Err(Error::invalid(format!(
                        "--overwrite would remove {}, which this run starts from; copy it elsewhere or write to another --out",
                        p.display()
                    )));
                }
            }
            for (p, _) in &files {
                std::fs::remove_file(p).map_err(|e| Error::io(p, e))?;
            }
        }
        OutputMode::Resume => {
            let (start, settings) =
                resume.ok_or_else(|| Error::invalid("a resumed run needs its resume point"))?;
            let log_path = dir.join("run.jsonl");
            if let Ok(text) = std::fs::read_to_string(&log_path) {
                let mut kept = String::new();
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    let rec: Value = serde_json::from_str(line).map_err(|e| {
                        Error::data(&log_path, format!("a line is not a JSON record: {e}"))
                    })?;
                    let other = rec.get("run").and_then(Value::as_str) != Some(&settings.run)
                        || rec.get("seed").and_then(Value::as_u64) != Some(settings.seed);
                    if other {
                        return Err(Error::invalid(format!(
                            "{} holds the log of another run (run {}, seed {}), not of run {:?} seed {}; resume into the run's own folder or another --out",
                            log_path.display(),
                            rec.get("run").unwrap_or(&Value::Null),
                            rec.get("seed").unwrap_or(&Value::Null),
                            settings.run,
                            settings.seed
                        )));
                    }
                    if rec
                        .get("step")
                        .and_then(Value::as_u64)
                        .is_some_and(|s| s as usize <= start.step)
                    {
                        kept.push_str(line);
                        kept.push('\n');
                    }
                }
                if kept.len() != text.len() {
                    crate::io::atomic_write(&log_path, kept.as_bytes())?;
                }
            }
            for (p, kind) in &files {
                let past = match *kind {
                    RunFile::Log => false,
                    RunFile::Epoch(e) => e > start.epoch,
                    RunFile::Step(s) => s > start.step,
                };
                if past && !keep.is_some_and(|k| same_file(p, k)) {
                    std::fs::remove_file(p).map_err(|e| Error::io(p, e))?;
                }
            }
        }
    }
    Ok(())
}

/// The checkpoint file for a completed epoch, `epoch-0003.safetensors`.
pub fn epoch_checkpoint_path(out_dir: &Path, epoch: usize) -> PathBuf {
    out_dir.join(format!("epoch-{epoch:04}.safetensors"))
}

fn step_checkpoint_path(out_dir: &Path, step: usize) -> PathBuf {
    out_dir.join(format!("step-{step:07}.safetensors"))
}

/// Batch size for evaluation (convolutions need more scratch per sample).
fn eval_batch(net: &Network) -> usize {
    match net.arch {
        crate::model::Architecture::LeNet { .. } => 200,
        _ => 1000,
    }
}

/// The epoch's progress on stderr (see [`crate::progress`]): a bar on a terminal, plain lines
/// otherwise; one task per epoch, begun at its first step and ended before its record is written.
struct Progress {
    enabled: bool,
    /// "train: sgd" (the tool and the run).
    label: String,
    task: Option<crate::progress::Task>,
}

impl Progress {
    fn show(&mut self, epoch: usize, epochs: usize, done: usize, total: usize, loss: f64) {
        if !self.enabled {
            return;
        }
        let task = self.task.get_or_insert_with(|| {
            let left = total.saturating_sub(done.saturating_sub(1));
            let label = format!("{}: epoch {epoch}/{epochs}", self.label);
            crate::progress::begin(label, "steps", left as u64)
        });
        task.tick(1, || format!("loss {loss:.4}"));
    }
    fn clear(&mut self) {
        self.task = None;
    }
}

/// Trains `net` from `start` with `optimizer`, calling `emit` with each record as soon as its
/// checkpoint is on disk. Stops early, with every written checkpoint intact, when `interrupted` is set.
///
/// # Errors
/// [`Error::Diverged`] when the loss or a parameter becomes non-finite (the last good checkpoint is
/// kept and named in the message), [`Error::Interrupted`], and I/O errors naming the file.
#[allow(clippy::too_many_arguments)]
pub fn train(
    cfg: &TrainConfig,
    net: &Network,
    train_data: &Dataset,
    test_data: Option<&Dataset>,
    start: Start,
    optimizer: &mut dyn Optimizer,
    interrupted: &AtomicBool,
    emit: &mut dyn FnMut(&Record) -> Result<()>,
) -> Result<Summary> {
    train_on(
        CpuBackend,
        cfg,
        net,
        train_data,
        test_data,
        start,
        optimizer,
        interrupted,
        emit,
    )
}

/// [`train`] on backend `be`: θ, the gradient, the minibatch and the network's workspace live in
/// its memory, the forward and backward passes and the optimiser's step (`optimizer` must be built
/// on the same backend, [`crate::optim::build_on`]) run there. The minibatch is gathered on the
/// host (in place where the backend's memory is the host's, else staged and written); θ comes to
/// the host at each checkpoint (and once per epoch for the update norm), where the finiteness
/// check, the evaluation's upload and the checkpoint read it.
///
/// # Errors
/// As [`train`].
#[allow(clippy::too_many_arguments)]
pub fn train_on<B: Backend>(
    be: B,
    cfg: &TrainConfig,
    net: &Network,
    train_data: &Dataset,
    test_data: Option<&Dataset>,
    start: Start,
    optimizer: &mut dyn Optimizer<B>,
    interrupted: &AtomicBool,
    emit: &mut dyn FnMut(&Record) -> Result<()>,
) -> Result<Summary> {
    net.check_input(train_data)?;
    if let Some(test_data) = test_data {
        net.check_input(test_data)?;
    }
    if cfg.batch_size == 0 {
        return Err(Error::invalid("batch size must be at least 1"));
    }
    if train_data.is_empty() {
        return Err(Error::data(&train_data.folder, "the training set is empty"));
    }
    crate::device::cpu::set_blas_threads(cfg.threads);
    let n = train_data.len();
    let batch = cfg.batch_size.min(n);
    let steps_per_epoch = n.div_ceil(batch);
    let features = train_data.features();
    // In memory, every input normalised once; streamed, each batch as it is read (the same values).
    let (images, norm) = if train_data.is_streamed() {
        (Vec::new(), Some(train_data.normaliser::<f32>()))
    } else {
        (train_data.normalized::<f32>()?, None)
    };
    let mut ws = net.workspace_on::<B, f32>(be.clone(), batch);
    let mut x = be.zeros::<f32>(batch * features);
    // The host copy the minibatch is gathered into on a backend whose memory is not the host's.
    let mut x_host = Vec::new();
    let mut y = train_data.target_buffer::<f32>(batch);
    let mut grad = be.zeros::<f32>(net.num_params());
    let mut params = be.upload(&start.params);
    // θ on the host (a device's copy, refreshed where it is read; unused on the CPU).
    let mut params_host = Vec::new();
    let mut step = start.step;
    let mut records = Vec::new();
    let mut last_checkpoint = None;
    let mut log = Vec::new();
    let log_path = cfg.out_dir.join("run.jsonl");
    if start.epoch > 0 || start.step_in_epoch > 0 {
        // The records up to where this run starts (those past it describe a run this one replaces).
        if let Ok(existing) = std::fs::read_to_string(&log_path) {
            for line in existing.lines() {
                let step = serde_json::from_str::<Value>(line)
                    .ok()
                    .and_then(|r| r.get("step").and_then(Value::as_u64));
                if step.is_some_and(|s| s as usize <= start.step) {
                    log.extend_from_slice(line.as_bytes());
                    log.push(b'\n');
                }
            }
        }
    }
    let mut progress = Progress {
        enabled: cfg.progress,
        label: format!("{} {}", crate::progress::tool(), cfg.run),
        task: None,
    };
    let optimizer_json = describe(optimizer);

    for epoch in start.epoch + 1..=cfg.epochs {
        let t0 = Instant::now();
        let order: Vec<usize> = if cfg.shuffle {
            stream(cfg.seed, Purpose::Shuffle, epoch as u64).permutation(n)
        } else {
            (0..n).collect()
        };
        let first_step = if epoch == start.epoch + 1 {
            start.step_in_epoch
        } else {
            0
        };
        let epoch_start_params =
            crate::optim::host_view(&be, B::view(&params), &mut params_host).to_vec();
        let (mut loss_sum, mut seen) = (0.0f64, 0usize);
        for k in first_step..steps_per_epoch {
            if interrupted.load(Ordering::Relaxed) {
                progress.clear();
                return Err(Error::Interrupted { epoch, step });
            }
            let idx = &order[k * batch..((k + 1) * batch).min(n)];
            let b = idx.len();
            {
                // In place where the backend's memory is the host's; else staged and written.
                let xb = B::slice_mut(B::view_mut(&mut x), 0..b * features);
                let (dst, staged) = match B::host_mut(xb) {
                    Some(h) => (h, false),
                    None => {
                        x_host.resize(b * features, 0.0);
                        (&mut x_host[..], true)
                    }
                };
                match &norm {
                    Some(norm) => train_data.gather_batch(norm, idx, dst, &mut y)?,
                    None => train_data.gather_normalized_batch(&images, idx, dst, &mut y),
                }
                if staged {
                    be.write(&x_host, B::slice_mut(B::view_mut(&mut x), 0..b * features));
                }
            }
            let xb = B::slice(B::view(&x), 0..b * features);
            let loss = net.loss_and_gradient_on(
                B::view(&params),
                xb,
                y.first(b),
                B::view_mut(&mut grad),
                &mut ws,
            );
            if !loss.is_finite() {
                progress.clear();
                return Err(diverged(
                    "loss",
                    epoch,
                    step + 1,
                    &last_checkpoint,
                    optimizer,
                ));
            }
            optimizer.step(
                B::view_mut(&mut params),
                B::view_mut(&mut grad),
                &Batch {
                    net,
                    x: B::slice(B::view(&x), 0..b * features),
                    targets: y.first(b),
                },
            )?;
            step += 1;
            loss_sum += loss * b as f64;
            seen += b;
            progress.show(
                epoch,
                cfg.epochs,
                k + 1,
                steps_per_epoch,
                loss_sum / seen as f64,
            );
            let end_of_epoch = k + 1 == steps_per_epoch;
            let periodic = cfg
                .save_every
                .is_some_and(|s| s > 0 && step.is_multiple_of(s));
            if end_of_epoch || periodic {
                let params = crate::optim::host_view(&be, B::view(&params), &mut params_host);
                if let Some(i) = params.iter().position(|v| !v.is_finite()) {
                    progress.clear();
                    return Err(diverged(
                        &format!("parameter (index {i})"),
                        epoch,
                        step,
                        &last_checkpoint,
                        optimizer,
                    ));
                }
                let path = if end_of_epoch {
                    epoch_checkpoint_path(&cfg.out_dir, epoch)
                } else {
                    step_checkpoint_path(&cfg.out_dir, step)
                };
                let test = test_data
                    .map(|d| net.evaluate_on(&be, params, d, eval_batch(net)))
                    .transpose()?;
                let train_eval = cfg
                    .eval_train
                    .then(|| net.evaluate_on(&be, params, train_data, eval_batch(net)))
                    .transpose()?;
                let update_norm = params
                    .iter()
                    .zip(&epoch_start_params)
                    .map(|(a, b)| ((*a - *b) as f64).powi(2))
                    .sum::<f64>()
                    .sqrt();
                let mut meta = Map::new();
                meta.insert("run".into(), Value::from(cfg.run.clone()));
                meta.insert(
                    "producer".into(),
                    Value::from(concat!("ngd-slt ", env!("CARGO_PKG_VERSION"))),
                );
                for (k2, v) in train_data.record_fields(net.loss) {
                    meta.insert(k2, v);
                }
                meta.insert(
                    "normalisation".into(),
                    Value::from(train_data.normalisation_text()),
                );
                meta.insert("optimizer".into(), optimizer_json.clone());
                meta.insert("seed".into(), Value::from(cfg.seed));
                meta.insert("init".into(), Value::from(start.init.clone()));
                meta.insert("epoch".into(), Value::from(epoch));
                meta.insert("step".into(), Value::from(step));
                meta.insert(
                    "step_in_epoch".into(),
                    Value::from(if end_of_epoch { 0 } else { k + 1 }),
                );
                meta.insert("epoch_complete".into(), Value::from(end_of_epoch));
                meta.insert("batch_size".into(), Value::from(cfg.batch_size));
                meta.insert("shuffle".into(), Value::from(cfg.shuffle));
                meta.insert("train_samples".into(), Value::from(n));
                meta.insert("blas_threads".into(), Value::from(cfg.threads));
                for (k2, v) in &cfg.extra {
                    meta.insert(k2.clone(), v.clone());
                }
                let ck = Checkpoint {
                    network: net.clone(),
                    params: params.to_vec(),
                    meta: meta.clone(),
                    source_names: vec![],
                };
                // The sidecar first: a checkpoint on disk always has its own sidecar beside it (a
                // failed sidecar write leaves the previous pair), and both carry the same metadata,
                // which `--resume` compares.
                save_optimizer_state(&optimizer_sidecar_path(&path), &optimizer.state(), &meta)?;
                ck.save(&path)?;
                last_checkpoint = Some(path.clone());

                let mut r = Record::new();
                r.insert("type".into(), Value::from("train"));
                r.insert("run".into(), Value::from(cfg.run.clone()));
                for (k2, v) in &cfg.extra {
                    r.insert(k2.clone(), v.clone());
                }
                r.insert("model".into(), net.arch.to_json());
                r.insert("params".into(), Value::from(net.num_params()));
                r.insert("optimizer".into(), optimizer_json.clone());
                r.insert("seed".into(), Value::from(cfg.seed));
                r.insert("epoch".into(), Value::from(epoch));
                r.insert("step".into(), Value::from(step));
                r.insert("epoch_complete".into(), Value::from(end_of_epoch));
                r.insert("batch_size".into(), Value::from(cfg.batch_size));
                r.insert("shuffle".into(), Value::from(cfg.shuffle));
                r.insert("train_samples".into(), Value::from(n));
                r.insert(
                    "train_loss".into(),
                    Value::from(loss_sum / seen.max(1) as f64),
                );
                // Without a test split (a data file without x_test), and for accuracy with float
                // targets, null: not defined rather than 0.
                r.insert("test_loss".into(), Value::from(test.map(|t| t.loss)));
                r.insert(
                    "test_acc".into(),
                    Value::from(test.and_then(|t| t.accuracy)),
                );
                if let Some(t) = &train_eval {
                    r.insert("train_eval_loss".into(), Value::from(t.loss));
                    r.insert("train_acc".into(), Value::from(t.accuracy));
                }
                r.insert("update_norm".into(), Value::from(update_norm));
                for (k2, v) in optimizer.take_epoch_stats() {
                    r.insert(k2, v);
                }
                r.insert("checkpoint".into(), Value::from(path.display().to_string()));
                for (k2, v) in train_data.record_fields(net.loss) {
                    r.insert(k2, v);
                }
                if train_data.kind().is_some() {
                    r.insert(
                        "data_dir".into(),
                        Value::from(cfg.data_dir.display().to_string()),
                    );
                }
                r.insert("init".into(), Value::from(start.init.clone()));
                r.insert("blas_threads".into(), Value::from(cfg.threads));
                r.insert(
                    "seconds".into(),
                    Value::from((t0.elapsed().as_secs_f64() * 1e3).round() / 1e3),
                );
                progress.clear();
                serde_json::to_writer(&mut log, &r).expect("record to JSON");
                log.push(b'\n');
                crate::io::atomic_write(&log_path, &log)?;
                emit(&r)?;
                records.push(r);
            }
        }
    }
    progress.clear();
    Ok(Summary {
        records,
        last_checkpoint,
    })
}

/// The divergence error, naming the last good checkpoint and, when the optimiser counted exploded
/// natural-gradient steps this epoch, saying so (the epoch record that would carry them never comes).
fn diverged<B: Backend>(
    what: &str,
    epoch: usize,
    step: usize,
    last: &Option<PathBuf>,
    optimizer: &mut dyn Optimizer<B>,
) -> Error {
    let kept = match last {
        Some(p) => format!("last good checkpoint: {}", p.display()),
        None => "no checkpoint was written before".to_string(),
    };
    let mut stats = optimizer.take_epoch_stats();
    stats.insert("epoch".into(), Value::from(epoch));
    let exploded =
        crate::optim::explosion_warning(&stats).map_or(String::new(), |w| format!("; {w}"));
    Error::Diverged {
        what: format!("{what}; {kept}{exploded}"),
        epoch,
        step,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::{Sgd, SgdConfig};

    fn start() -> Start {
        Start {
            params: vec![1.0, 2.0],
            epoch: 3,
            step: 30,
            step_in_epoch: 0,
            init: "seed 1".into(),
        }
    }

    #[test]
    fn a_fresh_continuation_leaves_the_optimiser_and_the_fields_alone() {
        let mut sgd = Sgd::new(SgdConfig::default()).unwrap();
        let mut extra = Map::new();
        extra.insert("branch".into(), Value::from("sgd"));
        Continuation::fresh(start())
            .apply(&mut sgd, &mut extra)
            .unwrap();
        assert!(sgd.state().is_empty());
        assert_eq!(Value::Object(extra), serde_json::json!({"branch": "sgd"}));
    }

    #[test]
    fn a_resumed_continuation_loads_the_state_and_appends_its_changes() {
        let state: OptimizerState = [("sgd.momentum_buffer".to_string(), vec![0.5, -0.5])].into();
        let changes = serde_json::json!([{"at_step": 30, "flag": "--lr", "from": 0.01, "to": 0.1}]);
        let c = Continuation {
            start: start(),
            optimizer_state: Some(state.clone()),
            changes: Some(changes.clone()),
        };
        let mut sgd = Sgd::new(SgdConfig::default()).unwrap();
        let mut extra = Map::new();
        extra.insert("branch".into(), Value::from("sgd"));
        c.apply(&mut sgd, &mut extra).unwrap();
        assert_eq!(sgd.state(), state);
        let keys: Vec<&str> = extra.keys().map(String::as_str).collect();
        assert_eq!(keys, ["branch", "resumed_with_changes"]);
        assert_eq!(extra["resumed_with_changes"], changes);
    }
}
