//! `datagen`: write synthetic data sets with a known answer as data files (`x`, `y`, `x_test`,
//! `y_test`), seeded, with their settings in the file's metadata.

use anyhow::{bail, Context, Result};
use clap::{Args as ClapArgs, Parser, Subcommand};
use common::data::icl::{
    icl_settings, icl_shape, model_position_mse, ridge_position_mse, LEAST_SQUARES_RIDGE,
};
use common::data::modular::{modular, ModularOp};
use common::data::synthetic::{
    icl_regression, low_rank, normal_crossing, random_regression, teacher, InputDistribution,
    SyntheticData,
};
use common::data::{load_data_file, Split};
use common::io::{atomic_write, Checkpoint};
use common::model::{initialise, Activation, Architecture, Loss, Network};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const ABOUT: &str =
    "Write synthetic data sets with a known answer (teacher networks, devinterp's test data).";

const LONG_ABOUT: &str = "\
Write a synthetic data set as a data file: safetensors with tensors x [n, features] and y [n, k]
(float32), x_test and y_test when --test-samples > 0, and the settings (kind, seed, sizes, the
teacher's model) in the metadata under `datagen`. The same settings write the same bytes.

  teacher            targets are a network's outputs on random inputs (plus Gaussian noise):
                     the model is then realisable, and at the teacher's weights λ̂ estimates the
                     learning coefficient of the model at a true parameter. --teacher-out writes
                     the teacher as a checkpoint, to give to llc / hessian-trace. --low-rank NAME:R
                     makes a weight of rank R (its best rank-R approximation), as the
                     deep-linear-network experiments do.
  normal-crossing    devinterp's normal-crossing data: x ~ N(0, s²), y = σ·ξ.
  random-regression  devinterp's reduced-rank-regression data: x ~ N(0, I_m), y ~ N(0, I_n).
  icl-regression     in-context linear regression: per sequence a task w ~ N(0, I_D) (from a pool
                     of --tasks M, or fresh), K pairs x ~ N(0, I_D), y = w·x + σξ, stored as 2K
                     interleaved tokens [0, x] and [y, 0…] of width D + 1 (x [n, 2K, D+1]); targets
                     y [n, K]; test tasks are fresh draws.
  icl-baseline       not a data set: the test MSE at each position k of an icl-regression file
                     by ridge regression on the k pairs before it (λ = σ², the Bayes-optimal
                     prediction for the test split's fresh tasks) and by least squares (the
                     ridgeless limit), and by each checkpoint given (its prediction of y_k); one
                     record on stdout, and with --table a Markdown table.
  modular            every pair (a, b) mod p as the tokens [a, b, =] with the label (a ∘ b) mod p,
                     split seeded into train and test (the grokking data set). x and x_test are
                     int64 token ids [n, 3] (a, b in 0..p, '=' the id p: p + 1 tokens), y and
                     y_test int64 labels; the tools read integer inputs as token ids, for a model
                     whose first layer is an embedding (any other model refuses them).
                     --targets next-token labels every position with the next token instead,
                     y [n, 3] = [b, =, (a ∘ b) mod p] in 0..p+1, for a model whose output is per
                     position [3, p + 1] (no `last`; cross-entropy averaged over positions).

Examples:

  A linear teacher 10 → 10 → 10 with biases (the identity activation), inputs U(-10, 10):
    $ datagen teacher --hidden 10 --activation identity --inputs 10 --outputs 10 \\
        --samples 10000 --input-dist uniform:10 --seed 1 \\
        --out dln.safetensors --teacher-out teacher.safetensors

  The same teacher with its first weight of rank 3:
    $ datagen teacher --hidden 10 --activation identity --inputs 10 --outputs 10 \\
        --low-rank 1.weight:3 --out dln-r3.safetensors

  devinterp's normal-crossing data set (1000 samples, x ~ N(0, 2²), σ = 0.25):
    $ datagen normal-crossing --samples 1000 --out nc.safetensors

  Modular addition mod 113, 30% of the pairs for training (Power et al.; Nanda et al.):
    $ datagen modular --p 113 --op add --train-fraction 0.3 --seed 1 --out add113.safetensors

  In-context regression per position, a trained model against ridge and least squares:
    $ datagen icl-baseline --data icl.safetensors --table icl.md run/epoch-0020.safetensors

An existing output file is not overwritten (the command fails naming it).";

#[derive(Parser, Debug)]
#[command(name = "datagen", version, about = ABOUT, long_about = LONG_ABOUT)]
struct Args {
    #[command(subcommand)]
    kind: Kind,
}

#[derive(Subcommand, Debug)]
enum Kind {
    /// Targets are a teacher network's outputs on random inputs (plus noise).
    Teacher(TeacherArgs),
    /// devinterp's normal-crossing data: x ~ N(0, s²), y = σ·ξ.
    NormalCrossing(NormalCrossingArgs),
    /// devinterp's reduced-rank-regression data: x ~ N(0, I_m), y ~ N(0, I_n).
    RandomRegression(RandomRegressionArgs),
    /// Modular arithmetic as token sequences [a, b, =] → (a ∘ b) mod p (grokking).
    Modular(ModularArgs),
    /// In-context linear regression: sequences of (x, y) pairs of a random linear task each.
    IclRegression(IclRegressionArgs),
    /// The test MSE per position of ridge, least squares and checkpoints on ICL data.
    IclBaseline(IclBaselineArgs),
}

#[derive(ClapArgs, Debug)]
struct IclBaselineArgs {
    /// The data file written by `datagen icl-regression`.
    #[arg(long)]
    data: PathBuf,
    /// The split measured: test (fresh tasks) or train.
    #[arg(long, default_value = "test")]
    split: String,
    /// The ridge penalty λ [default: σ², the noise variance the file records].
    #[arg(long)]
    ridge: Option<f64>,
    /// Also write the numbers as a Markdown table here (overwritten).
    #[arg(long)]
    table: Option<PathBuf>,
    /// Checkpoints (an ICL model: output [K, 1], the mean squared error) measured beside the
    /// baselines.
    checkpoints: Vec<PathBuf>,
}

#[derive(ClapArgs, Debug)]
struct IclRegressionArgs {
    /// The dimension D of the inputs x (tokens are D + 1 wide).
    #[arg(long, default_value_t = 4)]
    dim: usize,
    /// The pairs K per sequence (2K tokens).
    #[arg(long, default_value_t = 8)]
    context: usize,
    /// The size M of the pool of training tasks (0: a fresh task for every sequence).
    #[arg(long, default_value_t = 0)]
    tasks: usize,
    /// Standard deviation σ of the noise on y.
    #[arg(long, default_value_t = 0.25)]
    noise: f64,
    #[command(flatten)]
    common: Common,
}

#[derive(ClapArgs, Debug)]
struct ModularArgs {
    /// The modulus p (prime for --op div).
    #[arg(long, default_value_t = 113)]
    p: u64,
    /// The operation: add, sub, mul or div.
    #[arg(long, default_value = "add")]
    op: String,
    /// The fraction of all pairs in the training split (the rest is the test split).
    #[arg(long, default_value_t = 0.3)]
    train_fraction: f64,
    /// Seed of the split.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The targets: `last` (the label (a ∘ b) mod p, y [n], for a model read out at its last
    /// position) or `next-token` (labels at every position, y [n, 3] = [b, =, (a ∘ b) mod p] in
    /// 0..p+1, for a model whose output is per position [3, p + 1]: cross-entropy averaged over
    /// positions).
    #[arg(long, default_value = "last")]
    targets: String,
    /// The data file to write (safetensors).
    #[arg(long)]
    out: PathBuf,
}

#[derive(ClapArgs, Debug)]
struct Common {
    /// Training samples.
    #[arg(long, default_value_t = 10_000)]
    samples: usize,
    /// Test samples (x_test, y_test; 0: none).
    #[arg(long, default_value_t = 0)]
    test_samples: usize,
    /// Seed of the draws (and of the teacher's initialisation).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The data file to write (safetensors).
    #[arg(long)]
    out: PathBuf,
}

#[derive(ClapArgs, Debug)]
struct TeacherArgs {
    /// Teacher model: mlp (with --hidden, --activation), a name such as mlp_2x64 or
    /// mlp_10-10_identity, or a JSON spec file (docs/model-spec.md; its input and outputs are the
    /// spec's) [default: mlp]. Ignored with --init.
    #[arg(long, default_value = "mlp")]
    model: String,
    /// Hidden widths of an MLP teacher (comma-separated; none for a single linear layer).
    #[arg(long, value_delimiter = ',')]
    hidden: Vec<usize>,
    /// Activation of an MLP teacher: relu, tanh, gelu or identity.
    #[arg(long, default_value = "relu")]
    activation: String,
    /// Input features of an MLP teacher [default: 10; a spec's own].
    #[arg(long)]
    inputs: Option<usize>,
    /// Outputs (the targets' width) of an MLP teacher [default: 1; a spec's own].
    #[arg(long)]
    outputs: Option<usize>,
    /// Teacher weights from this checkpoint (its model and sizes) instead of a fresh initialisation.
    #[arg(long, value_name = "CKPT")]
    init: Option<PathBuf>,
    /// Give a 2-D weight rank R: NAME:R (repeatable), e.g. 1.weight:3.
    #[arg(long, value_name = "NAME:R")]
    low_rank: Vec<String>,
    /// Inputs: uniform:A (U(-A, A) per coordinate) or gaussian:S (N(0, S²)).
    #[arg(long, default_value = "uniform:10")]
    input_dist: String,
    /// Standard deviation σ of the Gaussian noise added to the targets.
    #[arg(long, default_value_t = 0.0)]
    noise: f64,
    /// Also write the teacher (the true parameter) as a checkpoint here.
    #[arg(long, value_name = "CKPT")]
    teacher_out: Option<PathBuf>,
    #[command(flatten)]
    common: Common,
}

#[derive(ClapArgs, Debug)]
struct NormalCrossingArgs {
    /// Standard deviation s of the inputs.
    #[arg(long, default_value_t = 2.0)]
    x_sd: f64,
    /// Standard deviation σ of the targets.
    #[arg(long, default_value_t = 0.25)]
    noise: f64,
    #[command(flatten)]
    common: Common,
}

#[derive(ClapArgs, Debug)]
struct RandomRegressionArgs {
    /// Input features m.
    #[arg(long)]
    inputs: usize,
    /// Outputs n.
    #[arg(long)]
    outputs: usize,
    #[command(flatten)]
    common: Common,
}

fn main() -> ExitCode {
    common::device::cpu::register_blas_threads(blas_openblas::set_threads);
    common::cli::run_main("datagen", common::cli::ClosedStdout::Quiet, || {
        run(Args::parse())
    })
}

/// Fails when `path` exists: a data set that was written is never overwritten.
fn refuse_existing(path: &Path, what: &str) -> Result<()> {
    if path.exists() {
        bail!(
            "{what} {}: the file exists (datagen never overwrites; remove it or choose another path)",
            path.display()
        );
    }
    Ok(())
}

fn run(args: Args) -> Result<ExitCode> {
    let (data, out) = match args.kind {
        Kind::IclBaseline(a) => {
            icl_baseline(&a)?;
            return Ok(ExitCode::SUCCESS);
        }
        Kind::Modular(a) => {
            refuse_existing(&a.out, "--out")?;
            let op = ModularOp::parse(&a.op)?;
            let data = modular(a.p, op, a.train_fraction, a.seed)?;
            let data = match a.targets.as_str() {
                "last" => data,
                "next-token" => data.next_token_targets(),
                t => bail!("--targets {t:?}: expected last or next-token"),
            };
            write_bytes(&data.to_bytes()?, &data.settings, &a.out)?;
            return Ok(ExitCode::SUCCESS);
        }
        Kind::Teacher(t) => {
            refuse_existing(&t.common.out, "--out")?;
            if let Some(p) = &t.teacher_out {
                refuse_existing(p, "--teacher-out")?;
            }
            let (net, params, low_ranks) = teacher_model(&t)?;
            let dist = InputDistribution::parse(&t.input_dist).context("--input-dist")?;
            let model = serde_json::json!({
                "arch": net.arch.to_json(),
                "weights": match &t.init {
                    Some(p) => serde_json::json!({"checkpoint": p.display().to_string()}),
                    None => serde_json::json!({"init": "torch_default", "seed": t.common.seed}),
                },
                "low_rank": low_ranks,
            });
            let data = teacher(
                &net,
                &params,
                model,
                dist,
                t.noise,
                t.common.samples,
                t.common.test_samples,
                t.common.seed,
            )?;
            if let Some(p) = &t.teacher_out {
                let mut meta = Map::new();
                meta.insert("datagen".into(), data.settings.clone());
                meta.insert(
                    "data_file".into(),
                    Value::from(t.common.out.display().to_string()),
                );
                let ck = Checkpoint {
                    network: net.clone(),
                    params: params.clone(),
                    meta,
                    source_names: net.layout.names(),
                };
                ck.save(p)
                    .with_context(|| format!("--teacher-out {}", p.display()))?;
            }
            (data, t.common.out)
        }
        Kind::NormalCrossing(a) => (
            normal_crossing(
                a.x_sd,
                a.noise,
                a.common.samples,
                a.common.test_samples,
                a.common.seed,
            )?,
            a.common.out,
        ),
        Kind::IclRegression(a) => (
            icl_regression(
                a.dim,
                a.context,
                a.tasks,
                a.noise,
                a.common.samples,
                a.common.test_samples,
                a.common.seed,
            )?,
            a.common.out,
        ),
        Kind::RandomRegression(a) => (
            random_regression(
                a.inputs,
                a.outputs,
                a.common.samples,
                a.common.test_samples,
                a.common.seed,
            )?,
            a.common.out,
        ),
    };
    write(&data, &out)?;
    Ok(ExitCode::SUCCESS)
}

fn write(data: &SyntheticData, out: &Path) -> Result<()> {
    write_bytes(&data.to_bytes(), &data.settings, out)
}

fn write_bytes(bytes: &[u8], settings: &Value, out: &Path) -> Result<()> {
    atomic_write(out, bytes).with_context(|| format!("--out {}", out.display()))?;
    // One record on stdout: what was written.
    let mut rec = Map::new();
    rec.insert("data_file".into(), Value::from(out.display().to_string()));
    rec.insert("datagen".into(), settings.clone());
    println!("{}", Value::Object(rec));
    Ok(())
}

/// The teacher's network and f32 weights: a checkpoint's, or a fresh PyTorch-default initialisation
/// of the model for --inputs and --outputs; then the --low-rank projections (in f64, rounded to f32
/// once: the targets are computed from the rounded weights, so the checkpoint is the exact teacher).
/// Also returns the projections made, as `{tensor, rank}` objects for the metadata.
fn teacher_model(t: &TeacherArgs) -> Result<(Network, Vec<f32>, Vec<Value>)> {
    let (net, params) = match &t.init {
        Some(path) => {
            let ck = Checkpoint::load(path, None)
                .with_context(|| format!("--init {}", path.display()))?;
            (ck.network, ck.params)
        }
        None => {
            let activation = Activation::parse(&t.activation).context("--activation")?;
            let parsed = Architecture::parse(&t.model, &t.hidden, activation, 2)
                .with_context(|| format!("--model {}", t.model))?;
            let arch = match parsed {
                Architecture::LeNet { .. } => bail!(
                    "--model {}: a teacher is an MLP or a spec here (a LeNet takes images)",
                    t.model
                ),
                spec @ Architecture::Spec(_) => {
                    for (flag, given, own) in [
                        ("--inputs", t.inputs, spec.input_features()),
                        ("--outputs", t.outputs, spec.classes()),
                    ] {
                        if let Some(g) = given.filter(|&g| g != own) {
                            bail!("{flag} {g}: the spec {} has {own}", t.model);
                        }
                    }
                    spec
                }
                mlp => {
                    let (inputs, outputs) = (t.inputs.unwrap_or(10), t.outputs.unwrap_or(1));
                    if inputs == 0 || outputs == 0 {
                        bail!("--inputs and --outputs must be at least 1");
                    }
                    mlp.for_data([1, 1, inputs], outputs)
                }
            };
            // Any number of outputs: a regression teacher may have one.
            arch.size_for(common::model::Loss::MeanSquaredError)
                .with_context(|| format!("--model {}", t.model))?;
            let net = Network::new(arch);
            let params = initialise::<f32>(&net, t.common.seed);
            (net, params)
        }
    };
    let mut p64: Vec<f64> = params.iter().map(|&p| p as f64).collect();
    let mut done = Vec::new();
    for spec in &t.low_rank {
        let (name, rank) = spec
            .rsplit_once(':')
            .and_then(|(n, r)| r.parse::<usize>().ok().map(|r| (n, r)))
            .with_context(|| format!("--low-rank {spec}: expected NAME:R"))?;
        let tensor = net.layout.get(name).with_context(|| {
            format!(
                "--low-rank {spec}: the teacher has no tensor {name} (its tensors: {})",
                net.layout.names().join(", ")
            )
        })?;
        let [rows, cols] = tensor.shape[..] else {
            bail!(
                "--low-rank {spec}: {name} has shape {:?}; a rank needs a matrix",
                tensor.shape
            );
        };
        if rank > rows.min(cols) {
            bail!(
                "--low-rank {spec}: {name} is {rows}×{cols}, so its rank is at most {}",
                rows.min(cols)
            );
        }
        low_rank(&mut p64[tensor.range()], rows, cols, rank)?;
        done.push(serde_json::json!({"tensor": name, "rank": rank}));
    }
    Ok((net, p64.iter().map(|&p| p as f32).collect(), done))
}

/// `icl-baseline`: ridge, least squares and the checkpoints per position, one record on stdout.
fn icl_baseline(a: &IclBaselineArgs) -> Result<()> {
    let split = match a.split.as_str() {
        "test" => Split::Test,
        "train" => Split::Train,
        s => bail!("--split {s:?}: expected test or train"),
    };
    let data = load_data_file(&a.data, split, None)
        .with_context(|| format!("--data {}", a.data.display()))?;
    let (dim, context) =
        icl_shape(&data).with_context(|| format!("--data {}", a.data.display()))?;
    let settings = icl_settings(&a.data)?.unwrap_or(Value::Null);
    let ridge = match (a.ridge, settings["noise_sd"].as_f64()) {
        (Some(r), _) => r,
        (None, Some(s)) if s > 0.0 => s * s,
        (None, _) => bail!(
            "--data {}: the file records no noise σ > 0, so the Bayes ridge λ = σ² is unknown; give --ridge",
            a.data.display()
        ),
    };
    let ridge_mse = ridge_position_mse(&data, ridge).context("ridge regression")?;
    let least_squares = ridge_position_mse(&data, LEAST_SQUARES_RIDGE).context("least squares")?;
    let mut models = Vec::new();
    for path in &a.checkpoints {
        // Float targets: the mean squared error, the only loss that takes them.
        let mut ck = Checkpoint::load_for_loss(path, None, Some(Loss::MeanSquaredError))
            .with_context(|| format!("checkpoint {}", path.display()))?;
        ck.network.loss = Loss::MeanSquaredError;
        let p64: Vec<f64> = ck.params.iter().map(|&p| p as f64).collect();
        let mse = model_position_mse(&ck.network, &p64, &data, 256)
            .with_context(|| format!("checkpoint {}", path.display()))?;
        let mut m = Map::new();
        m.insert("checkpoint".into(), Value::from(path.display().to_string()));
        for key in ["epoch", "step"] {
            if let Some(v) = ck.meta.get(key) {
                m.insert(key.into(), v.clone());
            }
        }
        m.insert("mse".into(), Value::from(mse.clone()));
        m.insert(
            "mean".into(),
            Value::from(mse.iter().sum::<f64>() / context as f64),
        );
        models.push(Value::Object(m));
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / context as f64;
    let rec = serde_json::json!({"icl_baseline": {
        "data_file": a.data.display().to_string(),
        "split": a.split,
        "samples": data.len(),
        "dim": dim,
        "context": context,
        "noise_sd": settings["noise_sd"],
        "ridge": ridge,
        "least_squares_ridge": LEAST_SQUARES_RIDGE,
        "ridge_mse": ridge_mse,
        "ridge_mean": mean(&ridge_mse),
        "least_squares_mse": least_squares,
        "least_squares_mean": mean(&least_squares),
        "models": models,
    }});
    if let Some(path) = &a.table {
        let mut t = format!(
            "Test MSE at each position k (the prediction of y_k from x_k and the k pairs before it), \
             {} {} sequences of {}: D = {dim}, K = {context}, λ = {ridge:.4}.\n\n| k |",
            data.len(),
            a.split,
            a.data.display()
        );
        let names: Vec<String> = std::iter::once("ridge (λ = σ²)".to_string())
            .chain(std::iter::once("least squares".to_string()))
            .chain(a.checkpoints.iter().map(|p| format!("`{}`", p.display())))
            .collect();
        for n in &names {
            t.push_str(&format!(" {n} |"));
        }
        t.push_str(&format!("\n|---|{}\n", "---:|".repeat(names.len())));
        let columns: Vec<Vec<f64>> = std::iter::once(ridge_mse.clone())
            .chain(std::iter::once(least_squares.clone()))
            .chain(models.iter().map(|m| {
                m["mse"]
                    .as_array()
                    .expect("written above")
                    .iter()
                    .filter_map(Value::as_f64)
                    .collect()
            }))
            .collect();
        for k in 0..context {
            t.push_str(&format!("| {k} |"));
            for c in &columns {
                t.push_str(&format!(" {:.4} |", c[k]));
            }
            t.push('\n');
        }
        t.push_str("| mean |");
        for c in &columns {
            t.push_str(&format!(" {:.4} |", mean(c)));
        }
        t.push('\n');
        atomic_write(path, t.as_bytes()).with_context(|| format!("--table {}", path.display()))?;
    }
    println!("{rec}");
    Ok(())
}
