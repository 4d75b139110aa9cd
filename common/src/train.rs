//! The training loop shared by `train` and `switch`.
//!
//! One epoch is a pass over the training set in minibatches (the last one partial, as PyTorch's
//! `DataLoader(drop_last=False)`), in an order drawn from the `(seed, Shuffle, epoch)` stream or in file
//! order. After each epoch (and every `save_every` steps) the loop evaluates on the test set, writes a
//! checkpoint and its optimiser sidecar atomically, and emits one record.

use crate::data::{check_input, Dataset};
use crate::io::{optimizer_sidecar_path, save_optimizer_state, Checkpoint, Record};
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
    test_data: &Dataset,
    start: Start,
    optimizer: &mut dyn Optimizer,
    interrupted: &AtomicBool,
    emit: &mut dyn FnMut(&Record) -> Result<()>,
) -> Result<Summary> {
    check_input(train_data, net)?;
    check_input(test_data, net)?;
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
    let images = train_data.normalized::<f32>();
    let mut ws = net.workspace::<f32>(batch);
    let mut x = vec![0f32; batch * features];
    let mut y = vec![0usize; batch];
    let mut grad = vec![0f32; net.num_params()];
    let mut params = start.params;
    let mut step = start.step;
    let mut records = Vec::new();
    let mut last_checkpoint = None;
    let mut log = Vec::new();
    let log_path = cfg.out_dir.join("run.jsonl");
    if start.epoch > 0 || start.step_in_epoch > 0 {
        if let Ok(existing) = std::fs::read(&log_path) {
            log = existing;
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
        let epoch_start_params = params.clone();
        let (mut loss_sum, mut seen) = (0.0f64, 0usize);
        for k in first_step..steps_per_epoch {
            if interrupted.load(Ordering::Relaxed) {
                progress.clear();
                return Err(Error::Interrupted { epoch, step });
            }
            let idx = &order[k * batch..((k + 1) * batch).min(n)];
            let b = idx.len();
            train_data.gather_normalized(&images, idx, &mut x[..b * features], &mut y[..b]);
            let loss =
                net.loss_and_gradient(&params, &x[..b * features], &y[..b], &mut grad, &mut ws);
            if !loss.is_finite() {
                progress.clear();
                return Err(diverged("loss", epoch, step + 1, &last_checkpoint));
            }
            optimizer.step(
                &mut params,
                &mut grad,
                &Batch {
                    net,
                    x: &x[..b * features],
                    labels: &y[..b],
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
                if let Some(i) = params.iter().position(|v| !v.is_finite()) {
                    progress.clear();
                    return Err(diverged(
                        &format!("parameter (index {i})"),
                        epoch,
                        step,
                        &last_checkpoint,
                    ));
                }
                let path = if end_of_epoch {
                    epoch_checkpoint_path(&cfg.out_dir, epoch)
                } else {
                    step_checkpoint_path(&cfg.out_dir, step)
                };
                let test = net.evaluate(&params, test_data, eval_batch(net))?;
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
                meta.insert("dataset".into(), Value::from(train_data.kind.name()));
                meta.insert(
                    "normalisation".into(),
                    Value::from(train_data.kind.normalisation_text()),
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
                    params: params.clone(),
                    meta: meta.clone(),
                    source_names: vec![],
                };
                ck.save(&path)?;
                save_optimizer_state(&optimizer_sidecar_path(&path), &optimizer.state(), &meta)?;
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
                r.insert("test_loss".into(), Value::from(test.loss));
                r.insert("test_acc".into(), Value::from(test.accuracy));
                r.insert("update_norm".into(), Value::from(update_norm));
                for (k2, v) in optimizer.take_epoch_stats() {
                    r.insert(k2, v);
                }
                r.insert("checkpoint".into(), Value::from(path.display().to_string()));
                r.insert("dataset".into(), Value::from(train_data.kind.name()));
                r.insert(
                    "data_dir".into(),
                    Value::from(cfg.data_dir.display().to_string()),
                );
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

fn diverged(what: &str, epoch: usize, step: usize, last: &Option<PathBuf>) -> Error {
    let kept = match last {
        Some(p) => format!("last good checkpoint: {}", p.display()),
        None => "no checkpoint was written before".to_string(),
    };
    Error::Diverged {
        what: format!("{what}; {kept}"),
        epoch,
        step,
    }
}
