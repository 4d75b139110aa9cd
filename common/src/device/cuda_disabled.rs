//! The CUDA backend in a build without the `cuda` feature: every entry point says how to get it.

use crate::{Error, Result};

fn not_compiled() -> Error {
    Error::Device("built without CUDA support; rebuild with --features cuda".to_string())
}

pub fn probe(_ordinal: usize) -> Result<()> {
    Err(not_compiled())
}

/// The CUDA backend on device `ordinal`. This build has none: it cannot be constructed.
#[derive(Clone, Debug)]
pub struct CudaBackend {
    _none: std::convert::Infallible,
}

impl CudaBackend {
    /// # Errors
    /// Always [`Error::Device`]: "built without CUDA support; rebuild with --features cuda".
    pub fn new(_ordinal: usize) -> Result<CudaBackend> {
        Err(not_compiled())
    }

    /// A `CudaBackend` cannot be constructed in this build, so code holding one cannot run: this
    /// turns it into any type (a `match` arm the compiler proves unreachable).
    pub fn absurd<T>(self) -> T {
        match self._none {}
    }
}
