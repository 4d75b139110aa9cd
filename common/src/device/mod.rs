//! Backends and devices.
//!
//! The models, the curvature code, the optimisers and the samplers are written over the [`Backend`]
//! trait (its module comment gives the design): the memory a backend owns and the operations on it —
//! matrix products, the direct convolution, convolution lowering, bias and activations, pooling,
//! the loss, reductions, the optimiser and sampler updates. [`CpuBackend`] runs them on the host
//! (BLAS through [`cpu::gemm`], the direct convolution kernels of [`cpu_conv`] (forward, input
//! gradient, weight and bias gradients), `im2col` / `col2im` in [`cpu`], the loops in
//! `cpu_kernels.rs`). The CUDA path (behind the `cuda` feature, issue #17) is a second
//! implementation of the trait, not a second copy of the models; until it exists
//! [`CudaBackend::new`] says why it cannot be used.

mod backend;
#[cfg(test)]
mod backend_tests;
pub mod cpu;
mod cpu_backend;
pub mod cpu_conv;
mod cpu_kernels;
mod cpu_sequence;

pub use backend::{Backend, Element, SgdStep};
pub use cpu::ConvGeometry;
pub use cpu_backend::CpuBackend;
pub use cuda::CudaBackend;

#[cfg(feature = "cuda")]
#[path = "cuda_enabled.rs"]
mod cuda;
#[cfg(not(feature = "cuda"))]
#[path = "cuda_disabled.rs"]
mod cuda;

use crate::{Error, Result};

/// Where the numerics run. The tools take it as `--device cpu|cuda|cuda:N|auto` ([`Device::for_tool`]).
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
            "auto" => Ok(cuda::probe(0)
                .map(|_| Device::Cuda(0))
                .unwrap_or(Device::Cpu)),
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

impl Device {
    /// The device a tool runs on for `--device SPEC`: [`Device::select`], then what the tool can use
    /// today. Every computation has a CPU path; the CUDA path is issue #17, so until it lands `auto`
    /// means the CPU and an explicit `cuda` / `cuda:N` is refused naming the tool.
    ///
    /// # Errors
    /// [`Error::Device`] as [`Device::select`], and for a CUDA device the tool cannot use.
    pub fn for_tool(spec: &str, tool: &str) -> Result<Device> {
        let selected = Device::select(spec).map_err(|e| match e {
            Error::Device(why) => Error::Device(format!("--device {spec}: {why}")),
            other => other,
        })?;
        match (spec, selected) {
            (_, Device::Cpu) | ("auto", _) => Ok(Device::Cpu),
            (_, d @ Device::Cuda(_)) => Err(Error::Device(format!(
                "--device {spec}: {} is there, but {tool} has no CUDA path yet (the GPU backend is \
                 still to come); use --device cpu or auto",
                d.name()
            ))),
        }
    }
}

/// Whether this build has the CUDA backend.
pub fn cuda_compiled() -> bool {
    cfg!(feature = "cuda")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_and_auto_select_the_cpu_and_unknown_names_are_refused() {
        assert_eq!(Device::for_tool("cpu", "llc").unwrap(), Device::Cpu);
        assert_eq!(Device::for_tool("auto", "llc").unwrap(), Device::Cpu);
        let err = Device::for_tool("tpu", "llc").unwrap_err().to_string();
        assert!(err.contains("unknown device 'tpu'"), "{err}");
        if !cuda_compiled() {
            let err = Device::for_tool("cuda:1", "llc").unwrap_err().to_string();
            assert!(err.contains("cuda"), "{err}");
        }
    }

    /// The CUDA backend's constructor says why it cannot be used: how to get it in a build without
    /// the feature; in a build with it, a missing driver or device, or the operations still to come.
    #[test]
    fn the_cuda_backend_refuses_with_a_clear_error() {
        let err = CudaBackend::new(0).unwrap_err().to_string();
        if cuda_compiled() {
            assert!(err.contains("CUDA") || err.contains("cuda"), "{err}");
        } else {
            assert!(
                err.contains("built without CUDA support; rebuild with --features cuda"),
                "{err}"
            );
        }
    }
}
