//! `common`: the library behind the ngd-slt tools.
//!
//! It trains small networks (MLPs and the paper's LeNet) with exact forward and backward passes over a
//! small set of backend operations, and reads and writes PyTorch-compatible safetensors checkpoints and
//! JSON-lines records. Modules are split by concern:
//!
//! - [`bench`](mod@bench): the peak sgemm rate the benchmarks' compute floors divide by.
//! - [`cli`]: the tools' `main` (exit statuses, the one-line error).
//! - [`data`]: IDX files (MNIST, Fashion-MNIST, torchvision's `raw` folders), normalisation, batches.
//! - [`model`]: architectures, the flat parameter vector and its named views, layers, initialisation.
//! - [`device`]: the backend operations (BLAS on the CPU; CUDA behind the `cuda` feature).
//! - [`optim`]: optimisers (SGD with PyTorch semantics).
//! - [`io`]: checkpoints, optimiser sidecars, records, atomic writes.
//! - [`curvature`]: exact Hessian–vector products, traces, eigenvalues and spectral densities.
//! - [`train`]: the training loop shared by `train` and `switch`.
//! - [`rng`]: seeded random streams.
//! - [`sample`]: SGLD, the local learning coefficient, WBIC and their diagnostics.
//!
//! Numbers are generic over [`Real`] (`f32` for training, `f64` for verification).

pub mod bench;
pub mod cli;
pub mod curvature;
pub mod data;
pub mod device;
pub mod error;
pub mod io;
pub mod model;
pub mod optim;
pub mod progress;
pub mod real;
pub mod rng;
pub mod sample;
pub mod stats;
pub mod summary;
pub mod train;

pub use error::{Error, Result};
pub use real::Real;

#[cfg(test)]
extern crate blas_openblas;
