//! Stochastic trace estimators: Hutchinson (fixed or adaptive probe count), PyHessian's stopping
//! rule (for like-for-like comparisons), and Hutch++.
//!
//! They run on the operator's backend: each probe is drawn on the host and uploaded once, and the
//! products, inner products and projections stay in the backend's memory.

use super::operator::LinearOperator;
use super::probes::{probe, ProbeKind, HUTCHPP_OFFSET};
use crate::device::Backend;
use crate::{Error, Result};
use std::ops::Range;

/// A trace estimate with its standard error.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceEstimate {
    /// `hutchinson`, `pyhessian` or `hutch++`.
    pub method: &'static str,
    pub trace: f64,
    /// Standard error of `trace` (the sample standard deviation of the per-probe values / √probes;
    /// for Hutch++ that of the residual part).
    pub se: f64,
    /// Random probe vectors used.
    pub probes: usize,
    /// Operator products used.
    pub matvecs: usize,
    /// Adaptive runs: whether the requested relative standard error was reached.
    pub converged: bool,
    /// Per-tensor estimates (name, trace, standard error) from the same probes.
    pub per_tensor: Vec<(String, f64, f64)>,
    /// The per-probe values vᵀ·A·v (Hutchinson, PyHessian).
    pub samples: Vec<f64>,
    /// PyHessian mode: probes used by each repeat.
    pub repeats: Vec<usize>,
}

/// Settings of [`hutchinson`].
#[derive(Clone, Debug, PartialEq)]
pub struct HutchinsonConfig {
    pub kind: ProbeKind,
    pub seed: u64,
    /// Without `rtol`: the number of probes. With `rtol`: the minimum number of probes.
    pub probes: usize,
    /// Stop once se ≤ rtol·|trace| (after at least `probes` probes).
    pub rtol: Option<f64>,
    /// The most probes an adaptive run may use.
    pub max_probes: usize,
    /// Probes per pass through the data ([`LinearOperator::apply_many`]).
    pub block: usize,
}

impl HutchinsonConfig {
    /// Checks the settings; errors name the flag of `hessian-trace`.
    ///
    /// # Errors
    /// [`Error::Invalid`] for zero probes or block, an `rtol` that is not a positive finite number,
    /// or (adaptive) a `max_probes` below the minimum `probes`.
    pub fn validate(&self) -> Result<()> {
        if self.probes == 0 {
            return Err(Error::invalid("--probes must be at least 1 (got 0)"));
        }
        if self.block == 0 {
            return Err(Error::invalid("the probe block size must be at least 1"));
        }
        if let Some(r) = self.rtol {
            if !(r.is_finite() && r > 0.0) {
                return Err(Error::invalid(format!(
                    "--rtol must be a positive number (got {r})"
                )));
            }
            if self.max_probes < self.probes {
                return Err(Error::invalid(format!(
                    "--max-probes {} is below the {} probes an adaptive run starts with (--probes)",
                    self.max_probes, self.probes
                )));
            }
        }
        Ok(())
    }
}

impl Default for HutchinsonConfig {
    fn default() -> Self {
        HutchinsonConfig {
            kind: ProbeKind::Rademacher,
            seed: 1,
            probes: 100,
            rtol: None,
            max_probes: 100_000,
            block: 8,
        }
    }
}

/// Mean and standard error (sample sd / √n; infinite for n < 2).
pub fn mean_se(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (mean, f64::INFINITY);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

/// Hutchinson's estimator (Hutchinson 1990): tr(A) ≈ (1/K)·Σₖ vₖᵀ·A·vₖ with E[v·vᵀ] = I, probes
/// vₖ = [`probe`]`(P, kind, seed, k)`. Per-tensor traces use the same probes restricted to each
/// tensor's block: tr(A_tt) ≈ (1/K)·Σₖ vₖ,tᵀ·(A·vₖ)_t. Adaptive mode (`rtol`) adds probes in blocks
/// until se ≤ rtol·|mean| — unlike PyHessian's rule, which compares successive means and can stop
/// after two probes.
///
/// # Errors
/// Invalid settings ([`HutchinsonConfig::validate`]).
pub fn hutchinson<B: Backend>(
    op: &mut dyn LinearOperator<B>,
    cfg: &HutchinsonConfig,
    tensors: &[(String, Range<usize>)],
) -> Result<TraceEstimate> {
    cfg.validate()?;
    let dim = op.dim();
    let be = op.backend().clone();
    let limit = match cfg.rtol {
        Some(_) => cfg.max_probes,
        None => cfg.probes,
    };
    let mut samples = Vec::new();
    let mut per_tensor: Vec<Vec<f64>> = vec![Vec::new(); tensors.len()];
    let mut converged = cfg.rtol.is_none();
    let progress = crate::progress::begin(
        format!("{}: Hutchinson trace", crate::progress::tool()),
        if cfg.rtol.is_some() {
            "probes (at most)"
        } else {
            "probes"
        },
        limit as u64,
    );
    while samples.len() < limit {
        let k = cfg.block.min(limit - samples.len());
        let vs: Vec<B::Buffer<f64>> = (0..k)
            .map(|j| be.upload(&probe(dim, cfg.kind, cfg.seed, (samples.len() + j) as u64)))
            .collect();
        let avs = op.apply_many(&vs);
        progress.tick(k as u64, String::new);
        for (v, av) in vs.iter().zip(&avs) {
            let (v, av) = (B::view(v), B::view(av));
            samples.push(be.dot(v, av));
            for (acc, (_, r)) in per_tensor.iter_mut().zip(tensors) {
                acc.push(be.dot(B::slice(v, r.clone()), B::slice(av, r.clone())));
            }
        }
        if let Some(rtol) = cfg.rtol {
            let (m, se) = mean_se(&samples);
            if samples.len() >= cfg.probes && se <= rtol * m.abs() {
                converged = true;
                break;
            }
        }
    }
    let (trace, se) = mean_se(&samples);
    Ok(TraceEstimate {
        method: "hutchinson",
        trace,
        se,
        probes: samples.len(),
        matvecs: samples.len(),
        converged,
        per_tensor: tensors
            .iter()
            .zip(&per_tensor)
            .map(|((name, _), xs)| {
                let (m, s) = mean_se(xs);
                (name.clone(), m, s)
            })
            .collect(),
        samples,
        repeats: Vec::new(),
    })
}

/// PyHessian's `hessian.trace(maxIter, tol)` (Yao et al. 2020, pyhessian/hessian.py), repeated
/// `repeats` times as the paper does (maxIter 50, tol 1e-5, 5 repeats): each repeat draws Rademacher
/// probes one at a time and stops when |mean_k − mean_{k−1}| / (|mean_{k−1}| + 1e-6) < tol or after
/// `max_iter` probes; the reported trace is the mean of all probes of all repeats (and its standard
/// error, which PyHessian does not report).
///
/// # Errors
/// [`Error::Invalid`] for zero `max_iter` or `repeats`, or a `tol` that is negative or not finite.
pub fn pyhessian_trace<B: Backend>(
    op: &mut dyn LinearOperator<B>,
    seed: u64,
    max_iter: usize,
    tol: f64,
    repeats: usize,
) -> Result<TraceEstimate> {
    if max_iter == 0 || repeats == 0 {
        return Err(Error::invalid(
            "PyHessian mode needs maxIter ≥ 1 and repeats ≥ 1",
        ));
    }
    if !(tol.is_finite() && tol >= 0.0) {
        return Err(Error::invalid(format!(
            "PyHessian mode needs a tolerance ≥ 0 (got {tol})"
        )));
    }
    let dim = op.dim();
    let be = op.backend().clone();
    let mut samples = Vec::new();
    let mut counts = Vec::new();
    let progress = crate::progress::begin(
        format!("{}: PyHessian trace", crate::progress::tool()),
        "probes (at most)",
        (repeats * max_iter) as u64,
    );
    for r in 0..repeats {
        let mut vhv: Vec<f64> = Vec::new();
        let mut trace = 0.0;
        for i in 0..max_iter {
            let v = be.upload(&probe(
                dim,
                ProbeKind::Rademacher,
                seed,
                (r * max_iter + i) as u64,
            ));
            let mut av = be.zeros::<f64>(dim);
            op.apply(B::view(&v), B::view_mut(&mut av));
            progress.tick(1, String::new);
            vhv.push(be.dot(B::view(&v), B::view(&av)));
            let mean = vhv.iter().sum::<f64>() / vhv.len() as f64;
            if (mean - trace).abs() / (trace.abs() + 1e-6) < tol {
                break;
            }
            trace = mean;
        }
        counts.push(vhv.len());
        samples.extend(vhv);
    }
    let (trace, se) = mean_se(&samples);
    Ok(TraceEstimate {
        method: "pyhessian",
        trace,
        se,
        probes: samples.len(),
        matvecs: samples.len(),
        converged: true,
        per_tensor: Vec::new(),
        samples,
        repeats: counts,
    })
}

/// Orthonormalises the columns `ys` in place on `be` (modified Gram–Schmidt, twice for stability:
/// y ← y − (qⱼ·y)·qⱼ for each kept qⱼ, then y / ‖y‖), dropping columns that are numerically
/// dependent (‖y‖ ≤ 1e-10 of its norm before the projections).
pub(crate) fn orthonormalise<B: Backend>(be: &B, ys: Vec<B::Buffer<f64>>) -> Vec<B::Buffer<f64>> {
    let mut q: Vec<B::Buffer<f64>> = Vec::new();
    for mut y in ys {
        let norm0 = be.dot(B::view(&y), B::view(&y)).sqrt();
        for _ in 0..2 {
            for qj in &q {
                let c = be.dot(B::view(qj), B::view(&y));
                be.axpy(-c, B::view(qj), B::view_mut(&mut y));
            }
        }
        let norm = be.dot(B::view(&y), B::view(&y)).sqrt();
        if norm > 1e-10 * norm0 && norm > 0.0 {
            be.divide(norm, B::view_mut(&mut y));
            q.push(y);
        }
    }
    q
}

/// Hutch++ (Meyer, Musco, Musco & Woodruff 2021, Algorithm 1) with `matvecs` products, k = ⌊matvecs/3⌋:
/// Q = orth(A·S) for k probes S; tr(A) ≈ tr(Qᵀ·A·Q) + (1/k)·Σⱼ gⱼᵀ·(I−QQᵀ)·A·(I−QQᵀ)·gⱼ for k further
/// probes G. The first term captures the top of the spectrum exactly, so the variance is that of
/// Hutchinson on the deflated matrix; the standard error reported is that of the second term.
///
/// # Errors
/// [`Error::Invalid`] for fewer than 3 products.
pub fn hutchpp<B: Backend>(
    op: &mut dyn LinearOperator<B>,
    matvecs: usize,
    kind: ProbeKind,
    seed: u64,
) -> Result<TraceEstimate> {
    if matvecs < 3 {
        return Err(Error::invalid(
            "Hutch++ needs at least 3 products (--probes ≥ 3)",
        ));
    }
    let k = matvecs / 3;
    let dim = op.dim();
    let be = op.backend().clone();
    let s: Vec<B::Buffer<f64>> = (0..k)
        .map(|j| be.upload(&probe(dim, kind, seed, HUTCHPP_OFFSET + j as u64)))
        .collect();
    let y = op.apply_many(&s);
    let q = orthonormalise(&be, y);
    let aq = op.apply_many(&q);
    let top: f64 = q
        .iter()
        .zip(&aq)
        .map(|(a, b)| be.dot(B::view(a), B::view(b)))
        .sum();
    let g: Vec<B::Buffer<f64>> = (0..k)
        .map(|j| {
            let mut g = be.upload(&probe(dim, kind, seed, HUTCHPP_OFFSET + (k + j) as u64));
            for qi in &q {
                let c = be.dot(B::view(qi), B::view(&g));
                be.axpy(-c, B::view(qi), B::view_mut(&mut g));
            }
            g
        })
        .collect();
    let ag = op.apply_many(&g);
    let rest: Vec<f64> = g
        .iter()
        .zip(&ag)
        .map(|(a, b)| be.dot(B::view(a), B::view(b)))
        .collect();
    let (mean_rest, se) = mean_se(&rest);
    Ok(TraceEstimate {
        method: "hutch++",
        trace: top + mean_rest,
        se,
        probes: 2 * k,
        matvecs: k + q.len() + k,
        converged: true,
        per_tensor: Vec::new(),
        samples: rest,
        repeats: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::curvature::DenseOperator;

    fn diagonal(d: &[f64]) -> DenseOperator {
        let n = d.len();
        let mut matrix = vec![0.0; n * n];
        for (i, &x) in d.iter().enumerate() {
            matrix[i * n + i] = x;
        }
        DenseOperator { dim: n, matrix }
    }

    #[test]
    fn meaningless_settings_are_refused_naming_the_flag() {
        let adaptive = |rtol: f64, probes: usize, max_probes: usize| HutchinsonConfig {
            rtol: Some(rtol),
            probes,
            max_probes,
            ..HutchinsonConfig::default()
        };
        for (cfg, flag) in [
            (adaptive(f64::NAN, 10, 100), "--rtol"),
            (adaptive(f64::INFINITY, 10, 100), "--rtol"),
            (adaptive(0.0, 10, 100), "--rtol"),
            (adaptive(-0.1, 10, 100), "--rtol"),
            // --rtol 0.1 --max-probes 0 ran the 10 minimum probes and could record converged: true.
            (adaptive(0.1, 10, 0), "--max-probes"),
            (adaptive(0.1, 10, 9), "--max-probes"),
            (
                HutchinsonConfig {
                    probes: 0,
                    ..HutchinsonConfig::default()
                },
                "--probes",
            ),
        ] {
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.starts_with(flag), "{cfg:?}: {e}");
            let mut op = diagonal(&[1.0, 2.0]);
            assert!(hutchinson(&mut op, &cfg, &[]).is_err(), "{cfg:?}");
        }
        assert!(adaptive(0.1, 10, 10).validate().is_ok());
        assert!(HutchinsonConfig::default().validate().is_ok());
        let mut op = diagonal(&[1.0, 2.0]);
        assert!(pyhessian_trace(&mut op, 1, 50, f64::NAN, 5).is_err());
    }
}
