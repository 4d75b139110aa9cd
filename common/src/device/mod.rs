//! Backend operations and devices.
//!
//! The models are written over a small set of operations: matrix products ([`cpu::gemm`]), `im2col` /
//! `col2im` for convolutions, and element-wise maps and reductions, which live in [`cpu`]. The CUDA
//! path (behind the `cuda` feature) is a second implementation of these operations, not a second copy
//! of the models.

pub mod cpu;

#[cfg(feature = "cuda")]
#[path = "cuda_enabled.rs"]
mod cuda;
#[cfg(not(feature = "cuda"))]
#[path = "cuda_disabled.rs"]
mod cuda;

use crate::{Error, Result};

/// Where the numerics run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(usize),
}

impl Device {
    pub fn name(self) -> String {
        match self {
            Device::Cpu => "cpu".to_string(),
            Device::Cuda(i) => format!("cuda:{i}"),
        }
    }

    /// Parses `cpu`, `cuda`, `cuda:N` or `auto` and checks that the device can be used.
    ///
    /// `auto` is CUDA when it is compiled in and a device answers, else the CPU.
    ///
    /// # Errors
    /// [`Error::Device`] for an unknown name, a build without CUDA, or a missing driver or device.
    pub fn select(spec: &str) -> Result<Device> {
        match spec {
            "cpu" => Ok(Device::Cpu),
            "auto" => Ok(cuda::probe(0).map(|_| Device::Cuda(0)).unwrap_or(Device::Cpu)),
            "cuda" => cuda::probe(0).map(|_| Device::Cuda(0)),
            s => match s.strip_prefix("cuda:").and_then(|i| i.parse().ok()) {
                Some(i) => cuda::probe(i).map(|_| Device::Cuda(i)),
                None => Err(Error::Device(format!(
                    "unknown device '{s}' (expected cpu, cuda, cuda:N or auto)"
                ))),
            },
        }
    }
}

/// Whether this build has the CUDA backend.
pub fn cuda_compiled() -> bool {
    cfg!(feature = "cuda")
}
