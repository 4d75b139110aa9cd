//! Benchmark support (`make bench`): the one sgemm rate that every compute floor is divided by.
//!
//! A benchmark prints its time next to a compute floor, FLOPs / rate. The rate is the machine's peak
//! single-precision matrix product rate, measured once per run at a large square shape where BLAS
//! reaches its peak, never the rate at the kernel's own (small) shapes: those are slower, so a floor
//! taken at them hides how far a small product is from what the machine can do, and each bench's
//! floor would be measured differently.

use crate::device::cpu::gemm;
use std::time::Instant;

/// The side of the square product the peak is measured at: C[n×n] = A[n×n]·B[n×n], f32.
pub const PEAK_SGEMM_SIDE: usize = 2048;

/// The peak sgemm rate in GFLOP/s on the current BLAS thread count: the best of `reps` timed calls of
/// C[n×n] = A[n×n]·B[n×n] with n = [`PEAK_SGEMM_SIDE`] (2·n³ FLOPs each) after one warm-up call.
pub fn peak_sgemm_gflops(reps: usize) -> f64 {
    let n = PEAK_SGEMM_SIDE;
    let a: Vec<f32> = (0..n * n).map(|i| ((i % 97) as f32) * 0.01).collect();
    let b: Vec<f32> = (0..n * n).map(|i| ((i % 89) as f32) * 0.01).collect();
    let mut c = vec![0f32; n * n];
    gemm(false, false, n, n, n, 1.0, &a, &b, 0.0, &mut c);
    let best = (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            gemm(false, false, n, n, n, 1.0, &a, &b, 0.0, &mut c);
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    2.0 * (n as f64).powi(3) / best / 1e9
}

/// Measures the peak ([`peak_sgemm_gflops`], 3 calls) on `threads` BLAS threads and prints it as the
/// first line of a benchmark's output; returns it in GFLOP/s.
pub fn report_peak_sgemm(bench: &str, threads: usize) -> f64 {
    crate::device::cpu::set_blas_threads(threads);
    let reps = 3;
    let peak = peak_sgemm_gflops(reps);
    let n = PEAK_SGEMM_SIDE;
    println!(
        "{bench}: peak sgemm rate {peak:.1} GFLOP/s ({threads} thread(s), best of {reps} at {n}x{n}x{n} f32); every compute floor below is FLOPs / this rate"
    );
    peak
}

/// The Python interpreter the benchmarks run their anchors (PyTorch, PyHessian, devinterp) with: the
/// `PYTHON` environment variable (e.g. a venv's `bin/python`), else `python3` on the PATH. The
/// anchors are optional: a benchmark whose interpreter lacks the packages prints that and goes on.
pub fn python() -> std::ffi::OsString {
    std::env::var_os("PYTHON")
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "python3".into())
}
