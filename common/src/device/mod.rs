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
//!
//! The tools choose the backend at run time: `--device cpu|cuda|cuda:N|auto` goes through
//! [`open`] ([`Device::select`], then [`Device::backend`]) to a [`DeviceBackend`] value, which the
//! tool matches on and passes down to the generic library code.

mod backend;
#[cfg(test)]
mod backend_tests;
pub mod cpu;
mod cpu_attention;
mod cpu_backend;
pub mod cpu_conv;
mod cpu_kernels;
mod cpu_sequence;

pub use backend::{AttentionHeads, Backend, Element, SgdStep};
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

/// Where the numerics run. The tools take it as `--device cpu|cuda|cuda:N|auto` ([`open`]).
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

/// A backend chosen at run time: what a tool holds after [`open`] and passes down to the code
/// generic over [`Backend`]. Until the CUDA backend is implemented (issue #17) its arm cannot be
/// reached ([`CudaBackend::absurd`]).
#[derive(Clone, Debug)]
pub enum DeviceBackend {
    Cpu(CpuBackend),
    Cuda(CudaBackend),
}

impl Device {
    /// The backend value for this device: [`CpuBackend`], or [`CudaBackend::new`].
    ///
    /// # Errors
    /// [`Error::Device`] from [`CudaBackend::new`] (no CUDA in this build, no driver or device, or
    /// the backend not yet implemented).
    pub fn backend(self) -> Result<DeviceBackend> {
        match self {
            Device::Cpu => Ok(DeviceBackend::Cpu(CpuBackend)),
            Device::Cuda(i) => CudaBackend::new(i).map(DeviceBackend::Cuda),
        }
    }
}

/// The backend a tool runs on for `--device SPEC`: [`Device::select`], then [`Device::backend`].
/// `auto` is the CPU unless a CUDA device answers and its backend can be built (so, until issue
/// #17, always the CPU); an explicit `cuda` / `cuda:N` that cannot be used is an error naming the
/// tool and the reason.
///
/// # Errors
/// [`Error::Device`] for an unknown name, or a CUDA device that cannot be used: a build without
/// CUDA, a missing driver or device, or the CUDA backend not yet implemented.
pub fn open(spec: &str, tool: &str) -> Result<DeviceBackend> {
    let refuse = |e: Error| match e {
        Error::Device(why) => Error::Device(format!(
            "--device {spec}: {why}; {tool} runs on the CPU until the CUDA backend is implemented \
             (issue #17): use --device cpu or auto"
        )),
        other => other,
    };
    let names_cuda = spec == "cuda"
        || spec
            .strip_prefix("cuda:")
            .is_some_and(|i| i.parse::<usize>().is_ok());
    let device = Device::select(spec).map_err(|e| match e {
        Error::Device(why) if !names_cuda => Error::Device(format!("--device {spec}: {why}")),
        other => refuse(other),
    })?;
    match device.backend() {
        Ok(backend) => Ok(backend),
        Err(_) if spec == "auto" => Ok(DeviceBackend::Cpu(CpuBackend)),
        Err(e) => Err(refuse(e)),
    }
}

/// Whether this build has the CUDA backend.
pub fn cuda_compiled() -> bool {
    cfg!(feature = "cuda")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cpu` and (with no usable CUDA backend, which is every build until issue #17) `auto` open
    /// the CPU backend; an unknown name is refused as such, and an explicit CUDA device with the
    /// reason it cannot be used, the tool, and what to use instead.
    #[test]
    fn the_cpu_and_auto_open_the_cpu_and_cuda_is_refused_naming_the_tool() {
        assert!(matches!(open("cpu", "llc"), Ok(DeviceBackend::Cpu(_))));
        assert!(matches!(open("auto", "llc"), Ok(DeviceBackend::Cpu(_))));
        for bad in ["tpu", "cuda:x"] {
            let err = open(bad, "llc").unwrap_err().to_string();
            assert!(
                err.contains(&format!("--device {bad}: unknown device '{bad}'")),
                "{err}"
            );
            assert!(!err.contains("issue #17"), "{err}");
        }
        for spec in ["cuda", "cuda:1"] {
            let err = open(spec, "llc").unwrap_err().to_string();
            assert!(err.starts_with(&format!("--device {spec}: ")), "{err}");
            assert!(
                err.contains("llc runs on the CPU until the CUDA backend is implemented"),
                "{err}"
            );
            assert!(err.contains("use --device cpu or auto"), "{err}");
            if !cuda_compiled() {
                assert!(err.contains("built without CUDA support"), "{err}");
            }
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
