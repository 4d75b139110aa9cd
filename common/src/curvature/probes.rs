//! Random probe vectors for the stochastic estimators.

use crate::rng::{stream, Purpose};
use crate::{Error, Result};

/// The distribution of a probe's entries; both have E[v·vᵀ] = I.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    /// ±1 with probability ½ (the minimum-variance choice for Hutchinson: Var = 2·Σ_{i≠j} Hᵢⱼ²).
    Rademacher,
    /// Standard normal (Var = 2·‖H‖_F²).
    Gaussian,
}

impl ProbeKind {
    pub fn name(self) -> &'static str {
        match self {
            ProbeKind::Rademacher => "rademacher",
            ProbeKind::Gaussian => "gaussian",
        }
    }
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "rademacher" => Ok(ProbeKind::Rademacher),
            "gaussian" | "normal" => Ok(ProbeKind::Gaussian),
            _ => Err(Error::invalid(format!(
                "unknown probe distribution '{s}' (expected rademacher or gaussian)"
            ))),
        }
    }
}

/// Stream indices reserved per use, so that Hutchinson probes, Hutch++ sketches and Lanczos starts
/// drawn with the same seed are independent.
pub(crate) const HUTCHPP_OFFSET: u64 = 1 << 40;
pub(crate) const LANCZOS_OFFSET: u64 = 2 << 40;
pub(crate) const SLQ_OFFSET: u64 = 3 << 40;

/// Probe number `index` for `seed`: P entries drawn from `common::rng::stream(seed, Purpose::Probe,
/// index)`, so any probe can be regenerated alone.
pub fn probe(dim: usize, kind: ProbeKind, seed: u64, index: u64) -> Vec<f64> {
    let mut s = stream(seed, Purpose::Probe, index);
    match kind {
        ProbeKind::Rademacher => (0..dim).map(|_| s.rademacher()).collect(),
        ProbeKind::Gaussian => (0..dim).map(|_| s.normal()).collect(),
    }
}
