//! `switch`: continue training one checkpoint along several branches (optimisers, learning rates),
//! each with a fresh optimiser and the same data order, as the paper's switching experiment.

use anyhow::{bail, Context, Result};
use clap::Parser;
use common::cli::{Stop, Stopped};
use common::data::{dataset_for_checkpoint, DatasetKind, Split};
use common::device::{CpuBackend, DeviceBackend};
use common::io::{Checkpoint, Record, RecordWriter};
use common::model::Loss;
use common::model::ModelSpec;
use common::optim::{build, build_on, describe, OptimizerSettings, OPTIMIZERS};
use common::train::{
    last_epoch_checkpoint, prepare_output, train_on, Continuation, OutputMode, Resume, RunSettings,
    Start, TrainConfig,
};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

const LONG_ABOUT: &str = "\
Continue training from one checkpoint along several branches, each with a fresh optimiser (as the
paper did when it switched from SGD to NGD), the same data order (the source run's seed, so epoch k
visits the samples in the same order on every branch) and its own folder and run name. It writes the
same checkpoints and records as `train`, plus `branch` and `switched_at` (the source checkpoint's
epoch, step and path), so `switch ... | llc | hessian-trace` works unchanged. Epochs keep counting
from the source checkpoint: `--epochs 20` from an epoch-10 checkpoint trains epochs 11 to 20.

A branch is an optimiser (sgd, ngd, ngd-exact, adamw, adam) and optional settings with `train`'s flag
names: `sgd`, `ngd:ngd-alpha=0.1`, `sgd:lr=0.1`, `ngd-exact:damping=0.001,fisher=sampled`,
`sgd:lr=1,batch-size=256`, `adamw:lr=0.001,weight-decay=1,beta2=0.98` (AdamW's betas are `beta1`,
`beta2`). `name=...` sets the branch's name (default: the spec with `:`/`,` as `-`). Unset settings
take the paper's defaults (lr 0.01, momentum 0.9, Nesterov, NGD α 0.01; AdamW: PyTorch's, lr 0.001,
betas 0.9, 0.999, eps 1e-8, weight decay 0.01).

Examples:

  The paper's switch: SGD for 10 epochs, then SGD, NGD and SGD with 10× and 100× the learning rate:
    $ train --dataset fashion-mnist --hidden 256,256 --epochs 10 --out runs/switch/sgd
    $ switch --from runs/switch/sgd/epoch-0010.safetensors --epochs 20 --out runs/switch \\
        --branch sgd --branch ngd:ngd-alpha=0.1 --branch sgd:lr=0.1 --branch sgd:lr=1 > switch.jsonl

  Two branches at a time on two cores, with the LLC streamed as they go:
    $ switch --from ck.safetensors --epochs 5 --jobs 2 --out runs/b --branch sgd --branch ngd | llc

A branch folder that already holds a run is refused unless --resume continues each branch from its
last epoch checkpoint (same settings and --from; --resume-with-changes records changes) or
--overwrite replaces it. Branch names are single folder names (no `/`, `..`).

Exit status: 0 when every branch finished, 1 otherwise (each failure named on stderr), 130 when
interrupted, 141 when stdout was closed before the branches finished (`switch ... | head -1`).";

#[derive(Parser, Debug)]
#[command(name = "switch", version, about = "Continue a checkpoint along several optimiser branches", long_about = LONG_ABOUT)]
struct Args {
    #[command(flatten)]
    device: common::cli::DeviceArgs,
    /// The checkpoint to branch from.
    #[arg(long)]
    from: PathBuf,
    /// Train each branch until this epoch (the source checkpoint's epochs count).
    #[arg(long)]
    epochs: usize,
    /// A branch: OPTIMIZER[:key=value,...] (repeat for each branch).
    #[arg(long = "branch", required = true)]
    branches: Vec<String>,
    /// Output folder; each branch writes to <out>/<branch name>/.
    #[arg(long)]
    out: PathBuf,
    /// Run name prefix [default: the --out folder's name]; each run is <prefix>-<branch>.
    #[arg(long)]
    run: Option<String>,
    /// Model of the checkpoints: mlp (an MLP with the checkpoint's widths; mlp_tanh for tanh), lenet
    /// (with the checkpoint's extra layers), or an exact name such as mlp_1x128, mlp_2x256_tanh,
    /// lenet_k3, or a JSON spec file (docs/model-spec.md) [default: the metadata's, else inferred
    /// from the tensor shapes].
    #[arg(long)]
    model: Option<String>,
    /// Data set [default: the checkpoint's].
    #[arg(long)]
    dataset: Option<String>,
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    #[command(flatten)]
    data_args: common::cli::DataArgs,
    /// Seed of the data order (and sampled Fisher) [default: the checkpoint's].
    #[arg(long)]
    seed: Option<u64>,
    /// Minibatch size for branches that do not set batch-size [default: the checkpoint's, else 128].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Visit the training set in file order.
    #[arg(long)]
    no_shuffle: bool,
    /// Use only the first N training samples [default: the checkpoint's].
    #[arg(long)]
    train_samples: Option<usize>,
    /// Also checkpoint every N steps.
    #[arg(long)]
    save_every: Option<usize>,
    /// Branches trained at the same time (each on one BLAS thread).
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Continue each branch from the last epoch checkpoint in its folder (a branch without one
    /// starts from --from); every setting must be the one the branch ran with.
    #[arg(long, conflicts_with = "overwrite")]
    resume: bool,
    /// With --resume: accept changed settings and record them (`resumed_with_changes`).
    #[arg(long, requires = "resume")]
    resume_with_changes: bool,
    /// Replace the runs already in the branches' folders (their checkpoints, sidecars and
    /// run.jsonl are removed first); without it a branch folder that holds a run is refused.
    #[arg(long)]
    overwrite: bool,
    #[arg(long, short)]
    quiet: bool,
}

/// A parsed branch: its name, optimiser settings and batch size.
struct Branch {
    name: String,
    settings: OptimizerSettings,
    batch_size: Option<usize>,
}

fn parse_branch(spec: &str, seed: u64) -> Result<Branch> {
    let (opt, rest) = spec.split_once(':').unwrap_or((spec, ""));
    if !OPTIMIZERS.contains(&opt) {
        bail!(
            "--branch {spec}: unknown optimiser '{opt}' (expected {})",
            OPTIMIZERS.join(", ")
        );
    }
    let mut settings = OptimizerSettings {
        name: opt.to_string(),
        ..OptimizerSettings::default()
    };
    if opt == "adam" {
        // torch.optim.Adam's defaults (weight decay 0, coupled) rather than AdamW's.
        settings.adamw = common::optim::AdamWConfig::adam_default();
    }
    settings.set_seed(seed);
    let mut name = None;
    let mut batch_size = None;
    for kv in rest.split(',').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "name" => name = Some(v.to_string()),
            "batch-size" => {
                batch_size = Some(
                    v.parse()
                        .with_context(|| format!("--branch {spec}: batch-size={v}"))?,
                )
            }
            _ => settings
                .set(k, v)
                .with_context(|| format!("--branch {spec}"))?,
        }
    }
    // Default name: the optimiser and each setting, e.g. `ngd-alpha0.1`, `sgd-lr0.1`.
    let name = name.unwrap_or_else(|| {
        let mut n = opt.to_string();
        for kv in rest.split(',').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            n.push('-');
            n.push_str(k.strip_prefix("ngd-").unwrap_or(k));
            n.push_str(v);
        }
        n
    });
    common::io::check_path_component(&format!("--branch {spec}: the branch name"), &name)?;
    Ok(Branch {
        name,
        settings,
        batch_size,
    })
}

/// Checks and prepares branch `b`'s folder for the mode the flags ask for, and says where it starts:
/// from `--from`, or (`--resume`) from its own last checkpoint.
#[allow(clippy::too_many_arguments)]
fn plan_branch(
    args: &Args,
    b: &Branch,
    net: &common::model::Network,
    prefix: &str,
    dataset: &str,
    seed: u64,
    shuffle: bool,
    train_samples: usize,
    base_batch: usize,
    switched_at: &Value,
    from_start: &Start,
) -> Result<Continuation> {
    let dir = args.out.join(&b.name);
    let context = || format!("branch {}", b.name);
    let fresh = Continuation::fresh(from_start.clone());
    if !args.resume {
        let mode = if args.overwrite {
            OutputMode::Overwrite
        } else {
            OutputMode::Fresh
        };
        prepare_output(&dir, mode, Some(&args.from), None).with_context(context)?;
        return Ok(fresh);
    }
    let now = RunSettings {
        run: format!("{prefix}-{}", b.name),
        dataset: dataset.to_string(),
        seed,
        batch_size: b.batch_size.unwrap_or(base_batch),
        shuffle,
        train_samples,
        blas_threads: 1,
        optimizer: describe(build(&b.settings, net)?.as_ref()),
    };
    let Some(path) = last_epoch_checkpoint(&dir)? else {
        // Nothing to continue: the branch starts again from --from (its partial files go).
        prepare_output(
            &dir,
            OutputMode::Resume,
            Some(&args.from),
            Some((from_start, &now)),
        )
        .with_context(context)?;
        return Ok(fresh);
    };
    let ck =
        Checkpoint::load(&path, Some(&ModelSpec::Exact(net.arch.clone()))).with_context(context)?;
    ck.check_finite(&path).with_context(context)?;
    let resume = Resume::load(&path, &ck).with_context(context)?;
    if ck.meta.get("switched_at") != Some(switched_at) {
        bail!(
            "branch {}: {} was switched from {}, not from this --from ({}); pass the same --from, or --overwrite",
            b.name,
            path.display(),
            ck.meta.get("switched_at").unwrap_or(&Value::Null),
            switched_at
        );
    }
    let continuation = resume
        .continuation(&now, args.resume_with_changes)
        .with_context(context)?;
    prepare_output(
        &dir,
        OutputMode::Resume,
        Some(&path),
        Some((&resume.start, &resume.settings)),
    )
    .with_context(context)?;
    Ok(continuation)
}

fn main() -> ExitCode {
    // The binaries choose the BLAS provider; the library only calls CBLAS.
    common::device::cpu::register_blas_threads(blas_openblas::set_threads);
    common::cli::run_main("switch", common::cli::ClosedStdout::Fail, || {
        run(Args::parse())
    })
}

fn run(args: Args) -> Result<()> {
    // Until the CUDA backend is implemented (issue #17) its arm cannot be reached. Every branch's
    // optimiser and training loop run on this backend.
    let backend: CpuBackend = match args.device.open("switch")? {
        DeviceBackend::Cpu(be) => be,
        DeviceBackend::Cuda(be) => be.absurd(),
    };
    common::progress::enable(!args.quiet);
    let model = args
        .model
        .as_deref()
        .map(|m| ModelSpec::parse(m).with_context(|| format!("--model {m}")))
        .transpose()?;
    let loss = args
        .data_args
        .loss
        .as_deref()
        .map(Loss::parse)
        .transpose()?;
    let ck = Checkpoint::load_for_loss(&args.from, model.as_ref(), loss)?;
    ck.check_finite(&args.from)?;
    let meta_u64 = |k: &str| ck.meta.get(k).and_then(Value::as_u64);
    let choice =
        args.data_args
            .choice()?
            .for_checkpoint(&ck, &args.from, args.dataset.as_deref())?;
    let dataset = match choice.file {
        Some(_) => DatasetKind::Mnist,
        None => dataset_for_checkpoint(&ck, args.dataset.as_deref())?,
    };
    let seed = args.seed.or(meta_u64("seed")).unwrap_or(1);
    let from_epoch = meta_u64("epoch").unwrap_or(0) as usize;
    let from_step = meta_u64("step").unwrap_or(0) as usize;
    if args.epochs <= from_epoch {
        bail!(
            "{}: the checkpoint is at epoch {from_epoch}; --epochs {} must be larger (it is the epoch to reach)",
            args.from.display(),
            args.epochs
        );
    }
    let branches: Vec<Branch> = args
        .branches
        .iter()
        .map(|s| parse_branch(s, seed))
        .collect::<Result<_>>()?;
    let mut names: Vec<&str> = branches.iter().map(|b| b.name.as_str()).collect();
    names.sort();
    if names.windows(2).any(|w| w[0] == w[1]) {
        bail!("two branches share a name; give them name=... settings");
    }
    let mut net = ck.network.clone();
    // Every optimiser is built (and so validated) before any training starts.
    for b in &branches {
        build(&b.settings, &net).with_context(|| format!("--branch {}", b.name))?;
    }
    let mut train_data = choice.load(dataset, &args.data_dir, Split::Train)?;
    let test_data = choice.load_test(dataset, &args.data_dir)?;
    net.loss = Loss::resolve(
        args.data_args.loss.as_deref(),
        ck.meta
            .get("loss")
            .and_then(Value::as_str)
            .or(net.arch.named_loss()),
        train_data.float_targets(),
    )?;
    let net = net;
    // Once, before any branch starts (each branch would fail on it).
    net.check_input(&train_data)?;
    if let Some(n) = args
        .train_samples
        .or(meta_u64("train_samples").map(|n| n as usize))
    {
        train_data.truncate(n);
    }
    let shuffle = !args.no_shuffle
        && ck
            .meta
            .get("shuffle")
            .and_then(Value::as_bool)
            .unwrap_or(true);
    let base_batch = args
        .batch_size
        .or(meta_u64("batch_size").map(|b| b as usize))
        .unwrap_or(128);
    let prefix = args.run.clone().unwrap_or_else(|| {
        args.out
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "switch".into())
    });
    let switched_at = json!({
        "epoch": from_epoch,
        "step": from_step,
        "checkpoint": args.from.display().to_string(),
    });
    let from_start = Start {
        params: ck.params.clone(),
        epoch: from_epoch,
        step: from_step,
        step_in_epoch: 0,
        init: args.from.display().to_string(),
    };
    // Every branch's folder is checked (and, with --resume, its checkpoint) before any trains.
    let mut plans = Vec::new();
    for b in &branches {
        plans.push(plan_branch(
            &args,
            b,
            &net,
            &prefix,
            &train_data.identity(),
            seed,
            shuffle,
            train_data.len(),
            base_batch,
            &switched_at,
            &from_start,
        )?);
    }

    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
            .context("cannot install the Ctrl-C handler")?;
    }
    let out = Mutex::new(RecordWriter::new(std::io::stdout()));
    let next = Mutex::new(0usize);
    let failures = Mutex::new(Vec::<String>::new());
    let pipe_closed = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for _ in 0..args.jobs.clamp(1, branches.len()) {
            scope.spawn(|| loop {
                let i = {
                    let mut n = next.lock().expect("lock");
                    let i = *n;
                    *n += 1;
                    i
                };
                let Some(b) = branches.get(i) else { break };
                let plan = &plans[i];
                let result = (|| -> Result<()> {
                    let mut optimizer = build_on(backend, &b.settings, &net)?;
                    let mut extra = serde_json::Map::new();
                    extra.insert("branch".into(), Value::from(b.name.clone()));
                    extra.insert("switched_at".into(), switched_at.clone());
                    plan.apply(optimizer.as_mut(), &mut extra)?;
                    let cfg = TrainConfig {
                        run: format!("{prefix}-{}", b.name),
                        out_dir: args.out.join(&b.name),
                        data_dir: args.data_dir.clone(),
                        seed,
                        epochs: args.epochs,
                        batch_size: b.batch_size.unwrap_or(base_batch),
                        shuffle,
                        train_samples: None,
                        save_every: args.save_every,
                        threads: 1,
                        extra,
                        progress: !args.quiet,
                        eval_train: false,
                    };
                    let start = plan.start.clone();
                    let quiet = args.quiet;
                    let mut emit = |r: &Record| -> common::Result<()> {
                        if !quiet {
                            eprintln!(
                                "switch: {} epoch {} train loss {:.4} test loss {:.4} test acc {:.2}%",
                                b.name,
                                r["epoch"],
                                r["train_loss"].as_f64().unwrap_or(f64::NAN),
                                r["test_loss"].as_f64().unwrap_or(f64::NAN),
                                100.0 * r["test_acc"].as_f64().unwrap_or(f64::NAN)
                            );
                        }
                        out.lock()
                            .expect("lock")
                            .write(r)
                            .map_err(|e| common::Error::io("<stdout>", e))
                    };
                    train_on(
                        backend,
                        &cfg,
                        &net,
                        &train_data,
                        test_data.as_ref(),
                        start,
                        optimizer.as_mut(),
                        &interrupted,
                        &mut emit,
                    )?;
                    Ok(())
                })();
                if let Err(e) = result {
                    let broken_pipe = e.chain().any(|c| {
                        c.downcast_ref::<std::io::Error>()
                            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
                    });
                    if broken_pipe {
                        // The reader went away (`switch | head`): stop every branch quietly.
                        pipe_closed.store(true, Ordering::SeqCst);
                        interrupted.store(true, Ordering::SeqCst);
                        continue;
                    }
                    if pipe_closed.load(Ordering::SeqCst) {
                        continue;
                    }
                    if !matches!(
                        e.downcast_ref::<common::Error>(),
                        Some(common::Error::Interrupted { .. })
                    ) {
                        eprintln!("switch: branch {}: {e:#}", b.name);
                    }
                    failures.lock().expect("lock").push(b.name.clone());
                }
            });
        }
    });
    let failures = failures.into_inner().expect("lock");
    if pipe_closed.load(Ordering::SeqCst) {
        return Err(Stopped::new(
            Stop::StdoutClosed,
            "stdout was closed by its reader; every branch stopped, and every checkpoint written is complete (continue with --resume)",
        )
        .into());
    }
    if interrupted.load(Ordering::SeqCst) {
        return Err(Stopped::new(
            Stop::Interrupted,
            "interrupted; every checkpoint written so far is complete",
        )
        .into());
    }
    if !failures.is_empty() {
        bail!(
            "{} of {} branches failed: {}",
            failures.len(),
            branches.len(),
            failures.join(", ")
        );
    }
    Ok(())
}
