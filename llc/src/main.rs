//! `llc`: estimate the local learning coefficient of checkpoints by SGLD, as devinterp does, with
//! parallel chains and convergence diagnostics; or calibrate the sampler on one checkpoint.

use anyhow::{bail, Context, Result};
use clap::Parser;
use common::device::DeviceBackend;
use common::io::{atomic_write, log_line, process_stream};
use common::model::ModelSpec;
use common::sample::llc::trace_lines;
use common::sample::theory::DeepLinearStructure;
use common::sample::{
    calibrate, estimate_llc, log_spaced, select_tensors, CalibrationAxis, DataCache, InitLoss,
    LlcConfig, NBeta, NetworkPotential, Potential, Restricted, SgldConfig,
};
use serde_json::{Map, Value};
use std::path::PathBuf;
use std::process::ExitCode;

const ABOUT: &str = "Estimate the local learning coefficient (LLC) of checkpoints by SGLD.";

const LONG_ABOUT: &str = "\
Estimate the local learning coefficient λ̂ of each checkpoint by stochastic gradient Langevin
dynamics, as devinterp does (Lau et al. 2023): chains start at the checkpoint's weights w* and step
  w <- w - (ε/2)·[nβ·∇L_m(w) + γ·(w - w*)] + √ε·ξ,   ξ ~ N(0, I),
on minibatches of the training set; each chain's λ̂ = nβ·(mean draw loss - L_init). The defaults are
the paper's: ε 1e-4, γ 100, nβ = m/ln m (devinterp's default, 26.38 for m = 128), minibatch 128,
1000 draws, no burn-in, every step a draw, 2 chains. Chains run in parallel threads, each seeded
from --seed and its index, so the result does not depend on --threads.

Every record gets an `llc` object: the mean over chains, their standard deviation, each chain's
value, L_init, every setting, and diagnostics devinterp does not give: MALA acceptance, a
stationarity test of each loss trace, rank-normalised split R-hat and bulk ESS across chains, the
distance from w* over each chain (`diagnostics.distance_from_w_star`: mean, max and last ‖w - w*‖ at
the draws, the mean of each quarter of the draws, and with --bounding-box the fraction of
coordinates on the box), and a verdict (`ok`, or warnings such as a diverged chain, which is
excluded from the mean and named, a chain still moving away from w* or one pressed against the
bounding box; those two are also printed on stderr).

Checkpoints come as arguments, or as JSON records on stdin (records with a `checkpoint` field are
processed, others passed through), one line out per record, flushed at once. The data set is the
checkpoint's (metadata) unless --dataset says otherwise.

Examples:

  The LLC of one checkpoint with the paper's settings:
    $ llc runs/sgd-1x128/epoch-0020.safetensors

  Four chains on two threads, the loss traces kept for plotting:
    $ llc --chains 4 --threads 2 --trace-out traces.jsonl runs/sgd-1x128/epoch-*.safetensors

  While training runs:
    $ train --epochs 20 --out runs/x | llc --chains 4 > runs/x/llc.jsonl

  A checkpoint made with PyTorch (nn.Sequential MLP), data in a torchvision folder:
    $ llc --model mlp_1x128 --data-dir ~/torchvision-data model.safetensors

  The restricted LLC of the first layer only (devinterp's optimize_over; the rest held at w*):
    $ llc --only '1.*' runs/sgd-1x128/epoch-0020.safetensors

  Calibrate: sweep ε over 1e-6..1e-3 (7 log-spaced values) × nβ, mark the largest stable ε:
    $ llc --calibrate --calibrate-epsilon 1e-6:1e-3:7 --calibrate-nbeta batch,100,1000 ckpt.safetensors

Exit status: 0 when every record succeeded; 1 if any failed (each failure is reported on stderr
naming the record, and the record is still written with an `llc.error` field).";

#[derive(Parser, Debug)]
#[command(name = "llc", version, about = ABOUT, long_about = LONG_ABOUT)]
struct Args {
    #[command(flatten)]
    device: common::cli::DeviceArgs,
    /// Checkpoints (safetensors). Without any, JSON records are read from stdin.
    checkpoints: Vec<PathBuf>,
    /// Model of the checkpoints: mlp (an MLP with the checkpoint's widths; mlp_tanh for tanh), lenet
    /// (with the checkpoint's extra layers), or an exact name such as mlp_1x128, mlp_2x256_tanh,
    /// lenet_k3, or a JSON spec file (docs/model-spec.md) [default: the metadata's, else inferred
    /// from the tensor shapes].
    #[arg(long)]
    model: Option<String>,
    /// Data set: mnist or fashion-mnist [default: the checkpoint's, else mnist].
    #[arg(long)]
    dataset: Option<String>,
    /// Folder holding the data (data/mnist, data/fashion-mnist, or a torchvision root).
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    #[command(flatten)]
    data_args: common::cli::DataArgs,
    /// Use only the first N training samples (n is then N for the nβ rules).
    #[arg(long)]
    train_samples: Option<usize>,
    /// SGLD step size ε.
    #[arg(
        long,
        visible_alias = "lr",
        default_value_t = 1e-4,
        allow_negative_numbers = true
    )]
    epsilon: f64,
    /// Localisation strength γ.
    #[arg(long, default_value_t = 100.0, allow_negative_numbers = true)]
    gamma: f64,
    /// nβ: a number, `batch` (m/ln m, devinterp's default) or `dataset` (n/ln n).
    #[arg(long, default_value = "batch", allow_negative_numbers = true)]
    nbeta: String,
    /// Minibatch size m.
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Draws per chain.
    #[arg(long, default_value_t = 1000, allow_negative_numbers = true)]
    draws: i64,
    /// Number of chains.
    #[arg(long, default_value_t = 2, allow_negative_numbers = true)]
    chains: i64,
    /// SGLD steps before the first draw.
    #[arg(long, default_value_t = 0)]
    burn_in: usize,
    /// Steps between draws.
    #[arg(long, default_value_t = 1)]
    thin: usize,
    /// Threads running the chains [default: the number of cores, at most --chains].
    #[arg(long)]
    threads: Option<usize>,
    /// Seed of the chains (chain c uses stream (seed, chain, c)).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Weight decay δ in the drift (devinterp's weight_decay).
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Clamp each weight to [w* - b, w* + b] (devinterp's bounding_box_size).
    #[arg(long)]
    bounding_box: Option<f64>,
    /// L_init: `minibatches` (devinterp: mean over as many minibatches as chains) or `full`.
    #[arg(long, default_value = "minibatches", value_parser = ["minibatches", "full"])]
    init_loss: String,
    /// Number of minibatches for `--init-loss minibatches` [default: --chains].
    #[arg(long)]
    init_loss_batches: Option<usize>,
    /// Write the per-draw losses as JSON lines {checkpoint, chain, draw, loss, acceptance} to this file.
    #[arg(long)]
    trace_out: Option<PathBuf>,
    /// Sweep ε × nβ (or γ) and report each cell instead of one estimate.
    #[arg(long)]
    calibrate: bool,
    /// Calibration step sizes: lo:hi:count, log-spaced.
    #[arg(long, default_value = "1e-6:1e-3:7")]
    calibrate_epsilon: String,
    /// Calibration nβ values (comma-separated numbers, batch, dataset).
    #[arg(long, value_delimiter = ',', default_value = "batch")]
    calibrate_nbeta: Vec<String>,
    /// Calibration γ values instead of nβ (comma-separated).
    #[arg(long, value_delimiter = ',')]
    calibrate_gamma: Option<Vec<f64>>,
    /// Sample only these tensors (comma-separated names or shell patterns such as `fc_1.*` or
    /// `*.weight`), holding the others at the checkpoint's values: the restricted LLC (devinterp's
    /// optimize_over). The record's `llc.only` lists the patterns, the tensors and their parameter count.
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    only: Option<Vec<String>>,
    /// Print nothing on stderr but errors.
    #[arg(long, short)]
    quiet: bool,
}

fn main() -> ExitCode {
    // The binaries choose the BLAS provider; the library only calls CBLAS.
    common::device::cpu::register_blas_threads(blas_openblas::set_threads);
    common::cli::run_main("llc", common::cli::ClosedStdout::Quiet, || {
        run(Args::parse())
    })
}

/// The most step sizes of a calibration grid (each is a full LLC estimate per row); a count like
/// 1e14 aborted on its allocation.
const MAX_CALIBRATION_STEPS: usize = 1000;

fn positive_count(v: i64, flag: &str) -> Result<usize> {
    if v < 1 {
        bail!("{flag} must be at least 1 (got {v})");
    }
    Ok(v as usize)
}

fn run(args: Args) -> Result<ExitCode> {
    // Until the CUDA backend is implemented (issue #17) its arm cannot be reached.
    let backend = match args.device.open("llc")? {
        DeviceBackend::Cpu(be) => be,
        DeviceBackend::Cuda(be) => be.absurd(),
    };
    common::progress::enable(!args.quiet);
    let chains = positive_count(args.chains, "--chains")?;
    let draws = positive_count(args.draws, "--draws")?;
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1 (got 0)");
    }
    if args.train_samples == Some(0) {
        bail!("--train-samples must be at least 1 (got 0)");
    }
    if args.init_loss == "full" && args.init_loss_batches.is_some() {
        bail!("--init-loss-batches applies to --init-loss minibatches, not full");
    }
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let sgld = SgldConfig {
        step_size: args.epsilon,
        nbeta: 1.0,
        localization: args.gamma,
        weight_decay: args.weight_decay,
        bounding_box: args.bounding_box,
        draws,
        burn_in: args.burn_in,
        thin: args.thin,
        chains,
        threads,
        seed: args.seed,
    };
    let init_loss = match args.init_loss.as_str() {
        "full" => InitLoss::Full,
        _ => InitLoss::Minibatches {
            count: args.init_loss_batches.unwrap_or(chains),
        },
    };
    let cfg = LlcConfig {
        sgld,
        nbeta: NBeta::parse(&args.nbeta)?,
        init_loss,
    };
    cfg.validate()?;
    let calibration = if args.calibrate {
        let parts: Vec<&str> = args.calibrate_epsilon.split(':').collect();
        let [lo, hi, count] = parts[..] else {
            bail!(
                "--calibrate-epsilon must be lo:hi:count (got '{}')",
                args.calibrate_epsilon
            );
        };
        let count: usize = count.parse().context("--calibrate-epsilon count")?;
        if count > MAX_CALIBRATION_STEPS {
            bail!("--calibrate-epsilon: at most {MAX_CALIBRATION_STEPS} step sizes (got {count})");
        }
        let eps = log_spaced(
            lo.parse().context("--calibrate-epsilon lo")?,
            hi.parse().context("--calibrate-epsilon hi")?,
            count,
        )?;
        let axis = match &args.calibrate_gamma {
            Some(g) => {
                if g.iter().any(|x| !(x.is_finite() && *x >= 0.0)) {
                    bail!("--calibrate-gamma values must be zero or positive");
                }
                CalibrationAxis::Gamma(g.clone())
            }
            None => CalibrationAxis::NBeta(
                args.calibrate_nbeta
                    .iter()
                    .map(|s| NBeta::parse(s))
                    .collect::<common::Result<_>>()?,
            ),
        };
        Some((eps, axis))
    } else {
        None
    };
    let model = args
        .model
        .as_deref()
        .map(|m| ModelSpec::parse(m).with_context(|| format!("--model {m}")))
        .transpose()?;
    let mut data = DataCache::new(
        args.data_dir.clone(),
        args.dataset.clone(),
        args.train_samples,
    )
    .with_data(args.data_args.choice()?, args.data_args.loss.clone());
    let mut trace_text = String::new();
    let key = if calibration.is_some() {
        "llc_calibration"
    } else {
        "llc"
    };

    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let summary = process_stream(
        "llc",
        key,
        &args.checkpoints,
        stdin.lock(),
        stdout.lock(),
        |_record, path| {
            let (ck, train) = data.load(path, model.as_ref())?;
            let pot = NetworkPotential::new_on(backend, &ck.network, train, args.batch_size)?;
            let mut context = Map::new();
            context.insert("model".into(), Value::from(ck.network.arch.name()));
            if let Some(spec) = ck.network.arch.spec_source() {
                context.insert("model_spec".into(), spec.clone());
            }
            context.extend(train.record_fields(ck.network.loss));
            if train.kind().is_some() {
                context.insert(
                    "data_dir".into(),
                    Value::from(args.data_dir.display().to_string()),
                );
            }
            let measured = match &args.only {
                None => {
                    let mut m = measure(
                        &pot,
                        &ck.params,
                        &cfg,
                        &calibration,
                        &args,
                        path,
                        &mut trace_text,
                    )?;
                    // A deep linear network: Aoyagi's λ beside λ̂ (exact when w* is a true
                    // parameter, e.g. a `datagen teacher` checkpoint on its own data).
                    let structure = DeepLinearStructure::of(&ck.network, &ck.params);
                    if let (None, Some(s)) = (&calibration, structure) {
                        let theory = s.theory()?;
                        if !args.quiet {
                            log_line(&format!(
                                "llc: {}: Aoyagi's λ = {} (multiplicity {}) for a deep linear \
                                 network {} at rank {}, if w* is a true parameter",
                                path.display(),
                                theory["lambda"],
                                theory["multiplicity"],
                                s.widths
                                    .iter()
                                    .map(|w| w.to_string())
                                    .collect::<Vec<_>>()
                                    .join("-"),
                                s.rank
                            ));
                        }
                        m.insert("theory".into(), theory);
                    }
                    m
                }
                Some(patterns) => {
                    let layout = &ck.network.layout;
                    let tensors = select_tensors(layout, patterns)?;
                    let restricted = Restricted::new(&pot, layout, &tensors, &ck.params)?;
                    let w_star = restricted.gather(&ck.params);
                    let mut m = measure(
                        &restricted,
                        &w_star,
                        &cfg,
                        &calibration,
                        &args,
                        path,
                        &mut trace_text,
                    )?;
                    let names: Vec<&str> = tensors
                        .iter()
                        .map(|&i| layout.tensors[i].name.as_str())
                        .collect();
                    let only = serde_json::json!({
                        "patterns": patterns,
                        "tensors": names,
                        "params": restricted.dim(),
                        "of_params": layout.total(),
                    });
                    m.insert("only".into(), only);
                    m
                }
            };
            context.extend(measured);
            Ok(Value::Object(context))
        },
    )?;
    Ok(if summary.failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The estimate (or the calibration grid) of one checkpoint on `pot` from `w_star`, as the fields of
/// its record; logs the summary and appends the traces to `trace_text`, the --trace-out file's text so
/// far (rewritten whole, atomically, after each record).
fn measure<P: Potential>(
    pot: &P,
    w_star: &[f32],
    cfg: &LlcConfig,
    calibration: &Option<(Vec<f64>, CalibrationAxis)>,
    args: &Args,
    path: &std::path::Path,
    trace_text: &mut String,
) -> common::Result<Map<String, Value>> {
    if let Some((eps, axis)) = calibration {
        let v = calibrate(pot, w_star, cfg, eps, axis, |line| {
            if !args.quiet {
                log_line(&format!("llc: {}: {line}", path.display()));
            }
        })?;
        return Ok(match v {
            Value::Object(m) => m,
            _ => Map::new(),
        });
    }
    let est = estimate_llc(pot, w_star, cfg)?;
    if !args.quiet {
        log_line(&format!(
            "llc: {}",
            est.summary_line(&path.display().to_string())
        ));
        for w in &est.diagnostics.distance_warnings {
            log_line(&format!("llc: {}: warning: {w}", path.display()));
        }
    }
    if let Some(out) = &args.trace_out {
        let mut fields = Map::new();
        fields.insert("checkpoint".into(), Value::from(path.display().to_string()));
        trace_text.push_str(&trace_lines(&est.traces, &fields, est.sgld.thin));
        atomic_write(out, trace_text.as_bytes())?;
    }
    Ok(match est.to_json() {
        Value::Object(m) => m,
        _ => Map::new(),
    })
}
