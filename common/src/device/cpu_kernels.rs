//! The CPU backend's element-wise, pooling, loss, optimiser and sampler kernels: the loops that were
//! written inline in the layers, the loss, SGD and SGLD, moved here unchanged (the same arithmetic in
//! the same order, so every result is the same to the bit). Each is documented on its
//! [`Backend`](super::Backend) method; the formulas' sources are cited there.

use super::backend::SgdStep;
use crate::model::{zero_unless_positive, Elementwise, LayerOps, MaxPool2d};
use crate::optim::AdamWConfig;
use crate::rng::NoiseSource;
use crate::sample::sgld::{StepCoefficients, UpdateSums};
use crate::Real;

pub(super) fn add_bias_rows<T: Real>(y: &mut [T], bias: &[T]) {
    for row in y.chunks_exact_mut(bias.len()) {
        for (v, &b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

pub(super) fn add_bias_planes<T: Real>(y: &mut [T], bias: &[T]) {
    let plane = y.len() / bias.len().max(1);
    for (row, &b) in y.chunks_exact_mut(plane).zip(bias) {
        row.iter_mut().for_each(|v| *v += b);
    }
}

pub(super) fn add_column_sums<T: Real>(alpha: T, src: &[T], dst: &mut [T]) {
    for row in src.chunks_exact(dst.len()) {
        for (o, &v) in dst.iter_mut().zip(row) {
            *o += alpha * v;
        }
    }
}

pub(super) fn row_sums<T: Real>(alpha: T, src: &[T], accumulate: bool, dst: &mut [T]) {
    let width = src.len() / dst.len().max(1);
    for (d, row) in dst.iter_mut().zip(src.chunks_exact(width.max(1))) {
        let s = row.iter().copied().sum::<T>();
        if accumulate {
            *d += alpha * s;
        } else {
            *d = alpha * s;
        }
    }
}

pub(super) fn to_channel_major<T: Real>(
    src: &[T],
    batch: usize,
    channels: usize,
    plane: usize,
    dst: &mut [T],
) {
    let ncols = batch * plane;
    for n in 0..batch {
        for o in 0..channels {
            dst[o * ncols + n * plane..][..plane]
                .copy_from_slice(&src[(n * channels + o) * plane..][..plane]);
        }
    }
}

pub(super) fn channel_major_to_nchw_add_bias<T: Real>(
    src: &[T],
    bias: &[T],
    batch: usize,
    plane: usize,
    dst: &mut [T],
) {
    let (o, ncols) = (bias.len(), batch * plane);
    for n in 0..batch {
        for (c, &b) in bias.iter().enumerate() {
            let s = &src[c * ncols + n * plane..][..plane];
            let d = &mut dst[(n * o + c) * plane..][..plane];
            for (d, &s) in d.iter_mut().zip(s) {
                *d = s + b;
            }
        }
    }
}

/// Defines `fn $name(f: impl FnOnce())`, which runs `f` compiled for the AVX-512 features `$wide`
/// where the processor has all of them (each listed again in `[…]` for the run-time check), else
/// for the AVX2 features `$narrow`, else as it is: one body, inlined into each.
macro_rules! multiversioned {
    ($(#[$doc:meta])* $vis:vis fn $name:ident:
     $wide:literal [$($w:tt),*], $narrow:literal [$($n:tt),*]) => {
        $(#[$doc])*
        #[inline(always)]
        $vis fn $name(f: impl FnOnce()) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = $wide)]
                unsafe fn wide(f: impl FnOnce()) {
                    f()
                }
                #[target_feature(enable = $narrow)]
                unsafe fn narrow(f: impl FnOnce()) {
                    f()
                }
                if $(std::arch::is_x86_feature_detected!($w))&&* {
                    // SAFETY: the processor has these features (checked just above).
                    unsafe { wide(f) };
                    return;
                }
                if $(std::arch::is_x86_feature_detected!($n))&&* {
                    // SAFETY: the processor has these features (checked just above).
                    unsafe { narrow(f) };
                    return;
                }
            }
            f()
        }
    };
}

multiversioned! {
    /// Runs the element loop `f` compiled for AVX-512 or AVX2 where the processor has it, so that
    /// the loops of activations whose scalar code is branch-free arithmetic (GELU's) use 512- or
    /// 256-bit vectors; else as it is. The operations and their order are the same (Rust contracts
    /// no multiply-add into an FMA), so the results are the same bits either way.
    pub(super) fn vectorised:
        "avx512f,avx512dq,avx512vl,avx2" ["avx512f", "avx512dq", "avx512vl", "avx2"],
        "avx2" ["avx2"]
}

multiversioned! {
    /// Runs `f` compiled for AVX-512 (with FMA) or AVX2 with FMA where the processor has them, else
    /// as it is: for loops whose multiply-adds are explicit (`mul_add`), which the baseline target
    /// makes library calls. Rust contracts no other multiply-add into an FMA, so the results do not
    /// depend on the path.
    fn with_fma:
        "avx512f,avx512dq,avx512vl,avx2,fma" ["avx512f", "avx512dq", "avx512vl", "avx2", "fma"],
        "avx2,fma" ["avx2", "fma"]
}

pub(super) fn activation_forward<T: Real, A: Elementwise>(act: &A, x: &[T], y: &mut [T]) {
    vectorised(
        #[inline(always)]
        || {
            for (v, &s) in y.iter_mut().zip(x) {
                *v = act.value(s);
            }
        },
    );
}

pub(super) fn activation_forward_keep<T: Real, A: Elementwise>(
    act: &A,
    x: &[T],
    y: &mut [T],
    d: &mut [T],
) {
    vectorised(
        #[inline(always)]
        || {
            for ((v, dv), &s) in y.iter_mut().zip(d.iter_mut()).zip(x) {
                (*v, *dv) = act.value_and_derivative(s);
            }
        },
    );
}

pub(super) fn multiply<T: Real>(a: &[T], b: &[T], out: &mut [T]) {
    vectorised(
        #[inline(always)]
        || {
            for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
                *o = a * b;
            }
        },
    );
}

pub(super) fn activation_add_second_order<T: Real, A: Elementwise>(
    act: &A,
    x: &[T],
    y: &[T],
    rx: &[T],
    dy: &[T],
    rdx: &mut [T],
) {
    vectorised(
        #[inline(always)]
        || {
            for ((((d, &xi), &yi), &s), &g) in rdx.iter_mut().zip(x).zip(y).zip(rx).zip(dy) {
                *d = act.add_second_order(*d, xi, yi, s, g);
            }
        },
    );
}

pub(super) fn activation_second_derivative<T: Real, A: Elementwise>(
    act: &A,
    x: &[T],
    y: &[T],
    out: &mut [T],
) {
    vectorised(
        #[inline(always)]
        || {
            for ((o, &xi), &yi) in out.iter_mut().zip(x).zip(y) {
                *o = act.second_derivative(xi, yi);
            }
        },
    );
}

pub(super) fn add_triple_product<T: Real>(a: &[T], b: &[T], c: &[T], out: &mut [T]) {
    vectorised(
        #[inline(always)]
        || {
            for (((o, &a), &b), &c) in out.iter_mut().zip(a).zip(b).zip(c) {
                *o += a * b * c;
            }
        },
    );
}

pub(super) fn activation_backward<T: Real, A: Elementwise>(
    act: &A,
    x: &[T],
    y: &[T],
    dy: &[T],
    dx: &mut [T],
) {
    vectorised(
        #[inline(always)]
        || {
            for (((d, &g), &xi), &yi) in dx.iter_mut().zip(dy).zip(x).zip(y) {
                *d = act.backward_one(xi, yi, g);
            }
        },
    );
}

pub(super) fn activation_r_forward<T: Real, A: Elementwise>(
    act: &A,
    x: &[T],
    y: &[T],
    rx: Option<&[T]>,
    ry: &mut [T],
) {
    let Some(rx) = rx else {
        ry.iter_mut().for_each(|r| *r = T::zero());
        return;
    };
    vectorised(
        #[inline(always)]
        || {
            for (((r, &s), &xi), &yi) in ry.iter_mut().zip(rx).zip(x).zip(y) {
                *r = act.derivative(xi, yi) * s;
            }
        },
    );
}

pub(super) fn activation_r_backward<T: Real, A: Elementwise>(
    act: &A,
    x: &[T],
    y: &[T],
    rdy: &[T],
    second: Option<(&[T], &[T])>,
    rdx: &mut [T],
) {
    vectorised(
        #[inline(always)]
        || {
            for (((d, &g), &xi), &yi) in rdx.iter_mut().zip(rdy).zip(x).zip(y) {
                *d = g * act.derivative(xi, yi);
            }
            if let Some((rx, dy)) = second {
                for ((((d, &xi), &yi), &s), &g) in rdx.iter_mut().zip(x).zip(y).zip(rx).zip(dy) {
                    *d = act.add_second_order(*d, xi, yi, s, g);
                }
            }
        },
    );
}

pub(super) fn max_pool2d<T: Real>(
    pool: &MaxPool2d,
    x: &[T],
    batch: usize,
    y: &mut [T],
    indices: &mut [u32],
) {
    let (channels, height, width) = (pool.channels, pool.height, pool.width);
    if pool.kernel == 2 && pool.stride == 2 {
        return max_pool2d_2x2(x, batch, channels, height, width, y, indices);
    }
    let (k, s) = (pool.kernel, pool.stride);
    let (ho, wo) = pool.output_size();
    let plane = height * width;
    for nc in 0..batch * channels {
        let base = nc * plane;
        let sample = (nc / channels) * channels * plane;
        for i in 0..ho {
            for j in 0..wo {
                let first = i * s * width + j * s;
                let (mut m, mut best) = (x[base + first], first);
                for di in 0..k {
                    for dj in 0..k {
                        let at = first + di * width + dj;
                        let v = x[base + at];
                        let take = v > m || v.is_nan();
                        m = if take { v } else { m };
                        best = if take { at } else { best };
                    }
                }
                let o = (nc * ho + i) * wo + j;
                y[o] = m;
                indices[o] = (best + base - sample) as u32;
            }
        }
    }
}

/// [`max_pool2d`] for 2×2 windows with stride 2 (the LeNet's): the same winners, each window's four
/// values compared without a loop; with AVX-512 in f32, 16 windows at a time.
fn max_pool2d_2x2<T: Real>(
    x: &[T],
    batch: usize,
    channels: usize,
    height: usize,
    width: usize,
    y: &mut [T],
    indices: &mut [u32],
) {
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
        && std::arch::is_x86_feature_detected!("avx512f")
    {
        let (n, m) = (
            batch * channels * height * width,
            batch * channels * (height / 2) * (width / 2),
        );
        let (x, y) = (&x[..n], &mut y[..m]);
        // SAFETY: T is f32 (the TypeIds are equal), so these are the same slices with their own
        // type; the processor has AVX-512F (checked just above).
        unsafe {
            let x = std::slice::from_raw_parts(x.as_ptr().cast::<f32>(), n);
            let y = std::slice::from_raw_parts_mut(y.as_mut_ptr().cast::<f32>(), m);
            return max_pool2d_2x2_avx512(x, batch, channels, height, width, y, &mut indices[..m]);
        }
    }
    max_pool2d_2x2_scalar(x, batch, channels, height, width, y, indices)
}

/// [`max_pool2d_2x2`] for f32 with AVX-512: 16 windows of a row pair at a time, their columns split
/// into even and odd by two permutations, and the scalar loop's comparisons made lane by lane in
/// the same order (`v > m` ordered, or v a NaN), so the same winners and values.
///
/// # Safety
/// AVX-512F must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn max_pool2d_2x2_avx512(
    x: &[f32],
    batch: usize,
    channels: usize,
    height: usize,
    width: usize,
    y: &mut [f32],
    indices: &mut [u32],
) {
    use std::arch::x86_64::*;
    let (ho, wo) = (height / 2, width / 2);
    let plane = height * width;
    assert!(
        x.len() >= batch * channels * plane
            && y.len() >= batch * channels * ho * wo
            && indices.len() >= batch * channels * ho * wo
            && plane <= u32::MAX as usize / 2
    );
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    let twice_lane = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let mask = |bits: usize| -> __mmask16 { ((1u32 << bits.min(16)) - 1) as __mmask16 };
    for nc in 0..batch * channels {
        let base = nc * plane;
        let shift = (base - (nc / channels) * channels * plane) as i32;
        for i in 0..ho {
            let o = (nc * ho + i) * wo;
            let mut j0 = 0;
            while j0 < wo {
                let n = (wo - j0).min(16);
                let (lo, hi) = (mask(2 * n), mask((2 * n).saturating_sub(16)));
                let first = (2 * i * width + 2 * j0) as i32;
                // SAFETY: the loads read columns 2·j0 .. 2·(j0 + n) ≤ 2·wo ≤ width of rows 2i and
                // 2i + 1 < height of plane nc (masked lanes are not read); the stores write
                // outputs o + j0 .. o + j0 + n of the row; all inside the slices (checked above).
                unsafe {
                    let top = x.as_ptr().add(base + 2 * i * width + 2 * j0);
                    let bottom = top.add(width);
                    let pair = |p: *const f32| {
                        let (a, b) = (
                            _mm512_maskz_loadu_ps(lo, p),
                            _mm512_maskz_loadu_ps(hi, p.add(16)),
                        );
                        (
                            _mm512_permutex2var_ps(a, even, b),
                            _mm512_permutex2var_ps(a, odd, b),
                        )
                    };
                    let ((t0, t1), (b0, b1)) = (pair(top), pair(bottom));
                    let first = _mm512_add_epi32(_mm512_set1_epi32(first), twice_lane);
                    let (mut m, mut best) = (t0, first);
                    for (v, at) in [(t1, 1), (b0, width as i32), (b1, width as i32 + 1)] {
                        let take = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, m)
                            | _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
                        m = _mm512_mask_blend_ps(take, m, v);
                        let at = _mm512_add_epi32(first, _mm512_set1_epi32(at));
                        best = _mm512_mask_blend_epi32(take, best, at);
                    }
                    let out = mask(n);
                    _mm512_mask_storeu_ps(y.as_mut_ptr().add(o + j0), out, m);
                    let best = _mm512_add_epi32(best, _mm512_set1_epi32(shift));
                    let idx = indices.as_mut_ptr().add(o + j0).cast::<i32>();
                    _mm512_mask_storeu_epi32(idx, out, best);
                }
                j0 += n;
            }
        }
    }
}

/// [`max_pool2d_2x2`] on any processor and precision.
fn max_pool2d_2x2_scalar<T: Real>(
    x: &[T],
    batch: usize,
    channels: usize,
    height: usize,
    width: usize,
    y: &mut [T],
    indices: &mut [u32],
) {
    let (ho, wo) = (height / 2, width / 2);
    let plane = height * width;
    for nc in 0..batch * channels {
        let base = nc * plane;
        let sample = (nc / channels) * channels * plane;
        for i in 0..ho {
            let top = &x[base + 2 * i * width..][..2 * wo];
            let bottom = &x[base + (2 * i + 1) * width..][..2 * wo];
            let o = (nc * ho + i) * wo;
            let (y, indices) = (&mut y[o..o + wo], &mut indices[o..o + wo]);
            for (j, (y, index)) in y.iter_mut().zip(indices.iter_mut()).enumerate() {
                // Selects, not branches: which of the four wins is unpredictable.
                let first = (2 * i * width + 2 * j) as u32;
                let (mut m, mut best) = (top[2 * j], first);
                for (v, at) in [
                    (top[2 * j + 1], first + 1),
                    (bottom[2 * j], first + width as u32),
                    (bottom[2 * j + 1], first + width as u32 + 1),
                ] {
                    let take = v > m || v.is_nan();
                    m = if take { v } else { m };
                    best = if take { at } else { best };
                }
                *y = m;
                *index = best + (base - sample) as u32;
            }
        }
    }
}

pub(super) fn max_pool2d_adjoint<T: Real>(
    pool: &MaxPool2d,
    d: &[T],
    winners: &[u32],
    gate: Option<&[T]>,
    batch: usize,
    dx: &mut [T],
) {
    let plane = pool.height * pool.width;
    let (inputs, outputs) = (pool.channels * plane, pool.out_features());
    let per_channel = outputs / pool.channels.max(1);
    let (d, winners) = (&d[..batch * outputs], &winners[..batch * outputs]);
    let gate = gate.map(|g| &g[..batch * outputs]);
    #[cfg(target_arch = "x86_64")]
    if pool.kernel == 2
        && pool.stride == 2
        && std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
        && std::arch::is_x86_feature_detected!("avx512f")
    {
        let cast = |v: &[T]| {
            // SAFETY: T is f32 (the TypeIds are equal): the same slice with its own type.
            unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<f32>(), v.len()) }
        };
        let dx = &mut dx[..batch * inputs];
        // SAFETY: as `cast`; the processor has AVX-512F (checked just above).
        unsafe {
            let dx = std::slice::from_raw_parts_mut(dx.as_mut_ptr().cast::<f32>(), dx.len());
            return max_pool2d_2x2_adjoint_avx512(
                pool,
                cast(d),
                winners,
                gate.map(cast),
                batch,
                dx,
            );
        }
    }
    // Plane by plane (a window's winner lies in its own channel's plane): each plane is zeroed
    // and receives its outputs' terms while it is in L1, in output order.
    for (n, dxn) in dx[..batch * inputs].chunks_exact_mut(inputs).enumerate() {
        for (c, dxp) in dxn.chunks_exact_mut(plane).enumerate() {
            dxp.iter_mut().for_each(|v| *v = T::zero());
            let first = n * outputs + c * per_channel;
            let base = c * plane;
            for o in first..first + per_channel {
                let g = match gate {
                    Some(y) => zero_unless_positive(y[o], d[o]),
                    None => d[o],
                };
                dxp[winners[o] as usize - base] += g;
            }
        }
    }
}

/// [`max_pool2d_adjoint`] for 2×2 windows with stride 2 in f32 with AVX-512: the windows do not
/// overlap, so each input is written once, 16 windows of a row pair at a time (0 + δ, gated, at
/// the winner, +0 at the three others: the scatter's values onto zeroed memory), with no zeroing
/// pass; the row and the column that floor mode drops are zeroed.
///
/// # Safety
/// AVX-512F must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn max_pool2d_2x2_adjoint_avx512(
    pool: &MaxPool2d,
    d: &[f32],
    winners: &[u32],
    gate: Option<&[f32]>,
    batch: usize,
    dx: &mut [f32],
) {
    use std::arch::x86_64::*;
    let (height, width) = (pool.height, pool.width);
    let (ho, wo) = (height / 2, width / 2);
    let plane = height * width;
    let outputs = batch * pool.channels * ho * wo;
    assert!(
        d.len() >= outputs
            && winners.len() >= outputs
            && gate.is_none_or(|g| g.len() >= outputs)
            && dx.len() >= batch * pool.channels * plane
            && plane <= i32::MAX as usize / 2
    );
    let twice_lane = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let low = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    let high = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    let mask = |bits: usize| -> __mmask16 { ((1u32 << bits.min(16)) - 1) as __mmask16 };
    let zero = _mm512_setzero_ps();
    let mut outside: __mmask16 = 0;
    for nc in 0..batch * pool.channels {
        // The winners are relative to their sample; this plane starts `in_sample` in.
        let in_sample = ((nc % pool.channels) * plane) as i32;
        let dxp = &mut dx[nc * plane..][..plane];
        for i in 0..ho {
            let o = (nc * ho + i) * wo;
            let mut j0 = 0;
            while j0 < wo {
                let n = (wo - j0).min(16);
                let (lanes, lo, hi) = (mask(n), mask(2 * n), mask((2 * n).saturating_sub(16)));
                // SAFETY: lanes j0..j0 + n of output row o (masked lanes are not touched), and
                // columns 2·j0 .. 2·(j0 + n) ≤ 2·wo ≤ width of rows 2i and 2i + 1 < height of
                // this plane; all inside the slices (checked above).
                unsafe {
                    let v =
                        _mm512_add_ps(zero, _mm512_maskz_loadu_ps(lanes, d.as_ptr().add(o + j0)));
                    let v = match gate {
                        // zero_unless_positive(y, v): an ordered `>`, false for a NaN.
                        Some(y) => {
                            let y = _mm512_maskz_loadu_ps(lanes, y.as_ptr().add(o + j0));
                            _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_GT_OQ>(y, zero), v)
                        }
                        None => v,
                    };
                    let w = _mm512_maskz_loadu_epi32(lanes, winners.as_ptr().add(o + j0).cast());
                    let first = in_sample + (2 * i * width + 2 * j0) as i32;
                    let first = _mm512_add_epi32(_mm512_set1_epi32(first), twice_lane);
                    let at = _mm512_sub_epi32(w, first);
                    let is = |k: usize| _mm512_cmpeq_epi32_mask(at, _mm512_set1_epi32(k as i32));
                    let (t0, t1, b0, b1) = (is(0), is(1), is(width), is(width + 1));
                    outside |= lanes & !(t0 | t1 | b0 | b1);
                    let row = |p: *mut f32, even: __mmask16, odd: __mmask16| {
                        let (e, od) = (_mm512_maskz_mov_ps(even, v), _mm512_maskz_mov_ps(odd, v));
                        _mm512_mask_storeu_ps(p, lo, _mm512_permutex2var_ps(e, low, od));
                        _mm512_mask_storeu_ps(p.add(16), hi, _mm512_permutex2var_ps(e, high, od));
                    };
                    let top = dxp.as_mut_ptr().add(2 * i * width + 2 * j0);
                    row(top, t0, t1);
                    row(top.add(width), b0, b1);
                }
                j0 += n;
            }
            if width % 2 == 1 {
                dxp[2 * i * width + width - 1] = 0.0;
                dxp[(2 * i + 1) * width + width - 1] = 0.0;
            }
        }
        dxp[2 * ho * width..].iter_mut().for_each(|v| *v = 0.0);
    }
    assert!(outside == 0, "a max-pool winner outside its 2×2 window");
}

pub(super) fn gather<T: Real>(
    x: &[T],
    winners: &[u32],
    inputs: usize,
    outputs: usize,
    y: &mut [T],
) {
    for ((rn, rxn), wn) in y
        .chunks_exact_mut(outputs)
        .zip(x.chunks_exact(inputs))
        .zip(winners.chunks_exact(outputs))
    {
        for (r, &i) in rn.iter_mut().zip(wn) {
            *r = rxn[i as usize];
        }
    }
}

pub(super) fn softmax_cross_entropy<T: Real>(
    logits: &[T],
    labels: &[usize],
    classes: usize,
    scale: T,
    mut dlogits: Option<&mut [T]>,
) -> (f64, usize) {
    let mut total = 0.0f64;
    let mut correct = 0usize;
    for (n, (z, &y)) in logits.chunks_exact(classes).zip(labels).enumerate() {
        let mut m = z[0];
        let mut arg = 0;
        for (c, &v) in z.iter().enumerate() {
            if v > m {
                m = v;
                arg = c;
            }
        }
        if arg == y {
            correct += 1;
        }
        match dlogits.as_deref_mut() {
            Some(d) => {
                // One exp per logit: d ← exp(z − m), then scale to (softmax − onehot)·scale.
                let d = &mut d[n * classes..(n + 1) * classes];
                let mut sum = T::zero();
                for (dv, &v) in d.iter_mut().zip(z) {
                    *dv = (v - m).exp();
                    sum += *dv;
                }
                total += (m + sum.ln() - z[y]).as_f64();
                let inv = scale / sum;
                for dv in d.iter_mut() {
                    *dv *= inv;
                }
                d[y] -= scale;
            }
            None => {
                let sum: T = z.iter().map(|&v| (v - m).exp()).sum();
                total += (m + sum.ln() - z[y]).as_f64();
            }
        }
    }
    (total, correct)
}

pub(super) fn softmax_cross_entropy_r<T: Real>(
    logits: &[T],
    rz: &[T],
    classes: usize,
    scale: T,
    rg: &mut [T],
) {
    for ((z, r), g) in logits
        .chunks_exact(classes)
        .zip(rz.chunks_exact(classes))
        .zip(rg.chunks_exact_mut(classes))
    {
        let m = z.iter().copied().fold(T::neg_infinity(), T::max);
        let mut sum = T::zero();
        for (gi, &zi) in g.iter_mut().zip(z) {
            *gi = (zi - m).exp();
            sum += *gi;
        }
        let mut pr = T::zero();
        for (gi, &ri) in g.iter_mut().zip(r) {
            *gi = *gi / sum;
            pr += *gi * ri;
        }
        for (gi, &ri) in g.iter_mut().zip(r) {
            *gi = scale * *gi * (ri - pr);
        }
    }
}

pub(super) fn sgd_step(params: &mut [f32], d: &[f32], buf: Option<&mut [f32]>, c: &SgdStep) {
    let (lr, mu, one_minus_tau) = (c.lr, c.momentum, c.one_minus_dampening);
    match buf {
        // One fused pass: buf ← μ·buf + (1−τ)·d, then θ ← θ − lr·(d + μ·buf) or θ − lr·buf.
        Some(buf) => {
            if c.nesterov {
                for ((p, &g), b) in params.iter_mut().zip(d.iter()).zip(buf.iter_mut()) {
                    *b = *b * mu + one_minus_tau * g;
                    *p -= lr * (g + mu * *b);
                }
            } else {
                for ((p, &g), b) in params.iter_mut().zip(d.iter()).zip(buf.iter_mut()) {
                    *b = *b * mu + one_minus_tau * g;
                    *p -= lr * *b;
                }
            }
        }
        None => {
            for (p, &g) in params.iter_mut().zip(d.iter()) {
                *p -= lr * g;
            }
        }
    }
}

pub(super) fn sgd_first_momentum_step(params: &mut [f32], d: &[f32], buf: &[f32], c: &SgdStep) {
    let (lr, mu) = (c.lr, c.momentum);
    for ((p, &g), &b) in params.iter_mut().zip(d.iter()).zip(buf) {
        *p -= lr * if c.nesterov { g + mu * b } else { b };
    }
}

/// Lanes of the f32 partial sums: lane k sums the elements ≡ k (mod 8).
const LANES: usize = 8;

/// The f32 partial sums of one block (see [`UpdateSums`]).
#[derive(Default)]
struct LaneSums {
    step_dot_drift: [f32; LANES],
    next_step_dot_drift: [f32; LANES],
    drift_norm2: [f32; LANES],
    localisation: [f32; LANES],
    distance2: [f32; LANES],
    clamped: [f32; LANES],
    check: [f32; LANES],
}

/// Eight parameters of the SGLD update: fixed-size arrays without bounds checks, which the compiler
/// turns into SIMD.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn update_lanes<const CLAMP: bool>(
    w: &mut [f32; LANES],
    step: &mut [f32; LANES],
    w_star: &[f32; LANES],
    grad: &[f32; LANES],
    noise: &[f32; LANES],
    c: &StepCoefficients,
    bound: f32,
    sums: &mut LaneSums,
) {
    for k in 0..LANES {
        let wt = w[k];
        let ws = w_star[k];
        let delta = wt - ws;
        let h = c.half_eps * (c.nbeta * grad[k] + c.gamma * delta + c.decay * wt);
        let mut next = wt - h + c.sqrt_eps * noise[k];
        if CLAMP {
            let free = next;
            next = next.clamp(ws - bound, ws + bound);
            sums.clamped[k] += if next != free { 1.0 } else { 0.0 };
        }
        let next_step = next - wt;
        sums.step_dot_drift[k] += step[k] * h;
        sums.next_step_dot_drift[k] += next_step * h;
        sums.drift_norm2[k] += h * h;
        sums.localisation[k] += -next_step * (2.0 * delta + next_step);
        sums.distance2[k] += delta * delta;
        sums.check[k] += next;
        step[k] = next_step;
        w[k] = next;
    }
}

/// The fused SGLD update in blocks of 512 (a multiple of the noise's round of 16, so the noise
/// equals one fill of the whole vector), each summed in 8 f32 lanes and added to f64 accumulators,
/// in AVX-512 or AVX2 code where the processor has it ([`vectorised`]).
#[inline(never)]
pub(super) fn sgld_update(
    w: &mut [f32],
    step: &mut [f32],
    w_star: &[f32],
    grad: &[f32],
    noise: &mut NoiseSource,
    c: &StepCoefficients,
    bound: Option<f32>,
) -> UpdateSums {
    // Compiled for AVX-512 / AVX2 where the processor has them: the same operations in the same
    // order (no multiply-add is contracted), so the same bits.
    let mut sums = None;
    vectorised(
        #[inline(always)]
        || {
            sums = Some(match bound {
                None => update_blocks::<false>(w, step, w_star, grad, noise, c, 0.0),
                Some(b) => update_blocks::<true>(w, step, w_star, grad, noise, c, b),
            })
        },
    );
    sums.expect("the update ran")
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn update_blocks<const CLAMP: bool>(
    w: &mut [f32],
    step: &mut [f32],
    w_star: &[f32],
    grad: &[f32],
    noise_source: &mut NoiseSource,
    c: &StepCoefficients,
    bound: f32,
) -> UpdateSums {
    const BLOCK: usize = 512;
    let mut total = [0f64; 5];
    let mut clamped = 0u64;
    let mut finite = true;
    let n = w.len();
    let mut start = 0;
    while start < n {
        let end = (start + BLOCK).min(n);
        // This block's noise, kept in L1.
        let mut noise_block = [0f32; BLOCK];
        noise_source.fill(&mut noise_block[..end - start]);
        let noise = &noise_block[..end - start];
        let mut sums = LaneSums::default();
        let whole = start + (end - start) / LANES * LANES;
        let mut i = start;
        while i < whole {
            let r = i..i + LANES;
            let o = i - start..i - start + LANES;
            update_lanes::<CLAMP>(
                (&mut w[r.clone()]).try_into().expect("8 lanes"),
                (&mut step[r.clone()]).try_into().expect("8 lanes"),
                w_star[r.clone()].try_into().expect("8 lanes"),
                grad[r].try_into().expect("8 lanes"),
                noise[o].try_into().expect("8 lanes"),
                c,
                bound,
                &mut sums,
            );
            i += LANES;
        }
        // The tail (fewer than 8 elements): zero-padded copies through the same code (padding
        // contributes 0 to every sum).
        if whole < end {
            let m = end - whole;
            let mut pad = [[0f32; LANES]; 5];
            for (j, v) in [
                &w[whole..end],
                &step[whole..end],
                &w_star[whole..end],
                &grad[whole..end],
                &noise[whole - start..end - start],
            ]
            .iter()
            .enumerate()
            {
                pad[j][..m].copy_from_slice(v);
            }
            let [mut pw, mut ps, pstar, pg, pn] = pad;
            update_lanes::<CLAMP>(&mut pw, &mut ps, &pstar, &pg, &pn, c, bound, &mut sums);
            w[whole..end].copy_from_slice(&pw[..m]);
            step[whole..end].copy_from_slice(&ps[..m]);
        }
        let add = |lanes: &[f32; LANES]| lanes.iter().map(|&x| x as f64).sum::<f64>();
        total[0] += add(&sums.step_dot_drift);
        total[1] += add(&sums.next_step_dot_drift);
        total[2] += add(&sums.drift_norm2);
        total[3] += add(&sums.localisation);
        total[4] += add(&sums.distance2);
        // At most 512/8 = 64 per lane: exact in f32.
        clamped += sums.clamped.iter().map(|&x| x as u64).sum::<u64>();
        finite &= sums.check.iter().all(|x| x.is_finite());
        start = end;
    }
    UpdateSums {
        step_dot_drift: total[0],
        next_step_dot_drift: total[1],
        drift_norm2: total[2],
        next_localisation_diff: total[3],
        distance2: total[4],
        clamped,
        finite,
    }
}

/// Σ vᵢ² accumulated in f64, eight lanes at a time (so that it vectorises): lane l sums the
/// squares of vᵢ with i ≡ l (mod 8) over the leading multiple of 8, the lanes are added in order,
/// then the tail left to right.
pub(super) fn sum_squares<T: Real>(v: &[T]) -> f64 {
    let mut acc = [0.0f64; 8];
    let chunks = v.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            let x = x.as_f64();
            *a += x * x;
        }
    }
    let tail: f64 = rest.iter().map(|&x| x.as_f64() * x.as_f64()).sum();
    acc.iter().sum::<f64>() + tail
}

/// See [`Backend::adamw_step`](super::Backend::adamw_step). The element loop is compiled with
/// FMA (and AVX-512 or AVX2) where the processor has them ([`with_fma`]): each `mul_add` is then
/// one fused instruction instead of a call to the C library's `fmaf` per element, and the loop
/// vectorises; a fused multiply-add, a square root and a division are correctly rounded either
/// way, so the results are the same bits (tested below against the baseline build).
pub(super) fn adamw_step<T: Real>(
    cfg: &AdamWConfig,
    step: u64,
    params: &mut [T],
    grad: &[T],
    m: &mut [T],
    v: &mut [T],
) {
    with_fma(
        #[inline(always)]
        || adamw_loop(cfg, step, params, grad, m, v),
    );
}

/// [`adamw_step`]'s arithmetic (PyTorch's `_single_tensor_adam`/ATen's fused forms, see the
/// comments), for the build it is inlined into.
#[inline(always)]
fn adamw_loop<T: Real>(
    cfg: &AdamWConfig,
    step: u64,
    params: &mut [T],
    grad: &[T],
    m: &mut [T],
    v: &mut [T],
) {
    assert!(step >= 1, "Adam steps count from 1");
    let n = params.len();
    assert!(grad.len() == n && m.len() == n && v.len() == n);
    let t = step as f64;
    let decay = T::of_f64(1.0 - cfg.lr * cfg.weight_decay);
    let w1 = 1.0 - cfg.beta1;
    let lerp_low = w1.abs() < 0.5;
    let w1t = T::of_f64(w1);
    let one_minus_w1 = T::one() - w1t;
    let (beta2, w2) = (T::of_f64(cfg.beta2), T::of_f64(1.0 - cfg.beta2));
    let bias_correction1 = 1.0 - cfg.beta1.powf(t);
    let bias_correction2 = 1.0 - cfg.beta2.powf(t);
    let neg_step_size = T::of_f64(-(cfg.lr / bias_correction1));
    let bc2_sqrt = T::of_f64(bias_correction2.powf(0.5));
    let eps = T::of_f64(cfg.eps);
    let wd = T::of_f64(cfg.weight_decay);
    let fused_addcmul = !cfg.decoupled;
    let (decay_params, l2_grad) = (
        cfg.decoupled && cfg.weight_decay != 0.0,
        !cfg.decoupled && cfg.weight_decay != 0.0,
    );
    for i in 0..n {
        let mut g = grad[i];
        let mut p = params[i];
        if decay_params {
            p *= decay;
        }
        if l2_grad {
            g = p.mul_add(wd, g);
        }
        // ATen's vectorised lerp: the form exact at its nearer end, as one fused multiply-add.
        m[i] = if lerp_low {
            w1t.mul_add(g - m[i], m[i])
        } else {
            (m[i] - g).mul_add(one_minus_w1, g)
        };
        if fused_addcmul {
            // ATen's addcmul as it runs on x86-64 with FMA: fma(s·g, g, β₂·v), per step equal
            // to PyTorch's float32 second moment.
            v[i] = (w2 * g).mul_add(g, v[i] * beta2);
        } else {
            // AdamW as first committed: β₂·v + (s·g)·g unfused, 1 ulp from PyTorch's on some
            // steps (the per-step fixture shows it); kept so that AdamW's committed records
            // (results/grokking, results/transformers) do not move.
            v[i] *= beta2;
            v[i] += w2 * g * g;
        }
        let denom = v[i].sqrt() / bc2_sqrt + eps;
        params[i] = p + neg_step_size * m[i] / denom;
    }
}

/// See [`Backend::add_scaled_noise`](super::Backend::add_scaled_noise).
pub(super) fn add_scaled_noise(s: f64, z: &[f32], g: &mut [f32]) -> f64 {
    let mut added_sq = 0.0;
    for (v, &zi) in g.iter_mut().zip(z.iter()) {
        let old = *v;
        *v = (old as f64 + s * zi as f64) as f32;
        added_sq += (*v as f64 - old as f64).powi(2);
    }
    added_sq
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{stream, Purpose};

    /// AdamW's and Adam's step as the processor runs it ([`adamw_step`], FMA with AVX-512 or AVX2
    /// where it has them) against the same loop compiled for the baseline target ([`adamw_loop`]
    /// called directly, whose `mul_add` is the C library's `fmaf`), bit for bit over five steps: f32
    /// and f64, decoupled and coupled weight decay, both forms of the first moment's lerp (β₁ 0.9
    /// and 0.3), on a length that is no multiple of a vector.
    #[test]
    fn vectorised_adamw_step_equals_the_baseline_build() {
        fn check<T: Real>(cfg: &AdamWConfig) {
            let n = 1000 + 13;
            let mut rng = stream(6, Purpose::Chain, 3);
            let mut draw = |scale: f64| -> Vec<T> {
                (0..n)
                    .map(|_| T::of_f64(scale * (rng.next_u64() as f64 / u64::MAX as f64 - 0.5)))
                    .collect()
            };
            let p0 = draw(2.0);
            let (mut pa, mut ma, mut va) = (p0.clone(), vec![T::zero(); n], vec![T::zero(); n]);
            let (mut pb, mut mb, mut vb) = (p0.clone(), vec![T::zero(); n], vec![T::zero(); n]);
            // The first index where two vectors' bits differ.
            let differs = |a: &[T], b: &[T]| {
                a.iter()
                    .zip(b)
                    .position(|(x, y)| x.as_f64().to_bits() != y.as_f64().to_bits())
            };
            for step in 1..=5 {
                let g = draw(10.0);
                adamw_step(cfg, step, &mut pa, &g, &mut ma, &mut va);
                adamw_loop(cfg, step, &mut pb, &g, &mut mb, &mut vb);
                let what = format!("{} bytes, {cfg:?}, step {step}", std::mem::size_of::<T>());
                assert_eq!(differs(&pa, &pb), None, "{what}: parameters");
                assert_eq!(differs(&ma, &mb), None, "{what}: first moment");
                assert_eq!(differs(&va, &vb), None, "{what}: second moment");
            }
            assert!(
                pa.iter().zip(&p0).all(|(a, b)| a != b),
                "every parameter moved"
            );
        }
        for cfg in [
            AdamWConfig {
                weight_decay: 1.0,
                ..AdamWConfig::default()
            },
            AdamWConfig {
                beta1: 0.3,
                beta2: 0.98,
                ..AdamWConfig::default()
            },
            AdamWConfig {
                weight_decay: 0.1,
                ..AdamWConfig::adam_default()
            },
            AdamWConfig {
                beta1: 0.3,
                ..AdamWConfig::adam_default()
            },
        ] {
            check::<f32>(&cfg);
            check::<f64>(&cfg);
        }
    }

    /// dx ← 0, then `dx[n, winner] += d[n, o]` for every output o of every sample n, in output
    /// order: the plain scatter the max-pool adjoint must equal to the bit.
    fn scatter_add<T: Real>(d: &[T], winners: &[u32], inputs: usize, outputs: usize, dx: &mut [T]) {
        dx.iter_mut().for_each(|v| *v = T::zero());
        for ((dxn, dn), wn) in dx
            .chunks_exact_mut(inputs)
            .zip(d.chunks_exact(outputs))
            .zip(winners.chunks_exact(outputs))
        {
            for (g, &i) in dn.iter().zip(wn) {
                dxn[i as usize] += *g;
            }
        }
    }

    /// The max-pool adjoint is [`scatter_add`] to the bit, and gated by the pool's output it is
    /// [`scatter_add`] followed by a ReLU's backward on the pool's input (the ReLU's output):
    /// 2×2 windows with stride 2 on even and odd sides (floor mode drops a row and a column),
    /// overlapping 3×3 and 2×2 windows (stride 2 and 1: winners shared), disjoint 3×3 ones, in f32
    /// and f64, the input with ties, zeros (after the ReLU) and a NaN, δ with −0 (0 + (−0) = +0).
    #[test]
    fn max_pool_adjoint_is_the_scatter_then_the_relu_backward() {
        fn check<T: Real>(pool: &MaxPool2d, batch: usize) {
            let (inputs, outputs) = (pool.in_features(), pool.out_features());
            let mut rng = stream(9, Purpose::Chain, 5);
            let mut draw = |n: usize| -> Vec<f64> {
                (0..n).map(|_| (rng.next_u64() % 9) as f64 - 4.0).collect()
            };
            // The ReLU's output: ties and zeros in most windows.
            let mut a: Vec<T> = draw(batch * inputs)
                .into_iter()
                .map(|v| T::of_f64(v.max(0.0)))
                .collect();
            a[inputs / 2] = T::of_f64(f64::NAN);
            let d: Vec<T> = draw(batch * outputs)
                .into_iter()
                .enumerate()
                .map(|(i, v)| {
                    if i % 7 == 3 {
                        -T::zero()
                    } else {
                        T::of_f64(v + 0.5)
                    }
                })
                .collect();
            let mut y = vec![T::zero(); batch * outputs];
            let mut winners = vec![0u32; batch * outputs];
            max_pool2d(pool, &a, batch, &mut y, &mut winners);
            let mut scattered = vec![T::of_f64(f64::NAN); batch * inputs];
            scatter_add(&d, &winners, inputs, outputs, &mut scattered);
            let gated: Vec<T> = scattered
                .iter()
                .zip(&a)
                .map(|(&s, &x)| zero_unless_positive(x, s))
                .collect();
            let same = |p: &[T], q: &[T]| {
                p.iter()
                    .zip(q)
                    .position(|(u, v)| u.as_f64().to_bits() != v.as_f64().to_bits())
            };
            let what = format!("{pool:?} batch {batch} {}", T::NAME);
            for (gate, want) in [(None, &scattered), (Some(&y[..]), &gated)] {
                let mut dx = vec![T::of_f64(f64::NAN); batch * inputs];
                max_pool2d_adjoint(pool, &d, &winners, gate, batch, &mut dx);
                assert_eq!(same(&dx, want), None, "{what} gated {}", gate.is_some());
            }
            assert!(
                gated.iter().any(|v| *v != T::zero()),
                "{what}: all gated off"
            );
            assert!(
                gated.iter().zip(&scattered).any(|(g, s)| g != s),
                "{what}: the gate closes nowhere"
            );
        }
        let pool = |channels, height, width, kernel, stride| MaxPool2d {
            channels,
            height,
            width,
            kernel,
            stride,
        };
        for (p, batch) in [
            (pool(6, 8, 8, 2, 2), 3),
            (pool(2, 6, 70, 2, 2), 2),
            (pool(3, 7, 9, 2, 2), 2),
            (pool(2, 9, 7, 3, 2), 2),
            (pool(2, 5, 6, 2, 1), 2),
            (pool(2, 9, 6, 3, 3), 2),
        ] {
            check::<f32>(&p, batch);
            check::<f64>(&p, batch);
        }
    }

    /// The 2×2 max-pool as the processor runs it ([`max_pool2d_2x2`], AVX-512 in f32 where it has
    /// it) against the scalar loop, bit for bit in values and winners: widths that leave a
    /// partial group of 16 windows (12, 4, 35) or a dropped column (9), ties (small integers,
    /// +0 against −0: the first wins) and NaNs (the last wins).
    #[test]
    fn max_pool_2x2_equals_the_scalar_loop() {
        let mut rng = stream(3, Purpose::Chain, 7);
        for (channels, height, width, batch) in
            [(6, 24, 24, 3), (16, 8, 8, 2), (3, 7, 9, 2), (2, 5, 70, 2)]
        {
            let n = batch * channels * height * width;
            let x: Vec<f32> = (0..n)
                .map(|_| match rng.next_u64() % 23 {
                    0 => f32::NAN,
                    1 => -0.0,
                    2 => 0.0,
                    k => k as f32 - 12.0,
                })
                .collect();
            let m = batch * channels * (height / 2) * (width / 2);
            let (mut ya, mut ia) = (vec![f32::NAN; m], vec![u32::MAX; m]);
            let (mut yb, mut ib) = (vec![f32::NAN; m], vec![u32::MAX; m]);
            max_pool2d_2x2(&x, batch, channels, height, width, &mut ya, &mut ia);
            max_pool2d_2x2_scalar(&x, batch, channels, height, width, &mut yb, &mut ib);
            let what = format!("{channels}×{height}×{width}, batch {batch}");
            assert_eq!(ia, ib, "{what}: winners");
            let bits = |v: &[f32]| v.iter().map(|a| a.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&ya), bits(&yb), "{what}: values");
            assert!(
                ya.iter().any(|v| v.is_nan()) && ya.contains(&-0.0),
                "{what}"
            );
        }
    }

    /// The SGLD update as the processor runs it ([`sgld_update`], AVX-512 or AVX2 code where it
    /// has them) against the same loop compiled for the baseline target ([`update_blocks`] called
    /// directly), bit for bit: w, Δ and every sum, with and without a bounding box, on a length
    /// that leaves a partial block and a partial group of lanes.
    #[test]
    fn vectorised_sgld_update_equals_the_baseline_build() {
        let n = 3 * 512 + 77;
        let mut rng = stream(4, Purpose::Chain, 1);
        let mut draw = |scale: f32| -> Vec<f32> {
            (0..n)
                .map(|_| scale * (rng.next_u64() as f64 / u64::MAX as f64 - 0.5) as f32)
                .collect()
        };
        let (w0, step0, w_star, grad) = (draw(2.0), draw(1e-3), draw(2.0), draw(10.0));
        let c = StepCoefficients {
            half_eps: 5e-4,
            sqrt_eps: 1e-3f32.sqrt(),
            nbeta: 26.4,
            gamma: 100.0,
            decay: 1e-3,
        };
        let noise = NoiseSource::from_stream(&mut stream(4, Purpose::Chain, 2));
        for bound in [None, Some(0.01f32)] {
            let (mut wa, mut sa, mut na) = (w0.clone(), step0.clone(), noise.clone());
            let a = sgld_update(&mut wa, &mut sa, &w_star, &grad, &mut na, &c, bound);
            let (mut wb, mut sb, mut nb) = (w0.clone(), step0.clone(), noise.clone());
            let b = match bound {
                None => update_blocks::<false>(&mut wb, &mut sb, &w_star, &grad, &mut nb, &c, 0.0),
                Some(v) => update_blocks::<true>(&mut wb, &mut sb, &w_star, &grad, &mut nb, &c, v),
            };
            let first_difference = |a: &[f32], b: &[f32]| {
                a.iter()
                    .zip(b)
                    .position(|(x, y)| x.to_bits() != y.to_bits())
            };
            assert_eq!(first_difference(&wa, &wb), None, "w, bound {bound:?}");
            assert_eq!(first_difference(&sa, &sb), None, "step, bound {bound:?}");
            let sums = |s: &UpdateSums| {
                [
                    s.step_dot_drift.to_bits(),
                    s.next_step_dot_drift.to_bits(),
                    s.drift_norm2.to_bits(),
                    s.next_localisation_diff.to_bits(),
                    s.distance2.to_bits(),
                    s.clamped,
                    u64::from(s.finite),
                ]
            };
            assert_eq!(sums(&a), sums(&b), "sums, bound {bound:?}");
            if bound.is_some() {
                assert!(a.clamped > 0, "the box clamps some coordinates");
            }
            assert!(wa != w0, "the update moved w");
        }
    }
}
