//! `train`: train an MLP or the paper's LeNet on MNIST or Fashion-MNIST and stream one JSON record per
//! checkpoint to stdout.

mod ngd_args;

use anyhow::{bail, Context, Result};
use clap::Parser;
use common::data::{DatasetKind, Split};
use common::device::{CpuBackend, DeviceBackend};
use common::io::{Checkpoint, RecordWriter};
use common::model::{
    check_fits_in_memory, initialise, Activation, Architecture, Loss, ModelSpec, Network,
};
use common::optim::{AdamWConfig, Optimizer, SgdConfig};
use common::train::{
    prepare_output, train_on, Continuation, OutputMode, Resume, RunSettings, Start, TrainConfig,
};
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const ABOUT: &str =
    "Train a small network with SGD or natural gradient descent and write a checkpoint and a JSON record per epoch.";

const LONG_ABOUT: &str = "\
Train an MLP or the paper's LeNet on MNIST or Fashion-MNIST with SGD (PyTorch's torch.optim.SGD:
momentum, dampening, Nesterov, weight decay), AdamW (torch.optim.AdamW), Adam (torch.optim.Adam) or natural gradient descent. --optimizer ngd is the
paper's online natural gradient (Kaldi's OnlineNaturalGradient as in the paper's ngd.py: a low-rank
Fisher factor per tensor axis, then SGD momentum); --optimizer ngd-exact is the exact damped
natural gradient (F + λI)⁻¹g of each minibatch's empirical or sampled Fisher, solved through the
B×B Gram matrix. After every epoch (and every --save-every steps) it evaluates on the test set,
writes a checkpoint (safetensors, PyTorch names, loadable with load_state_dict) and its optimiser
sidecar into --out, and prints one JSON record to stdout, so that the next tool in a pipeline (llc,
hessian-trace) can start on it while training goes on. NGD records add what the preconditioner
did (NaN fallbacks, norm ratio, per-tensor cosine to the gradient and rank on the floor; for
ngd-exact λ and the Gram condition number). Progress and a summary go to stderr.

The defaults are the paper's: lr 0.01, momentum 0.9 with Nesterov, batch 128, no weight decay.
The same --seed gives the same initialisation and data order for every optimiser, and the same
command twice gives byte-identical checkpoints.

Examples:

  Train the MLP 784-128-10 on MNIST for 20 epochs:
    $ train --model mlp --hidden 128 --dataset mnist --epochs 20 --seed 1 --out runs/sgd-1x128

  Two hidden layers of 256 on Fashion-MNIST, records into a file:
    $ train --hidden 256,256 --dataset fashion-mnist --epochs 40 --out runs/f2x256 > f2x256.jsonl

  The paper's NGD from the same initialisation as the SGD run above (α = 0.01, η = 0.9):
    $ train --optimizer ngd --epochs 20 --seed 1 --out runs/ngd-1x128

  The paper's NGD measuring how far its f32 directions are from an f64-state shadow's, and SGD
  with isotropic noise of that relative size added to each tensor's gradient (the noise control):
    $ train --optimizer ngd --ngd-shadow-f64 --epochs 3 --out runs/ngd-shadow
    $ train --optimizer sgd --direction-noise 0.8 --variant sgd-noise --epochs 20 --out runs/noise

  Online NGD with its state in f64 and rank 10, or the exact natural gradient with its defaults
  (sampled Fisher, damping λ = 10·tr(F)/P, rescaled to the gradient's norm), or of the empirical
  Fisher with a smaller damping, not rescaled:
    $ train --optimizer ngd --ngd-dtype f64 --ngd-rank 10 --epochs 20 --out runs/ngd-f64-r10
    $ train --optimizer ngd-exact --epochs 20 --out runs/exact
    $ train --optimizer ngd-exact --fisher empirical --damping-relative 1 --no-preserve-norm --out runs/emp

  AdamW as PyTorch's torch.optim.AdamW (weight decay decoupled), e.g. for grokking:
    $ train --data modular.safetensors --model net.json --optimizer adamw --lr 1e-3 --weight-decay 1 --betas 0.9,0.98 --out runs/grok

  Adam as PyTorch's torch.optim.Adam (weight decay as L2 in the gradient, wd·θ added before the
  moments), as devinterp's grokking example trains:
    $ train --data modular.safetensors --model net.json --optimizer adam --lr 5e-3 --weight-decay 2e-4 --batch-size 128 --out runs/grok-adam

  The LeNet, a quick run on the first 5,000 samples in file order:
    $ train --model lenet --train-samples 5000 --no-shuffle --epochs 1 --out runs/lenet-quick

  A regression data file with the mean squared error (the default for float targets):
    $ train --data teacher.safetensors --hidden 16 --epochs 20 --out runs/student

  Continue from a checkpoint with a fresh optimiser, or resume exactly where it stopped:
    $ train --init runs/sgd-1x128/epoch-0010.safetensors --epochs 5 --lr 0.1 --out runs/lr0.1
    $ train --init runs/sgd-1x128/epoch-0010.safetensors --resume --epochs 20 --out runs/sgd-1x128

Data comes from --data-dir (default data/, filled by `make data`); torchvision's MNIST/raw and
FashionMNIST/raw folders work as they are. Or from a --data file (safetensors: x [n, …], y integer
labels or float targets, optional x_test, y_test; `datagen teacher` writes one): the model is built
for its sample shape and outputs, the loss is cross-entropy for labels and the mean squared error
(PyTorch's F.mse_loss) for float targets unless --loss says otherwise, and records carry the file,
its fingerprint and the loss (test_acc is null for regression, test_loss and test_acc without a test
split). Exit status: 0 on success, 1 on error (one line on
stderr naming the file or setting), 130 when interrupted, 141 when stdout was closed before the run
finished (`train ... | head -1`); every checkpoint written so far is valid and can be resumed.

A folder that already holds a run (run.jsonl, epoch-/step- checkpoints) is refused unless --resume
continues it or --overwrite replaces it. --resume refuses a checkpoint whose sidecar belongs to
another checkpoint, and any changed setting that shapes the numbers (--resume-with-changes accepts
and records them).";

#[derive(Parser, Debug)]
#[command(name = "train", version, about = ABOUT, long_about = LONG_ABOUT)]
struct Args {
    #[command(flatten)]
    device: common::cli::DeviceArgs,
    /// Model: mlp (widths from --hidden), lenet (--extra-layers), a name such as mlp_1x128,
    /// mlp_2x256, mlp_128-64_tanh, lenet_k3, or a JSON spec file (net.json; docs/model-spec.md).
    /// With --init, mlp and lenet take their sizes from the checkpoint unless --hidden /
    /// --extra-layers is given, and a name or spec must match it exactly [default: mlp, or with
    /// --init the checkpoint's model].
    #[arg(long)]
    model: Option<String>,
    /// Print the PyTorch module of the model (--model, or the --init checkpoint's) and exit: for a
    /// spec, Python source defining `build()` whose `load_state_dict(strict=True)` takes our
    /// checkpoints.
    #[arg(long)]
    print_torch: bool,
    /// Hidden layer widths of the MLP, comma-separated (e.g. 256,256) [default: 128]. Models whose
    /// parameters, optimiser state and workspace would not fit in this machine's memory are refused.
    #[arg(long, value_delimiter = ',')]
    hidden: Option<Vec<usize>>,
    /// MLP nonlinearity: relu, tanh, gelu (exact, as nn.GELU()) or identity (a deep linear network) [default: relu, or the
    /// --init checkpoint's].
    #[arg(long)]
    activation: Option<String>,
    /// Number of extra 6→6 conv layers of the LeNet [default: 2, or the --init checkpoint's].
    #[arg(long)]
    extra_layers: Option<usize>,
    /// Data set: mnist or fashion-mnist [default: mnist, or the --init checkpoint's].
    #[arg(long)]
    dataset: Option<String>,
    /// Folder holding the data (data/mnist, data/fashion-mnist, or a torchvision root).
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    #[command(flatten)]
    data_args: common::cli::DataArgs,
    /// Optimiser: sgd, ngd (the paper's online natural gradient, then SGD momentum), ngd-exact
    /// (the exact damped natural gradient of each minibatch, then SGD momentum), adamw
    /// (torch.optim.AdamW: --betas, --eps, decoupled --weight-decay) or adam (torch.optim.Adam:
    /// --betas, --eps, --weight-decay as L2 added to the gradient).
    #[arg(long, default_value = "sgd", value_parser = common::optim::OPTIMIZERS)]
    optimizer: String,
    /// Learning rate [default: 0.01; adamw, adam: 0.001, PyTorch's].
    #[arg(long)]
    lr: Option<f64>,
    /// Momentum factor μ.
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    /// Dampening τ of the momentum.
    #[arg(long, default_value_t = 0.0)]
    dampening: f64,
    /// Nesterov momentum (the default).
    #[arg(long, conflicts_with = "no_nesterov")]
    nesterov: bool,
    /// Plain (heavy-ball) momentum instead of Nesterov.
    #[arg(long)]
    no_nesterov: bool,
    /// Weight decay: L2 added to the gradient (sgd, ngd, ngd-exact, adam), or decoupled θ ← θ(1 − lr·wd)
    /// before the step (adamw) [default: 0; adamw: 0.01, PyTorch's; adam: 0].
    #[arg(long, allow_negative_numbers = true)]
    weight_decay: Option<f64>,
    /// adamw, adam: β₁,β₂, the decay rates of the gradient's first and second moments.
    #[arg(
        long,
        value_name = "B1,B2",
        value_delimiter = ',',
        default_value = "0.9,0.999",
        allow_negative_numbers = true
    )]
    betas: Vec<f64>,
    /// adamw, adam: ε, added to the second moment's square root.
    #[arg(long, default_value_t = 1e-8, allow_negative_numbers = true)]
    eps: f64,
    /// sgd: add isotropic Gaussian noise ξ to each tensor's gradient before the momentum step,
    /// ‖ξ_t‖ = R·‖g_t‖ (seeded by --seed; 0 = none). The noise control for NGD's rounding.
    #[arg(
        long,
        value_name = "R",
        default_value_t = 0.0,
        allow_negative_numbers = true
    )]
    direction_noise: f64,
    /// sgd: R for one tensor, NAME=R (e.g. 1.bias=0.9), overriding --direction-noise there;
    /// repeat or separate by commas.
    #[arg(long, value_name = "NAME=R", value_delimiter = ',')]
    direction_noise_tensor: Vec<String>,
    /// Minibatch size (the last batch of an epoch may be smaller).
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Train until this many epochs are complete (counting the --resume checkpoint's).
    #[arg(long, default_value_t = 20)]
    epochs: usize,
    /// Seed of the initialisation and the data order [default: 1, or the checkpoint's with --resume].
    #[arg(long)]
    seed: Option<u64>,
    /// Output folder for checkpoints (epoch-NNNN.safetensors) and the run log (run.jsonl).
    #[arg(long, required_unless_present = "print_torch")]
    out: Option<PathBuf>,
    /// Run name in records [default: the --out folder's name].
    #[arg(long)]
    run: Option<String>,
    /// A name for what this run is, put in every record and the checkpoint metadata as `variant`
    /// (for tables comparing variants across seeds: report table --label /variant).
    #[arg(long)]
    variant: Option<String>,
    /// Start from this checkpoint's weights (fresh optimiser unless --resume).
    #[arg(long)]
    init: Option<PathBuf>,
    /// With --init: restore the optimiser sidecar and continue the run exactly (every setting that
    /// shapes the numbers must be the checkpoint's; --epochs may grow). Checkpoints and records in
    /// --out past the resume point are removed, so the folder holds one run.
    #[arg(long, requires = "init", conflicts_with = "overwrite")]
    resume: bool,
    /// With --resume: accept changed settings (lr, batch size, …) and record each change
    /// (`resumed_with_changes`) in every record and checkpoint that follows.
    #[arg(long, requires = "resume")]
    resume_with_changes: bool,
    /// Replace the run already in --out: its checkpoints, sidecars and run.jsonl are removed first
    /// (without it a folder that holds a run is refused).
    #[arg(long)]
    overwrite: bool,
    /// Visit the training set in file order instead of shuffling each epoch.
    #[arg(long)]
    no_shuffle: bool,
    /// Use only the first N training samples.
    #[arg(long)]
    train_samples: Option<usize>,
    /// Also evaluate the whole training set at each checkpoint: records gain train_eval_loss and
    /// train_acc (null for float targets; per token for labels at every position), the loss and
    /// accuracy at the checkpoint (train_loss is the mean over the epoch's minibatches, each before
    /// its step).
    #[arg(long)]
    eval_train: bool,
    /// Also write a checkpoint and record every N steps.
    #[arg(long)]
    save_every: Option<usize>,
    /// BLAS threads (1 makes results independent of the machine).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Print nothing on stderr but errors.
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    ngd: ngd_args::NgdArgs,
}

fn main() -> ExitCode {
    // The binaries choose the BLAS provider; the library only calls CBLAS.
    common::device::cpu::register_blas_threads(blas_openblas::set_threads);
    common::cli::run_main("train", common::cli::ClosedStdout::Fail, || {
        run(Args::parse())
    })
}

/// The model the flags describe, and the flag that set its sizes (for messages).
fn model_from_flags(args: &Args, spec: Option<&ModelSpec>) -> Result<(Architecture, String)> {
    let activation = args
        .activation
        .as_deref()
        .map(Activation::parse)
        .transpose()?;
    let hidden = args.hidden.clone().unwrap_or_else(|| vec![128]);
    let widths = hidden
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    Ok(match spec {
        None | Some(ModelSpec::Mlp { .. }) => {
            let activation = match spec {
                Some(ModelSpec::Mlp {
                    activation: Some(a),
                }) => Some(*a),
                _ => activation,
            };
            (
                Architecture::mlp(hidden, activation.unwrap_or(Activation::Relu)),
                format!("--hidden {widths}"),
            )
        }
        Some(ModelSpec::LeNet) => {
            let k = args.extra_layers.unwrap_or(2);
            (Architecture::lenet(k), format!("--extra-layers {k}"))
        }
        Some(ModelSpec::Exact(_)) => {
            // Parsed again for --activation, which applies to a name without an activation.
            let m = args.model.as_deref().unwrap_or_default();
            let arch = Architecture::parse(
                m,
                &hidden,
                activation.unwrap_or(Activation::Relu),
                args.extra_layers.unwrap_or(2),
            )
            .with_context(|| format!("--model {m}"))?;
            (arch, format!("--model {m}"))
        }
    })
}

/// Refuses a model that is degenerate (a zero width, one class under cross-entropy) or that would
/// not fit in memory, in one line naming `flag`. Before the data is read the loss is the one
/// `--loss` or the spec names; with neither it is not known yet (the targets' dtype decides), so
/// one output passes here and is checked against the loss once it is ([`check_model_for`]).
fn check_model(arch: &Architecture, loss: Option<&str>, batch: usize, flag: &str) -> Result<()> {
    let loss = match (loss, arch.named_loss()) {
        (Some(name), _) => Loss::parse(name).context("--loss")?,
        (None, Some(name)) => Loss::parse(name).with_context(|| flag.to_string())?,
        (None, None) => Loss::MeanSquaredError,
    };
    check_model_for(arch, loss, batch, flag)
}

/// [`check_model`] for a model trained with `loss` (the mean squared error takes one output).
fn check_model_for(arch: &Architecture, loss: Loss, batch: usize, flag: &str) -> Result<()> {
    let size = arch.size_for(loss).with_context(|| flag.to_string())?;
    check_fits_in_memory(&size, batch).with_context(|| flag.to_string())?;
    Ok(())
}

fn run(args: Args) -> Result<()> {
    // Until the CUDA backend is implemented (issue #17) its arm cannot be reached. The backend is
    // passed down to the optimiser (its state lives there) and to the training loop.
    let backend: CpuBackend = match args.device.open("train")? {
        DeviceBackend::Cpu(be) => be,
        DeviceBackend::Cuda(be) => be.absurd(),
    };
    common::progress::enable(!args.quiet);
    let spec = args
        .model
        .as_deref()
        .map(|m| ModelSpec::parse(m).with_context(|| format!("--model {m}")))
        .transpose()?;
    let (init, arch) = match &args.init {
        None => {
            // The flags are checked before any data is read (at the paper's input shape), and the
            // model again once it is built for the data's shape (below).
            let (arch, flag) = model_from_flags(&args, spec.as_ref())?;
            check_model(
                &arch,
                args.data_args.loss.as_deref(),
                args.batch_size,
                &flag,
            )?;
            (None, arch)
        }
        Some(p) => {
            // --model mlp / lenet take their sizes from the checkpoint unless a flag gives them.
            let spec = match spec {
                Some(ModelSpec::Mlp { activation }) if args.hidden.is_none() => {
                    Some(ModelSpec::Mlp {
                        activation: activation.or(args
                            .activation
                            .as_deref()
                            .map(Activation::parse)
                            .transpose()?),
                    })
                }
                Some(ModelSpec::LeNet) if args.extra_layers.is_none() => Some(ModelSpec::LeNet),
                Some(s) => {
                    let (arch, flag) = model_from_flags(&args, Some(&s))?;
                    check_model(
                        &arch,
                        args.data_args.loss.as_deref(),
                        args.batch_size,
                        &flag,
                    )?;
                    Some(ModelSpec::Exact(arch))
                }
                None => None,
            };
            let loss = args
                .data_args
                .loss
                .as_deref()
                .map(Loss::parse)
                .transpose()?;
            let ck = Checkpoint::load_for_loss(p, spec.as_ref(), loss)?;
            ck.check_finite(p)?;
            let arch = ck.network.arch.clone();
            check_model(
                &arch,
                args.data_args.loss.as_deref(),
                args.batch_size,
                &format!("--init {}", p.display()),
            )?;
            (Some(ck), arch)
        }
    };
    if args.print_torch {
        println!("{}", arch.torch_definition());
        return Ok(());
    }
    let out_dir = args
        .out
        .clone()
        .expect("clap requires --out without --print-torch");
    // The run to continue: checkpoint and sidecar checked to be one pair before any data is read.
    let resume = match (&init, args.resume) {
        (Some(ck), true) => {
            let path = args.init.as_ref().expect("init");
            Some(Resume::load(path, ck)?)
        }
        _ => None,
    };
    let meta_u64 = |k: &str| {
        init.as_ref()
            .and_then(|c| c.meta.get(k))
            .and_then(Value::as_u64)
    };
    let choice = args.data_args.choice()?;
    let choice = match (&init, &args.init) {
        (Some(ck), Some(p)) => choice.for_checkpoint(ck, p, args.dataset.as_deref())?,
        _ => choice,
    };
    let dataset = match (&init, &args.dataset) {
        _ if choice.file.is_some() => DatasetKind::Mnist,
        (Some(ck), d) => {
            let path = args.init.as_ref().expect("init");
            common::data::dataset_for_checkpoint(ck, d.as_deref())
                .with_context(|| path.display().to_string())?
        }
        (None, Some(d)) => DatasetKind::parse(d)?,
        (None, None) => DatasetKind::Mnist,
    };
    let seed = args
        .seed
        .or(if args.resume { meta_u64("seed") } else { None })
        .unwrap_or(1);

    let mut train_data = choice.load(dataset, &args.data_dir, Split::Train)?;
    let test_data = choice.load_test(dataset, &args.data_dir)?;
    let loss = Loss::resolve(
        args.data_args.loss.as_deref(),
        init.as_ref()
            .and_then(|c| c.meta.get("loss"))
            .and_then(Value::as_str)
            .or(arch.named_loss()),
        train_data.float_targets(),
    )?;
    // A new model is built for the data's sample shape and classes, then checked (sizes, memory);
    // a checkpoint's model is checked against the data (Network::check_input).
    let arch = match &init {
        None => {
            let [c, h, w] = train_data.sample_shape();
            let arch = arch.for_data([c, h, w], train_data.classes);
            let data = format!(
                "model {} for the {c}×{h}×{w} images in {}",
                arch.name(),
                train_data.folder.display()
            );
            check_model_for(&arch, loss, args.batch_size, &data)?;
            arch
        }
        Some(_) => arch,
    };
    let mut net = Network::new(arch);
    net.loss = loss;
    // A spec fixes its input shape and outputs: a data set that does not fit is refused here, before
    // the run is announced.
    net.check_input(&train_data)?;
    if let Some(test) = &test_data {
        net.check_input(test)?;
    }
    if let Some(n) = args.train_samples {
        if n == 0 {
            bail!("--train-samples must be at least 1");
        }
        train_data.truncate(n);
    }
    if args.epochs == 0 {
        bail!("--epochs must be at least 1");
    }

    let sgd = SgdConfig {
        lr: args.lr.unwrap_or(0.01),
        momentum: args.momentum,
        dampening: args.dampening,
        nesterov: !args.no_nesterov,
        weight_decay: args.weight_decay.unwrap_or(0.0),
    };
    let mut settings = args.ngd.settings(&args.optimizer, sgd, seed)?;
    let [beta1, beta2] = args.betas[..] else {
        bail!("--betas takes two values, B1,B2 (e.g. 0.9,0.98)");
    };
    let adamw_defaults = if args.optimizer == "adam" {
        AdamWConfig::adam_default()
    } else {
        AdamWConfig::default()
    };
    settings.adamw = AdamWConfig {
        lr: args.lr.unwrap_or(adamw_defaults.lr),
        beta1,
        beta2,
        eps: args.eps,
        weight_decay: args.weight_decay.unwrap_or(adamw_defaults.weight_decay),
        decoupled: adamw_defaults.decoupled,
    };
    settings.noise.relative = args.direction_noise;
    for spec in &args.direction_noise_tensor {
        let parsed = spec
            .split_once('=')
            .and_then(|(n, r)| Some((n.to_string(), r.parse::<f64>().ok()?)));
        let Some(pair) = parsed else {
            bail!("invalid --direction-noise-tensor {spec:?} (expected NAME=R, e.g. 1.bias=0.5)");
        };
        settings.noise.per_tensor.push(pair);
    }
    let mut optimizer: Box<dyn Optimizer<CpuBackend>> =
        common::optim::build_on(backend, &settings, &net)?;

    let start = match (&init, &resume) {
        (None, _) => Start {
            params: initialise(&net, seed),
            epoch: 0,
            step: 0,
            step_in_epoch: 0,
            init: format!("seed {seed}"),
        },
        (Some(ck), None) => Start {
            params: ck.params.clone(),
            epoch: 0,
            step: 0,
            step_in_epoch: 0,
            init: args.init.as_ref().expect("init").display().to_string(),
        },
        (Some(_), Some(r)) => r.start.clone(),
    };
    if start.epoch >= args.epochs {
        bail!(
            "the checkpoint has already completed {} epochs; ask for more with --epochs",
            start.epoch
        );
    }

    // With --resume the run keeps its name unless --run says otherwise.
    let run = args
        .run
        .clone()
        .or_else(|| resume.as_ref().map(|r| r.settings.run.clone()))
        .unwrap_or_else(|| {
            out_dir
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "run".to_string())
        });
    let mut extra: serde_json::Map<String, Value> = args
        .variant
        .iter()
        .map(|v| ("variant".to_string(), Value::from(v.clone())))
        .collect();
    let continuation = match &resume {
        None => Continuation::fresh(start),
        Some(r) => {
            let now = RunSettings {
                run: run.clone(),
                dataset: train_data.identity(),
                seed,
                batch_size: args.batch_size,
                shuffle: !args.no_shuffle,
                train_samples: train_data.len(),
                blas_threads: args.threads,
                optimizer: common::optim::describe(optimizer.as_ref()),
            };
            r.continuation(&now, args.resume_with_changes)?
        }
    };
    continuation.apply(optimizer.as_mut(), &mut extra)?;
    let mode = match (resume.is_some(), args.overwrite) {
        (true, _) => OutputMode::Resume,
        (false, true) => OutputMode::Overwrite,
        (false, false) => OutputMode::Fresh,
    };
    prepare_output(
        &out_dir,
        mode,
        args.init.as_deref(),
        resume.as_ref().map(|r| (&r.start, &r.settings)),
    )?;
    let cfg = TrainConfig {
        run,
        out_dir: out_dir.clone(),
        data_dir: args.data_dir.clone(),
        seed,
        epochs: args.epochs,
        batch_size: args.batch_size,
        shuffle: !args.no_shuffle,
        train_samples: args.train_samples,
        save_every: args.save_every,
        threads: args.threads,
        extra,
        progress: !args.quiet,
        eval_train: args.eval_train,
    };

    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
            .context("cannot install the Ctrl-C handler")?;
    }
    if !args.quiet {
        let hyper: Vec<String> = optimizer
            .hyperparameters()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        eprintln!(
            "train: {} ({} parameters) on {} ({} samples), {} {}, batch {}, seed {}, epochs {}..={}",
            net.arch.name(),
            net.num_params(),
            train_data.name(),
            train_data.len(),
            optimizer.name(),
            hyper.join(" "),
            args.batch_size,
            seed,
            continuation.start.epoch + 1,
            args.epochs
        );
    }
    let stdout = std::io::stdout();
    let mut out = RecordWriter::new(stdout.lock());
    let quiet = args.quiet;
    let mut stopped_at = None;
    let mut emit = |r: &common::io::Record| -> common::Result<()> {
        if !quiet {
            // A data set without a test split has no test loss, and float targets (regression) no
            // accuracy: those record fields are null, and the line leaves them out.
            let test_loss = r["test_loss"]
                .as_f64()
                .map(|l| format!("  test loss {l:.4}"))
                .unwrap_or_default();
            let acc = r["test_acc"]
                .as_f64()
                .map(|a| format!("  test acc {:.2}%", 100.0 * a))
                .unwrap_or_default();
            eprintln!(
                "epoch {:>3}  step {:>6}  train loss {:.4}{test_loss}{acc}  {:.1} s  -> {}",
                r["epoch"],
                r["step"],
                r["train_loss"].as_f64().unwrap_or(f64::NAN),
                r["seconds"].as_f64().unwrap_or(0.0),
                r["checkpoint"].as_str().unwrap_or("")
            );
            if let Some(w) = common::optim::explosion_warning(r) {
                eprintln!("train: warning: {w}");
            }
        }
        out.write(r).map_err(|e| {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                stopped_at = Some(format!(
                    "stdout was closed by its reader; the run stopped at epoch {}, step {} (that checkpoint and every earlier one are complete; continue with --init {} --resume)",
                    r["epoch"],
                    r["step"],
                    r["checkpoint"].as_str().unwrap_or("")
                ));
            }
            common::Error::io("<stdout>", e)
        })
    };
    let result = train_on(
        backend,
        &cfg,
        &net,
        &train_data,
        test_data.as_ref(),
        continuation.start,
        optimizer.as_mut(),
        &interrupted,
        &mut emit,
    );
    match (result, stopped_at) {
        (Err(_), Some(msg)) => Err(anyhow::Error::from(std::io::Error::from(
            std::io::ErrorKind::BrokenPipe,
        ))
        .context(msg)),
        (r, _) => r.map(|_| ()).map_err(Into::into),
    }
}
