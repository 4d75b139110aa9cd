//! In-context linear regression, measured per position: the test MSE of a model's prediction of
//! y_k (read at x-token k) for each k, against the estimators that see the same k earlier pairs.
//!
//! For a sequence of [`super::synthetic::icl_regression`] — tokens `[0, x_j]`, `[y_j, 0, …]`, task
//! w ~ N(0, I_D), y_j = w·x_j + σξ_j — the prediction of y_k from the pairs j < k by ridge
//! regression with penalty λ is x_kᵀ·ŵ_k, ŵ_k = (λI + Σ_{j<k} x_j x_jᵀ)⁻¹ · Σ_{j<k} y_j x_j
//! (Hoerl & Kennard 1970). With λ = σ² it is the posterior mean of w under the prior N(0, I_D), the
//! Bayes-optimal predictor for tasks drawn from that prior (the test split's), whose expected
//! squared error is σ² + σ²·E[x_kᵀ(λI + XᵀX)⁻¹x_k]; as λ → 0⁺ it is the minimum-norm least-squares
//! fit (the ridgeless limit, whose error peaks where k = D, Hastie et al. 2022). Raventós et al.
//! (2023) compare transformers with exactly these two. At k = 0 both predict 0.

use super::{Dataset, TargetData};
use crate::model::{Loss, Network};
use crate::{Error, Real, Result};

/// The ridgeless limit is computed at this penalty (relative to inputs of unit variance): small
/// enough that the prediction is the minimum-norm least-squares one to ~1e-8, large enough that
/// the Cholesky factor of a rank-deficient Gram matrix exists.
pub const LEAST_SQUARES_RIDGE: f64 = 1e-9;

/// (D, K) of an ICL data set: samples `[2K, D + 1]`, float targets `[n, K]`.
///
/// # Errors
/// [`Error::Data`] naming the file when the shapes are not those of `datagen icl-regression`.
pub fn icl_shape(data: &Dataset) -> Result<(usize, usize)> {
    let [c, tokens, width] = data.shape;
    let k = match &data.targets {
        TargetData::Values { width, .. } => *width,
        _ => 0,
    };
    if c != 1 || tokens % 2 != 0 || width < 2 || k == 0 || tokens != 2 * k {
        return Err(Error::data(
            &data.folder,
            format!(
                "is not in-context regression data (`datagen icl-regression`: x [n, 2K, D + 1] \
                 with float targets y [n, K]); its samples are [{c}, {tokens}, {width}] with {}",
                if k == 0 {
                    "integer labels".to_string()
                } else {
                    format!("{k} float targets")
                }
            ),
        ));
    }
    Ok((width - 1, k))
}

/// The largest safetensors header [`icl_settings`] reads.
const MAX_HEADER_BYTES: u64 = 1 << 24;

/// The `datagen` settings in a data file's metadata (what `datagen icl-regression` recorded:
/// `dim`, `context`, `noise_sd`, …), `None` when the file records none.
///
/// # Errors
/// [`Error::Io`] or [`Error::Data`] naming the file when its header cannot be read.
pub fn icl_settings(path: &std::path::Path) -> Result<Option<serde_json::Value>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|e| Error::io(path, e))?;
    let len = u64::from_le_bytes(len);
    if len > MAX_HEADER_BYTES {
        return Err(Error::data(
            path,
            format!("has a header of {len} bytes (at most {MAX_HEADER_BYTES} are read)"),
        ));
    }
    let mut header = Vec::new();
    file.take(len)
        .read_to_end(&mut header)
        .map_err(|e| Error::io(path, e))?;
    let header: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| Error::data(path, format!("its header is not JSON: {e}")))?;
    Ok(header
        .get("__metadata__")
        .and_then(|m| m.get("datagen"))
        .and_then(serde_json::Value::as_str)
        .and_then(|s| serde_json::from_str(s).ok()))
}

/// Solves A·z = b in place for a symmetric positive definite `d × d` matrix A (row-major,
/// overwritten by its Cholesky factor); `None` when A is not positive definite.
fn cholesky_solve(a: &mut [f64], b: &mut [f64], d: usize) -> Option<()> {
    for j in 0..d {
        let mut s = a[j * d + j];
        for k in 0..j {
            s -= a[j * d + k] * a[j * d + k];
        }
        if s.is_nan() || s <= 0.0 {
            return None;
        }
        let l = s.sqrt();
        a[j * d + j] = l;
        for i in j + 1..d {
            let mut s = a[i * d + j];
            for k in 0..j {
                s -= a[i * d + k] * a[j * d + k];
            }
            a[i * d + j] = s / l;
        }
    }
    for i in 0..d {
        let mut s = b[i];
        for k in 0..i {
            s -= a[i * d + k] * b[k];
        }
        b[i] = s / a[i * d + i];
    }
    for i in (0..d).rev() {
        let mut s = b[i];
        for k in i + 1..d {
            s -= a[k * d + i] * b[k];
        }
        b[i] = s / a[i * d + i];
    }
    Some(())
}

/// The mean over the sequences of `data` of the squared error of ridge regression's prediction
/// of y_k from the pairs before it (see the module doc), for each k = 0 … K − 1. The context is
/// read from the tokens (x_j from x-token j, y_j from y-token j), the answer from the targets.
///
/// # Errors
/// Not ICL data ([`icl_shape`]), a penalty that is not positive and finite, or an unreadable
/// streamed file.
pub fn ridge_position_mse(data: &Dataset, ridge: f64) -> Result<Vec<f64>> {
    let (d, k) = icl_shape(data)?;
    if !(ridge.is_finite() && ridge > 0.0) {
        return Err(Error::invalid(format!(
            "the ridge penalty must be positive and finite (got {ridge})"
        )));
    }
    let norm = data.normaliser::<f64>();
    let f = data.features();
    let mut x = vec![0.0; f];
    let mut y = data.target_buffer::<f64>(1);
    let mut sums = vec![0.0; k];
    let (mut gram, mut rhs) = (vec![0.0; d * d], vec![0.0; d]);
    let (mut a, mut z) = (vec![0.0; d * d], vec![0.0; d]);
    for n in 0..data.len() {
        data.gather_range_batch(&norm, n, 1, &mut x, &mut y)?;
        let crate::model::TargetBuf::Values { values, .. } = &y else {
            unreachable!("icl_shape checked float targets");
        };
        gram.fill(0.0);
        rhs.fill(0.0);
        for (pos, sum) in sums.iter_mut().enumerate() {
            let xk = &x[2 * pos * (d + 1) + 1..(2 * pos + 1) * (d + 1)];
            a.copy_from_slice(&gram);
            for i in 0..d {
                a[i * d + i] += ridge;
            }
            z.copy_from_slice(&rhs);
            cholesky_solve(&mut a, &mut z, d).ok_or_else(|| {
                Error::invalid(format!(
                    "ridge regression at penalty {ridge}: the Gram matrix of sequence {n} is not \
                     positive definite (inputs not finite?)"
                ))
            })?;
            let pred: f64 = xk.iter().zip(&z).map(|(a, b)| a * b).sum();
            *sum += (pred - values[pos]).powi(2);
            // Pair `pos` joins the context of the positions after it.
            let yk = x[(2 * pos + 1) * (d + 1)];
            for i in 0..d {
                rhs[i] += yk * xk[i];
                for j in 0..d {
                    gram[i * d + j] += xk[i] * xk[j];
                }
            }
        }
    }
    let n = data.len().max(1) as f64;
    Ok(sums.iter().map(|s| s / n).collect())
}

/// The mean over the sequences of `data` of a model's squared error at each of its K outputs (the
/// prediction of y_k), in batches of `batch`: the loss of [`Loss::MeanSquaredError`] split by
/// position, so the mean of the K values is the model's test loss.
///
/// # Errors
/// Not ICL data, a model whose outputs are not the K targets, or an unreadable streamed file.
pub fn model_position_mse<T: Real>(
    net: &Network,
    params: &[T],
    data: &Dataset,
    batch: usize,
) -> Result<Vec<f64>> {
    let (_, k) = icl_shape(data)?;
    if net.loss != Loss::MeanSquaredError || net.classes() != k {
        return Err(Error::data(
            &data.folder,
            format!(
                "has K = {k} targets per sequence, but the model {} gives {} outputs with {} (an \
                 ICL model is read at the x-tokens: positions with start 0, step 2, then linear out \
                 1, and the mean squared error)",
                net.arch.name(),
                net.classes(),
                net.loss.name()
            ),
        ));
    }
    net.check_input(data)?;
    let batch = batch.max(1);
    let norm = data.normaliser::<T>();
    let f = data.features();
    let mut x = vec![T::zero(); batch * f];
    let mut y = data.target_buffer::<T>(batch);
    let mut ws = net.workspace::<T>(batch);
    let mut sums = vec![0.0; k];
    let mut start = 0;
    while start < data.len() {
        let count = batch.min(data.len() - start);
        data.gather_range_batch(&norm, start, count, &mut x, &mut y)?;
        let crate::model::TargetBuf::Values { values, .. } = &y else {
            unreachable!("icl_shape checked float targets");
        };
        let out = net.forward(params, &x[..count * f], count, &mut ws);
        for (o, t) in out[..count * k].chunks_exact(k).zip(values.chunks_exact(k)) {
            for (s, (a, b)) in sums.iter_mut().zip(o.iter().zip(t)) {
                *s += (a.as_f64() - b.as_f64()).powi(2);
            }
        }
        start += count;
    }
    let n = data.len().max(1) as f64;
    Ok(sums.iter().map(|s| s / n).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synthetic::icl_regression;
    use crate::data::{data_from_bytes, Split};
    use crate::model::{Architecture, NetSpec};

    fn dataset(d: usize, k: usize, noise: f64, n: usize, seed: u64) -> Dataset {
        let data = icl_regression(d, k, 0, noise, 1, n, seed).unwrap();
        data_from_bytes(
            std::path::Path::new("icl"),
            &data.to_bytes(),
            Split::Test,
            None,
        )
        .unwrap()
        .unwrap()
    }

    /// Solves A·z = b by Gaussian elimination with partial pivoting (the reference).
    fn gauss(mut a: Vec<f64>, mut b: Vec<f64>, m: usize) -> Vec<f64> {
        for c in 0..m {
            let p = (c..m)
                .max_by(|&i, &j| a[i * m + c].abs().total_cmp(&a[j * m + c].abs()))
                .unwrap();
            for j in 0..m {
                a.swap(c * m + j, p * m + j);
            }
            b.swap(c, p);
            for r in c + 1..m {
                let f = a[r * m + c] / a[c * m + c];
                for j in c..m {
                    a[r * m + j] -= f * a[c * m + j];
                }
                b[r] -= f * b[c];
            }
        }
        let mut z = vec![0.0; m];
        for r in (0..m).rev() {
            let s: f64 = (r + 1..m).map(|j| a[r * m + j] * z[j]).sum();
            z[r] = (b[r] - s) / a[r * m + r];
        }
        z
    }

    /// Against the dual (kernel) form of the same estimator, x_kᵀ·Xᵀ·(X·Xᵀ + λI_k)⁻¹·y (the
    /// Woodbury identity), solved by Gaussian elimination: the k × k system instead of D × D.
    #[test]
    fn ridge_is_its_kernel_form_and_the_ridgeless_limit_interpolates() {
        let (d, k, n) = (3, 6, 40);
        let data = dataset(d, k, 0.3, n, 5);
        let lambda = 0.09;
        let got = ridge_position_mse(&data, lambda).unwrap();
        let crate::data::Inputs::Floats(xs) = &data.inputs else {
            panic!("in memory")
        };
        let TargetData::Values { values, .. } = &data.targets else {
            panic!("float targets")
        };
        let f = 2 * k * (d + 1);
        let mut want = vec![0.0; k];
        for s in 0..n {
            let seq = &xs[s * f..(s + 1) * f];
            let xj = |j: usize| &seq[2 * j * (d + 1) + 1..(2 * j + 1) * (d + 1)];
            let yj = |j: usize| seq[(2 * j + 1) * (d + 1)];
            for (pos, w) in want.iter_mut().enumerate() {
                let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| p * q).sum::<f64>();
                let mut kern = vec![0.0; pos * pos];
                for i in 0..pos {
                    for j in 0..pos {
                        kern[i * pos + j] = dot(xj(i), xj(j)) + if i == j { lambda } else { 0.0 };
                    }
                }
                let alpha = gauss(kern, (0..pos).map(yj).collect(), pos);
                let pred: f64 = (0..pos).map(|i| alpha[i] * dot(xj(i), xj(pos))).sum();
                *w += (pred - values[s * k + pos]).powi(2) / n as f64;
            }
        }
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-12 * w.max(1.0), "{got:?} vs {want:?}");
        }
        // Position 0 predicts 0: the mean of y_0².
        let y0: f64 = (0..n).map(|s| values[s * k].powi(2)).sum::<f64>() / n as f64;
        assert!((got[0] - y0).abs() < 1e-12 * y0);
        // Without noise, least squares recovers w from D pairs: exact from position D on.
        let clean = dataset(d, k, 0.0, n, 6);
        let ls = ridge_position_mse(&clean, LEAST_SQUARES_RIDGE).unwrap();
        assert!(ls[d - 1] > 1e-3, "{ls:?}");
        // (The penalty 1e-9 leaves a bias of order λ/σ_min(X)².)
        for v in &ls[d..] {
            assert!(*v < 1e-8, "{ls:?}");
        }
        assert!(ridge_position_mse(&clean, 0.0).is_err());
    }

    /// For fresh tasks w ~ N(0, I) and λ = σ², the expected error at position 0 is D + σ² and at
    /// position k ≥ D + 2 it is σ²·(1 + D/(k − D − 1)) (the mean of an inverse Wishart; the ridge
    /// term is a small correction at this σ): over 20,000 sequences within 4 standard errors.
    #[test]
    fn bayes_ridge_error_matches_its_expectation() {
        let (d, k, sigma) = (2, 8, 0.5);
        let data = dataset(d, k, sigma, 20_000, 7);
        let got = ridge_position_mse(&data, sigma * sigma).unwrap();
        let s2 = sigma * sigma;
        // Position 0: y_0² with E = D + σ², sd of y_0² = √2·(D + σ²).
        let want0 = d as f64 + s2;
        let se0 = 2f64.sqrt() * want0 / (20_000f64).sqrt();
        assert!((got[0] - want0).abs() < 4.0 * se0, "{} vs {want0}", got[0]);
        // Late positions: OLS's σ²(1 + D/(k − D − 1)) is an upper bound the Bayes estimate is just
        // under; both within a few percent at k = 7.
        let ols = s2 * (1.0 + d as f64 / (7 - d - 1) as f64);
        assert!(got[7] < ols * 1.03 && got[7] > s2, "{} vs {ols}", got[7]);
        // The error falls with the context.
        assert!(got.windows(2).all(|w| w[1] < w[0]), "{got:?}");
    }

    /// A model's error per position: its mean over positions is the test loss that
    /// [`Network::evaluate`] computes; one position by hand.
    #[test]
    fn model_errors_per_position_average_to_the_test_loss() {
        let (d, k) = (2, 4);
        let data = dataset(d, k, 0.1, 7, 8);
        let spec = serde_json::json!({"input": [2 * k, d + 1],
            "layers": [{"type": "linear", "out": 4},
                       {"type": "attention", "heads": 2, "causal": true},
                       {"type": "positions", "start": 0, "step": 2},
                       {"type": "linear", "out": 1}],
            "loss": "mse"});
        let spec = NetSpec::from_json("icl", &spec).unwrap();
        let mut net = Network::try_new(Architecture::Spec(Box::new(spec))).unwrap();
        net.loss = Loss::MeanSquaredError;
        let params: Vec<f64> = crate::model::initialise(&net, 3);
        let per = model_position_mse(&net, &params, &data, 3).unwrap();
        let e = net.evaluate(&params, &data, 2).unwrap();
        let mean = per.iter().sum::<f64>() / k as f64;
        assert!(
            (mean - e.loss).abs() < 1e-13 * e.loss,
            "{per:?} vs {}",
            e.loss
        );
        let crate::data::Inputs::Floats(xs) = &data.inputs else {
            panic!("in memory")
        };
        let TargetData::Values { values, .. } = &data.targets else {
            panic!("float targets")
        };
        let mut ws = net.workspace::<f64>(7);
        let out = net.forward(&params, xs, 7, &mut ws).to_vec();
        let by_hand: f64 = (0..7)
            .map(|s| (out[s * k + 2] - values[s * k + 2]).powi(2))
            .sum::<f64>()
            / 7.0;
        assert!((per[2] - by_hand).abs() < 1e-14 * by_hand);
        // A model read at every position is refused.
        let every = serde_json::json!({"input": [2 * k, d + 1],
            "layers": [{"type": "linear", "out": 1}], "loss": "mse"});
        let every = NetSpec::from_json("every", &every).unwrap();
        let mut net = Network::try_new(Architecture::Spec(Box::new(every))).unwrap();
        net.loss = Loss::MeanSquaredError;
        let params: Vec<f64> = crate::model::initialise(&net, 3);
        let e = model_position_mse(&net, &params, &data, 3).unwrap_err();
        assert!(e.to_string().contains("gives 8 outputs"), "{e}");
    }
}
