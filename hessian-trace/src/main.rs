//! `hessian-trace`: the trace (exact or estimated), top eigenvalues and spectral density of the loss
//! Hessian of checkpoints, appended to their records.

use anyhow::{bail, Context, Result};
use clap::Parser;
use common::curvature::{
    exact_trace_unavailable, hutchinson, hutchpp, pyhessian_trace, slq_density, top_eigenvalues,
    Curvature, HessianOperator, HutchinsonConfig, ProbeKind, TraceEstimate,
};
use common::data::{Dataset, Split};
use common::device::{Backend, DeviceBackend};
use common::io::{
    atomic_write, fill_name, finite_or_null, log_line, process_stream, Checkpoint, Record,
};
use common::model::ModelSpec;
use common::sample::DataCache;
use common::{Error, Real};
use serde_json::{json, Map, Value};
use std::collections::HashSet;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

const ABOUT: &str = "The Hessian trace (exact or estimated with error bars), top eigenvalues and spectral density of checkpoints.";

const LONG_ABOUT: &str = "\
Measure the curvature of the mean cross-entropy loss at a checkpoint: the trace of its Hessian, with
no estimator variance where that is possible, or a stochastic estimate with an honest standard error;
optionally the largest eigenvalues, the eigenvalue density and the trace of each parameter tensor.
Hessian-vector products are exact (Pearlmutter's R-operator through the forward and backward pass,
every cross-layer term included), not finite differences.

By default the Hessian is taken over the paper's data: the first 10 training batches of 128 in file
order (1,280 samples), model in evaluation mode, data set from the checkpoint's metadata.

The trace: for networks whose activations are piecewise linear (ReLU, identity, max-pool), tr(H)
equals the trace of the Gauss-Newton matrix and is computed exactly from per-sample gradient norms
(--exact, the default there). Otherwise, or with --probes/--rtol, Hutchinson's estimator with seeded
Rademacher (or Gaussian) probes: a fixed number, or adaptive until the standard error is below
--rtol x |trace|. --hutchpp uses Hutch++ (lower variance for the same products when the spectrum
decays); --pyhessian reproduces PyHessian's estimator as the paper ran it (maxIter 50, tol 1e-5,
5 repeats, all probes averaged) for like-for-like comparisons.

Input: checkpoints named as arguments, or JSON-lines records on stdin (as `train` writes them):
records with a `checkpoint` field get a `hessian` object appended, others pass through unchanged, one
line out per line in. Every setting that shapes a number is recorded in the output. A record that
fails is reported on stderr with its checkpoint, written out with {\"hessian\": {\"error\": ...}},
and the exit status is 1 at the end.

Examples:

  The exact trace of a checkpoint (ReLU MLP) on the paper's 1,280 samples:
    $ hessian-trace runs/sgd-1x128/epoch-0020.safetensors

  Append curvature to every record of a training run as it streams:
    $ train --epochs 20 --out runs/sgd | hessian-trace --top-k 3 > sgd.jsonl

  Hutchinson until the standard error is 1% of the trace, Gaussian probes, seed 7:
    $ hessian-trace --rtol 0.01 --probe gaussian --seed 7 ckpt.safetensors

  PyHessian's numbers, for comparison with the paper:
    $ hessian-trace --pyhessian ckpt.safetensors

  Per-tensor traces, top 5 eigenvalues and the spectral density of a PyTorch checkpoint:
    $ hessian-trace --model lenet --per-tensor --top-k 5 --density lenet-density.json lenet.safetensors

  The whole test set, in float64:
    $ hessian-trace --split test --full --f64 ckpt.safetensors

Data comes from --data-dir (default: the record's data_dir, else data/). Exit status: 0 when every
record succeeded, 1 otherwise (one line on stderr per failure, naming the checkpoint).";

#[derive(Parser, Debug, Clone)]
#[command(name = "hessian-trace", version, about = ABOUT, long_about = LONG_ABOUT)]
struct Args {
    #[command(flatten)]
    device: common::cli::DeviceArgs,
    /// Checkpoints (safetensors). Without any, JSON-lines records are read from stdin.
    checkpoints: Vec<PathBuf>,
    /// Model of the checkpoints: mlp (an MLP with the checkpoint's widths; mlp_tanh for tanh), lenet
    /// (with the checkpoint's extra layers), or an exact name such as mlp_1x128, mlp_2x256_tanh,
    /// lenet_k3, or a JSON spec file (docs/model-spec.md) [default: the metadata's, else inferred
    /// from the tensor shapes].
    #[arg(long)]
    model: Option<String>,
    /// Data set: mnist or fashion-mnist [default: the checkpoint's].
    #[arg(long)]
    dataset: Option<String>,
    /// Folder holding the data [default: the record's data_dir, else data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    data_args: common::cli::DataArgs,
    /// Which split the Hessian is taken over.
    #[arg(long, default_value = "train", value_parser = ["train", "test"])]
    split: String,
    /// The first N samples of the split, in file order [default: 1280 = the paper's 10 batches of 128].
    #[arg(long, conflicts_with = "full")]
    samples: Option<usize>,
    /// All samples of the split.
    #[arg(long)]
    full: bool,
    /// Samples per pass (memory only: the result does not depend on it beyond rounding).
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// The exact trace (piecewise-linear networks only; the default there).
    #[arg(long, conflicts_with_all = ["probes", "rtol", "hutchpp", "pyhessian"])]
    exact: bool,
    /// Hutchinson with this many probes (with --rtol: the minimum; with --hutchpp: the products).
    #[arg(long)]
    probes: Option<usize>,
    /// Adaptive Hutchinson: add probes until the standard error is at most RTOL x |trace|.
    #[arg(long)]
    rtol: Option<f64>,
    /// The most probes an adaptive run may use.
    #[arg(long, default_value_t = 100_000)]
    max_probes: usize,
    /// Probe distribution: rademacher or gaussian.
    #[arg(long, default_value = "rademacher")]
    probe: String,
    /// Seed of the probes (and Lanczos start vectors).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Hutch++ instead of Hutchinson (--probes products, default 99).
    #[arg(long, conflicts_with = "pyhessian")]
    hutchpp: bool,
    /// PyHessian's estimator as the paper ran it: Rademacher, maxIter 50, tol 1e-5, 5 repeats.
    #[arg(long)]
    pyhessian: bool,
    /// Also the K largest eigenvalues (Lanczos, full reorthogonalisation) with residuals.
    #[arg(long)]
    top_k: Option<usize>,
    /// Relative residual bound at which Lanczos stops for --top-k.
    #[arg(long, default_value_t = 1e-5)]
    eig_tol: f64,
    /// Most Lanczos steps for --top-k.
    #[arg(long, default_value_t = 300)]
    max_lanczos_steps: usize,
    /// Write the eigenvalue density (stochastic Lanczos quadrature) as JSON to FILE; `{name}` in FILE
    /// is replaced by the checkpoint's file stem (a record whose stem is not a plain file name, such
    /// as `..`, fails).
    #[arg(long)]
    density: Option<PathBuf>,
    /// Lanczos steps per density run.
    #[arg(long, default_value_t = 100)]
    density_steps: usize,
    /// Density runs (independent start vectors).
    #[arg(long, default_value_t = 1)]
    density_runs: usize,
    /// Gaussian smoothing of the density as a fraction of the eigenvalue range.
    #[arg(long, default_value_t = 0.01)]
    density_sigma: f64,
    /// Also the trace of each parameter tensor's diagonal block.
    #[arg(long)]
    per_tensor: bool,
    /// Estimate the Gauss-Newton matrix's trace/eigenvalues instead of the Hessian's.
    #[arg(long)]
    gauss_newton: bool,
    /// Compute in float64 (default float32, as PyTorch).
    #[arg(long)]
    f64: bool,
    /// BLAS threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Print nothing on stderr but errors.
    #[arg(long, short)]
    quiet: bool,
}

fn main() -> ExitCode {
    // The binaries choose the BLAS provider; the library only calls CBLAS.
    common::device::cpu::register_blas_threads(blas_openblas::set_threads);
    common::cli::run_main("hessian-trace", common::cli::ClosedStdout::Quiet, || {
        run(Args::parse())
    })
}

/// `x` must be a positive finite number.
fn positive(x: f64, flag: &str) -> Result<()> {
    if !(x.is_finite() && x > 0.0) {
        bail!("{flag} must be a positive number (got {x})");
    }
    Ok(())
}

/// Refuses meaningless settings before any work, each with one line naming the flag.
fn validate(args: &Args) -> Result<()> {
    for (v, flag) in [
        (args.batch_size, "--batch-size"),
        (args.threads, "--threads"),
        (args.max_probes, "--max-probes"),
        (args.max_lanczos_steps, "--max-lanczos-steps"),
        (args.density_steps, "--density-steps"),
        (args.density_runs, "--density-runs"),
    ] {
        if v == 0 {
            bail!("{flag} must be at least 1 (got 0)");
        }
    }
    for (v, flag) in [(args.probes, "--probes"), (args.top_k, "--top-k")] {
        if v == Some(0) {
            bail!("{flag} must be at least 1 (got 0)");
        }
    }
    if args.samples == Some(0) {
        bail!("--samples must be at least 1 (got 0: the sample set would be empty)");
    }
    if let Some(r) = args.rtol {
        positive(r, "--rtol")?;
    }
    positive(args.eig_tol, "--eig-tol")?;
    positive(args.density_sigma, "--density-sigma")?;
    if let Some(k) = args.top_k {
        if k > args.max_lanczos_steps {
            bail!(
                "--top-k {k} needs at least {k} Lanczos steps (--max-lanczos-steps is {})",
                args.max_lanczos_steps
            );
        }
    }
    if args.hutchpp && args.probes.is_some_and(|p| p < 3) {
        bail!("--hutchpp needs --probes ≥ 3 (a third each for the sketch, its products and the residual)");
    }
    if args.per_tensor && (args.hutchpp || args.pyhessian) {
        bail!("--per-tensor works with the exact trace and Hutchinson, not with --hutchpp or --pyhessian");
    }
    let kind = ProbeKind::parse(&args.probe)?;
    if !(args.exact || args.hutchpp || args.pyhessian) {
        hutchinson_config(args, kind).validate()?;
    }
    Ok(())
}

/// Hutchinson's settings: fixed --probes, or adaptive (--rtol, or the default for networks without
/// an exact trace: 1% relative standard error).
fn hutchinson_config(args: &Args, kind: ProbeKind) -> HutchinsonConfig {
    let rtol = match (args.probes, args.rtol) {
        (_, Some(r)) => Some(r),
        (Some(_), None) => None,
        (None, None) => Some(0.01),
    };
    HutchinsonConfig {
        kind,
        seed: args.seed,
        probes: args.probes.unwrap_or(if rtol.is_some() { 10 } else { 100 }),
        rtol,
        max_probes: args.max_probes,
        block: 8,
    }
}

fn run(args: Args) -> Result<ExitCode> {
    // Until the CUDA backend is implemented (issue #17) its arm cannot be reached.
    let backend = match args.device.open("hessian-trace")? {
        DeviceBackend::Cpu(be) => be,
        DeviceBackend::Cuda(be) => be.absurd(),
    };
    common::progress::enable(!args.quiet);
    validate(&args)?;
    common::device::cpu::set_blas_threads(args.threads);
    let model = args
        .model
        .as_deref()
        .map(|m| ModelSpec::parse(m).with_context(|| format!("--model {m}")))
        .transpose()?;
    // The data folder is chosen per record (--data-dir, else the record's); the split is --split.
    let split = if args.split == "test" {
        Split::Test
    } else {
        Split::Train
    };
    let mut data_cache = DataCache::new(PathBuf::from("data"), args.dataset.clone(), None)
        .with_split(split)
        .with_data(args.data_args.choice()?, args.data_args.loss.clone());
    let mut density_written: HashSet<PathBuf> = HashSet::new();
    let stdin = std::io::stdin();
    if args.checkpoints.is_empty() && stdin.is_terminal() && !args.quiet {
        log_line("hessian-trace: reading records from stdin (pass checkpoints as arguments, or see --help)");
    }
    let summary = process_stream(
        "hessian-trace",
        "hessian",
        &args.checkpoints,
        stdin.lock(),
        std::io::stdout().lock(),
        |record, path| {
            analyse_record(
                &args,
                backend,
                model.as_ref(),
                record,
                path,
                &mut data_cache,
                &mut density_written,
            )
        },
    )?;
    if !args.quiet {
        log_line(&format!(
            "hessian-trace: {} processed, {} passed through, {} failed",
            summary.processed, summary.passed_through, summary.failed
        ));
    }
    Ok(if summary.failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn analyse_record<B: Backend>(
    args: &Args,
    backend: B,
    model: Option<&ModelSpec>,
    record: &Record,
    path: &Path,
    data_cache: &mut DataCache,
    density_written: &mut HashSet<PathBuf>,
) -> common::Result<Value> {
    let start = Instant::now();
    // The density's file, checked before any work: `{name}` must stay one file name.
    let density_file = match &args.density {
        Some(pattern) => {
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let file = fill_name("--density", pattern, &stem)?;
            if density_written.contains(&file) {
                return Err(Error::invalid(format!(
                    "--density {} was already written for an earlier record; put {{name}} in the file name to write one per checkpoint",
                    file.display()
                )));
            }
            Some(file)
        }
        None => None,
    };
    let data_dir = args
        .data_dir
        .clone()
        .or_else(|| {
            record
                .get("data_dir")
                .and_then(Value::as_str)
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from("data"));
    let (ck, data) = data_cache.load_in(path, model, &data_dir)?;
    let samples = if args.full {
        data.len()
    } else {
        args.samples.unwrap_or(1280).min(data.len())
    };
    if samples == 0 {
        return Err(Error::invalid(format!(
            "the sample set is empty (--samples {} of {} {} samples)",
            args.samples.unwrap_or(0),
            data.len(),
            args.split
        )));
    }
    let density = density_file.as_deref();
    let mut out = if args.f64 {
        analyse::<f64, B>(
            args,
            backend,
            &ck,
            data,
            samples,
            path,
            density,
            density_written,
        )?
    } else {
        analyse::<f32, B>(
            args,
            backend,
            &ck,
            data,
            samples,
            path,
            density,
            density_written,
        )?
    };
    out.insert("model".into(), Value::from(ck.network.arch.name()));
    if let Some(spec) = ck.network.arch.spec_source() {
        out.insert("model_spec".into(), spec.clone());
    }
    out.insert("parameters".into(), Value::from(ck.network.num_params()));
    let mut data_json: Map<String, Value> =
        data.record_fields(ck.network.loss).into_iter().collect();
    if data.kind().is_some() {
        data_json.insert(
            "data_dir".into(),
            Value::from(data_dir.display().to_string()),
        );
    }
    if let Value::Object(rest) = json!({
            "split": args.split,
            "samples": samples,
            "order": "file",
            "batch_size": args.batch_size,
    }) {
        data_json.extend(rest);
    }
    out.insert("data".into(), Value::Object(data_json));
    out.insert(
        "precision".into(),
        Value::from(if args.f64 { "f64" } else { "f32" }),
    );
    out.insert("threads".into(), Value::from(args.threads));
    out.insert("seconds".into(), Value::from(start.elapsed().as_secs_f64()));
    if !args.quiet {
        log_line(&format!(
            "hessian-trace: {}: trace {} ({}, {:.2} s)",
            path.display(),
            out.get("trace").map(|v| v.to_string()).unwrap_or_default(),
            out.get("method").and_then(Value::as_str).unwrap_or(""),
            start.elapsed().as_secs_f64()
        ));
    }
    Ok(Value::Object(out))
}

fn estimate_json(est: &TraceEstimate) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("trace".into(), Value::from(est.trace));
    m.insert("trace_se".into(), finite_or_null(est.se));
    m.insert("probes".into(), Value::from(est.probes));
    m.insert("matvecs".into(), Value::from(est.matvecs));
    m
}

/// Everything here runs on `backend`: the operator, the estimators and the exact trace are generic
/// over it.
#[allow(clippy::too_many_arguments)]
fn analyse<T: Real, B: Backend>(
    args: &Args,
    backend: B,
    ck: &Checkpoint,
    data: &Dataset,
    samples: usize,
    path: &Path,
    density_file: Option<&Path>,
    density_written: &mut HashSet<PathBuf>,
) -> common::Result<Map<String, Value>> {
    let params: Vec<T> = ck.params.iter().map(|&p| T::of_f64(p as f64)).collect();
    let mut op = HessianOperator::<T, B>::from_dataset_on(
        backend,
        &ck.network,
        &params,
        data,
        samples,
        args.batch_size,
        common::curvature::DEFAULT_CACHE_BYTES,
    )?;
    let curvature = if args.gauss_newton {
        Curvature::GaussNewton
    } else {
        Curvature::Hessian
    };
    op.set_curvature(curvature);
    let kind = ProbeKind::parse(&args.probe)?;
    let tensors: Vec<(String, std::ops::Range<usize>)> = ck
        .network
        .layout
        .tensors
        .iter()
        .map(|t| (t.name.clone(), t.range()))
        .collect();
    let mut out = Map::new();
    out.insert(
        "matrix".into(),
        Value::from(match curvature {
            Curvature::Hessian => "hessian",
            Curvature::GaussNewton => "gauss-newton",
        }),
    );
    let stochastic = args.probes.is_some() || args.rtol.is_some() || args.hutchpp || args.pyhessian;
    let unavailable = exact_trace_unavailable(&ck.network);
    let exact = args.exact || (!stochastic && unavailable.is_none());
    if exact {
        if let Some(why) = unavailable {
            return Err(Error::invalid(format!("--exact: {why}")));
        }
        let ex = op.exact_trace()?;
        out.insert("method".into(), Value::from("exact"));
        out.insert("trace".into(), Value::from(ex.trace));
        out.insert("trace_se".into(), Value::from(0.0));
        out.insert(
            "note".into(),
            Value::from("tr(H) = tr(Gauss-Newton) for piecewise-linear networks, from per-sample gradient norms; no estimator variance"),
        );
        if args.per_tensor {
            let pt: Map<String, Value> = ex
                .per_tensor
                .iter()
                .map(|(n, v)| (n.clone(), Value::from(*v)))
                .collect();
            out.insert("per_tensor".into(), Value::Object(pt));
        }
    } else if args.pyhessian {
        let est = pyhessian_trace(&mut op, args.seed, 50, 1e-5, 5)?;
        out.insert("method".into(), Value::from("pyhessian"));
        out.extend(estimate_json(&est));
        out.insert("probe".into(), Value::from("rademacher"));
        out.insert("seed".into(), Value::from(args.seed));
        out.insert(
            "pyhessian".into(),
            json!({"max_iter": 50, "tol": 1e-5, "repeats": 5, "probes_per_repeat": est.repeats, "averaged": "all probes of all repeats"}),
        );
    } else if args.hutchpp {
        let matvecs = args.probes.unwrap_or(99);
        let est = hutchpp(&mut op, matvecs, kind, args.seed)?;
        out.insert("method".into(), Value::from("hutch++"));
        out.extend(estimate_json(&est));
        out.insert("probe".into(), Value::from(kind.name()));
        out.insert("seed".into(), Value::from(args.seed));
    } else {
        let cfg = hutchinson_config(args, kind);
        let rtol = cfg.rtol;
        let est = hutchinson(&mut op, &cfg, if args.per_tensor { &tensors } else { &[] })?;
        out.insert("method".into(), Value::from("hutchinson"));
        out.extend(estimate_json(&est));
        out.insert("probe".into(), Value::from(kind.name()));
        out.insert("seed".into(), Value::from(args.seed));
        if let Some(r) = rtol {
            out.insert("rtol".into(), Value::from(r));
            out.insert("min_probes".into(), Value::from(cfg.probes));
            out.insert("max_probes".into(), Value::from(cfg.max_probes));
            out.insert("converged".into(), Value::from(est.converged));
        }
        if args.per_tensor {
            let pt: Map<String, Value> = est
                .per_tensor
                .iter()
                .map(|(n, m, s)| {
                    (
                        n.clone(),
                        json!({"trace": m, "trace_se": finite_or_null(*s)}),
                    )
                })
                .collect();
            out.insert("per_tensor".into(), Value::Object(pt));
        }
    }
    out.insert("loss".into(), Value::from(op.loss()));
    if let Some(k) = args.top_k {
        let top = top_eigenvalues(&mut op, k, args.max_lanczos_steps, args.eig_tol, args.seed)?;
        out.insert(
            "top_eigenvalues".into(),
            Value::Array(
                top.pairs
                    .iter()
                    .map(|p| json!({"value": p.value, "residual": p.residual}))
                    .collect(),
            ),
        );
        out.insert(
            "lanczos".into(),
            json!({"steps": top.steps, "matvecs": top.matvecs, "tol": args.eig_tol, "converged": top.converged, "seed": args.seed}),
        );
    }
    if let Some(file) = density_file {
        let d = slq_density(
            &mut op,
            args.density_runs,
            args.density_steps,
            args.seed,
            args.density_sigma,
            1000,
        )?;
        let doc = json!({
            "checkpoint": path.display().to_string(),
            "method": "stochastic Lanczos quadrature",
            "matrix": out["matrix"],
            "runs": d.runs.iter().map(|r| json!({"nodes": r.nodes, "weights": r.weights})).collect::<Vec<_>>(),
            "steps": d.steps,
            "seed": args.seed,
            "probe": "rademacher",
            "sigma": d.sigma,
            "grid": d.grid,
            "density": d.density,
        });
        let mut bytes = serde_json::to_vec(&doc).map_err(|e| Error::invalid(e.to_string()))?;
        bytes.push(b'\n');
        atomic_write(file, &bytes)?;
        density_written.insert(file.to_path_buf());
        out.insert(
            "density".into(),
            json!({"file": file.display().to_string(), "runs": args.density_runs, "steps": args.density_steps, "sigma": d.sigma, "seed": args.seed}),
        );
    }
    out.insert("hvp_products".into(), Value::from(op.matvecs()));
    Ok(out)
}
