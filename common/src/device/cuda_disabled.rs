//! The CUDA backend in a build without the `cuda` feature: every entry point says how to get it.

use crate::{Error, Result};

pub fn probe(_ordinal: usize) -> Result<()> {
    Err(Error::Device(
        "built without CUDA support; rebuild with `--features cuda`".to_string(),
    ))
}
