//! `datagen`: write synthetic data files with a known answer.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use common::data::{teacher_data, InputDistribution, TeacherConfig};
use common::model::{Activation, Architecture};
use std::path::PathBuf;
use std::process::ExitCode;

const ABOUT: &str = "Write synthetic data files (safetensors) whose answer is known.";

const LONG_ABOUT: &str = "\
Write a data file that train, llc, wbic, hessian-trace and switch read with --data: tensors x [n, f]
and y [n, k] (float32), optionally x_test and y_test, with the seed and every setting in the file's
metadata, so that the same command writes the same bytes.

datagen teacher: inputs drawn uniform U(-a, a) or Gaussian N(0, a²) per coordinate, targets the
outputs of a seeded MLP teacher (PyTorch's default initialisation for --seed, one of the MLP presets:
--hidden and --activation, or a name such as mlp_2x5_identity) plus optional Gaussian noise σ:
y = f(x; w) + σ·ε. With --teacher-out the teacher's weights are written as a checkpoint too (loss
mse), so that llc can measure the learning coefficient at the true parameter.

Examples:

  A deep linear network teacher 10-5-5-5-3, 10,000 samples x ~ U(-10, 10), no noise:
    $ datagen teacher --hidden 5,5,5 --activation identity --inputs 10 --outputs 3 \\
        --samples 10000 --input-scale 10 --seed 1 --out dln.safetensors --teacher-out dln-teacher.safetensors

  A ReLU teacher with noise and a test split, then train a student on it:
    $ datagen teacher --hidden 16 --inputs 4 --outputs 2 --noise 0.1 --test-samples 1000 --out relu.safetensors
    $ train --data relu.safetensors --hidden 16 --epochs 20 --out runs/student

Exit status: 0 on success, 1 on error (one line on stderr).";

#[derive(Parser, Debug)]
#[command(name = "datagen", version, about = ABOUT, long_about = LONG_ABOUT)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Inputs drawn at random, targets the outputs of a seeded MLP teacher (plus noise).
    Teacher(TeacherArgs),
}

#[derive(clap::Args, Debug)]
struct TeacherArgs {
    /// The teacher: mlp (widths from --hidden) or a preset name such as mlp_2x5_identity.
    #[arg(long, default_value = "mlp")]
    model: String,
    /// Hidden layer widths, comma-separated [default: 16].
    #[arg(long, value_delimiter = ',')]
    hidden: Option<Vec<usize>>,
    /// Nonlinearity: relu, tanh, gelu or identity (a deep linear network) [default: relu].
    #[arg(long)]
    activation: Option<String>,
    /// Input features f.
    #[arg(long, default_value_t = 10)]
    inputs: usize,
    /// Outputs k (targets per sample).
    #[arg(long, default_value_t = 1)]
    outputs: usize,
    /// Training samples n.
    #[arg(long, default_value_t = 10_000)]
    samples: usize,
    /// Test samples (x_test, y_test); 0 writes none.
    #[arg(long, default_value_t = 0)]
    test_samples: usize,
    /// Input distribution: uniform (U(-a, a)) or gaussian (N(0, a²)).
    #[arg(long, default_value = "uniform")]
    input_dist: String,
    /// a, the half-width of the uniform or the standard deviation of the Gaussian.
    #[arg(long, default_value_t = 1.0)]
    input_scale: f64,
    /// σ of the Gaussian noise added to the targets.
    #[arg(long, default_value_t = 0.0)]
    noise: f64,
    /// Seed of the teacher's weights, the inputs and the noise.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The data file to write.
    #[arg(long)]
    out: PathBuf,
    /// Also write the teacher's weights as a checkpoint here.
    #[arg(long, value_name = "CKPT")]
    teacher_out: Option<PathBuf>,
}

fn main() -> ExitCode {
    // The binaries choose the BLAS provider; the library only calls CBLAS.
    common::device::cpu::register_blas_threads(blas_openblas::set_threads);
    common::cli::run_main(
        "datagen",
        common::cli::ClosedStdout::Quiet,
        || match Args::parse().command {
            Command::Teacher(a) => teacher(a),
        },
    )
}

fn teacher(args: TeacherArgs) -> Result<()> {
    let activation = match args.activation.as_deref() {
        Some(a) => Activation::parse(a)?,
        None => Activation::Relu,
    };
    let hidden = args.hidden.clone().unwrap_or_else(|| vec![16]);
    let arch = Architecture::parse(&args.model, &hidden, activation, 0)
        .with_context(|| format!("--model {}", args.model))?;
    if !matches!(arch, Architecture::Mlp { .. }) {
        bail!(
            "--model {}: the teacher is an MLP (mlp, or a name such as mlp_2x5_identity)",
            args.model
        );
    }
    let cfg = TeacherConfig {
        arch: arch.for_data([1, 1, args.inputs], args.outputs),
        samples: args.samples,
        test_samples: args.test_samples,
        inputs: InputDistribution::parse(&args.input_dist, args.input_scale)?,
        noise: args.noise,
        seed: args.seed,
    };
    let data = teacher_data(&cfg)?;
    common::io::atomic_write(&args.out, &data.file)?;
    if let Some(p) = &args.teacher_out {
        data.teacher.save(p)?;
    }
    Ok(())
}
