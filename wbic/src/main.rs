//! `wbic`: Watanabe's WBIC of checkpoints by SGLD at β = 1/ln n, or the paper's devinterp quantity.

use anyhow::{bail, Context, Result};
use clap::Parser;
use common::device::DeviceBackend;
use common::io::{atomic_write, log_line, process_stream};
use common::model::ModelSpec;
use common::sample::llc::trace_lines;
use common::sample::{
    estimate_wbic, watanabe_temperature, DataCache, NBeta, NetworkPotential, Potential, SgldConfig,
    WbicMode,
};
use serde_json::{Map, Value};
use std::path::PathBuf;
use std::process::ExitCode;

const ABOUT: &str =
    "Estimate Watanabe's WBIC of checkpoints by SGLD at inverse temperature 1/ln n.";

const LONG_ABOUT: &str = "\
Estimate the widely applicable Bayesian information criterion (Watanabe 2013)
  WBIC = E_w^β[ n·L_n(w) ],   β = 1/ln n,
the posterior mean of n times the training loss at inverse temperature β, sampled by SGLD with
nβ = n/ln n started at the checkpoint's weights, without localisation (WBIC is a global quantity;
--gamma > 0 gives a local WBIC and the record says so). Each draw contributes n times its minibatch
loss, an unbiased estimate of n·L_n at that draw. The record's `wbic` object holds the estimate, its
standard error across chains, n·L_n(w*) at the checkpoint, and the implied learning coefficient
(WBIC - n·L_n(w*))/ln n (from WBIC ≈ n·L_n(w₀) + λ·ln n), with every setting, the same diagnostics
as `llc` (MALA acceptance, stationarity, R-hat, ESS) and a verdict.

Global sampling at nβ = n/ln n is much stiffer than the LLC's nβ = 26: the default step size is
1e-6; check the verdict, or calibrate with `llc --calibrate --calibrate-nbeta dataset --gamma 0`.

--devinterp computes what the paper reported as WBIC instead: SGLD at the LLC's settings (ε 1e-4,
γ 100, nβ = m/ln m unless given) and n times the mean of the sampled minibatch losses, under the
name `wbic_devinterp`.

Examples:

  WBIC of a checkpoint, 4 chains:
    $ wbic --chains 4 runs/sgd-1x128/epoch-0020.safetensors

  At another temperature, localised around the checkpoint:
    $ wbic --beta 0.05 --gamma 100 runs/sgd-1x128/epoch-0020.safetensors

  The paper's devinterp quantity for every checkpoint of a run:
    $ train --epochs 20 --out runs/x | wbic --devinterp > runs/x/wbic.jsonl

Exit status: 0 when every record succeeded; 1 if any failed (reported on stderr naming the record).";

#[derive(Parser, Debug)]
#[command(name = "wbic", version, about = ABOUT, long_about = LONG_ABOUT)]
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
    /// Folder holding the data.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    #[command(flatten)]
    data_args: common::cli::DataArgs,
    /// Use only the first N training samples (n = N).
    #[arg(long)]
    train_samples: Option<usize>,
    /// Inverse temperature β [default: 1/ln n].
    #[arg(long, allow_negative_numbers = true)]
    beta: Option<f64>,
    /// The paper's devinterp quantity: n × mean minibatch loss of SGLD at the LLC's settings.
    #[arg(long)]
    devinterp: bool,
    /// nβ in --devinterp mode: a number, batch (m/ln m) or dataset (n/ln n).
    #[arg(long, default_value = "batch", requires = "devinterp")]
    nbeta: String,
    /// SGLD step size ε [default: 1e-6; 1e-4 with --devinterp].
    #[arg(long, visible_alias = "lr", allow_negative_numbers = true)]
    epsilon: Option<f64>,
    /// Localisation γ [default: 0 (global); 100 with --devinterp].
    #[arg(long, allow_negative_numbers = true)]
    gamma: Option<f64>,
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
    /// Seed of the chains.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the per-draw losses as JSON lines {checkpoint, chain, draw, loss, acceptance} to this file.
    #[arg(long)]
    trace_out: Option<PathBuf>,
    /// Print nothing on stderr but errors.
    #[arg(long, short)]
    quiet: bool,
}

fn main() -> ExitCode {
    // The binaries choose the BLAS provider; the library only calls CBLAS.
    common::device::cpu::register_blas_threads(blas_openblas::set_threads);
    common::cli::run_main("wbic", common::cli::ClosedStdout::Quiet, || {
        run(Args::parse())
    })
}

fn run(args: Args) -> Result<ExitCode> {
    // Until the CUDA backend is implemented (issue #17) its arm cannot be reached.
    let backend = match args.device.open("wbic")? {
        DeviceBackend::Cpu(be) => be,
        DeviceBackend::Cuda(be) => be.absurd(),
    };
    common::progress::enable(!args.quiet);
    if args.chains < 1 {
        bail!("--chains must be at least 1 (got {})", args.chains);
    }
    if args.draws < 1 {
        bail!("--draws must be at least 1 (got {})", args.draws);
    }
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1 (got 0)");
    }
    if args.train_samples == Some(0) {
        bail!("--train-samples must be at least 1 (got 0)");
    }
    if let Some(b) = args.beta {
        if !(b.is_finite() && b > 0.0) {
            bail!("--beta must be a positive number (got {b})");
        }
        if args.devinterp {
            bail!("--beta does not apply to --devinterp (it uses --nbeta)");
        }
    }
    let nbeta_rule = NBeta::parse(&args.nbeta)?;
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let base = SgldConfig {
        step_size: args
            .epsilon
            .unwrap_or(if args.devinterp { 1e-4 } else { 1e-6 }),
        nbeta: 1.0,
        localization: args
            .gamma
            .unwrap_or(if args.devinterp { 100.0 } else { 0.0 }),
        weight_decay: 0.0,
        bounding_box: None,
        draws: args.draws as usize,
        burn_in: args.burn_in,
        thin: args.thin,
        chains: args.chains as usize,
        threads,
        seed: args.seed,
    };
    base.validate()?;
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
    let key = if args.devinterp {
        "wbic_devinterp"
    } else {
        "wbic"
    };
    let quiet = args.quiet;
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let summary = process_stream(
        "wbic",
        key,
        &args.checkpoints,
        stdin.lock(),
        stdout.lock(),
        |_record, path| {
            let (ck, train) = data.load(path, model.as_ref())?;
            let pot = NetworkPotential::new_on(backend, &ck.network, train, args.batch_size)?;
            let n = pot.samples();
            let mut sgld = base.clone();
            let mode = if args.devinterp {
                sgld.nbeta = nbeta_rule.resolve(args.batch_size, n)?;
                let rule = nbeta_rule.describe(sgld.nbeta, args.batch_size, n);
                WbicMode::Devinterp {
                    nbeta_rule: rule["nbeta_rule"].as_str().unwrap_or("").to_string(),
                }
            } else {
                let (mode, nbeta) = watanabe_temperature(n, args.beta)?;
                sgld.nbeta = nbeta;
                mode
            };
            let est = estimate_wbic(&pot, &ck.params, &sgld, mode)?;
            if !quiet {
                log_line(&format!(
                    "wbic: {}",
                    est.summary_line(&path.display().to_string(), key)
                ));
                for w in &est.diagnostics.distance_warnings {
                    log_line(&format!("wbic: {}: warning: {w}", path.display()));
                }
            }
            if let Some(out) = &args.trace_out {
                let mut fields = Map::new();
                fields.insert("checkpoint".into(), Value::from(path.display().to_string()));
                trace_text.push_str(&trace_lines(&est.traces, &fields, est.sgld.thin));
                atomic_write(out, trace_text.as_bytes())?;
            }
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
            if let Value::Object(m) = est.to_json() {
                context.extend(m);
            }
            Ok(Value::Object(context))
        },
    )?;
    Ok(if summary.failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
