//! Every [`Backend`] operation against a plain host reference written here from its definition
//! (not from the CPU kernels), with explicit tolerances. The bodies are generic over the backend;
//! `backend_suite!` instantiates them for each backend compiled in (the CUDA backend of issue #17
//! adds one line).

use super::{AttentionHeads, Backend, ConvGeometry, CpuBackend, SgdStep};
use crate::model::{AvgPool2d, Elementwise, Gelu, LayerNorm, MaxPool2d, Relu, Scope, Tanh};
use crate::rng::{stream, NoiseSource, Purpose};
use crate::sample::sgld::StepCoefficients;

/// Deterministic test data in [−1, 1].
fn data(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = stream(seed, Purpose::Init, 7);
    (0..n).map(|_| rng.uniform_in(-1.0, 1.0)).collect()
}

fn down<B: Backend>(be: &B, buf: &B::Buffer<f64>) -> Vec<f64> {
    let mut host = vec![0.0; B::buffer_len(buf)];
    be.download(B::view(buf), &mut host);
    host
}

fn down32<B: Backend>(be: &B, buf: &B::Buffer<f32>) -> Vec<f32> {
    let mut host = vec![0.0; B::buffer_len(buf)];
    be.download(B::view(buf), &mut host);
    host
}

fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: {g} vs reference {w}"
        );
    }
}

pub(super) fn memory<B: Backend>(be: &B) {
    let x = data(10, 1);
    let mut buf = be.upload(&x);
    assert_eq!(down(be, &buf), x);
    assert_eq!(B::len(B::slice(B::view(&buf), 2..7)), 5);
    be.fill(B::slice_mut(B::view_mut(&mut buf), 2..4), 3.0);
    let mut want = x.clone();
    want[2] = 3.0;
    want[3] = 3.0;
    assert_eq!(down(be, &buf), want);
    let src = be.upload(&[9.0, 8.0]);
    {
        let (mut lo, _hi) = B::split_at_mut(B::view_mut(&mut buf), 5);
        be.copy(B::view(&src), B::slice_mut(B::reborrow(&mut lo), 0..2));
        assert_eq!(B::len(B::freeze(&lo)), 5);
    }
    want[0] = 9.0;
    want[1] = 8.0;
    assert_eq!(down(be, &buf), want);
    be.ensure_len(&mut buf, 12);
    want.extend([0.0, 0.0]);
    assert_eq!(down(be, &buf), want);
    let z = be.zeros::<u32>(3);
    assert_eq!(B::buffer_len(&z), 3);
    be.write(&[7.0, 6.0], B::slice_mut(B::view_mut(&mut buf), 10..12));
    want[10] = 7.0;
    want[11] = 6.0;
    assert_eq!(down(be, &buf), want, "write");
    // Where the memory is the host's, writing through it is writing the buffer.
    if let Some(host) = B::host_mut(B::slice_mut(B::view_mut(&mut buf), 4..6)) {
        assert_eq!(host.len(), 2);
        host.copy_from_slice(&[5.0, 4.0]);
        want[4] = 5.0;
        want[5] = 4.0;
    }
    assert_eq!(down(be, &buf), want, "host_mut");
}

/// The naive triple loop.
#[allow(clippy::too_many_arguments)]
fn naive_gemm(
    ta: bool,
    tb: bool,
    m: usize,
    n: usize,
    k: usize,
    alpha: f64,
    a: &[f64],
    b: &[f64],
    beta: f64,
    c: &mut [f64],
) {
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0;
            for l in 0..k {
                let av = if ta { a[l * m + i] } else { a[i * k + l] };
                let bv = if tb { b[j * k + l] } else { b[l * n + j] };
                s += av * bv;
            }
            c[i * n + j] = alpha * s + beta * c[i * n + j];
        }
    }
}

pub(super) fn gemm<B: Backend>(be: &B) {
    let (m, n, k) = (5, 7, 3);
    let a = be.upload(&data(m * k, 2));
    let b = be.upload(&data(n * k, 3));
    for ta in [false, true] {
        for tb in [false, true] {
            let c0 = data(m * n, 4);
            let mut c = be.upload(&c0);
            let mut want = c0.clone();
            be.gemm(
                ta,
                tb,
                m,
                n,
                k,
                2.0,
                B::view(&a),
                B::view(&b),
                0.5,
                B::view_mut(&mut c),
            );
            naive_gemm(
                ta,
                tb,
                m,
                n,
                k,
                2.0,
                &down(be, &a),
                &down(be, &b),
                0.5,
                &mut want,
            );
            assert_close(
                &down(be, &c),
                &want,
                1e-12,
                &format!("gemm ta={ta} tb={tb}"),
            );
        }
    }
    // Strided-batched: three products with gaps between the operands, in every transpose (the
    // attention uses all four), small and larger, β = −1 and β = 0 (C overwritten, NaN included).
    for (m, n, k) in [(m, n, k), (40, 33, 30)] {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            for beta in [-1.0, 0.0] {
                let (count, sa, sb, sc) = (3, m * k + 1, k * n + 2, m * n + 3);
                let a = data(count * sa, 5);
                let b = data(count * sb, 6);
                let mut c0 = data(count * sc, 7);
                if beta == 0.0 {
                    c0[0] = f64::NAN;
                }
                let mut c = be.upload(&c0);
                let (ab, bb) = (be.upload(&a), be.upload(&b));
                be.gemm_strided_batched(
                    ta,
                    tb,
                    m,
                    n,
                    k,
                    1.5,
                    B::view(&ab),
                    B::view(&bb),
                    beta,
                    B::view_mut(&mut c),
                    count,
                    (sa, sb, sc),
                );
                let mut want = c0.clone();
                for i in 0..count {
                    let block = &mut want[i * sc..i * sc + m * n];
                    if beta == 0.0 {
                        block.iter_mut().for_each(|v| *v = 0.0);
                    }
                    naive_gemm(
                        ta,
                        tb,
                        m,
                        n,
                        k,
                        1.5,
                        &a[i * sa..],
                        &b[i * sb..],
                        beta,
                        block,
                    );
                }
                assert_close(
                    &down(be, &c),
                    &want,
                    1e-12,
                    &format!("gemm_strided_batched {m}×{n}×{k} ta={ta} tb={tb} β={beta}"),
                );
            }
        }
    }
}

pub(super) fn convolution_lowering<B: Backend>(be: &B) {
    let g = ConvGeometry {
        channels: 3,
        height: 6,
        width: 5,
        kernel: 3,
        padding: 1,
        stride: 1,
    };
    let batch = 2;
    let (ho, wo) = g.output_size();
    let ncols = batch * ho * wo;
    let x = data(batch * g.input_len(), 8);
    let mut cols = be.zeros::<f64>(g.rows() * ncols);
    be.im2col(B::view(&be.upload(&x)), batch, &g, B::view_mut(&mut cols));
    // The definition: cols[(c,ki,kj), (n,oy,ox)] = x[n, c, oy+ki−pad, ox+kj−pad], 0 outside.
    let mut want = vec![0.0; g.rows() * ncols];
    let pad = g.padding as isize;
    for c in 0..g.channels {
        for ki in 0..g.kernel {
            for kj in 0..g.kernel {
                for n in 0..batch {
                    for oy in 0..ho {
                        for ox in 0..wo {
                            let iy = (oy + ki) as isize - pad;
                            let ix = (ox + kj) as isize - pad;
                            let row = (c * g.kernel + ki) * g.kernel + kj;
                            let col = n * ho * wo + oy * wo + ox;
                            if iy >= 0
                                && ix >= 0
                                && (iy as usize) < g.height
                                && (ix as usize) < g.width
                            {
                                want[row * ncols + col] =
                                    x[((n * g.channels + c) * g.height + iy as usize) * g.width
                                        + ix as usize];
                            }
                        }
                    }
                }
            }
        }
    }
    assert_eq!(down(be, &cols), want, "im2col");
    // col2im accumulates the adjoint: dx0 + Σ over the positions that read each pixel.
    let dcols = data(g.rows() * ncols, 9);
    let dx0 = data(batch * g.input_len(), 10);
    let mut dx = be.upload(&dx0);
    be.col2im(B::view(&be.upload(&dcols)), batch, &g, B::view_mut(&mut dx));
    let mut want = dx0.clone();
    for (r, row) in dcols.chunks_exact(ncols).enumerate() {
        let (c, ki, kj) = (
            r / (g.kernel * g.kernel),
            (r / g.kernel) % g.kernel,
            r % g.kernel,
        );
        for (col, &v) in row.iter().enumerate() {
            let (n, p) = (col / (ho * wo), col % (ho * wo));
            let iy = (p / wo + ki) as isize - pad;
            let ix = (p % wo + kj) as isize - pad;
            if iy >= 0 && ix >= 0 && (iy as usize) < g.height && (ix as usize) < g.width {
                want[((n * g.channels + c) * g.height + iy as usize) * g.width + ix as usize] += v;
            }
        }
    }
    assert_close(&down(be, &dx), &want, 1e-14, "col2im");

    // The layout changes: [batch, channels, plane] ↔ [channels, batch·plane], with a bias.
    let (channels, plane) = (3, 4);
    let src = data(batch * channels * plane, 11);
    let mut cm = be.zeros::<f64>(src.len());
    be.to_channel_major(
        B::view(&be.upload(&src)),
        batch,
        channels,
        plane,
        B::view_mut(&mut cm),
    );
    let cm_host = down(be, &cm);
    let bias = [0.5, -1.0, 2.0];
    let mut back = be.zeros::<f64>(src.len());
    be.channel_major_to_nchw_add_bias(
        B::view(&cm),
        B::view(&be.upload(&bias)),
        batch,
        plane,
        B::view_mut(&mut back),
    );
    let back = down(be, &back);
    for n in 0..batch {
        for c in 0..channels {
            for p in 0..plane {
                let v = src[(n * channels + c) * plane + p];
                assert_eq!(cm_host[c * batch * plane + n * plane + p], v);
                assert_eq!(back[(n * channels + c) * plane + p], v + bias[c]);
            }
        }
    }
}

/// The direct convolution against its definition y[n,o,p] = b[o] + Σ w[o,c,ki,kj]·x[n,c,p+(ki,kj)−pad]
/// (zero outside), written out here: the forward pass (written and accumulated), the weight and
/// bias gradients against the same sums, and the input gradient by its adjoint identity
/// ⟨W ⋆ x, d⟩ = ⟨x, W ⋆ᵀ d⟩, in f64.
pub(super) fn direct_convolution<B: Backend>(be: &B) {
    let g = ConvGeometry {
        channels: 2,
        height: 7,
        width: 6,
        kernel: 3,
        padding: 1,
        stride: 1,
    };
    let (batch, o) = (5, 3);
    let (ho, wo) = g.output_size();
    let (plane, in_len, r) = (ho * wo, g.input_len(), g.rows());
    let (x, w, b) = (data(batch * in_len, 50), data(o * r, 51), data(o, 52));
    let d = data(batch * o * plane, 53);
    let pad = g.padding as isize;
    // tap(n, c, ki, kj, oy, ox): the input under that tap, 0 outside.
    let tap = |n: usize, c: usize, ki: usize, kj: usize, oy: usize, ox: usize| {
        let (iy, ix) = ((oy + ki) as isize - pad, (ox + kj) as isize - pad);
        if iy < 0 || ix < 0 || iy as usize >= g.height || ix as usize >= g.width {
            0.0
        } else {
            x[n * in_len + (c * g.height + iy as usize) * g.width + ix as usize]
        }
    };
    let mut want_y = vec![0.0; batch * o * plane];
    let mut want_dw = vec![0.0; o * r];
    let mut want_db = vec![0.0; o];
    for n in 0..batch {
        for oc in 0..o {
            for oy in 0..ho {
                for ox in 0..wo {
                    let at = (n * o + oc) * plane + oy * wo + ox;
                    let mut sum = b[oc];
                    for c in 0..g.channels {
                        for ki in 0..g.kernel {
                            for kj in 0..g.kernel {
                                let wi = oc * r + (c * g.kernel + ki) * g.kernel + kj;
                                sum += w[wi] * tap(n, c, ki, kj, oy, ox);
                                want_dw[wi] += 0.5 * d[at] * tap(n, c, ki, kj, oy, ox);
                            }
                        }
                    }
                    want_y[at] = sum;
                    want_db[oc] += 0.5 * d[at];
                }
            }
        }
    }
    let (xb, wb, bb, db_) = (be.upload(&x), be.upload(&w), be.upload(&b), be.upload(&d));
    let mut work = be.zeros::<f64>(0);
    let mut y = be.zeros::<f64>(batch * o * plane);
    be.conv2d_forward(
        &g,
        o,
        B::view(&wb),
        Some(B::view(&bb)),
        B::view(&xb),
        batch,
        false,
        B::view_mut(&mut y),
        &mut work,
    );
    assert_close(&down(be, &y), &want_y, 1e-14, "conv2d_forward");
    // Accumulated without a bias: y + W ⋆ x.
    be.conv2d_forward(
        &g,
        o,
        B::view(&wb),
        None,
        B::view(&xb),
        batch,
        true,
        B::view_mut(&mut y),
        &mut work,
    );
    let twice: Vec<f64> = (0..want_y.len())
        .map(|i| 2.0 * want_y[i] - b[(i / plane) % o])
        .collect();
    assert_close(&down(be, &y), &twice, 1e-14, "conv2d_forward (accumulate)");
    let mut dw = be.upload(&vec![9.0; o * r]);
    be.conv2d_weight_grad(
        &g,
        o,
        B::view(&xb),
        B::view(&db_),
        batch,
        0.5,
        false,
        B::view_mut(&mut dw),
        &mut work,
    );
    assert_close(&down(be, &dw), &want_dw, 1e-14, "conv2d_weight_grad");
    let mut dbias = be.upload(&vec![1.0; o]);
    be.conv2d_bias_grad(
        B::view(&db_),
        batch,
        o,
        plane,
        0.5,
        true,
        B::view_mut(&mut dbias),
    );
    let want_db1: Vec<f64> = want_db.iter().map(|v| v + 1.0).collect();
    assert_close(&down(be, &dbias), &want_db1, 1e-14, "conv2d_bias_grad");
    let mut dx = be.upload(&vec![3.0; batch * in_len]);
    be.conv2d_input_grad(
        &g,
        o,
        B::view(&wb),
        B::view(&db_),
        batch,
        false,
        B::view_mut(&mut dx),
        &mut work,
    );
    let lhs: f64 = (0..want_y.len())
        .map(|i| (want_y[i] - b[(i / plane) % o]) * d[i])
        .sum();
    let rhs: f64 = x.iter().zip(&down(be, &dx)).map(|(a, c)| a * c).sum();
    assert!(
        (lhs - rhs).abs() < 1e-12,
        "conv2d_input_grad: {lhs} vs {rhs}"
    );
}

pub(super) fn bias_and_sums<B: Backend>(be: &B) {
    let (rows, width) = (4, 3);
    let y0 = data(rows * width, 12);
    let bias = data(width, 13);
    let bb = be.upload(&bias);
    let mut y = be.upload(&y0);
    be.add_bias_rows(B::view_mut(&mut y), B::view(&bb));
    let want: Vec<f64> = (0..rows * width).map(|i| y0[i] + bias[i % width]).collect();
    assert_eq!(down(be, &y), want, "add_bias_rows");
    // Planes: y [width channels, rows positions].
    let mut y = be.upload(&y0);
    be.add_bias_planes(B::view_mut(&mut y), B::view(&bb));
    let want: Vec<f64> = (0..rows * width).map(|i| y0[i] + bias[i / rows]).collect();
    assert_eq!(down(be, &y), want, "add_bias_planes");
    // Column sums: dst[j] += α Σ_r src[r, j].
    let d0 = data(width, 14);
    let mut d = be.upload(&d0);
    be.add_column_sums(0.5, B::view(&be.upload(&y0)), B::view_mut(&mut d));
    let want: Vec<f64> = (0..width)
        .map(|j| d0[j] + 0.5 * (0..rows).map(|r| y0[r * width + j]).sum::<f64>())
        .collect();
    assert_close(&down(be, &d), &want, 1e-14, "add_column_sums");
    // Row sums, accumulated and written.
    let r0 = data(rows, 15);
    for accumulate in [true, false] {
        let mut r = be.upload(&r0);
        be.row_sums(
            -2.0,
            B::view(&be.upload(&y0)),
            accumulate,
            B::view_mut(&mut r),
        );
        let want: Vec<f64> = (0..rows)
            .map(|i| {
                let s = -2.0 * y0[i * width..(i + 1) * width].iter().sum::<f64>();
                if accumulate {
                    r0[i] + s
                } else {
                    s
                }
            })
            .collect();
        assert_close(&down(be, &r), &want, 1e-14, "row_sums");
    }
}

/// The activation ops against their definitions from φ, φ′ and φ″ written out here.
pub(super) fn activations<B: Backend>(be: &B) {
    fn check<B: Backend, A: Elementwise>(
        be: &B,
        act: &A,
        phi: fn(f64) -> f64,
        d1: fn(f64) -> f64,
        d2: fn(f64) -> f64,
    ) {
        let n = 11;
        let x = data(n, 16);
        let (dy, rx, rdy) = (data(n, 17), data(n, 18), data(n, 19));
        let xb = be.upload(&x);
        let mut y = be.zeros::<f64>(n);
        be.activation_forward(act, B::view(&xb), B::view_mut(&mut y));
        let what = act.module();
        assert_close(
            &down(be, &y),
            &x.iter().map(|&v| phi(v)).collect::<Vec<_>>(),
            1e-14,
            what,
        );
        let (dyb, rxb, rdyb) = (be.upload(&dy), be.upload(&rx), be.upload(&rdy));
        let mut out = be.zeros::<f64>(n);
        be.activation_backward(
            act,
            B::view(&xb),
            B::view(&y),
            B::view(&dyb),
            B::view_mut(&mut out),
        );
        let want: Vec<f64> = (0..n).map(|i| d1(x[i]) * dy[i]).collect();
        assert_close(&down(be, &out), &want, 1e-13, "backward");
        be.activation_r_forward(
            act,
            B::view(&xb),
            B::view(&y),
            Some(B::view(&rxb)),
            B::view_mut(&mut out),
        );
        let want: Vec<f64> = (0..n).map(|i| d1(x[i]) * rx[i]).collect();
        assert_close(&down(be, &out), &want, 1e-13, "r_forward");
        be.activation_r_forward(act, B::view(&xb), B::view(&y), None, B::view_mut(&mut out));
        assert_eq!(
            down(be, &out),
            vec![0.0; n],
            "r_forward of a constant input"
        );
        for second in [false, true] {
            be.activation_r_backward(
                act,
                B::view(&xb),
                B::view(&y),
                B::view(&rdyb),
                second.then(|| (B::view(&rxb), B::view(&dyb))),
                B::view_mut(&mut out),
            );
            let want: Vec<f64> = (0..n)
                .map(|i| {
                    d1(x[i]) * rdy[i]
                        + if second {
                            d2(x[i]) * rx[i] * dy[i]
                        } else {
                            0.0
                        }
                })
                .collect();
            assert_close(&down(be, &out), &want, 1e-13, "r_backward");
        }
        // φ″ kept for the R-backward, and added back as (φ″·R{x})·δ.
        be.activation_second_derivative(act, B::view(&xb), B::view(&y), B::view_mut(&mut out));
        let d2s = down(be, &out);
        let want: Vec<f64> = x.iter().map(|&v| d2(v)).collect();
        assert_close(&d2s, &want, 1e-13, "second_derivative");
        let mut acc = be.upload(&rdy);
        be.add_triple_product(
            B::view(&out),
            B::view(&rxb),
            B::view(&dyb),
            B::view_mut(&mut acc),
        );
        let want: Vec<f64> = (0..n).map(|i| rdy[i] + d2s[i] * rx[i] * dy[i]).collect();
        assert_eq!(down(be, &acc), want, "add_triple_product");
    }
    check(
        be,
        &Relu { features: 11 },
        |v| v.max(0.0),
        |v| if v > 0.0 { 1.0 } else { 0.0 },
        |_| 0.0,
    );
    check(
        be,
        &Tanh { features: 11 },
        f64::tanh,
        |v| 1.0 / v.cosh().powi(2),
        |v| -2.0 * v.tanh() / v.cosh().powi(2),
    );
    // GELU: Φ from statrs's erf, ϕ the normal density; φ′ = Φ + xϕ, φ″ = ϕ(2 − x²).
    fn cdf(v: f64) -> f64 {
        0.5 * (1.0 + statrs::function::erf::erf(v / 2f64.sqrt()))
    }
    fn pdf(v: f64) -> f64 {
        (-0.5 * v * v).exp() / (2.0 * std::f64::consts::PI).sqrt()
    }
    check(
        be,
        &Gelu { features: 11 },
        |v| v * cdf(v),
        |v| cdf(v) + v * pdf(v),
        |v| pdf(v) * (2.0 - v * v),
    );
}

pub(super) fn pooling<B: Backend>(be: &B) {
    // 2×2 windows with stride 2 (the LeNet's), overlapping 3×3 windows with stride 2, 2×2 with
    // stride 1 and 3×3 with stride 3, all in floor mode.
    for (kernel, stride) in [(2, 2), (3, 2), (2, 1), (3, 3)] {
        max_pooling(be, kernel, stride);
    }
}

fn max_pooling<B: Backend>(be: &B, kernel: usize, stride: usize) {
    // Two samples, two channels, 5×4 (rows or columns past the last whole window are dropped);
    // one tie and one NaN.
    let (batch, channels, h, w) = (2, 2, 5, 4);
    let pool = MaxPool2d {
        channels,
        height: h,
        width: w,
        kernel,
        stride,
    };
    let (ho, wo) = ((h - kernel) / stride + 1, (w - kernel) / stride + 1);
    assert_eq!(pool.output_size(), (ho, wo));
    let inputs = channels * h * w;
    let outputs = channels * ho * wo;
    let mut x = data(batch * inputs, 20);
    x[0] = 0.9;
    x[1] = 0.9; // a tie in the first window: the first in scan order wins
    x[inputs + 2 * w + 3] = f64::NAN; // a NaN wins its window
    let xb = be.upload(&x);
    let mut y = be.zeros::<f64>(batch * outputs);
    let mut win = be.zeros::<u32>(batch * outputs);
    be.max_pool2d(
        &pool,
        B::view(&xb),
        batch,
        B::view_mut(&mut y),
        B::view_mut(&mut win),
    );
    let (y, mut winners) = (down(be, &y), vec![0u32; batch * outputs]);
    be.download(B::view(&win), &mut winners);
    for n in 0..batch {
        for c in 0..channels {
            for i in 0..ho {
                for j in 0..wo {
                    let o = n * outputs + (c * ho + i) * wo + j;
                    let cands: Vec<usize> = (0..kernel * kernel)
                        .map(|t| (t / kernel, t % kernel))
                        .map(|(di, dj)| c * h * w + (stride * i + di) * w + stride * j + dj)
                        .collect();
                    let vals: Vec<f64> = cands.iter().map(|&k| x[n * inputs + k]).collect();
                    let best = match vals.iter().position(|v| v.is_nan()) {
                        Some(p) => p,
                        None => {
                            (0..vals.len()).fold(0, |b, k| if vals[k] > vals[b] { k } else { b })
                        }
                    };
                    let what = format!("winner of output {o}, kernel {kernel} stride {stride}");
                    assert_eq!(winners[o] as usize, cands[best], "{what}");
                    assert!(y[o] == vals[best] || (y[o].is_nan() && vals[best].is_nan()));
                }
            }
        }
    }
    // Gather and its adjoint, the max-pool adjoint: <gather(x), d> = <x, adjoint(d)>, and the
    // adjoint zeroes first.
    let xs = data(batch * inputs, 21);
    let d = data(batch * outputs, 22);
    let mut g = be.zeros::<f64>(batch * outputs);
    be.gather(
        B::view(&be.upload(&xs)),
        B::view(&win),
        inputs,
        outputs,
        B::view_mut(&mut g),
    );
    let g = down(be, &g);
    for n in 0..batch {
        for o in 0..outputs {
            assert_eq!(
                g[n * outputs + o],
                xs[n * inputs + winners[n * outputs + o] as usize]
            );
        }
    }
    let mut s = be.upload(&data(batch * inputs, 23));
    be.max_pool2d_adjoint(
        &pool,
        B::view(&be.upload(&d)),
        B::view(&win),
        None,
        batch,
        B::view_mut(&mut s),
    );
    let s = down(be, &s);
    let lhs: f64 = g.iter().zip(&d).map(|(a, b)| a * b).sum();
    let rhs: f64 = xs.iter().zip(&s).map(|(a, b)| a * b).sum();
    assert!((lhs - rhs).abs() < 1e-12, "{lhs} vs {rhs}");
    // The max-pool adjoint is the scatter of d to the winners, and gated by the pool's output y
    // it zeroes the terms where y ≤ 0 (or is a NaN).
    let y: Vec<f64> = y
        .iter()
        .enumerate()
        .map(|(o, &v)| if o % 3 == 0 { -v.abs() } else { v })
        .collect();
    let (db, yb) = (be.upload(&d), be.upload(&y));
    for gate in [false, true] {
        let mut a = be.upload(&data(batch * inputs, 25));
        let gv = gate.then(|| B::view(&yb));
        be.max_pool2d_adjoint(
            &pool,
            B::view(&db),
            B::view(&win),
            gv,
            batch,
            B::view_mut(&mut a),
        );
        let mut want = vec![0.0; batch * inputs];
        for n in 0..batch {
            for o in 0..outputs {
                let k = n * outputs + o;
                let open = !gate || y[k] > 0.0;
                want[n * inputs + winners[k] as usize] += if open { d[k] } else { 0.0 };
            }
        }
        assert_eq!(down(be, &a), want, "max-pool adjoint, gated {gate}");
    }
}

pub(super) fn softmax_cross_entropy<B: Backend>(be: &B) {
    let (batch, classes) = (4, 5);
    let mut z = data(batch * classes, 24);
    z[7] = 40.0; // a large logit: the row maximum keeps it finite
    let labels = [2, 1, 4, 0];
    let zb = be.upload(&z);
    let mut d = be.zeros::<f64>(batch * classes);
    let scale = 0.25;
    let (total, correct) = be.softmax_cross_entropy(
        B::view(&zb),
        &labels,
        classes,
        scale,
        Some(B::view_mut(&mut d)),
    );
    let (total_only, correct_only) =
        be.softmax_cross_entropy(B::view(&zb), &labels, classes, scale, None);
    let (mut want_total, mut want_correct) = (0.0, 0);
    let mut want_d = vec![0.0; batch * classes];
    let mut p = vec![0.0; batch * classes];
    for n in 0..batch {
        let row = &z[n * classes..(n + 1) * classes];
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        want_total += lse - row[labels[n]];
        let arg = (0..classes).fold(0, |b, k| if row[k] > row[b] { k } else { b });
        want_correct += usize::from(arg == labels[n]);
        for k in 0..classes {
            p[n * classes + k] = (row[k] - lse).exp();
            want_d[n * classes + k] =
                scale * (p[n * classes + k] - if k == labels[n] { 1.0 } else { 0.0 });
        }
    }
    assert!((total - want_total).abs() < 1e-12 * want_total.abs().max(1.0));
    assert_eq!(total, total_only);
    assert_eq!((correct, correct_only), (want_correct, want_correct));
    assert_close(
        &down(be, &d),
        &want_d,
        1e-14,
        "softmax_cross_entropy gradient",
    );
    // R-operator: scale·(diag(p) − p pᵀ)·rz per row.
    let rz = data(batch * classes, 25);
    let mut rg = be.zeros::<f64>(batch * classes);
    be.softmax_cross_entropy_r(
        B::view(&zb),
        B::view(&be.upload(&rz)),
        classes,
        scale,
        B::view_mut(&mut rg),
    );
    let mut want = vec![0.0; batch * classes];
    for n in 0..batch {
        for i in 0..classes {
            for j in 0..classes {
                let pi = p[n * classes + i];
                let h = if i == j { pi } else { 0.0 } - pi * p[n * classes + j];
                want[n * classes + i] += scale * h * rz[n * classes + j];
            }
        }
    }
    assert_close(&down(be, &rg), &want, 1e-14, "softmax_cross_entropy_r");
}

/// The mean squared error (`F.mse_loss`'s per-sample sums), its gradient and its R-operator against
/// the formulas written out.
pub(super) fn mean_squared_error<B: Backend>(be: &B) {
    let (batch, k) = (4, 3);
    let (z, y) = (data(batch * k, 40), data(batch * k, 41));
    let zb = be.upload(&z);
    let mut d = be.zeros::<f64>(batch * k);
    let scale = 0.25;
    let total = be.mean_squared_error(B::view(&zb), &y, k, scale, Some(B::view_mut(&mut d)));
    let total_only = be.mean_squared_error(B::view(&zb), &y, k, scale, None);
    let want_total: f64 = (0..batch)
        .map(|n| {
            (0..k)
                .map(|j| (z[n * k + j] - y[n * k + j]).powi(2))
                .sum::<f64>()
                / k as f64
        })
        .sum();
    assert!((total - want_total).abs() < 1e-14 * want_total.max(1.0));
    assert_eq!(total, total_only);
    let want_d: Vec<f64> = (0..batch * k)
        .map(|i| scale * 2.0 / k as f64 * (z[i] - y[i]))
        .collect();
    assert_close(&down(be, &d), &want_d, 1e-15, "mean_squared_error gradient");
    let rz = data(batch * k, 42);
    let mut rg = be.zeros::<f64>(batch * k);
    be.mse_r_gradient(B::view(&be.upload(&rz)), k, scale, B::view_mut(&mut rg));
    let want: Vec<f64> = rz.iter().map(|r| scale * 2.0 / k as f64 * r).collect();
    assert_close(&down(be, &rg), &want, 1e-15, "mse_r_gradient");
}

/// Average pooling and its adjoint against window means written out (overlapping windows on a
/// 5×4 plane, kernel 3, stride 1), and ⟨P·x, d⟩ = ⟨x, Pᵀ·d⟩.
pub(super) fn average_pooling<B: Backend>(be: &B) {
    let pool = AvgPool2d {
        channels: 2,
        height: 5,
        width: 4,
        kernel: 3,
        stride: 1,
    };
    let (planes, (ho, wo)) = (2 * 2, pool.output_size());
    let x = data(planes * 20, 43);
    let mut y = be.zeros::<f64>(planes * ho * wo);
    be.avg_pool2d(&pool, B::view(&be.upload(&x)), planes, B::view_mut(&mut y));
    let mut want = vec![0.0; planes * ho * wo];
    for p in 0..planes {
        for i in 0..ho {
            for j in 0..wo {
                let mut sum = 0.0;
                for a in 0..3 {
                    for b in 0..3 {
                        sum += x[p * 20 + (i + a) * 4 + j + b];
                    }
                }
                want[(p * ho + i) * wo + j] = sum / 9.0;
            }
        }
    }
    assert_close(&down(be, &y), &want, 1e-15, "avg_pool2d");
    let d = data(planes * ho * wo, 44);
    let mut dx = be.upload(&vec![7.0; planes * 20]);
    be.avg_pool2d_adjoint(&pool, B::view(&be.upload(&d)), planes, B::view_mut(&mut dx));
    let lhs: f64 = want.iter().zip(&d).map(|(a, b)| a * b).sum();
    let rhs: f64 = x.iter().zip(&down(be, &dx)).map(|(a, b)| a * b).sum();
    assert!(
        (lhs - rhs).abs() < 1e-13,
        "avg_pool2d_adjoint: {lhs} vs {rhs}"
    );
}

/// LayerNorm's forward pass against μ, σ² (biased) and y = γ ⊙ (x − μ)/√(σ² + ε) + β written out.
pub(super) fn layer_norm<B: Backend>(be: &B) {
    let mut tensors = Vec::new();
    let ln = LayerNorm::new(&mut Scope::root(&mut tensors), 6, 3, 1e-3, true);
    let (batch, d) = (2, 3);
    let params = data(2 * d, 45);
    let x = data(batch * 6, 46);
    let mut y = be.zeros::<f64>(batch * 6);
    be.layer_norm_forward(
        &ln,
        B::view(&be.upload(&params)),
        B::view(&be.upload(&x)),
        batch,
        B::view_mut(&mut y),
    );
    let mut want = vec![0.0; batch * 6];
    for (row, out) in x.chunks(d).zip(want.chunks_mut(d)) {
        let mu = row.iter().sum::<f64>() / d as f64;
        let var = row.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / d as f64;
        for j in 0..d {
            out[j] = params[j] * (row[j] - mu) / (var + 1e-3).sqrt() + params[d + j];
        }
    }
    assert_close(&down(be, &y), &want, 1e-14, "layer_norm_forward");
}

pub(super) fn vectors<B: Backend>(be: &B) {
    let (x, y0) = (data(13, 26), data(13, 27));
    let (xb, mut y) = (be.upload(&x), be.upload(&y0));
    be.axpy(-0.5, B::view(&xb), B::view_mut(&mut y));
    let want: Vec<f64> = (0..13).map(|i| y0[i] - 0.5 * x[i]).collect();
    assert_close(&down(be, &y), &want, 1e-15, "axpy");
    // scaled_copy: the bits of copy + scale, into a destination holding other values.
    let mut copied = be.upload(&x);
    be.scaled_copy(-0.3, B::view(&y), B::view_mut(&mut copied));
    let mut y2 = be.upload(&down(be, &y));
    be.scale(-0.3, B::view_mut(&mut y2));
    assert_eq!(down(be, &copied), down(be, &y2), "scaled_copy");
    assert_ne!(down(be, &copied), down(be, &y));
    be.scale(3.0, B::view_mut(&mut y));
    let want: Vec<f64> = want.iter().map(|v| 3.0 * v).collect();
    assert_close(&down(be, &y), &want, 1e-15, "scale");
    let dot: f64 = x.iter().zip(&y0).map(|(a, b)| a * b).sum();
    assert!((be.dot(B::view(&xb), B::view(&be.upload(&y0))) - dot).abs() < 1e-14);
    assert!((be.sum(B::view(&xb)) - x.iter().sum::<f64>()).abs() < 1e-14);
    // 13 entries: one block of eight lanes and a tail of five.
    let sq: f64 = x.iter().map(|a| a * a).sum();
    assert!((be.sum_squares(B::view(&xb)) - sq).abs() < 1e-14 * sq);
    let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    let sq32: f64 = x32.iter().map(|&a| f64::from(a) * f64::from(a)).sum();
    assert!((be.sum_squares(B::view(&be.upload(&x32))) - sq32).abs() < 1e-14 * sq32);
    let (u, w) = (data(3, 37), data(4, 38));
    let mut o = be.zeros::<f64>(12);
    be.outer(
        0.5,
        B::view(&be.upload(&u)),
        B::view(&be.upload(&w)),
        B::view_mut(&mut o),
    );
    let want: Vec<f64> = (0..12).map(|k| 0.5 * u[k / 4] * w[k % 4]).collect();
    assert_close(&down(be, &o), &want, 1e-15, "outer");
    let (a, d) = (data(13, 28), data(13, 29));
    for c in [1.0, 0.0] {
        let mut y = be.upload(&y0);
        be.add_gram_hadamard(
            2.0,
            c,
            B::view(&be.upload(&a)),
            B::view(&be.upload(&d)),
            B::view_mut(&mut y),
        );
        let want: Vec<f64> = (0..13).map(|i| y0[i] + 2.0 * (a[i] + c) * d[i]).collect();
        assert_close(&down(be, &y), &want, 1e-15, "add_gram_hadamard");
    }
}

pub(super) fn sgd<B: Backend>(be: &B) {
    let n = 21;
    let p0: Vec<f32> = data(n, 30).iter().map(|&v| v as f32).collect();
    let d: Vec<f32> = data(n, 31).iter().map(|&v| v as f32).collect();
    let b0: Vec<f32> = data(n, 32).iter().map(|&v| v as f32).collect();
    let db = be.upload(&d);
    for nesterov in [false, true] {
        let c = SgdStep {
            lr: 0.1,
            momentum: 0.9,
            one_minus_dampening: 0.75,
            nesterov,
        };
        // Momentum step, in f64 from its definition.
        let (mut p, mut b) = (be.upload(&p0), be.upload(&b0));
        be.sgd_step(
            B::view_mut(&mut p),
            B::view(&db),
            Some(B::view_mut(&mut b)),
            &c,
        );
        let (p, b) = (down32(be, &p), down32(be, &b));
        for i in 0..n {
            let nb = 0.9 * b0[i] as f64 + 0.75 * d[i] as f64;
            let step = if nesterov { d[i] as f64 + 0.9 * nb } else { nb };
            assert!((b[i] as f64 - nb).abs() < 1e-6);
            assert!((p[i] as f64 - (p0[i] as f64 - 0.1 * step)).abs() < 1e-6);
        }
        // First momentum step (buffer = d) and plain SGD.
        let mut p = be.upload(&p0);
        be.sgd_first_momentum_step(B::view_mut(&mut p), B::view(&db), B::view(&db), &c);
        let p = down32(be, &p);
        for i in 0..n {
            let step = if nesterov { 1.9 } else { 1.0 } * d[i] as f64;
            assert!((p[i] as f64 - (p0[i] as f64 - 0.1 * step)).abs() < 1e-6);
        }
        let mut p = be.upload(&p0);
        be.sgd_step(B::view_mut(&mut p), B::view(&db), None, &c);
        let p = down32(be, &p);
        for i in 0..n {
            assert!((p[i] as f64 - (p0[i] as f64 - 0.1 * d[i] as f64)).abs() < 1e-6);
        }
    }
}

/// The fused SGLD step against its definition in f64 on the same noise (a clone of the generator
/// filled through `fill_normal`), with and without a bounding box, at a length with a tail.
pub(super) fn sgld<B: Backend>(be: &B) {
    let n = 1037;
    let to32 = |v: Vec<f64>| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let w0 = to32(data(n, 33));
    let ws = to32(data(n, 34).iter().map(|v| 0.9 * v).collect());
    let g = to32(data(n, 35));
    let s0 = to32(data(n, 36).iter().map(|v| 0.01 * v).collect());
    let c = StepCoefficients {
        half_eps: 0.05,
        sqrt_eps: 0.1f32.sqrt(),
        nbeta: 2.0,
        gamma: 3.0,
        decay: 0.1,
    };
    for bound in [None, Some(0.12f32)] {
        let mut noise = NoiseSource::from_stream(&mut stream(3, Purpose::Chain, 0));
        let mut xi = be.zeros::<f32>(n);
        be.fill_normal(&mut noise.clone(), B::view_mut(&mut xi));
        let xi = down32(be, &xi);
        let mean = xi.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        let var = xi.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(
            mean.abs() < 0.15 && (var - 1.0).abs() < 0.15,
            "{mean} {var}"
        );
        let (mut w, mut step) = (be.upload(&w0), be.upload(&s0));
        let sums = be.sgld_update(
            B::view_mut(&mut w),
            B::view_mut(&mut step),
            B::view(&be.upload(&ws)),
            B::view(&be.upload(&g)),
            &mut noise,
            &c,
            bound,
        );
        let (w, step) = (down32(be, &w), down32(be, &step));
        let (mut sdd, mut nsdd, mut dn2, mut loc, mut dist2, mut clamped) =
            (0.0, 0.0, 0.0, 0.0, 0.0, 0);
        for i in 0..n {
            let (wt, wst) = (w0[i] as f64, ws[i] as f64);
            let h = 0.05 * (2.0 * g[i] as f64 + 3.0 * (wt - wst) + 0.1 * wt);
            let free = wt - h + (0.1f64).sqrt() * xi[i] as f64;
            let next = match bound {
                Some(b) => free.clamp(wst - b as f64, wst + b as f64),
                None => free,
            };
            if bound.is_some() && (free - next).abs() > 1e-6 {
                clamped += 1;
            }
            let ns = next - wt;
            sdd += s0[i] as f64 * h;
            nsdd += ns * h;
            dn2 += h * h;
            loc += -ns * (2.0 * (wt - wst) + ns);
            dist2 += (wt - wst).powi(2);
            assert!((w[i] as f64 - next).abs() < 1e-5, "w[{i}]");
            assert!((step[i] as f64 - ns).abs() < 1e-5, "step[{i}]");
        }
        for (got, want, what) in [
            (sums.step_dot_drift, sdd, "Δ·h"),
            (sums.next_step_dot_drift, nsdd, "Δ′·h"),
            (sums.drift_norm2, dn2, "‖h‖²"),
            (sums.next_localisation_diff, loc, "localisation"),
            (sums.distance2, dist2, "‖w − w*‖²"),
        ] {
            assert!(
                (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                "{what}: {got} vs {want}"
            );
        }
        assert!(sums.finite);
        if bound.is_some() {
            assert!(clamped > 0);
            // Coordinates within float rounding of the box may count either way.
            assert!((sums.clamped as i64 - clamped as i64).abs() <= 2);
        } else {
            assert_eq!(sums.clamped, 0);
        }
    }
}

/// `permute` against index arithmetic on a [2, 3, 4, 5] array for two axis orders (the attention's
/// head split [B, S, 3, H, d] → [3, B, H, S, d] and its inverse, and a swap of the middle axes).
pub(super) fn sequences_permute<B: Backend>(be: &B) {
    let dims = [2usize, 3, 4, 5];
    let x = data(120, 41);
    let at = |i: [usize; 4]| ((i[0] * 3 + i[1]) * 4 + i[2]) * 5 + i[3];
    for axes in [[0usize, 2, 1, 3], [3, 1, 0, 2]] {
        let out_dims: Vec<usize> = axes.iter().map(|&a| dims[a]).collect();
        let mut want = Vec::new();
        for a in 0..out_dims[0] {
            for b in 0..out_dims[1] {
                for c in 0..out_dims[2] {
                    for d in 0..out_dims[3] {
                        let mut i = [0; 4];
                        for (k, v) in [a, b, c, d].into_iter().enumerate() {
                            i[axes[k]] = v;
                        }
                        want.push(x[at(i)]);
                    }
                }
            }
        }
        let src = be.upload(&x);
        let mut dst = be.zeros::<f64>(120);
        be.permute(B::view(&src), &dims, &axes, B::view_mut(&mut dst));
        assert_eq!(down(be, &dst), want, "permute {axes:?}");
    }
    // The head split and merge are inverse permutations.
    let (dims5, split, merge) = (
        [2usize, 3, 3, 2, 2],
        [2usize, 0, 3, 1, 4],
        [1usize, 3, 0, 2, 4],
    );
    let x = data(72, 42);
    let (src, mut mid, mut back) = (be.upload(&x), be.zeros::<f64>(72), be.zeros::<f64>(72));
    be.permute(B::view(&src), &dims5, &split, B::view_mut(&mut mid));
    let mid_dims: Vec<usize> = split.iter().map(|&a| dims5[a]).collect();
    be.permute(B::view(&mid), &mid_dims, &merge, B::view_mut(&mut back));
    assert_eq!(down(be, &back), x);
}

/// The row softmax (causal and not) against exp/sum written out, its Jacobian product against
/// J = diag(p) − p·pᵀ applied densely, and the second-order term against central differences of
/// J(s)·u along R{s}.
pub(super) fn sequences_softmax<B: Backend>(be: &B) {
    let w = 4;
    let rows = 8;
    let s = data(rows * w, 43);
    let softmax = |s: &[f64], causal: bool| -> Vec<f64> {
        let mut out = vec![0.0; s.len()];
        for r in 0..s.len() / w {
            let live = if causal { r % w + 1 } else { w };
            let z: f64 = (0..live).map(|j| s[r * w + j].exp()).sum();
            for j in 0..live {
                out[r * w + j] = s[r * w + j].exp() / z;
            }
        }
        out
    };
    let jvp = |p: &[f64], u: &[f64]| -> Vec<f64> {
        let mut out = vec![0.0; p.len()];
        for r in 0..p.len() / w {
            for i in 0..w {
                out[r * w + i] = (0..w)
                    .map(|j| {
                        let delta = if i == j { p[r * w + i] } else { 0.0 };
                        (delta - p[r * w + i] * p[r * w + j]) * u[r * w + j]
                    })
                    .sum();
            }
        }
        out
    };
    let sb = be.upload(&s);
    for causal in [false, true] {
        let want = softmax(&s, causal);
        let mut p = be.zeros::<f64>(rows * w);
        be.softmax_rows(B::view(&sb), w, causal, B::view_mut(&mut p));
        assert_close(&down(be, &p), &want, 1e-15, "softmax_rows");
        let u = data(rows * w, 44);
        let ub = be.upload(&u);
        let mut out = be.zeros::<f64>(rows * w);
        be.softmax_rows_jvp(B::view(&p), B::view(&ub), w, None, B::view_mut(&mut out));
        assert_close(&down(be, &out), &jvp(&want, &u), 1e-15, "softmax_rows_jvp");
        // d/dε J(s + ε·t)·u = the second term at R{p} = J(s)·t, δ = u.
        let t = data(rows * w, 45);
        let h = 1e-5;
        let shifted = |e: f64| {
            let se: Vec<f64> = s.iter().zip(&t).map(|(a, b)| a + e * b).collect();
            jvp(&softmax(&se, causal), &u)
        };
        let (plus, minus) = (shifted(h), shifted(-h));
        let first = jvp(&want, &data(rows * w, 46));
        let fd: Vec<f64> = plus
            .iter()
            .zip(&minus)
            .zip(&first)
            .map(|((a, b), f)| (a - b) / (2.0 * h) + f)
            .collect();
        let rp = be.upload(&jvp(&want, &t));
        let u2 = be.upload(&data(rows * w, 46));
        be.softmax_rows_jvp(
            B::view(&p),
            B::view(&u2),
            w,
            Some((B::view(&rp), B::view(&ub))),
            B::view_mut(&mut out),
        );
        assert_close(&down(be, &out), &fd, 1e-8, "softmax_rows_jvp second order");
    }
}

/// Attention's per-head core from its definition, in f64: for each sample b and head h, with Q, K,
/// V the head's columns of the rows of `qkv` and c = 1/√head_dim, P = softmax(c·Q·Kᵀ) by rows (keys
/// after the query masked when causal) and O = P·V. Returns (P `[batch, heads, seq, seq]`,
/// O `[batch, seq, dim]`).
fn attention_reference(g: &AttentionHeads, qkv: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let (s, hd, h) = (g.seq, g.head_dim, g.heads);
    let d = h * hd;
    let c = 1.0 / (hd as f64).sqrt();
    let at = |b: usize, i: usize, t: usize, head: usize, e: usize| {
        qkv[(b * s + i) * 3 * d + t * d + head * hd + e]
    };
    let mut p = vec![0.0; g.batch * h * s * s];
    let mut o = vec![0.0; g.batch * s * d];
    for b in 0..g.batch {
        for head in 0..h {
            for i in 0..s {
                let live = if g.causal { i + 1 } else { s };
                let scores: Vec<f64> = (0..live)
                    .map(|j| {
                        c * (0..hd)
                            .map(|e| at(b, i, 0, head, e) * at(b, j, 1, head, e))
                            .sum::<f64>()
                    })
                    .collect();
                let z: f64 = scores.iter().map(|v| v.exp()).sum();
                for j in 0..live {
                    p[((b * h + head) * s + i) * s + j] = scores[j].exp() / z;
                }
                for e in 0..hd {
                    o[(b * s + i) * d + head * hd + e] = (0..live)
                        .map(|j| p[((b * h + head) * s + i) * s + j] * at(b, j, 2, head, e))
                        .sum();
                }
            }
        }
    }
    (p, o)
}

/// The fused attention operations: the forward pass against [`attention_reference`], the backward
/// pass against central differences of ⟨∂O, O(qkv)⟩ in every coordinate, the R-forward against
/// central differences of P and O along R{[Q K V]}, and the R-backward against central differences
/// of the backward pass along (R{[Q K V]}, R{∂O}); without its second-order terms it is the
/// backward pass of R{∂O}. A head width of 9 takes the dot products through their 8 lanes and their
/// tail.
pub(super) fn sequences_attention<B: Backend>(be: &B) {
    for causal in [false, true] {
        let g = AttentionHeads {
            batch: 2,
            seq: 4,
            heads: 2,
            head_dim: 9,
            causal,
        };
        let n = g.batch * g.seq * g.heads * g.head_dim;
        let a = g.batch * g.heads * g.seq * g.seq;
        let qkv = data(3 * n, 60);
        let (rqkv, dout, rdout) = (data(3 * n, 61), data(n, 62), data(n, 63));
        let up = |v: &[f64]| be.upload(v);
        let forward = |q: &[f64]| {
            let (mut p, mut o) = (be.zeros::<f64>(a), be.zeros::<f64>(n));
            be.attention_forward(
                &g,
                B::view(&up(q)),
                B::view_mut(&mut p),
                B::view_mut(&mut o),
            );
            (down(be, &p), down(be, &o))
        };
        let backward = |q: &[f64], p: &[f64], dout: &[f64]| {
            let mut dq = be.zeros::<f64>(3 * n);
            be.attention_backward(
                &g,
                B::view(&up(q)),
                B::view(&up(p)),
                B::view(&up(dout)),
                B::view_mut(&mut dq),
            );
            down(be, &dq)
        };
        let (p, o) = forward(&qkv);
        let (want_p, want_o) = attention_reference(&g, &qkv);
        assert_close(&p, &want_p, 1e-14, "attention_forward P");
        assert_close(&o, &want_o, 1e-14, "attention_forward O");
        let shifted = |dir: &[f64], e: f64| -> Vec<f64> {
            qkv.iter().zip(dir).map(|(x, r)| x + e * r).collect()
        };
        let h = 1e-5;

        // ∂[Q K V] = ∇⟨∂O, O(qkv)⟩.
        let dqkv = backward(&qkv, &p, &dout);
        let value = |q: &[f64]| -> f64 {
            let (_, o) = attention_reference(&g, q);
            o.iter().zip(&dout).map(|(a, b)| a * b).sum()
        };
        let fd: Vec<f64> = (0..3 * n)
            .map(|i| {
                let mut e = vec![0.0; 3 * n];
                e[i] = 1.0;
                (value(&shifted(&e, h)) - value(&shifted(&e, -h))) / (2.0 * h)
            })
            .collect();
        assert_close(&dqkv, &fd, 1e-8, "attention_backward");

        // R{P}, R{O}.
        let (mut rp, mut ro) = (be.zeros::<f64>(a), be.zeros::<f64>(n));
        let (qb, pb, rb) = (up(&qkv), up(&p), up(&rqkv));
        be.attention_r_forward(
            &g,
            B::view(&qb),
            B::view(&pb),
            B::view(&rb),
            B::view_mut(&mut rp),
            B::view_mut(&mut ro),
        );
        let (rp, ro) = (down(be, &rp), down(be, &ro));
        let ((pp, op), (pm, om)) = (
            attention_reference(&g, &shifted(&rqkv, h)),
            attention_reference(&g, &shifted(&rqkv, -h)),
        );
        let central = |plus: &[f64], minus: &[f64]| -> Vec<f64> {
            plus.iter()
                .zip(minus)
                .map(|(a, b)| (a - b) / (2.0 * h))
                .collect()
        };
        assert_close(&rp, &central(&pp, &pm), 1e-8, "attention_r_forward R{P}");
        assert_close(&ro, &central(&op, &om), 1e-8, "attention_r_forward R{O}");

        // R{∂[Q K V]} = d/dε of the backward pass at (qkv + ε·R{qkv}, ∂O + ε·R{∂O}).
        let r_backward = |second: bool| {
            let (mut rdq, mut dq) = (be.zeros::<f64>(3 * n), be.zeros::<f64>(3 * n));
            let (rpb, rdb, db) = (up(&rp), up(&rdout), up(&dout));
            be.attention_r_backward(
                &g,
                B::view(&qb),
                B::view(&pb),
                B::view(&rb),
                B::view(&rpb),
                B::view(&rdb),
                second.then(|| (B::view(&db), B::view_mut(&mut dq))),
                B::view_mut(&mut rdq),
            );
            (down(be, &rdq), down(be, &dq))
        };
        let at = |e: f64| {
            let q = shifted(&rqkv, e);
            let dout: Vec<f64> = dout.iter().zip(&rdout).map(|(a, b)| a + e * b).collect();
            backward(&q, &attention_reference(&g, &q).0, &dout)
        };
        let (rdq, dq) = r_backward(true);
        assert_close(
            &rdq,
            &central(&at(h), &at(-h)),
            1e-8,
            "attention_r_backward",
        );
        assert_close(&dq, &dqkv, 1e-14, "attention_r_backward's ∂[Q K V]");
        let (rdq_gn, _) = r_backward(false);
        assert_close(
            &rdq_gn,
            &backward(&qkv, &p, &rdout),
            1e-14,
            "attention_r_backward without second-order terms",
        );
    }
}

/// Embedding lookup and its adjoint against indexing: ⟨gather(T), d⟩ = ⟨T, scatter(d)⟩ and the
/// rows themselves.
pub(super) fn sequences_embedding<B: Backend>(be: &B) {
    let (num, dim) = (4, 3);
    let table = data(num * dim, 47);
    let ids = [2.0, 0.0, 3.0, 2.0, 1.0];
    let tb = be.upload(&table);
    let ib = be.upload(&ids);
    let mut y = be.zeros::<f64>(ids.len() * dim);
    be.embedding_gather(B::view(&tb), B::view(&ib), dim, B::view_mut(&mut y));
    let want: Vec<f64> = ids
        .iter()
        .flat_map(|&i| table[i as usize * dim..(i as usize + 1) * dim].to_vec())
        .collect();
    assert_eq!(down(be, &y), want);
    let d = data(ids.len() * dim, 48);
    let db = be.upload(&d);
    let mut g = be.upload(&vec![1.0; num * dim]);
    be.embedding_scatter_add(0.5, B::view(&db), B::view(&ib), dim, B::view_mut(&mut g));
    let mut want = vec![1.0; num * dim];
    for (r, &i) in ids.iter().enumerate() {
        for j in 0..dim {
            want[i as usize * dim + j] += 0.5 * d[r * dim + j];
        }
    }
    assert_close(&down(be, &g), &want, 1e-15, "embedding_scatter_add");
}

/// `divide` is a true division (its result to the bit, which x·(1/d) misses on some of these
/// entries), and `convert` rounds f64 to f32 to nearest, widens f32 exactly, and copies f64.
pub(super) fn divide_and_convert<B: Backend>(be: &B) {
    let x = data(64, 41);
    let d = 0.7f64;
    assert!(
        x.iter().any(|v| v / d != v * (1.0 / d)),
        "the data must tell a division from a multiplication by the reciprocal"
    );
    let mut y = be.upload(&x);
    be.divide(d, B::view_mut(&mut y));
    let want: Vec<f64> = x.iter().map(|v| v / d).collect();
    assert_eq!(down(be, &y), want, "divide");

    let xb = be.upload(&x);
    let mut narrow = be.zeros::<f32>(x.len());
    be.convert(B::view(&xb), B::view_mut(&mut narrow));
    let want32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    assert_eq!(down32(be, &narrow), want32, "convert f64 → f32");
    let mut wide = be.zeros::<f64>(x.len());
    be.convert(B::view(&narrow), B::view_mut(&mut wide));
    let want64: Vec<f64> = want32.iter().map(|&v| f64::from(v)).collect();
    assert_eq!(down(be, &wide), want64, "convert f32 → f64");
    let mut same = be.zeros::<f64>(x.len());
    be.convert(B::view(&xb), B::view_mut(&mut same));
    assert_eq!(down(be, &same), x, "convert f64 → f64");
}

/// `add_scaled_noise` against its definition (f64 sum, rounded to f32; the returned sum of squared
/// changes in f64) at a length with a tail, and `host`: the CPU's views are host memory, a device's
/// are not.
pub(super) fn scaled_noise<B: Backend>(be: &B) {
    let n = 37;
    let g0: Vec<f32> = data(n, 40).iter().map(|&v| v as f32).collect();
    let z: Vec<f32> = data(n, 41).iter().map(|&v| (3.0 * v) as f32).collect();
    let s = 0.3125f64 / 3.0;
    let mut g = be.upload(&g0);
    let got = be.add_scaled_noise(s, B::view(&be.upload(&z)), B::view_mut(&mut g));
    let g = down32(be, &g);
    let mut want_sq = 0.0;
    for i in 0..n {
        let want = (g0[i] as f64 + s * z[i] as f64) as f32;
        assert_eq!(g[i], want, "add_scaled_noise[{i}]");
        want_sq += (want as f64 - g0[i] as f64).powi(2);
    }
    assert!(
        (got - want_sq).abs() <= 1e-15 * want_sq,
        "{got} vs {want_sq}"
    );
    assert!(got > 0.0);
    let buf = be.upload(&g0);
    if let Some(h) = B::host(B::view(&buf)) {
        assert_eq!(h, &g0[..], "host view");
    }
    assert_eq!(
        B::host(B::view(&buf)).is_some(),
        be.name() == "cpu",
        "host memory exactly on the CPU"
    );
}

/// Three AdamW steps in f64 against the update written from `torch.optim.AdamW`'s documented
/// algorithm (plain lerp and addcmul, no fused forms), with and without weight decay, and with
/// β₁ > ½ and β₁ < ½ (the two forms of the lerp); and Adam's (`torch.optim.Adam`: the weight
/// decay as an L2 term in the gradient, not on the parameters).
pub(super) fn adamw<B: Backend>(be: &B) {
    let n = 19;
    let p0 = data(n, 42);
    for (beta1, wd, decoupled) in [
        (0.9, 0.01, true),
        (0.3, 0.0, true),
        (0.9, 0.01, false),
        (0.3, 0.2, false),
    ] {
        let cfg = crate::optim::AdamWConfig {
            lr: 0.05,
            beta1,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: wd,
            decoupled,
        };
        let (mut p, mut m, mut v) = (be.upload(&p0), be.zeros::<f64>(n), be.zeros::<f64>(n));
        let (mut pe, mut me, mut ve) = (p0.clone(), vec![0.0; n], vec![0.0; n]);
        for t in 1..=3u64 {
            let g = data(n, 43 + t);
            be.adamw_step(
                &cfg,
                t,
                B::view_mut(&mut p),
                B::view(&be.upload(&g)),
                B::view_mut(&mut m),
                B::view_mut(&mut v),
            );
            let tf = t as f64;
            for i in 0..n {
                let gi = if decoupled {
                    pe[i] *= 1.0 - cfg.lr * wd;
                    g[i]
                } else {
                    g[i] + wd * pe[i]
                };
                me[i] += (1.0 - beta1) * (gi - me[i]);
                ve[i] = ve[i] * cfg.beta2 + (1.0 - cfg.beta2) * gi * gi;
                let denom = (ve[i] / (1.0 - cfg.beta2.powf(tf))).sqrt() + cfg.eps;
                pe[i] -= cfg.lr / (1.0 - beta1.powf(tf)) * me[i] / denom;
            }
        }
        let name = cfg.name();
        assert_close(&down(be, &m), &me, 1e-14, &format!("{name} m"));
        assert_close(&down(be, &v), &ve, 1e-14, &format!("{name} v"));
        assert_close(&down(be, &p), &pe, 1e-12, &format!("{name} params"));
        assert!(pe.iter().zip(&p0).all(|(a, b)| a != b));
    }
}

/// `convert_dot_norms` against the three sums in f64 from their definition and the conversion,
/// f64 into f32 (mixed types, rounding) at a length with a tail; and on empty views. Its running
/// totals, called on three consecutive slices, equal [`Backend::dot`] of the whole old and new
/// vectors to the bit (and carry on from non-zero starting values).
pub(super) fn convert_dot_norms<B: Backend>(be: &B) {
    let n = 29;
    let src: Vec<f64> = data(n, 50).iter().map(|v| v / 3.0).collect();
    let old: Vec<f32> = data(n, 51).iter().map(|&v| v as f32).collect();
    let sb = be.upload(&src);
    let mut db = be.upload(&old);
    let mut totals = [0.0; 2];
    let (sd, ss, dd) = be.convert_dot_norms(B::view(&sb), B::view_mut(&mut db), &mut totals);
    let (mut wsd, mut wss, mut wdd) = (0.0, 0.0, 0.0);
    for i in 0..n {
        wsd += src[i] * old[i] as f64;
        wss += src[i] * src[i];
        wdd += old[i] as f64 * old[i] as f64;
    }
    assert_close(
        &[sd, ss, dd],
        &[wsd, wss, wdd],
        1e-15,
        "convert_dot_norms sums",
    );
    assert!(ss > 0.0 && dd > 0.0 && sd != 0.0 && ss != dd);
    let want: Vec<f32> = src.iter().map(|&v| v as f32).collect();
    assert_eq!(down32(be, &db), want, "convert_dot_norms conversion");
    let wb = be.upload(&want);
    let want_new = be.dot(B::view(&wb), B::view(&wb));
    // The new values are f32-rounded: their sum of squares is not the source's.
    assert_ne!(want_new, ss);
    assert_eq!(totals, [dd, want_new], "convert_dot_norms totals, one call");

    // Consecutive slices continue the totals: the bits of one dot over each whole vector.
    let ob = be.upload(&old);
    let whole = [be.dot(B::view(&ob), B::view(&ob)), want_new];
    let mut db = be.upload(&old);
    let mut totals = [0.0; 2];
    let mut start = 0;
    for end in [7, 20, n] {
        be.convert_dot_norms(
            B::slice(B::view(&sb), start..end),
            B::slice_mut(B::view_mut(&mut db), start..end),
            &mut totals,
        );
        start = end;
    }
    assert_eq!(totals, whole, "convert_dot_norms totals over three slices");
    let mut db = be.upload(&old);
    let mut carried = [1.5, -0.25];
    be.convert_dot_norms(B::view(&sb), B::view_mut(&mut db), &mut carried);
    let (mut w0, mut w1) = (1.5f64, -0.25f64);
    for i in 0..n {
        w0 += old[i] as f64 * old[i] as f64;
        w1 += want[i] as f64 * want[i] as f64;
    }
    assert_eq!(
        carried,
        [w0, w1],
        "convert_dot_norms totals from non-zero starts"
    );

    let mut totals = [2.0, 3.0];
    let e = be.convert_dot_norms(
        B::slice(B::view(&sb), 0..0),
        B::slice_mut(B::view_mut(&mut db), 3..3),
        &mut totals,
    );
    assert_eq!(e, (0.0, 0.0, 0.0));
    assert_eq!(totals, [2.0, 3.0]);
}

/// Instantiates every body for one backend.
macro_rules! backend_suite {
    ($name:ident, $make:expr) => {
        mod $name {
            use super::*;
            #[test]
            fn memory() {
                super::memory(&$make);
            }
            #[test]
            fn gemm() {
                super::gemm(&$make);
            }
            #[test]
            fn convolution_lowering() {
                super::convolution_lowering(&$make);
            }
            #[test]
            fn direct_convolution() {
                super::direct_convolution(&$make);
            }
            #[test]
            fn bias_and_sums() {
                super::bias_and_sums(&$make);
            }
            #[test]
            fn activations() {
                super::activations(&$make);
            }
            #[test]
            fn pooling() {
                super::pooling(&$make);
            }
            #[test]
            fn softmax_cross_entropy() {
                super::softmax_cross_entropy(&$make);
            }
            #[test]
            fn mean_squared_error() {
                super::mean_squared_error(&$make);
            }
            #[test]
            fn average_pooling() {
                super::average_pooling(&$make);
            }
            #[test]
            fn layer_norm() {
                super::layer_norm(&$make);
            }
            #[test]
            fn vectors() {
                super::vectors(&$make);
            }
            #[test]
            fn sequences_permute() {
                super::sequences_permute(&$make);
            }
            #[test]
            fn sequences_softmax() {
                super::sequences_softmax(&$make);
            }
            #[test]
            fn sequences_attention() {
                super::sequences_attention(&$make);
            }
            #[test]
            fn sequences_embedding() {
                super::sequences_embedding(&$make);
            }
            #[test]
            fn divide_and_convert() {
                super::divide_and_convert(&$make);
            }
            #[test]
            fn sgd() {
                super::sgd(&$make);
            }
            #[test]
            fn sgld() {
                super::sgld(&$make);
            }
            #[test]
            fn scaled_noise() {
                super::scaled_noise(&$make);
            }
            #[test]
            fn adamw() {
                super::adamw(&$make);
            }
            #[test]
            fn convert_dot_norms() {
                super::convert_dot_norms(&$make);
            }
        }
    };
}

backend_suite!(cpu, CpuBackend);
