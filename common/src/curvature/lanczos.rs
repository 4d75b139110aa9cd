//! Lanczos with full reorthogonalisation: the largest eigenvalues with their residuals, and the
//! eigenvalue density by stochastic Lanczos quadrature.

//!
//! The recurrence runs on the operator's backend (the Krylov basis and the Ritz vectors are its
//! buffers; `dot`, `axpy` and `divide` its operations); the tridiagonal T and its m×m
//! eigendecomposition stay on the host.

use super::eigen::symmetric_eigen;
use super::operator::LinearOperator;
use super::probes::{probe, ProbeKind, LANCZOS_OFFSET, SLQ_OFFSET};
use crate::device::{Backend, CpuBackend};
use crate::{Error, Result};

/// The Lanczos recurrence of a symmetric operator from a start vector.
#[derive(Clone, Debug)]
pub struct LanczosRun<B: Backend = CpuBackend> {
    /// Diagonal αⱼ and off-diagonal βⱼ of the tridiagonal T (βⱼ couples steps j and j+1).
    pub alphas: Vec<f64>,
    pub betas: Vec<f64>,
    /// The orthonormal Krylov basis q₀, q₁, … (one per α), in the backend's memory.
    pub basis: Vec<B::Buffer<f64>>,
}

impl<B: Backend> Default for LanczosRun<B> {
    fn default() -> Self {
        LanczosRun {
            alphas: Vec::new(),
            betas: Vec::new(),
            basis: Vec::new(),
        }
    }
}

impl<B: Backend> LanczosRun<B> {
    /// T (m×m, row-major).
    pub fn tridiagonal(&self) -> Vec<f64> {
        let m = self.alphas.len();
        let mut t = vec![0.0; m * m];
        for i in 0..m {
            t[i * m + i] = self.alphas[i];
            if i + 1 < m {
                t[i * m + i + 1] = self.betas[i];
                t[(i + 1) * m + i] = self.betas[i];
            }
        }
        t
    }
}

/// Runs Lanczos (Lanczos 1950; Golub & Van Loan §10.1) from `start`: qⱼ₊₁·βⱼ = A·qⱼ − αⱼ·qⱼ −
/// βⱼ₋₁·qⱼ₋₁, with the new vector re-orthogonalised twice against every previous qᵢ (full
/// reorthogonalisation, so no spurious copies of converged eigenvalues appear). `done(run)` is asked
/// after each step whether to stop; the run also stops after `max_steps` steps or when βⱼ vanishes (an
/// invariant subspace: T's eigenvalues are then exact eigenvalues of A).
pub fn lanczos<B: Backend>(
    op: &mut dyn LinearOperator<B>,
    start: B::View<'_, f64>,
    max_steps: usize,
    mut done: impl FnMut(&LanczosRun<B>) -> bool,
) -> LanczosRun<B> {
    let be = op.backend().clone();
    let mut run = LanczosRun::default();
    let norm = be.dot(start, start).sqrt();
    let dim = op.dim();
    let mut q = be.zeros::<f64>(dim);
    be.copy(start, B::view_mut(&mut q));
    be.divide(norm, B::view_mut(&mut q));
    let mut scale: f64 = 0.0;
    for j in 0..max_steps.min(dim) {
        let mut w = be.zeros::<f64>(dim);
        op.apply(B::view(&q), B::view_mut(&mut w));
        if j > 0 {
            be.axpy(
                -run.betas[j - 1],
                B::view(&run.basis[j - 1]),
                B::view_mut(&mut w),
            );
        }
        let alpha = be.dot(B::view(&q), B::view(&w));
        be.axpy(-alpha, B::view(&q), B::view_mut(&mut w));
        run.basis.push(q);
        run.alphas.push(alpha);
        for _ in 0..2 {
            for b in &run.basis {
                let c = be.dot(B::view(b), B::view(&w));
                be.axpy(-c, B::view(b), B::view_mut(&mut w));
            }
        }
        let beta = be.dot(B::view(&w), B::view(&w)).sqrt();
        scale = scale.max(alpha.abs()).max(beta);
        run.betas.push(beta);
        if done(&run) || j + 1 == max_steps.min(dim) || beta <= 1e-12 * scale {
            break;
        }
        be.divide(beta, B::view_mut(&mut w));
        q = w;
    }
    run
}

/// An eigenvalue estimate with its residual ‖A·y − θ·y‖ for the unit Ritz vector y.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Eigenpair {
    pub value: f64,
    pub residual: f64,
}

/// The k largest (algebraic) eigenvalues.
#[derive(Clone, Debug, PartialEq)]
pub struct TopEigen {
    pub pairs: Vec<Eigenpair>,
    /// Lanczos steps taken.
    pub steps: usize,
    /// Operator products (steps + k for the explicit residuals).
    pub matvecs: usize,
    pub converged: bool,
}

/// The `k` largest eigenvalues of A by Lanczos with full reorthogonalisation from a Gaussian start
/// vector (seeded), stopping when every one of the top k Ritz pairs has the residual bound
/// βₘ·|sₘⱼ| ≤ tol·|θⱼ| (Parlett, "The Symmetric Eigenvalue Problem", §13.2) or after `max_steps`.
/// The reported residuals are computed explicitly, ‖A·y − θ·y‖, with k more products; since the
/// eigenvalue error is at most residual²/gap, a residual of 1e-4·θ gives about 1e-8 relative.
///
/// # Errors
/// [`Error::Invalid`] when k is 0, exceeds the dimension, or exceeds `max_steps`, or when `tol` is
/// not a positive finite number (NaN never converged: every run took `max_steps`).
pub fn top_eigenvalues<B: Backend>(
    op: &mut dyn LinearOperator<B>,
    k: usize,
    max_steps: usize,
    tol: f64,
    seed: u64,
) -> Result<TopEigen> {
    if !(tol.is_finite() && tol > 0.0) {
        return Err(Error::invalid(format!(
            "--eig-tol must be a positive number (got {tol})"
        )));
    }
    let dim = op.dim();
    if k == 0 || k > dim {
        return Err(Error::invalid(format!(
            "--top-k must be between 1 and the number of parameters ({dim}), got {k}"
        )));
    }
    let max_steps = max_steps.min(dim);
    if k > max_steps {
        return Err(Error::invalid(format!(
            "--top-k {k} needs at least {k} Lanczos steps, allowed {max_steps}"
        )));
    }
    let be = op.backend().clone();
    let start = be.upload(&probe(dim, ProbeKind::Gaussian, seed, LANCZOS_OFFSET));
    // After step m, βₘ·|sₘⱼ| bounds the residual of Ritz pair j (βₘ is the last entry of `betas`).
    let converged_at = |run: &LanczosRun<B>| {
        let m = run.alphas.len();
        if m < k {
            return false;
        }
        let (theta, s) = symmetric_eigen(&run.tridiagonal(), m);
        let beta = run.betas[m - 1];
        (0..k).all(|j| {
            let col = m - 1 - j;
            beta * s[(m - 1) * m + col].abs() <= tol * theta[col].abs().max(1e-300)
        })
    };
    let run = lanczos(op, B::view(&start), max_steps, |run| {
        // Checking costs an m×m eigen-decomposition: do it every 4 steps.
        run.alphas.len() % 4 == 0 && converged_at(run)
    });
    let m = run.alphas.len();
    let converged = converged_at(&run) || run.betas[m - 1] == 0.0;
    let (theta, s) = symmetric_eigen(&run.tridiagonal(), m);
    let ritz: Vec<(f64, B::Buffer<f64>)> = (0..k.min(m))
        .map(|j| {
            let col = m - 1 - j;
            let mut y = be.zeros::<f64>(dim);
            for (i, qi) in run.basis.iter().enumerate() {
                be.axpy(s[i * m + col], B::view(qi), B::view_mut(&mut y));
            }
            let norm = be.dot(B::view(&y), B::view(&y)).sqrt();
            be.divide(norm, B::view_mut(&mut y));
            (theta[col], y)
        })
        .collect();
    let ys: Vec<B::Buffer<f64>> = ritz.iter().map(|(_, y)| y.clone()).collect();
    let mut ays = op.apply_many(&ys);
    // ‖A·y − θ·y‖: A·y + (−θ)·y is A·y − θ·y to the bit (negation is exact).
    let pairs = ritz
        .iter()
        .zip(ays.iter_mut())
        .map(|((t, y), ay)| {
            be.axpy(-*t, B::view(y), B::view_mut(ay));
            Eigenpair {
                value: *t,
                residual: be.dot(B::view(ay), B::view(ay)).sqrt(),
            }
        })
        .collect();
    Ok(TopEigen {
        pairs,
        steps: m,
        matvecs: m + ritz.len(),
        converged,
    })
}

/// One stochastic Lanczos quadrature run: the Ritz values (nodes) and the squared first components
/// of T's eigenvectors (weights, summing to 1).
#[derive(Clone, Debug, PartialEq)]
pub struct DensityRun {
    pub nodes: Vec<f64>,
    pub weights: Vec<f64>,
}

/// The spectral density estimate by stochastic Lanczos quadrature (Lin, Saad & Yang 2016; Ghorbani,
/// Krishnan & Xiao 2019; PyHessian's `density`): φ(t) ≈ (1/R)·Σᵣ Σⱼ τᵣⱼ·N(t; θᵣⱼ, σ²) with θ, τ
/// from `steps` Lanczos steps started at a normalised Rademacher vector per run.
#[derive(Clone, Debug, PartialEq)]
pub struct Density {
    pub runs: Vec<DensityRun>,
    pub steps: usize,
    /// Gaussian smoothing width σ.
    pub sigma: f64,
    pub grid: Vec<f64>,
    pub density: Vec<f64>,
}

/// [`Density`] with `runs` runs of `steps` Lanczos steps, smoothed with σ = `sigma_fraction` × the
/// spread of all nodes, on `grid_points` points spanning the nodes ± 5σ.
///
/// # Errors
/// [`Error::Invalid`] for zero runs or steps, more steps than parameters, or a `sigma_fraction`
/// that is not a positive finite number (NaN gave a density of nulls, 0 a division by zero).
pub fn slq_density<B: Backend>(
    op: &mut dyn LinearOperator<B>,
    runs: usize,
    steps: usize,
    seed: u64,
    sigma_fraction: f64,
    grid_points: usize,
) -> Result<Density> {
    let dim = op.dim();
    if !(sigma_fraction.is_finite() && sigma_fraction > 0.0) {
        return Err(Error::invalid(format!(
            "--density-sigma must be a positive number (got {sigma_fraction})"
        )));
    }
    if runs == 0 || steps == 0 {
        return Err(Error::invalid(
            "the density needs at least one run of at least one Lanczos step",
        ));
    }
    if steps > dim {
        return Err(Error::invalid(format!(
            "the density asks for {steps} Lanczos steps but the model has only {dim} parameters"
        )));
    }
    let be = op.backend().clone();
    let mut out = Vec::new();
    for r in 0..runs {
        let start = be.upload(&probe(
            dim,
            ProbeKind::Rademacher,
            seed,
            SLQ_OFFSET + r as u64,
        ));
        let run = lanczos(op, B::view(&start), steps, |_| false);
        let m = run.alphas.len();
        let (theta, s) = symmetric_eigen(&run.tridiagonal(), m);
        out.push(DensityRun {
            nodes: theta,
            weights: (0..m).map(|j| s[j].powi(2)).collect(),
        });
    }
    let lo = out
        .iter()
        .flat_map(|r| r.nodes.iter().copied())
        .fold(f64::INFINITY, f64::min);
    let hi = out
        .iter()
        .flat_map(|r| r.nodes.iter().copied())
        .fold(f64::NEG_INFINITY, f64::max);
    let spread = (hi - lo).max(1e-12 * hi.abs().max(1.0));
    let sigma = sigma_fraction * spread;
    let points = grid_points.max(2);
    let (a, b) = (lo - 5.0 * sigma, hi + 5.0 * sigma);
    let grid: Vec<f64> = (0..points)
        .map(|i| a + (b - a) * i as f64 / (points - 1) as f64)
        .collect();
    let norm = 1.0 / (runs as f64 * sigma * (2.0 * std::f64::consts::PI).sqrt());
    let density = grid
        .iter()
        .map(|&t| {
            norm * out
                .iter()
                .flat_map(|r| r.nodes.iter().zip(&r.weights))
                .map(|(&x, &w)| w * (-(t - x).powi(2) / (2.0 * sigma * sigma)).exp())
                .sum::<f64>()
        })
        .collect();
    Ok(Density {
        runs: out,
        steps,
        sigma,
        grid,
        density,
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
    fn a_tolerance_or_smoothing_that_is_not_a_positive_number_is_refused() {
        let mut op = diagonal(&[3.0, 2.0, 1.0, 0.5]);
        for tol in [f64::NAN, 0.0, -1e-5, f64::INFINITY] {
            let e = top_eigenvalues(&mut op, 1, 4, tol, 1)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("--eig-tol must be a positive number"), "{e}");
        }
        assert!(top_eigenvalues(&mut op, 1, 4, 1e-8, 1).is_ok());
        for sigma in [f64::NAN, 0.0, -0.01, f64::INFINITY] {
            let e = slq_density(&mut op, 1, 3, 1, sigma, 50)
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("--density-sigma must be a positive number"),
                "{e}"
            );
        }
        let d = slq_density(&mut op, 1, 3, 1, 0.01, 50).unwrap();
        assert!(d.density.iter().all(|x| x.is_finite()));
    }
}
