//! How big a model is, computed from its [`Architecture`](super::Architecture) with checked arithmetic
//! and without building it, and whether training it fits in this machine's memory.
//!
//! The sizes come before any allocation: a checkpoint's metadata or a flag can name a model of 10¹¹
//! units, and building its layers, layout or workspace first would abort the tool (`memory allocation
//! failed`) instead of refusing the input with one line.

use crate::{Error, Result};

/// The sizes of a model, per [`Architecture::size`](super::Architecture::size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelSize {
    /// P, the number of parameters.
    pub params: u64,
    /// Number of named tensors (a weight and a bias per layer with parameters).
    pub tensors: u64,
    /// Σ over layers of the features coming out, per sample (the forward activations a workspace keeps).
    pub activations: u64,
    /// The largest im2col matrix of one sample (`in_channels·k²·ho·wo`; 0 without convolutions).
    pub scratch: u64,
}

/// Copies of P f32 values that training holds at least: the parameters, their gradient, the momentum
/// buffer and one more (the starting checkpoint's, or an optimiser's second buffer).
pub const PARAMETER_COPIES: u64 = 4;

impl ModelSize {
    /// A lower bound on the bytes that training with minibatches of `batch` needs:
    /// 4·(P·[`PARAMETER_COPIES`] + batch·(2·activations + scratch)) (f32 parameters, gradient and
    /// optimiser state, then the workspace's outputs, their gradients and the im2col scratch).
    /// Saturates instead of overflowing.
    pub fn training_bytes(&self, batch: usize) -> u64 {
        let per_sample = self
            .activations
            .saturating_mul(2)
            .saturating_add(self.scratch);
        self.params
            .saturating_mul(PARAMETER_COPIES)
            .saturating_add((batch as u64).saturating_mul(per_sample))
            .saturating_mul(4)
    }
}

/// The memory a model may use: the machine's physical memory (`MemTotal` in /proc/meminfo), or the
/// cgroup's limit (`/sys/fs/cgroup/memory.max`) when that is smaller; 64 GiB where neither can be read.
pub fn memory_limit() -> u64 {
    const FALLBACK: u64 = 64 << 30;
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kb| kb.saturating_mul(1024));
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    match (total, cgroup) {
        (Some(t), Some(c)) => t.min(c),
        (Some(t), None) => t,
        (None, Some(c)) => c,
        (None, None) => FALLBACK,
    }
}

/// Fails when training `size` with minibatches of `batch` needs more than [`memory_limit`]: the
/// message gives the estimate ([`ModelSize::training_bytes`]) and the limit.
pub fn check_fits_in_memory(size: &ModelSize, batch: usize) -> Result<()> {
    let need = size.training_bytes(batch);
    let limit = memory_limit();
    if need > limit {
        return Err(Error::invalid(format!(
            "the model would need at least {} of memory ({} parameters, with gradient, optimiser \
             state and a workspace for batches of {batch}); this machine has {}",
            format_bytes(need),
            group_digits(size.params),
            format_bytes(limit)
        )));
    }
    Ok(())
}

/// `39750000010` as `39,750,000,010`.
pub fn group_digits(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes in binary units with one decimal: `512 B`, `1.5 KiB`, `22.9 GiB`, `1.4 TiB`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_are_grouped_in_threes() {
        assert_eq!(group_digits(0), "0");
        assert_eq!(group_digits(999), "999");
        assert_eq!(group_digits(1000), "1,000");
        assert_eq!(group_digits(39_750_000_010), "39,750,000,010");
    }

    #[test]
    fn bytes_are_written_in_binary_units() {
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(format_bytes(1 << 30), "1.0 GiB");
        assert_eq!(format_bytes(3 << 40), "3.0 TiB");
        assert_eq!(format_bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn training_bytes_counts_parameters_and_workspace() {
        let s = ModelSize {
            params: 100,
            tensors: 4,
            activations: 10,
            scratch: 5,
        };
        // 4 · (100·4 + 3·(2·10 + 5))
        assert_eq!(s.training_bytes(3), 4 * (400 + 75));
        let huge = ModelSize {
            params: u64::MAX / 2,
            ..s
        };
        assert_eq!(huge.training_bytes(128), u64::MAX);
        assert!(check_fits_in_memory(&huge, 1).is_err());
        assert!(check_fits_in_memory(&s, 128).is_ok());
    }

    #[test]
    fn the_memory_limit_is_positive() {
        assert!(memory_limit() > 1 << 20);
    }
}
