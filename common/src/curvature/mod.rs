//! Curvature of the mean cross-entropy: exact Hessian–vector products (Pearlmutter's R-operator) and
//! Gauss–Newton products, the exact trace of piecewise-linear networks, stochastic trace estimators
//! (Hutchinson, PyHessian's rule, Hutch++), top eigenvalues by Lanczos and the spectral density by
//! stochastic Lanczos quadrature.
//!
//! - [`HessianOperator`]: H·v and G·v over a fixed sample set, batched over several vectors.
//! - [`HessianOperator::exact_trace`]: tr(H) with no estimator variance for ReLU/identity/max-pool
//!   networks.
//! - [`hutchinson`], [`pyhessian_trace`], [`hutchpp`]: trace estimates with standard errors.
//! - [`top_eigenvalues`], [`slq_density`]: spectrum.
//!
//! Every estimator works on any [`LinearOperator`] (a dense matrix in the tests).

pub mod eigen;
mod exact;
mod hutchinson;
mod lanczos;
pub(crate) mod operator;
mod probes;
pub(crate) mod rop;

pub use exact::{exact_trace_unavailable, ExactTrace};
pub use hutchinson::{
    hutchinson, hutchpp, mean_se, pyhessian_trace, HutchinsonConfig, TraceEstimate,
};
pub use lanczos::{
    lanczos, slq_density, top_eigenvalues, Density, DensityRun, Eigenpair, LanczosRun, TopEigen,
};
pub use operator::{
    Curvature, DenseOperator, HessianOperator, LinearOperator, DEFAULT_CACHE_BYTES,
};
pub use probes::{probe, ProbeKind};
