//! The CUDA backend (cudarc with dynamic loading: no CUDA toolkit is needed to build).
//!
//! This build checks for the driver before touching it, because cudarc's context constructor panics
//! when the driver library is missing. The device implementations of the backend operations are not
//! written yet: [`CudaBackend::new`] says so, and the tools run on the CPU (`--device auto`) or
//! refuse (`--device cuda`).

use crate::{Error, Result};

/// Checks that the CUDA driver library is present and that device `ordinal` exists.
///
/// # Errors
/// [`Error::Device`] naming what is missing: the driver library, or the device.
pub fn probe(ordinal: usize) -> Result<()> {
    // SAFETY: is_culib_present only tries to open the driver library and reports whether it loaded.
    let present = unsafe { cudarc::driver::sys::is_culib_present() };
    if !present {
        return Err(Error::Device(
            "CUDA requested but the CUDA driver library (libcuda) was not found on this machine"
                .to_string(),
        ));
    }
    let count = cudarc::driver::CudaContext::device_count()
        .map_err(|e| Error::Device(format!("CUDA driver error: {e:?}")))?;
    if ordinal as i32 >= count {
        return Err(Error::Device(format!(
            "cuda:{ordinal} requested but {count} CUDA device(s) are visible"
        )));
    }
    Ok(())
}

/// The CUDA backend on device `ordinal`. Its implementation of [`super::Backend`] is issue #17; until
/// then it cannot be constructed, and its constructor says why after probing the device (so that a
/// missing driver or device is reported first).
#[derive(Clone, Debug)]
pub struct CudaBackend {
    _none: std::convert::Infallible,
}

impl CudaBackend {
    /// # Errors
    /// [`Error::Device`]: the driver or the device is missing, or (when both are there) the backend
    /// operations are not yet implemented on CUDA (issue #17).
    pub fn new(ordinal: usize) -> Result<CudaBackend> {
        probe(ordinal)?;
        Err(Error::Device(
            "the CUDA backend is not yet implemented (issue #17)".to_string(),
        ))
    }

    /// A `CudaBackend` cannot be constructed until the backend is implemented, so code holding
    /// one cannot run: this turns it into any type (a `match` arm the compiler proves unreachable).
    pub fn absurd<T>(self) -> T {
        match self._none {}
    }
}
