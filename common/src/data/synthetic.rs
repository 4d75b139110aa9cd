//! Synthetic data sets with a known answer, written as data files (`x`, `y`, `x_test`, `y_test`;
//! see the data-file reader) by the `datagen` tool.
//!
//! - [`teacher`]: the outputs of a given network (a teacher) on random inputs, plus optional Gaussian
//!   noise: at the teacher's own weights the model is realisable, so λ̂ there is the learning
//!   coefficient of the model at a true parameter (for a deep linear network, Aoyagi's closed form,
//!   [`crate::sample::theory`]). [`low_rank`] gives a teacher weight a chosen rank, as the
//!   deep-linear-network experiments of Lau et al. (2023) and devinterp use.
//! - [`normal_crossing`]: devinterp's data set for its normal-crossing accuracy test: x ~ N(0, s²),
//!   y = σ·ξ (the model y = w₁^{k₁}w₂^{k₂}·x is then at its true parameter w = 0).
//! - [`random_regression`]: devinterp's reduced-rank-regression data: x ~ N(0, I_m), y ~ N(0, I_n).
//! - [`icl_regression`]: in-context linear regression, sequences of (x, y) pairs of a random linear
//!   task each (Garg et al. 2022; Raventós et al. 2023), as the developmental-interpretability work
//!   on in-context learning uses.
//!
//! Every draw comes from one seeded stream (`rng::stream(seed, Purpose::Data, ·)`), so the same
//! settings write the same bytes; the settings are recorded in the file's metadata under `datagen`.

use crate::io::encode_f32_safetensors;
use crate::model::Network;
use crate::rng::{stream, Purpose, Stream};
use crate::{Error, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// How inputs are drawn, per coordinate, independently.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum InputDistribution {
    /// U(−a, a): second moment a²/3.
    Uniform { half_width: f64 },
    /// N(0, s²).
    Gaussian { sd: f64 },
}

impl InputDistribution {
    /// Parses `uniform:A` or `gaussian:S` (also `normal:S`).
    ///
    /// # Errors
    /// Another form, or a scale that is not positive and finite.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || {
            Error::invalid(format!(
                "inputs '{s}': expected uniform:A (U(−A, A)) or gaussian:S (N(0, S²)) with A, S > 0"
            ))
        };
        let (kind, scale) = s.split_once(':').ok_or_else(bad)?;
        let scale: f64 = scale.parse().map_err(|_| bad())?;
        if !(scale.is_finite() && scale > 0.0) {
            return Err(bad());
        }
        match kind {
            "uniform" => Ok(InputDistribution::Uniform { half_width: scale }),
            "gaussian" | "normal" => Ok(InputDistribution::Gaussian { sd: scale }),
            _ => Err(bad()),
        }
    }

    fn draw(self, rng: &mut Stream) -> f64 {
        match self {
            InputDistribution::Uniform { half_width } => rng.uniform_in(-half_width, half_width),
            InputDistribution::Gaussian { sd } => sd * rng.normal(),
        }
    }

    /// E[x²] per coordinate.
    pub fn second_moment(self) -> f64 {
        match self {
            InputDistribution::Uniform { half_width } => half_width * half_width / 3.0,
            InputDistribution::Gaussian { sd } => sd * sd,
        }
    }

    pub fn to_json(self) -> Value {
        match self {
            InputDistribution::Uniform { half_width } => {
                json!({"kind": "uniform", "half_width": half_width})
            }
            InputDistribution::Gaussian { sd } => json!({"kind": "gaussian", "sd": sd}),
        }
    }
}

/// A synthetic data set: row-major f32 tensors with their shapes, and what made it.
#[derive(Clone, Debug, PartialEq)]
pub struct SyntheticData {
    pub x: Vec<f32>,
    pub y: Vec<f32>,
    pub x_test: Vec<f32>,
    pub y_test: Vec<f32>,
    /// One sample's input shape and target width.
    pub sample_shape: Vec<usize>,
    pub targets: usize,
    pub train: usize,
    pub test: usize,
    /// The settings, stored under `datagen` in the file's metadata.
    pub settings: Value,
}

/// The most values (inputs plus targets, both splits) one data set may hold: 2³¹, 8 GiB of f32.
pub const MAX_SYNTHETIC_VALUES: u64 = 1 << 31;

fn check_size(samples: usize, per_sample: usize) -> Result<()> {
    let total = (samples as u64).checked_mul(per_sample as u64);
    match total {
        Some(t) if t <= MAX_SYNTHETIC_VALUES => Ok(()),
        _ => Err(Error::invalid(format!(
            "{samples} samples of {per_sample} values each is more than {MAX_SYNTHETIC_VALUES} \
             values"
        ))),
    }
}

impl SyntheticData {
    /// The data file's bytes: tensors `x` `[n, …]`, `y` `[n, k]` (float32), `x_test`, `y_test` when
    /// there is a test split, and the settings under `datagen` in the metadata.
    pub fn to_bytes(&self) -> Vec<u8> {
        let shape = |n: usize| {
            let mut s = vec![n];
            s.extend(&self.sample_shape);
            s
        };
        let mut tensors: Vec<(String, Vec<usize>, &[f32])> = vec![
            ("x".into(), shape(self.train), &self.x),
            ("y".into(), vec![self.train, self.targets], &self.y),
        ];
        if self.test > 0 {
            tensors.push(("x_test".into(), shape(self.test), &self.x_test));
            tensors.push(("y_test".into(), vec![self.test, self.targets], &self.y_test));
        }
        let mut md = BTreeMap::new();
        md.insert("datagen".to_string(), self.settings.to_string());
        encode_f32_safetensors(&tensors, &md)
    }
}

/// Draws `count × features` inputs.
fn inputs(rng: &mut Stream, dist: InputDistribution, count: usize, features: usize) -> Vec<f32> {
    (0..count * features)
        .map(|_| dist.draw(rng) as f32)
        .collect()
}

/// The teacher's outputs on `x` (f64 arithmetic on the f32 inputs and weights), plus N(0, σ²) noise.
fn label(
    net: &Network,
    params: &[f64],
    x: &[f32],
    count: usize,
    noise: f64,
    rng: &mut Stream,
) -> Vec<f32> {
    let (features, outputs) = (net.input_features(), net.classes());
    let chunk = 1024;
    let mut ws = net.workspace::<f64>(chunk.min(count.max(1)));
    let mut y = Vec::with_capacity(count * outputs);
    for start in (0..count).step_by(chunk) {
        let b = chunk.min(count - start);
        let xb: Vec<f64> = x[start * features..(start + b) * features]
            .iter()
            .map(|&v| v as f64)
            .collect();
        let out = net.forward(params, &xb, b, &mut ws);
        y.extend(out.iter().map(|&v| (v + noise * rng.normal()) as f32));
    }
    y
}

/// A teacher data set: inputs from `dist`, targets the teacher `net` at `params` plus N(0, σ²)
/// noise (σ = `noise`, 0 for none), `train` and `test` samples. `model` describes the teacher for
/// the metadata.
///
/// # Errors
/// Parameters of the wrong length or not finite, no training sample, a negative or non-finite σ, or
/// a data set past [`MAX_SYNTHETIC_VALUES`].
#[allow(clippy::too_many_arguments)]
pub fn teacher(
    net: &Network,
    params: &[f32],
    model: Value,
    dist: InputDistribution,
    noise: f64,
    train: usize,
    test: usize,
    seed: u64,
) -> Result<SyntheticData> {
    if params.len() != net.num_params() {
        return Err(Error::invalid(format!(
            "teacher: {} parameters given, the model has {}",
            params.len(),
            net.num_params()
        )));
    }
    if let Some(i) = params.iter().position(|p| !p.is_finite()) {
        return Err(Error::invalid(format!(
            "teacher: parameter {i} is not finite"
        )));
    }
    if train == 0 {
        return Err(Error::invalid("--samples must be at least 1"));
    }
    if !(noise.is_finite() && noise >= 0.0) {
        return Err(Error::invalid(format!(
            "--noise must be zero or positive (got {noise})"
        )));
    }
    let (features, outputs) = (net.input_features(), net.classes());
    check_size(train.saturating_add(test), features.saturating_add(outputs))?;
    let p64: Vec<f64> = params.iter().map(|&p| p as f64).collect();
    let mut rng = stream(seed, Purpose::Data, 0);
    let x = inputs(&mut rng, dist, train, features);
    let x_test = inputs(&mut rng, dist, test, features);
    let y = label(net, &p64, &x, train, noise, &mut rng);
    let y_test = label(net, &p64, &x_test, test, noise, &mut rng);
    Ok(SyntheticData {
        x,
        y,
        x_test,
        y_test,
        // A spec fixes its sample shape ([c, h, w] for a convolutional one); an MLP takes it flat.
        sample_shape: match &net.arch {
            crate::model::Architecture::Spec(spec) => spec.input().to_vec(),
            _ => vec![features],
        },
        targets: outputs,
        train,
        test,
        settings: json!({
            "kind": "teacher",
            "model": model,
            "inputs": dist.to_json(),
            "noise_sd": noise,
            "samples": train,
            "test_samples": test,
            "seed": seed,
        }),
    })
}

/// devinterp's normal-crossing data set: x ~ N(0, s²) (one feature), y = σ·ξ, ξ ~ N(0, 1).
///
/// # Errors
/// No training sample, a non-positive s, a negative σ, or too many samples.
pub fn normal_crossing(
    x_sd: f64,
    noise: f64,
    train: usize,
    test: usize,
    seed: u64,
) -> Result<SyntheticData> {
    if train == 0 {
        return Err(Error::invalid("--samples must be at least 1"));
    }
    if !(x_sd.is_finite() && x_sd > 0.0 && noise.is_finite() && noise >= 0.0) {
        return Err(Error::invalid(format!(
            "normal crossing: the input sd ({x_sd}) must be positive and the noise sd ({noise}) \
             zero or positive"
        )));
    }
    check_size(train.saturating_add(test), 2)?;
    let mut rng = stream(seed, Purpose::Data, 0);
    let mut draw = |n: usize| -> (Vec<f32>, Vec<f32>) {
        let x = (0..n).map(|_| (x_sd * rng.normal()) as f32).collect();
        let y = (0..n).map(|_| (noise * rng.normal()) as f32).collect();
        (x, y)
    };
    let (x, y) = draw(train);
    let (x_test, y_test) = draw(test);
    Ok(SyntheticData {
        x,
        y,
        x_test,
        y_test,
        sample_shape: vec![1],
        targets: 1,
        train,
        test,
        settings: json!({
            "kind": "normal-crossing",
            "x_sd": x_sd,
            "noise_sd": noise,
            "samples": train,
            "test_samples": test,
            "seed": seed,
        }),
    })
}

/// devinterp's reduced-rank-regression data set: x ~ N(0, I_m), y ~ N(0, I_n) independent of x.
///
/// # Errors
/// No training sample, a zero width, or too many values.
pub fn random_regression(
    inputs_width: usize,
    outputs: usize,
    train: usize,
    test: usize,
    seed: u64,
) -> Result<SyntheticData> {
    if train == 0 || inputs_width == 0 || outputs == 0 {
        return Err(Error::invalid(
            "random regression: --samples, --inputs and --outputs must be at least 1",
        ));
    }
    check_size(
        train.saturating_add(test),
        inputs_width.saturating_add(outputs),
    )?;
    let mut rng = stream(seed, Purpose::Data, 0);
    let dist = InputDistribution::Gaussian { sd: 1.0 };
    let x = inputs(&mut rng, dist, train, inputs_width);
    let y = inputs(&mut rng, dist, train, outputs);
    let x_test = inputs(&mut rng, dist, test, inputs_width);
    let y_test = inputs(&mut rng, dist, test, outputs);
    Ok(SyntheticData {
        x,
        y,
        x_test,
        y_test,
        sample_shape: vec![inputs_width],
        targets: outputs,
        train,
        test,
        settings: json!({
            "kind": "random-regression",
            "inputs": inputs_width,
            "outputs": outputs,
            "samples": train,
            "test_samples": test,
            "seed": seed,
        }),
    })
}

/// In-context linear regression (Garg et al. 2022; Raventós et al. 2023, "Pretraining task
/// diversity and the emergence of non-Bayesian in-context learning for regression"): each sequence
/// has its own task w ~ N(0, I_D) — drawn from a pool of `tasks` tasks fixed up front, or fresh for
/// every sequence when `tasks` is 0 — and `context` pairs x_k ~ N(0, I_D), y_k = w·x_k + σ·ξ_k.
///
/// A sequence is stored as 2K tokens of width D + 1, interleaved as in Garg et al.: the x-token
/// `[0, x_k]` then the y-token `[y_k, 0, …, 0]`; so `x` is `[n, 2K, D + 1]` and the targets `y`
/// `[n, K]` are the y_k, which a model predicts at each x-token from the tokens before it. The test
/// split's tasks are always fresh draws from N(0, I_D) (the true task distribution). The task pool
/// comes from the stream `(seed, Data, 1)`, everything else from `(seed, Data, 0)`.
///
/// # Errors
/// No training sample, a zero dimension or context, a negative or non-finite σ, or too many values.
pub fn icl_regression(
    dim: usize,
    context: usize,
    tasks: usize,
    noise: f64,
    train: usize,
    test: usize,
    seed: u64,
) -> Result<SyntheticData> {
    if train == 0 || dim == 0 || context == 0 {
        return Err(Error::invalid(
            "icl regression: --samples, --dim and --context must be at least 1",
        ));
    }
    if !(noise.is_finite() && noise >= 0.0) {
        return Err(Error::invalid(format!(
            "--noise must be zero or positive (got {noise})"
        )));
    }
    let tokens = 2usize.saturating_mul(context);
    let width = dim.saturating_add(1);
    check_size(
        train.saturating_add(test),
        tokens.saturating_mul(width).saturating_add(context),
    )?;
    check_size(tasks, dim)?;
    let pool = icl_task_pool(seed, tasks, dim);
    let mut rng = stream(seed, Purpose::Data, 0);
    let mut draw = |n: usize, from_pool: bool| -> (Vec<f32>, Vec<f32>) {
        let mut x = Vec::with_capacity(n * tokens * width);
        let mut y = Vec::with_capacity(n * context);
        for _ in 0..n {
            let w: Vec<f64> = if from_pool && !pool.is_empty() {
                let t = rng.below(pool.len() as u64) as usize;
                pool[t].clone()
            } else {
                (0..dim).map(|_| rng.normal()).collect()
            };
            for _ in 0..context {
                let xk: Vec<f32> = (0..dim).map(|_| rng.normal() as f32).collect();
                let yk = (icl_target(&w, &xk) + noise * rng.normal()) as f32;
                x.push(0.0);
                x.extend(&xk);
                x.push(yk);
                x.extend(std::iter::repeat_n(0.0, dim));
                y.push(yk);
            }
        }
        (x, y)
    };
    let (x, y) = draw(train, true);
    let (x_test, y_test) = draw(test, false);
    Ok(SyntheticData {
        x,
        y,
        x_test,
        y_test,
        sample_shape: vec![tokens, width],
        targets: context,
        train,
        test,
        settings: json!({
            "kind": "icl-regression",
            "dim": dim,
            "context": context,
            "tasks": if tasks == 0 { Value::from("infinite") } else { Value::from(tasks) },
            "noise_sd": noise,
            "samples": train,
            "test_samples": test,
            "seed": seed,
            "x": format!("[n, {tokens}, {width}] float32: per pair k the x-token [0, x_k] then the y-token [y_k, 0…]"),
            "y": format!("[n, {context}] float32: y_k = w·x_k + noise, predicted at x-token k"),
            "test_tasks": "fresh draws from N(0, I_D)",
        }),
    })
}

/// The pool of `tasks` task vectors w ~ N(0, I_D) of [`icl_regression`] (empty for 0: fresh tasks).
pub fn icl_task_pool(seed: u64, tasks: usize, dim: usize) -> Vec<Vec<f64>> {
    let mut rng = stream(seed, Purpose::Data, 1);
    (0..tasks)
        .map(|_| (0..dim).map(|_| rng.normal()).collect())
        .collect()
}

/// w·x in f64 (x as stored, in f32), summed in index order.
fn icl_target(w: &[f64], x: &[f32]) -> f64 {
    w.iter().zip(x).map(|(a, &b)| a * b as f64).sum()
}

/// Replaces the `rows × cols` matrix `w` (row-major) by its best rank-`rank` approximation in the
/// Frobenius norm (Eckart–Young): W·V_r·V_rᵀ, with V_r the eigenvectors of WᵀW of the r largest
/// eigenvalues (the top right singular vectors). A rank at or above min(rows, cols) leaves W as it is.
///
/// # Errors
/// A buffer of the wrong length, or LAPACK failing to converge.
pub fn low_rank(w: &mut [f64], rows: usize, cols: usize, rank: usize) -> Result<()> {
    if w.len() != rows * cols {
        return Err(Error::invalid(format!(
            "low rank: a {rows}×{cols} matrix needs {} values, got {}",
            rows * cols,
            w.len()
        )));
    }
    if rank >= rows.min(cols) {
        return Ok(());
    }
    let (_, g) = crate::optim::gram_eigen(w, rows, cols)
        .map_err(|info| Error::invalid(format!("low rank: eigendecomposition failed ({info})")))?;
    // Eigenvalues ascend: the top `rank` eigenvectors are the last rows of g.
    let top: Vec<&[f64]> = (cols - rank..cols)
        .map(|j| &g[j * cols..(j + 1) * cols])
        .collect();
    for r in 0..rows {
        let row = &mut w[r * cols..(r + 1) * cols];
        let coeffs: Vec<f64> = top
            .iter()
            .map(|v| v.iter().zip(row.iter()).map(|(a, b)| a * b).sum())
            .collect();
        for (j, x) in row.iter_mut().enumerate() {
            *x = top.iter().zip(&coeffs).map(|(v, c)| c * v[j]).sum();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Activation, Architecture};

    /// The eigenvalues of WᵀW (A's squared singular values; `gram_eigen` has its own test).
    fn gram_eigenvalues(w: &[f64], rows: usize, cols: usize) -> Vec<f64> {
        crate::optim::gram_eigen(w, rows, cols).unwrap().0
    }

    /// The rank-r approximation has rank r, keeps the r largest singular values, and is the closest
    /// such matrix: its error² is the sum of the dropped eigenvalues of WᵀW (Eckart–Young).
    #[test]
    fn low_rank_is_the_truncated_svd() {
        let (rows, cols) = (6, 5);
        let mut rng = stream(3, Purpose::Data, 9);
        let w: Vec<f64> = (0..rows * cols).map(|_| rng.normal()).collect();
        let before = gram_eigenvalues(&w, rows, cols);
        for rank in 0..=5 {
            let mut lr = w.clone();
            low_rank(&mut lr, rows, cols, rank).unwrap();
            let after = gram_eigenvalues(&lr, rows, cols);
            for (j, (&a, &b)) in after.iter().zip(&before).enumerate() {
                if j < cols - rank {
                    assert!(a.abs() < 1e-10, "rank {rank}: eigenvalue {j} = {a}");
                } else {
                    assert!((a - b).abs() < 1e-9 * b, "rank {rank}: {a} vs {b}");
                }
            }
            let err: f64 = w.iter().zip(&lr).map(|(a, b)| (a - b) * (a - b)).sum();
            let dropped: f64 = before[..cols - rank].iter().sum();
            assert!(
                (err - dropped).abs() < 1e-9 * (1.0 + dropped),
                "rank {rank}"
            );
        }
        assert!(low_rank(&mut [0.0; 5], 2, 3, 1).is_err());
    }

    /// The targets are the teacher's outputs: with σ = 0 exactly the network's f64 forward pass on the
    /// stored inputs (rounded to f32); the same seed writes the same bytes, another seed others.
    #[test]
    fn teacher_targets_are_the_network_outputs() {
        let arch = Architecture::Mlp {
            input: 3,
            hidden: vec![4],
            classes: 2,
            activation: Activation::Tanh,
        };
        let net = Network::new(arch.clone());
        let params: Vec<f32> = crate::model::initialise(&net, 5);
        let dist = InputDistribution::Uniform { half_width: 10.0 };
        let d = teacher(&net, &params, arch.to_json(), dist, 0.0, 50, 7, 1).unwrap();
        assert_eq!(
            (d.x.len(), d.y.len(), d.x_test.len(), d.y_test.len()),
            (150, 100, 21, 14)
        );
        assert!(d.x.iter().all(|v| v.abs() <= 10.0));
        let p64: Vec<f64> = params.iter().map(|&p| p as f64).collect();
        for n in [0, 17, 49] {
            let x: Vec<f64> = d.x[3 * n..3 * n + 3].iter().map(|&v| v as f64).collect();
            let mut ws = net.workspace::<f64>(1);
            let out = net.forward(&p64, &x, 1, &mut ws);
            for (k, &o) in out.iter().enumerate() {
                assert_eq!(d.y[2 * n + k], o as f32, "sample {n}");
            }
        }
        let again = teacher(&net, &params, arch.to_json(), dist, 0.0, 50, 7, 1).unwrap();
        assert_eq!(again.to_bytes(), d.to_bytes());
        let other = teacher(&net, &params, arch.to_json(), dist, 0.0, 50, 7, 2).unwrap();
        assert_ne!(other.x, d.x);
        // Noise σ: the residuals' sd.
        let noisy = teacher(&net, &params, arch.to_json(), dist, 0.5, 4000, 0, 1).unwrap();
        let clean = teacher(&net, &params, arch.to_json(), dist, 0.0, 4000, 0, 1).unwrap();
        assert_eq!(noisy.x, clean.x);
        let var: f64 = noisy
            .y
            .iter()
            .zip(&clean.y)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>()
            / 8000.0;
        assert!((var.sqrt() - 0.5).abs() < 0.02, "sd {}", var.sqrt());
    }

    #[test]
    fn devinterps_data_sets_have_their_distributions() {
        let d = normal_crossing(2.0, 0.25, 20_000, 0, 4).unwrap();
        let sd = |v: &[f32]| {
            (v.iter().map(|&a| (a as f64).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
        };
        assert!((sd(&d.x) - 2.0).abs() < 0.05, "{}", sd(&d.x));
        assert!((sd(&d.y) - 0.25).abs() < 0.01, "{}", sd(&d.y));
        let r = random_regression(5, 3, 1000, 10, 4).unwrap();
        assert_eq!((r.x.len(), r.y.len(), r.targets), (5000, 3000, 3));
        assert!(normal_crossing(0.0, 0.25, 10, 0, 1).is_err());
        assert!(random_regression(0, 3, 10, 0, 1).is_err());
        assert!(InputDistribution::parse("uniform:10").is_ok());
        assert_eq!(
            InputDistribution::parse("gaussian:2")
                .unwrap()
                .second_moment(),
            4.0
        );
        assert!(InputDistribution::parse("uniform:-1").is_err());
        assert!(InputDistribution::parse("cauchy:1").is_err());
        assert!(check_size(1 << 40, 10).is_err());
    }

    /// The file round-trips through the safetensors reader with the names, shapes and settings.
    #[test]
    fn the_file_holds_x_y_and_the_settings() {
        let d = random_regression(4, 2, 6, 3, 1).unwrap();
        let bytes = d.to_bytes();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("x").unwrap().shape(), &[6, 4]);
        assert_eq!(st.tensor("y").unwrap().shape(), &[6, 2]);
        assert_eq!(st.tensor("x_test").unwrap().shape(), &[3, 4]);
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let md = meta.metadata().as_ref().unwrap();
        let settings: Value = serde_json::from_str(&md["datagen"]).unwrap();
        assert_eq!(settings["kind"], "random-regression");
        assert_eq!(settings["seed"], 1);
    }

    /// Every sequence is K interleaved (x, y) tokens of one task of the pool (noise 0): recomputed
    /// here from the pool; the test split's tasks are fresh; the noise has the asked sd.
    #[test]
    fn icl_sequences_follow_their_task() {
        let (dim, k) = (3, 5);
        let d = icl_regression(dim, k, 2, 0.0, 40, 10, 9).unwrap();
        assert_eq!(
            (d.sample_shape.clone(), d.targets),
            (vec![2 * k, dim + 1], k)
        );
        let pool = icl_task_pool(9, 2, dim);
        assert_eq!(pool.len(), 2);
        let fits = |w: &[f64], seq: &[f32], ys: &[f32]| {
            (0..k).all(|j| {
                let xt = &seq[2 * j * (dim + 1)..(2 * j + 1) * (dim + 1)];
                let mut t = 0.0;
                for i in 0..dim {
                    t += w[i] * xt[1 + i] as f64;
                }
                (t as f32 - ys[j]).abs() <= 1e-6 * (1.0 + ys[j].abs())
            })
        };
        let mut used = [false; 2];
        for (seq, ys) in d.x.chunks(2 * k * (dim + 1)).zip(d.y.chunks(k)) {
            for j in 0..k {
                let (xt, yt) = (
                    &seq[2 * j * (dim + 1)..(2 * j + 1) * (dim + 1)],
                    &seq[(2 * j + 1) * (dim + 1)..(2 * j + 2) * (dim + 1)],
                );
                assert_eq!(xt[0], 0.0);
                assert_eq!(yt[0], ys[j]);
                assert!(yt[1..].iter().all(|&v| v == 0.0));
            }
            let which: Vec<usize> = (0..2).filter(|&t| fits(&pool[t], seq, ys)).collect();
            assert_eq!(which.len(), 1, "one task of the pool explains the sequence");
            used[which[0]] = true;
        }
        assert_eq!(used, [true, true]);
        let first_test = &d.x_test[..2 * k * (dim + 1)];
        assert!(!pool.iter().any(|w| fits(w, first_test, &d.y_test[..k])));
        // The noise: residuals y − w·x of one task with σ = 0.5.
        let noisy = icl_regression(2, 50, 1, 0.5, 200, 0, 3).unwrap();
        let w = &icl_task_pool(3, 1, 2)[0];
        let res: Vec<f64> = noisy
            .x
            .chunks(3) // tokens of width D + 1 = 3; every other one is an x-token
            .step_by(2)
            .zip(&noisy.y)
            .map(|(xt, &y)| y as f64 - (w[0] * xt[1] as f64 + w[1] * xt[2] as f64))
            .collect();
        let sd = (res.iter().map(|r| r * r).sum::<f64>() / res.len() as f64).sqrt();
        assert!((sd - 0.5).abs() < 0.02, "{sd}");
        assert!(icl_regression(0, 5, 0, 0.1, 10, 0, 1).is_err());
        assert!(icl_regression(2, 5, 0, -0.1, 10, 0, 1).is_err());
    }
}
