//! The CPU implementation of the backend operations: BLAS matrix products (through ndarray, which
//! calls `cblas_sgemm` / `cblas_dgemm` for contiguous operands), `im2col`/`col2im`, and the thread
//! setting of the BLAS library.

use crate::Real;
use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2};

/// C ← α·op(A)·op(B) + β·C for row-major buffers, where op(A) is m×k (A stored k×m when `trans_a`),
/// op(B) is k×n (B stored n×k when `trans_b`) and C is m×n. One BLAS gemm call.
///
/// **Panics** if a buffer is shorter than its shape.
#[allow(clippy::too_many_arguments)]
pub fn gemm<T: Real>(
    trans_a: bool,
    trans_b: bool,
    m: usize,
    n: usize,
    k: usize,
    alpha: T,
    a: &[T],
    b: &[T],
    beta: T,
    c: &mut [T],
) {
    let a = if trans_a {
        ArrayView2::from_shape((k, m), &a[..m * k])
            .expect("gemm: A shape")
            .reversed_axes()
    } else {
        ArrayView2::from_shape((m, k), &a[..m * k]).expect("gemm: A shape")
    };
    let b = if trans_b {
        ArrayView2::from_shape((n, k), &b[..n * k])
            .expect("gemm: B shape")
            .reversed_axes()
    } else {
        ArrayView2::from_shape((k, n), &b[..n * k]).expect("gemm: B shape")
    };
    let mut c = ArrayViewMut2::from_shape((m, n), &mut c[..m * n]).expect("gemm: C shape");
    general_mat_mul(alpha, &a, &b, beta, &mut c);
}

/// The shape of a zero-padded, strided 2-D cross-correlation's input and kernel: input
/// `[channels, height, width]` per sample, a `kernel × kernel` window moved `stride` pixels at a
/// time, `padding` zeros on every side. The output plane is `ho × wo` with
/// `ho = ⌊(height + 2·padding − kernel)/stride⌋ + 1` (likewise `wo`; PyTorch's `nn.Conv2d` with
/// dilation 1). The caller has checked that the kernel fits: `kernel ≤ height + 2·padding`,
/// likewise for the width, and `stride ≥ 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub kernel: usize,
    pub padding: usize,
    pub stride: usize,
}

impl ConvGeometry {
    /// (ho, wo), the output plane.
    pub fn output_size(&self) -> (usize, usize) {
        let side = |s: usize| (s + 2 * self.padding - self.kernel) / self.stride + 1;
        (side(self.height), side(self.width))
    }
    /// ho·wo.
    pub fn plane(&self) -> usize {
        let (ho, wo) = self.output_size();
        ho * wo
    }
    /// C·k·k, the rows of the im2col matrix (the inner dimension of the convolution's gemm).
    pub fn rows(&self) -> usize {
        self.channels * self.kernel * self.kernel
    }
    /// C·H·W, the input features per sample.
    pub fn input_len(&self) -> usize {
        self.channels * self.height * self.width
    }
}

/// `im2col` for a zero-padded, strided 2-D cross-correlation over a batch.
///
/// Input `x` is `[batch, channels, height, width]`; the output `cols` is
/// `[channels·k·k, batch·ho·wo]` with row `(c, ki, kj)` and column `(n, oy, ox)`, holding
/// `x[n, c, oy·s + ki − pad, ox·s + kj − pad]` (s the stride; 0 outside the image).
/// The convolution is then one gemm: `Y[o, (n,p)] = Σ_r W[o, r]·cols[r, (n,p)]`.
pub fn im2col<T: Real>(x: &[T], batch: usize, g: &ConvGeometry, cols: &mut [T]) {
    let ConvGeometry {
        channels,
        height,
        width,
        kernel: k,
        padding: pad,
        stride,
    } = *g;
    let (ho, wo) = g.output_size();
    let plane = ho * wo;
    let ncols = batch * plane;
    for c in 0..channels {
        for ki in 0..k {
            for kj in 0..k {
                let row = (c * k + ki) * k + kj;
                let dst_row = &mut cols[row * ncols..(row + 1) * ncols];
                for n in 0..batch {
                    let src = &x[(n * channels + c) * height * width..][..height * width];
                    let dst = &mut dst_row[n * plane..(n + 1) * plane];
                    for oy in 0..ho {
                        let iy = oy * stride + ki;
                        let d = &mut dst[oy * wo..(oy + 1) * wo];
                        if iy < pad || iy >= height + pad {
                            d.iter_mut().for_each(|v| *v = T::zero());
                            continue;
                        }
                        let srow = &src[(iy - pad) * width..(iy - pad + 1) * width];
                        if stride > 1 {
                            for (ox, v) in d.iter_mut().enumerate() {
                                let ix = ox * stride + kj;
                                *v = if ix < pad || ix >= width + pad {
                                    T::zero()
                                } else {
                                    srow[ix - pad]
                                };
                            }
                            continue;
                        }
                        // Valid ox: 0 <= ox + kj - pad < width.
                        let lo = pad.saturating_sub(kj).min(wo);
                        let hi = (width + pad).saturating_sub(kj).min(wo).max(lo);
                        // Inline loops (not memcpy calls): rows are short (ho ≤ 28).
                        for v in &mut d[..lo] {
                            *v = T::zero();
                        }
                        for (v, &s) in d[lo..hi]
                            .iter_mut()
                            .zip(&srow[lo + kj - pad..hi + kj - pad])
                        {
                            *v = s;
                        }
                        for v in &mut d[hi..] {
                            *v = T::zero();
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: `dx[n, c, iy, ix] += Σ dcols[(c,ki,kj), (n,oy,ox)]` over the positions
/// that read that pixel. `dx` must be zeroed by the caller when it is not accumulated into.
pub fn col2im<T: Real>(dcols: &[T], batch: usize, g: &ConvGeometry, dx: &mut [T]) {
    let ConvGeometry {
        channels,
        height,
        width,
        kernel: k,
        padding: pad,
        stride,
    } = *g;
    let (ho, wo) = g.output_size();
    let plane = ho * wo;
    let ncols = batch * plane;
    for c in 0..channels {
        for ki in 0..k {
            for kj in 0..k {
                let row = (c * k + ki) * k + kj;
                let src_row = &dcols[row * ncols..(row + 1) * ncols];
                for n in 0..batch {
                    let dst = &mut dx[(n * channels + c) * height * width..][..height * width];
                    let src = &src_row[n * plane..(n + 1) * plane];
                    for oy in 0..ho {
                        let iy = oy * stride + ki;
                        if iy < pad || iy >= height + pad {
                            continue;
                        }
                        let drow = &mut dst[(iy - pad) * width..(iy - pad + 1) * width];
                        let srow = &src[oy * wo..(oy + 1) * wo];
                        if stride > 1 {
                            for (ox, &s) in srow.iter().enumerate() {
                                let ix = ox * stride + kj;
                                if ix >= pad && ix < width + pad {
                                    drow[ix - pad] += s;
                                }
                            }
                            continue;
                        }
                        let lo = pad.saturating_sub(kj).min(wo);
                        let hi = (width + pad).saturating_sub(kj).min(wo).max(lo);
                        for (d, s) in drow[lo + kj - pad..hi + kj - pad]
                            .iter_mut()
                            .zip(&srow[lo..hi])
                        {
                            *d += *s;
                        }
                    }
                }
            }
        }
    }
}

/// How the linked BLAS sets its thread count, registered by the program that chose the provider.
static SET_BLAS_THREADS: std::sync::OnceLock<fn(usize)> = std::sync::OnceLock::new();

/// Registers how the linked BLAS sets its thread count. The library declares no provider's symbols:
/// the binaries, which choose the provider (`blas-openblas`), call this once at start; a second
/// registration is ignored.
pub fn register_blas_threads(set: fn(usize)) {
    let _ = SET_BLAS_THREADS.set(set);
}

/// Sets the number of threads the BLAS uses for each call, through the registered provider (a
/// program that registered none keeps its BLAS's default). Single-threaded BLAS makes every result
/// independent of the machine's core count (OpenBLAS partitions the output, not the inner sum, so in
/// practice results do not change with the thread count either, but only 1 thread is guaranteed).
pub fn set_blas_threads(n: usize) {
    #[cfg(test)]
    register_blas_threads(blas_openblas::set_threads);
    if let Some(set) = SET_BLAS_THREADS.get() {
        set(n.max(1));
    }
}

/// Measures the single-call sgemm rate in GFLOP/s for C[m×n] = A[m×k]·B[k×n] (2·m·n·k flops per
/// call), as the median of `reps` timed calls after a warm-up. Benchmarks divide their FLOPs by this
/// rate to print the compute floor next to their measured time.
pub fn measure_sgemm_gflops(m: usize, n: usize, k: usize, reps: usize) -> f64 {
    measure_gemm_gflops(false, false, m, n, k, reps)
}

/// [`measure_sgemm_gflops`] for C = op(A)·op(B) with the operands stored transposed as in
/// [`gemm`], so a benchmark can measure the rate of the exact products its hot path makes.
pub fn measure_gemm_gflops(
    trans_a: bool,
    trans_b: bool,
    m: usize,
    n: usize,
    k: usize,
    reps: usize,
) -> f64 {
    let a: Vec<f32> = (0..m * k).map(|i| ((i % 97) as f32) * 0.01).collect();
    let b: Vec<f32> = (0..k * n).map(|i| ((i % 89) as f32) * 0.01).collect();
    let mut c = vec![0f32; m * n];
    for _ in 0..3 {
        gemm(trans_a, trans_b, m, n, k, 1.0, &a, &b, 0.0, &mut c);
    }
    let mut times: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let t = std::time::Instant::now();
            gemm(trans_a, trans_b, m, n, k, 1.0, &a, &b, 0.0, &mut c);
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(|x, y| x.partial_cmp(y).expect("finite time"));
    2.0 * (m * n * k) as f64 / times[times.len() / 2] / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The thread count goes to the registered provider, at least 1.
    #[test]
    fn blas_threads_go_to_the_registered_provider() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static LAST: AtomicUsize = AtomicUsize::new(usize::MAX);
        // Under test the OpenBLAS provider is registered first; what it was given is checked by
        // blas-openblas's own test. Here: the call reaches it and never asks for 0 threads.
        set_blas_threads(0);
        let f: fn(usize) = *SET_BLAS_THREADS.get().expect("registered");
        assert_eq!(f as usize, blas_openblas::set_threads as fn(usize) as usize);
        fn record(n: usize) {
            LAST.store(n, Ordering::SeqCst);
        }
        // A second registration is ignored.
        register_blas_threads(record);
        set_blas_threads(3);
        assert_eq!(LAST.load(Ordering::SeqCst), usize::MAX);
        set_blas_threads(1);
    }

    /// A naive triple loop as the independent reference.
    fn naive(ta: bool, tb: bool, m: usize, n: usize, k: usize, a: &[f64], b: &[f64]) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                for l in 0..k {
                    let av = if ta { a[l * m + i] } else { a[i * k + l] };
                    let bv = if tb { b[j * k + l] } else { b[l * n + j] };
                    c[i * n + j] += av * bv;
                }
            }
        }
        c
    }

    #[test]
    fn gemm_matches_naive_in_all_transposes() {
        let (m, n, k) = (5, 7, 3);
        let a: Vec<f64> = (0..m * k).map(|i| (i as f64).sin()).collect();
        let b: Vec<f64> = (0..n * k).map(|i| (i as f64 * 0.7).cos()).collect();
        for ta in [false, true] {
            for tb in [false, true] {
                let mut c = vec![1.0; m * n];
                gemm(ta, tb, m, n, k, 2.0, &a, &b, 0.5, &mut c);
                let r = naive(ta, tb, m, n, k, &a, &b);
                for (x, y) in c.iter().zip(&r) {
                    assert!((x - (2.0 * y + 0.5)).abs() < 1e-12);
                }
            }
        }
    }

    #[test]
    fn col2im_is_the_adjoint_of_im2col() {
        for stride in [1, 2, 3] {
            im2col_and_col2im_with_stride(stride);
        }
    }

    fn im2col_and_col2im_with_stride(stride: usize) {
        // <im2col(x), c> = <x, col2im(c)> for random x, c.
        let (b, ch, h, w, k, pad) = (2, 3, 7, 6, 3, 1);
        let ho = (h + 2 * pad - k) / stride + 1;
        let wo = (w + 2 * pad - k) / stride + 1;
        let x: Vec<f64> = (0..b * ch * h * w)
            .map(|i| (i as f64 * 1.3).sin())
            .collect();
        let c: Vec<f64> = (0..ch * k * k * b * ho * wo)
            .map(|i| (i as f64 * 0.37).cos())
            .collect();
        let mut cols = vec![0.0; c.len()];
        let g = ConvGeometry {
            channels: ch,
            height: h,
            width: w,
            kernel: k,
            padding: pad,
            stride,
        };
        assert_eq!(g.output_size(), (ho, wo));
        im2col(&x, b, &g, &mut cols);
        let mut dx = vec![0.0; x.len()];
        col2im(&c, b, &g, &mut dx);
        let lhs: f64 = cols.iter().zip(&c).map(|(a, b)| a * b).sum();
        let rhs: f64 = x.iter().zip(&dx).map(|(a, b)| a * b).sum();
        assert!((lhs - rhs).abs() < 1e-10 * lhs.abs().max(1.0));
        // Every entry against the definition.
        for (cc, ki, kj) in (0..ch).flat_map(|c| (0..k * k).map(move |t| (c, t / k, t % k))) {
            for (n, oy, ox) in (0..b).flat_map(|n| (0..ho * wo).map(move |p| (n, p / wo, p % wo))) {
                let row = (cc * k + ki) * k + kj;
                let col = n * ho * wo + oy * wo + ox;
                let (iy, ix) = (oy * stride + ki, ox * stride + kj);
                let expect = if iy < pad || ix < pad || iy - pad >= h || ix - pad >= w {
                    0.0
                } else {
                    x[((n * ch + cc) * h + iy - pad) * w + ix - pad]
                };
                assert_eq!(cols[row * b * ho * wo + col], expect, "stride {stride}");
            }
        }
    }
}
