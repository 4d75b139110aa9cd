//! Direct convolution kernels for the CPU: the stride-1, zero-padded 2-D cross-correlation of
//! [`Conv2d`](crate::model::Conv2d), its input gradient and its weight gradient, without an
//! im2col matrix. (A larger stride is lowered by the layer: `im2col` and a product.)
//!
//! Why not im2col and BLAS: LeNet's convolutions have 6 output channels, so the lowered product
//! `W[6 × C·k·k] · cols[C·k·k × positions]` uses each im2col element only 6 times. Writing the
//! im2col matrix, and BLAS packing it again, then costs as much as the arithmetic, and a gemm with
//! 6 rows runs far below the machine's peak whichever way it is transposed. The kernels here keep
//! a tile of outputs in registers instead and read each input value from L1 once per tile.
//!
//! **The flat padded layout.** A sample's input plane is copied, with its zero padding, into a
//! buffer of width `wp = wo + k − 1` (one padded row per output row plus the window's overhang),
//! one channel every `cs` elements. With `q = oy·wp + ox`, every output is then a 1-D correlation
//! of the flat buffer: `y[o, q] = Σ_{c,ki,kj} w[o,c,ki,kj] · xp[c·cs + q + ki·wp + kj]`, so a
//! run of consecutive `q` reads consecutive memory for every tap. The `k − 1` columns `ox ≥ wo` of
//! each flat row are computed and thrown away (4 of 28 for LeNet's 24-wide planes).
//!
//! **The sample-minor layout** (forward and input gradient of a batch, `correlate_minor`): L
//! samples (one vector register: 16 f32 with AVX-512) are copied into `xs[c][py][px][l]`, so that
//! one register holds one padded input pixel of L samples. A tile of P output positions × 6
//! channels then needs per tap P aligned loads and 6 weight broadcasts for 6·P FMAs (the flat
//! tile: 3 unaligned loads, most of them across a cache line, and 6 broadcasts per 18), and no
//! column is thrown away. The transposes into and out of it (16 × 16 in registers with AVX-512)
//! are paid once per layer per batch; a correlation with few taps (the LeNet's conv1) or a batch
//! shorter than half a register stays flat (`Layout::Auto`). The weight gradient of a batch of at
//! least 8 samples is sample-minor too (`weight_grad_minor`): the inputs as the forward lays them
//! out and the output gradients `ds[o][oy][ox][l]`, a tile of 6 channels × 4 taps taking per
//! position 4 + 6 aligned loads for 24 FMAs (the flat tile: 4 unaligned loads, most across a cache
//! line, and 4 of every 28 positions thrown away).
//!
//! **Summation order** (what makes results reproducible): a forward or input-gradient output is one
//! fused multiply–add chain over the taps in `(c, ki, kj)` order, starting from 0, then the bias is
//! added, on either layout. (The sample-minor tiles skip the kernel rows whose input row is
//! padding, which multiply zeros: a skipped product is ±0, and adding ±0 changes a chain only when
//! it is −0, which takes a product that underflowed to −0 — below 2⁻¹⁵⁰ in f32 — and then the
//! chain that added the zero is +0 where the other is −0; the bias added last, +0 where there is
//! none, makes both +0. So the bits are the same unless a bias is exactly −0 and every product of an
//! output is zero or underflowed.) A weight-gradient entry of a batch of at least 8 samples is summed over
//! blocks of L consecutive samples (L = 16 in f32, 8 in f64; the last block may be shorter): lane l
//! of the block is an FMA chain over sample l's output positions in row-major order, the L lanes
//! are reduced by a fixed pairwise tree, and the block's sum times alpha is added to the output,
//! block after block. In a smaller batch (a per-sample gradient is a batch of 1), an entry is summed
//! over groups of 4 consecutive samples (the last group may be shorter): within a group, position q
//! of every sample goes to lane q mod 16, each lane an FMA chain over the group's samples in order
//! and increasing q within each; the 16 lanes are reduced by the same tree and the group's sum times
//! alpha is added to the output, group after group. None of these depends on the layout or the
//! instruction set (AVX-512, AVX2+FMA or none: the kernels are one generic body compiled three
//! ways, and `mul_add` is fused in all of them) or on the tile sizes, so every machine computes the
//! same bits.

use super::cpu::ConvGeometry;
use crate::model::zero_unless_positive;
use crate::Real;

/// Flat output positions are computed in runs whose length divides this (the forward tile lengths
/// 16 and 48, the weight gradient's 16 lanes); the flat output is padded up to a multiple of it.
const Q_ALIGN: usize = 48;
/// Lanes of a weight-gradient accumulator: position q goes to lane q mod 16.
const LANES: usize = 16;
/// Samples whose weight-gradient sums share one set of lane accumulators (fewer reductions where a
/// plane is small: LeNet's conv2 has 96 flat positions, 6 runs of 16, per sample).
const GROUP: usize = 4;

/// Where the flat padded layout puts a correlation with an `oh × ow` output and a `k × k` kernel.
#[derive(Clone, Copy, Debug)]
struct Flat {
    oh: usize,
    ow: usize,
    k: usize,
    /// Padded row width, ow + k − 1.
    wp: usize,
    /// Padded rows, oh + k − 1.
    hp: usize,
    /// Flat output length oh·wp rounded up to a multiple of [`Q_ALIGN`].
    nq: usize,
    /// Elements per input channel in the padded buffer: room for every read of the last flat
    /// position, nq − 1 + (k − 1)·(wp + 1), so no read leaves its channel (≥ hp·wp), rounded up to
    /// a multiple of 16 so that every channel and every block after them starts on a cache line
    /// when the buffer does.
    cs: usize,
}

impl Flat {
    fn new(oh: usize, ow: usize, k: usize) -> Flat {
        let wp = ow + k - 1;
        let hp = oh + k - 1;
        let nq = (oh * wp).div_ceil(Q_ALIGN) * Q_ALIGN;
        let cs = (nq + (k - 1) * (wp + 1)).next_multiple_of(LANES);
        Flat {
            oh,
            ow,
            k,
            wp,
            hp,
            nq,
            cs,
        }
    }
}

/// Scratch elements the kernels of this file need for geometry `g` with `out_channels` outputs:
/// the padded input, the flat output (or flat output gradient), for the input gradient the flipped
/// weights, and for the weight gradient a group's (or a block's) inputs and gradients and 16 lanes
/// per weight. The kernels grow a shorter `work` buffer themselves; sizing it with this first
/// keeps allocation out of the training loop.
pub fn conv2d_work_len(g: &ConvGeometry, out_channels: usize) -> usize {
    let (ho, wo) = g.output_size();
    let f = Flat::new(ho, wo, g.kernel);
    let b = Flat::new(g.height, g.width, g.kernel);
    let forward = g.channels * f.cs + out_channels * f.nq;
    let input_grad = out_channels * g.rows() + out_channels * b.cs + g.channels * b.nq;
    let forward_minor = minor_work_len(g.channels, out_channels, &f);
    let input_grad_minor = out_channels * g.rows() + minor_work_len(out_channels, g.channels, &b);
    // The weight gradient's blocks start on a cache line: up to 15 elements are skipped first.
    let weight_grad = LANES + GROUP * forward + out_channels * g.rows() * LANES;
    let weight_grad_minor = LANES
        + (g.channels * f.hp * f.wp + out_channels * (ho * wo + g.rows())) * grad_lanes::<f32>();
    forward
        .max(input_grad)
        .max(weight_grad)
        .max(weight_grad_minor)
        .max(forward_minor)
        .max(input_grad_minor)
}

/// `dst.copy_from_slice(src)` for the short rows of an image (8 to 28 values here) without a call
/// to `memmove`, whose call overhead costs more than such a copy: runs of 8, the last one
/// overlapping the one before.
#[inline(always)]
fn copy_row<T: Real>(dst: &mut [T], src: &[T]) {
    let n = dst.len();
    assert_eq!(n, src.len());
    if n < 8 {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = s;
        }
        return;
    }
    let mut i = 0;
    loop {
        let at = i.min(n - 8);
        let run: [T; 8] = src[at..at + 8].try_into().expect("8 values");
        <&mut [T; 8]>::try_from(&mut dst[at..at + 8])
            .expect("8 values")
            .clone_from(&run);
        if at + 8 == n {
            break;
        }
        i += 8;
    }
}

/// Copies a `h × w` plane into a zeroed padded plane of `f.hp × f.wp` at row/column offset `off`
/// (the padding; negative crops the source).
#[inline(always)]
fn place<T: Real>(src: &[T], h: usize, w: usize, off: isize, f: &Flat, dst: &mut [T]) {
    for sy in 0..h {
        let dy = sy as isize + off;
        if dy < 0 || dy >= f.hp as isize {
            continue;
        }
        // Columns sx with 0 ≤ sx + off < wp.
        let lo = (-off).max(0) as usize;
        let hi = ((f.wp as isize - off).max(0) as usize).min(w);
        if lo >= hi {
            continue;
        }
        let d0 = (dy as usize) * f.wp + (lo as isize + off) as usize;
        copy_row(&mut dst[d0..d0 + hi - lo], &src[sy * w + lo..sy * w + hi]);
    }
}

/// Zeroes `xp[..cin·cs]` and places the `cin` channels of one sample (`h × w` each) at offset `off`.
#[inline(always)]
fn place_channels<T: Real>(
    src: &[T],
    cin: usize,
    (h, w): (usize, usize),
    off: isize,
    f: &Flat,
    xp: &mut [T],
) {
    let xp = &mut xp[..cin * f.cs];
    xp.iter_mut().for_each(|v| *v = T::zero());
    for c in 0..cin {
        place(
            &src[c * h * w..(c + 1) * h * w],
            h,
            w,
            off,
            f,
            &mut xp[c * f.cs..(c + 1) * f.cs],
        );
    }
}

/// `out[o, q0..q0+NP] = Σ_taps w[o, tap]·xp[offset(tap) + q0..]` for `OB` output channels (rows of
/// `w` with stride `r`), one FMA chain per output in tap order.
#[inline(always)]
fn correlate_tile<T: Real, const OB: usize, const NP: usize>(
    xp: &[T],
    cin: usize,
    f: &Flat,
    w: &[T],
    r: usize,
    q0: usize,
    out: &mut [T],
) {
    // Raw pointers after one check of the furthest reads: bounds checks in the tap loop cost as
    // much as its arithmetic.
    let last = (cin - 1) * f.cs + (f.k - 1) * (f.wp + 1) + q0 + NP;
    assert!(last <= xp.len() && OB * r <= w.len() && r == cin * f.k * f.k);
    let mut acc = [[T::zero(); NP]; OB];
    for c in 0..cin {
        for ki in 0..f.k {
            // SAFETY: every offset below is at most `last` (x) or OB·r (w), checked above.
            unsafe {
                let xrow = xp.as_ptr().add(c * f.cs + ki * f.wp + q0);
                let wrow = w.as_ptr().add((c * f.k + ki) * f.k);
                for kj in 0..f.k {
                    let xs = xrow.add(kj);
                    for (o, acc) in acc.iter_mut().enumerate() {
                        let wv = *wrow.add(o * r + kj);
                        for (p, a) in acc.iter_mut().enumerate() {
                            *a = wv.mul_add(*xs.add(p), *a);
                        }
                    }
                }
            }
        }
    }
    for (o, acc) in acc.iter().enumerate() {
        out[o * f.nq + q0..o * f.nq + q0 + NP].copy_from_slice(acc);
    }
}

/// All tiles of one sample: `out[o, q]` for every output channel and flat position.
#[inline(always)]
fn correlate_sample<T: Real, const NP: usize>(
    xp: &[T],
    cin: usize,
    f: &Flat,
    w: &[T],
    oc: usize,
    out: &mut [T],
) {
    let r = cin * f.k * f.k;
    let mut o0 = 0;
    while o0 < oc {
        let ob = (oc - o0).min(6);
        let (w, out) = (&w[o0 * r..], &mut out[o0 * f.nq..]);
        for q0 in (0..f.nq).step_by(NP) {
            match ob {
                6 => correlate_tile::<T, 6, NP>(xp, cin, f, w, r, q0, out),
                5 => correlate_tile::<T, 5, NP>(xp, cin, f, w, r, q0, out),
                4 => correlate_tile::<T, 4, NP>(xp, cin, f, w, r, q0, out),
                3 => correlate_tile::<T, 3, NP>(xp, cin, f, w, r, q0, out),
                2 => correlate_tile::<T, 2, NP>(xp, cin, f, w, r, q0, out),
                _ => correlate_tile::<T, 1, NP>(xp, cin, f, w, r, q0, out),
            }
        }
        o0 += ob;
    }
}

/// The arguments of one batched correlation (forward or input gradient).
struct Correlation<'a, T> {
    /// `[batch, cin, sh, sw]`.
    src: &'a [T],
    cin: usize,
    src_hw: (usize, usize),
    /// Where the source's (0, 0) lands in the padded plane.
    off: isize,
    f: Flat,
    /// `[oc, cin, k, k]`.
    w: &'a [T],
    oc: usize,
    bias: Option<&'a [T]>,
    batch: usize,
    accumulate: bool,
    /// Laid out as the output (`[batch, oc, oh, ow]`): where given, an output whose gate is not
    /// positive is written as 0 (a ReLU's backward, `zero_unless_positive(gate, s + b)`, applied
    /// in the write-back). Only with `accumulate` false.
    gate: Option<&'a [T]>,
}

#[inline(always)]
fn correlate_body<T: Real, const NP: usize>(a: &Correlation<'_, T>, out: &mut [T], work: &mut [T]) {
    let f = &a.f;
    let (xp, flat) = work.split_at_mut(a.cin * f.cs);
    let flat = &mut flat[..a.oc * f.nq];
    let in_len = a.cin * a.src_hw.0 * a.src_hw.1;
    let out_len = a.oc * f.oh * f.ow;
    for n in 0..a.batch {
        let src = &a.src[n * in_len..(n + 1) * in_len];
        place_channels(src, a.cin, a.src_hw, a.off, f, xp);
        correlate_sample::<T, NP>(xp, a.cin, f, a.w, a.oc, flat);
        let y = &mut out[n * out_len..(n + 1) * out_len];
        let gate = a.gate.map(|g| &g[n * out_len..(n + 1) * out_len]);
        for o in 0..a.oc {
            let b = a.bias.map_or(T::zero(), |b| b[o]);
            for oy in 0..f.oh {
                let src = &flat[o * f.nq + oy * f.wp..][..f.ow];
                let at = (o * f.oh + oy) * f.ow;
                let dst = &mut y[at..][..f.ow];
                if let Some(gate) = gate {
                    for ((d, &s), &g) in dst.iter_mut().zip(src).zip(&gate[at..][..f.ow]) {
                        *d = zero_unless_positive(g, s + b);
                    }
                } else if a.accumulate {
                    for (d, &s) in dst.iter_mut().zip(src) {
                        *d += s + b;
                    }
                } else {
                    for (d, &s) in dst.iter_mut().zip(src) {
                        *d = s + b;
                    }
                }
            }
        }
    }
}

/// How a batched correlation lays its samples out (see [`correlate_minor`]). `Auto` is what the
/// public functions use; the tests and the kernel timing force the other two.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) enum Layout {
    /// One sample at a time on the flat padded layout ([`correlate_body`]).
    Flat,
    /// Every sample sample-minor, a short last chunk padded with zero samples.
    Minor,
    /// Sample-minor for the full chunks and for a last chunk at least half full; the samples of a
    /// shorter last chunk (and a batch smaller than half a chunk) flat. All flat where a
    /// correlation has fewer than [`MINOR_MIN_TAPS`] taps.
    Auto,
}

/// Taps (input channels × k × k) below which [`Layout::Auto`] keeps a correlation flat: with few
/// taps per output, the transposes into and out of the sample-minor layout cost more than its
/// faster inner loop saves (measured by `kernel_rates` in the tests, AVX-512, batch 128: the
/// LeNet's conv1, 25 taps, 115 GFLOP/s flat and 101–106 sample-minor; its 150-tap convolutions
/// 148–151 → 182–184 forward).
const MINOR_MIN_TAPS: usize = 64;

#[cfg(test)]
thread_local! {
    /// The layout the public functions use on this thread instead of [`Layout::Auto`] (tests
    /// only: the layer suite runs once more with every batch sample-minor).
    static FORCED: std::cell::Cell<Option<Layout>> = const { std::cell::Cell::new(None) };
}

/// [`Layout::Auto`], or in tests the layout forced by [`with_layout`].
fn public_layout() -> Layout {
    #[cfg(test)]
    if let Some(l) = FORCED.with(|f| f.get()) {
        return l;
    }
    Layout::Auto
}

/// Runs `body` with the public functions of this module on `layout` (on this thread).
#[cfg(test)]
pub(crate) fn with_layout<R>(layout: Layout, body: impl FnOnce() -> R) -> R {
    let before = FORCED.with(|f| f.replace(Some(layout)));
    let r = body();
    FORCED.with(|f| f.set(before));
    r
}

/// Copies samples `n0..n0 + m` (m ≤ L) of the source into the sample-minor padded block
/// `xs[c][py][px][l]` (`f.hp × f.wp` per channel, lane l = sample n0 + l), zero at the padding
/// and in the lanes past m.
#[inline(always)]
fn place_minor<T: Real, const L: usize>(a: &Correlation<'_, T>, n0: usize, m: usize, xs: &mut [T]) {
    let f = &a.f;
    let (h, w) = a.src_hw;
    let in_len = a.cin * h * w;
    let xs = &mut xs[..a.cin * f.hp * f.wp * L];
    xs.iter_mut().for_each(|v| *v = T::zero());
    // Columns sx with 0 ≤ sx + off < wp (as in `place`).
    let lo = (-a.off).max(0) as usize;
    let hi = ((f.wp as isize - a.off).max(0) as usize).min(w);
    if lo >= hi {
        return;
    }
    let src = &a.src[n0 * in_len..(n0 + m) * in_len];
    for c in 0..a.cin {
        for sy in 0..h {
            let dy = sy as isize + a.off;
            if dy < 0 || dy >= f.hp as isize {
                continue;
            }
            let s0 = (c * h + sy) * w;
            let d0 = (c * f.hp + dy as usize) * f.wp;
            for sx in lo..hi {
                let px = (sx as isize + a.off) as usize;
                let lanes = &mut xs[(d0 + px) * L..][..L];
                for (l, v) in lanes[..m].iter_mut().enumerate() {
                    *v = src[l * in_len + s0 + sx];
                }
            }
        }
    }
}

/// Calls the caller's macro `$tile!(OB, N)` with the run-time tile sizes `ob` (1 to 6 channels)
/// and `n` (1 to 4 positions or taps) as literals, so that each size is its own compiled tile.
macro_rules! with_tile_sizes {
    ($ob:expr, $n:expr, $tile:ident) => {
        match $n {
            4 => with_tile_sizes!(@channels $ob, $tile, 4),
            3 => with_tile_sizes!(@channels $ob, $tile, 3),
            2 => with_tile_sizes!(@channels $ob, $tile, 2),
            _ => with_tile_sizes!(@channels $ob, $tile, 1),
        }
    };
    (@channels $ob:expr, $tile:ident, $n:literal) => {
        match $ob {
            6 => $tile!(6, $n),
            5 => $tile!(5, $n),
            4 => $tile!(4, $n),
            3 => $tile!(3, $n),
            2 => $tile!(2, $n),
            1 => $tile!(1, $n),
            _ => unreachable!("1 ≤ ob ≤ 6"),
        }
    };
}

/// [`place_minor`], with the 16 × 16 transposes of [`place_minor_x16`] where `X16` (the same
/// values in the same places).
#[inline(always)]
fn place_block<T: Real, const L: usize, const X16: bool>(
    a: &Correlation<'_, T>,
    n0: usize,
    m: usize,
    xs: &mut [T],
) {
    // SAFETY: X16 is set only where T is f32, L is 16 and AVX-512 is available.
    #[cfg(target_arch = "x86_64")]
    let placed = X16 && unsafe { place_minor_x16(a, n0, m, xs) };
    #[cfg(not(target_arch = "x86_64"))]
    let placed = false;
    if !placed {
        place_minor::<T, L>(a, n0, m, xs);
    }
}

/// `ys[o][oy][ox0 + p][l] = Σ_taps w[o, tap]·xs[c][oy + ki][ox0 + p + kj][l]` for `OB` output
/// channels (rows of `w` with stride `r`), `P` consecutive positions of output row `oy` and the L
/// samples of the block: per tap, P whole-vector loads and OB broadcasts feed OB·P vector FMAs.
/// One FMA chain per output in tap order from 0, as [`correlate_tile`], over the taps whose input
/// row oy + ki is one of the padded rows `top..bottom` that hold source rows (the others read
/// zeros: the input gradient of the LeNet's conv2 reads an 8 × 8 gradient padded to 16 × 16, so
/// this skips a third of its taps; the module comment says why the sums are the same).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn minor_tile<T: Real, const L: usize, const OB: usize, const P: usize>(
    xs: &[T],
    cin: usize,
    f: &Flat,
    w: &[T],
    r: usize,
    (oy, ox0): (usize, usize),
    (top, bottom): (usize, usize),
    ys: &mut [T],
) {
    let k = f.k;
    // Raw pointers after one check of the furthest reads (as in `correlate_tile`).
    let last = (((cin - 1) * f.hp + oy + k - 1) * f.wp + ox0 + k - 1 + P) * L;
    assert!(last <= xs.len() && OB * r <= w.len() && r == cin * k * k);
    // The kernel rows whose input row oy + ki holds source data (padded rows top..bottom): the
    // others multiply zeros, and are skipped (see the module comment: the same sums).
    let ki_start = top.saturating_sub(oy).min(k);
    let ki_end = bottom.saturating_sub(oy).clamp(ki_start, k);
    let mut acc = [[[T::zero(); L]; P]; OB];
    for c in 0..cin {
        for ki in ki_start..ki_end {
            // SAFETY: every offset below is at most `last` (xs) or OB·r (w), checked above.
            unsafe {
                let xrow = xs.as_ptr().add(((c * f.hp + oy + ki) * f.wp + ox0) * L);
                let wrow = w.as_ptr().add((c * k + ki) * k);
                for kj in 0..k {
                    let xv = std::ptr::read_unaligned(xrow.add(kj * L).cast::<[[T; L]; P]>());
                    for (o, acc) in acc.iter_mut().enumerate() {
                        let wv = *wrow.add(o * r + kj);
                        for (acc, xv) in acc.iter_mut().zip(&xv) {
                            for (a, &x) in acc.iter_mut().zip(xv) {
                                *a = wv.mul_add(x, *a);
                            }
                        }
                    }
                }
            }
        }
    }
    for (o, acc) in acc.iter().enumerate() {
        for (p, acc) in acc.iter().enumerate() {
            ys[((o * f.oh + oy) * f.ow + ox0 + p) * L..][..L].copy_from_slice(acc);
        }
    }
}

/// One chunk of samples `n0..n0 + m` (m ≤ L) on the sample-minor layout: placed into `xs`,
/// correlated into `ys[o][oy][ox][l]` tile by tile (`OB` channels × up to `P` positions), then
/// written back sample by sample with the bias.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn minor_chunk<T: Real, const L: usize, const OB: usize, const P: usize, const X16: bool>(
    a: &Correlation<'_, T>,
    n0: usize,
    m: usize,
    out: &mut [T],
    xs: &mut [T],
    ys: &mut [T],
) {
    let f = &a.f;
    place_block::<T, L, X16>(a, n0, m, xs);
    let xs = &*xs;
    let r = a.cin * f.k * f.k;
    let plane = f.oh * f.ow;
    // The padded rows that hold source rows (all where the source is cropped).
    let top = a.off.clamp(0, f.hp as isize) as usize;
    let rows = (
        top,
        (a.off + a.src_hw.0 as isize).clamp(top as isize, f.hp as isize) as usize,
    );
    let mut o0 = 0;
    while o0 < a.oc {
        let ob = (a.oc - o0).min(OB);
        let (w, ysb) = (&a.w[o0 * r..], &mut ys[o0 * plane * L..]);
        for oy in 0..f.oh {
            let mut ox0 = 0;
            while ox0 < f.ow {
                let p = (f.ow - ox0).min(P);
                macro_rules! tile {
                    ($ob:literal, $p:literal) => {
                        minor_tile::<T, L, $ob, $p>(xs, a.cin, f, w, r, (oy, ox0), rows, ysb)
                    };
                }
                with_tile_sizes!(ob, p, tile);
                ox0 += p;
            }
        }
        o0 += ob;
    }
    let out_len = a.oc * plane;
    // The positions the 16 × 16 transposes leave (all of them without them).
    // SAFETY: as above.
    #[cfg(target_arch = "x86_64")]
    let done = if X16 {
        unsafe { write_back_x16(a, n0, m, ys, out) }
    } else {
        0
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    for o in 0..a.oc {
        let b = a.bias.map_or(T::zero(), |b| b[o]);
        for (i, v) in ys[o * plane * L..(o + 1) * plane * L]
            .chunks_exact(L)
            .enumerate()
            .skip(done)
        {
            for (l, &s) in v[..m].iter().enumerate() {
                let at = (n0 + l) * out_len + o * plane + i;
                let d = &mut out[at];
                if let Some(gate) = a.gate {
                    *d = zero_unless_positive(gate[at], s + b);
                } else if a.accumulate {
                    *d += s + b;
                } else {
                    *d = s + b;
                }
            }
        }
    }
}

/// The transpose of a 16 × 16 block of f32 held as 16 rows: `out[c][i] = r[i][c]` (64 in-register
/// shuffles: pairs of rows interleaved by 32 and 64 bits, then 128-bit quarters recombined twice).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
fn transpose16(r: [std::arch::x86_64::__m512; 16]) -> [std::arch::x86_64::__m512; 16] {
    use std::arch::x86_64::*;
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // u[4i + j], quarter k: column 4k + j of rows 4i..4i + 4.
    let mut u = [_mm512_setzero_ps(); 16];
    let pd = _mm512_castps_pd;
    let ps = _mm512_castpd_ps;
    for i in 0..4 {
        let a = 4 * i;
        u[a] = ps(_mm512_unpacklo_pd(pd(t[a]), pd(t[a + 2])));
        u[a + 1] = ps(_mm512_unpackhi_pd(pd(t[a]), pd(t[a + 2])));
        u[a + 2] = ps(_mm512_unpacklo_pd(pd(t[a + 1]), pd(t[a + 3])));
        u[a + 3] = ps(_mm512_unpackhi_pd(pd(t[a + 1]), pd(t[a + 3])));
    }
    // Quarters (0, 2) and (1, 3) of two row groups, then again: 0x88 picks quarters 0, 2 of each
    // operand, 0xdd quarters 1, 3.
    for j in 0..4 {
        t[j] = _mm512_shuffle_f32x4::<0x88>(u[j], u[4 + j]);
        t[4 + j] = _mm512_shuffle_f32x4::<0xdd>(u[j], u[4 + j]);
        t[8 + j] = _mm512_shuffle_f32x4::<0x88>(u[8 + j], u[12 + j]);
        t[12 + j] = _mm512_shuffle_f32x4::<0xdd>(u[8 + j], u[12 + j]);
    }
    let mut out = [_mm512_setzero_ps(); 16];
    for j in 0..4 {
        out[j] = _mm512_shuffle_f32x4::<0x88>(t[j], t[8 + j]);
        out[8 + j] = _mm512_shuffle_f32x4::<0xdd>(t[j], t[8 + j]);
        out[4 + j] = _mm512_shuffle_f32x4::<0x88>(t[4 + j], t[12 + j]);
        out[12 + j] = _mm512_shuffle_f32x4::<0xdd>(t[4 + j], t[12 + j]);
    }
    out
}

/// [`place_minor`] for f32 and 16 lanes with 16 × 16 transposes (the same values in the same
/// places): each channel plane is taken 16 source positions at a time (a row of the block per
/// sample), transposed, and each position's 16 samples stored as one aligned line; only the
/// padding is zeroed. Returns false (and does nothing) where the source is cropped, which
/// [`place_minor`] then handles.
///
/// # Safety
/// T must be f32, L 16, and AVX-512F available.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn place_minor_x16<T: Real>(
    a: &Correlation<'_, T>,
    n0: usize,
    m: usize,
    xs: &mut [T],
) -> bool {
    use std::arch::x86_64::*;
    const L: usize = 16;
    let f = &a.f;
    let (h, w) = a.src_hw;
    if a.off < 0 || a.off as usize + h > f.hp || a.off as usize + w > f.wp {
        return false;
    }
    let off = a.off as usize;
    let (plane, in_len) = (h * w, a.cin * h * w);
    let src = &a.src[n0 * in_len..(n0 + m) * in_len];
    let xs = &mut xs[..a.cin * f.hp * f.wp * L];
    let zero_px = |xs: &mut [T], from: usize, to: usize| {
        xs[from * L..to * L].iter_mut().for_each(|v| *v = T::zero())
    };
    let blocks = plane / L;
    for c in 0..a.cin {
        // The padding: whole rows above and below, the columns left and right of each image row.
        let base = c * f.hp * f.wp;
        zero_px(xs, base, base + off * f.wp);
        zero_px(xs, base + (off + h) * f.wp, base + f.hp * f.wp);
        for py in off..off + h {
            let row = base + py * f.wp;
            zero_px(xs, row, row + off);
            zero_px(xs, row + off + w, row + f.wp);
        }
        let sp = src.as_ptr().cast::<f32>();
        let dp = xs.as_mut_ptr().cast::<f32>();
        for jb in 0..blocks {
            let j0 = jb * L;
            let mut r = [_mm512_setzero_ps(); 16];
            for (l, r) in r.iter_mut().enumerate().take(m) {
                // SAFETY: sample l's plane c holds positions j0..j0 + 16 ≤ plane (T is f32).
                *r = unsafe { _mm512_loadu_ps(sp.add(l * in_len + c * plane + j0)) };
            }
            let t = transpose16(r);
            for (j, t) in t.iter().enumerate() {
                let (sy, sx) = ((j0 + j) / w, (j0 + j) % w);
                let px = base + (sy + off) * f.wp + sx + off;
                // SAFETY: px < (c + 1)·hp·wp, inside xs (the source is not cropped).
                unsafe { _mm512_storeu_ps(dp.add(px * L), *t) };
            }
        }
        for j in blocks * L..plane {
            let (sy, sx) = (j / w, j % w);
            let px = base + (sy + off) * f.wp + sx + off;
            let lanes = &mut xs[px * L..][..L];
            for (l, v) in lanes.iter_mut().enumerate() {
                *v = if l < m {
                    src[l * in_len + c * plane + j]
                } else {
                    T::zero()
                };
            }
        }
    }
    true
}

/// The write-back of [`minor_chunk`] for f32 and 16 lanes with 16 × 16 transposes: for each
/// channel, positions 16 at a time, `out[n0 + l][o][i] (+)= ys[o][i][l] + b[o]` (the same sums:
/// s + b, then added to the output when accumulating). Returns how many positions of each channel
/// it wrote (the plane rounded down to 16); the caller writes the rest.
///
/// # Safety
/// T must be f32, L 16, and AVX-512F available.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn write_back_x16<T: Real>(
    a: &Correlation<'_, T>,
    n0: usize,
    m: usize,
    ys: &[T],
    out: &mut [T],
) -> usize {
    use std::arch::x86_64::*;
    const L: usize = 16;
    let f = &a.f;
    let plane = f.oh * f.ow;
    let out_len = a.oc * plane;
    let blocks = plane / L;
    let ys = &ys[..a.oc * plane * L];
    let out = &mut out[n0 * out_len..(n0 + m) * out_len];
    let gate = a
        .gate
        .map(|g| g[n0 * out_len..(n0 + m) * out_len].as_ptr().cast::<f32>());
    let (yp, op) = (ys.as_ptr().cast::<f32>(), out.as_mut_ptr().cast::<f32>());
    for o in 0..a.oc {
        let b = _mm512_set1_ps(a.bias.map_or(0.0, |b| b[o].as_f64() as f32));
        for jb in 0..blocks {
            let j0 = jb * L;
            let mut r = [_mm512_setzero_ps(); 16];
            for (i, r) in r.iter_mut().enumerate() {
                // SAFETY: position j0 + i < plane of channel o, inside ys.
                *r = unsafe { _mm512_loadu_ps(yp.add((o * plane + j0 + i) * L)) };
            }
            let t = transpose16(r);
            for (l, &t) in t.iter().enumerate().take(m) {
                // SAFETY: sample l < m of the chunk, channel o, positions j0..j0 + 16 ≤ plane.
                unsafe {
                    let d = op.add(l * out_len + o * plane + j0);
                    let v = _mm512_add_ps(t, b);
                    let v = match gate {
                        // zero_unless_positive(gate, v): an ordered `>`, false for a NaN gate.
                        Some(g) => {
                            let g = _mm512_loadu_ps(g.add(l * out_len + o * plane + j0));
                            let k = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(g, _mm512_setzero_ps());
                            _mm512_maskz_mov_ps(k, v)
                        }
                        None if a.accumulate => _mm512_add_ps(_mm512_loadu_ps(d), v),
                        None => v,
                    };
                    _mm512_storeu_ps(d, v);
                }
            }
        }
    }
    blocks * L
}

/// A batched correlation with its samples vectorised: L samples at a time are laid out
/// sample-minor (`[c][py][px][L samples]`, one vector register = one padded input pixel of L
/// samples), so that a tile of P output positions × OB channels needs per tap P aligned vector
/// loads and OB weight broadcasts for OB·P FMAs, and no flat column is computed and thrown away.
/// Every output is still one FMA chain over the taps in `(c, ki, kj)` order from 0, then + bias:
/// the same bits as [`correlate_body`] (which takes the samples that `layout` leaves flat).
#[inline(always)]
fn correlate_minor<
    T: Real,
    const NP: usize,
    const L: usize,
    const OB: usize,
    const P: usize,
    const X16: bool,
>(
    a: &Correlation<'_, T>,
    out: &mut [T],
    work: &mut [T],
    layout: Layout,
) {
    let full = a.batch / L * L;
    let tail = a.batch - full;
    let minor = match layout {
        Layout::Flat => 0,
        Layout::Auto if a.cin * a.f.k * a.f.k < MINOR_MIN_TAPS => 0,
        Layout::Minor => a.batch,
        Layout::Auto if 2 * tail >= L => a.batch,
        Layout::Auto => full,
    };
    let f = &a.f;
    let out_len = a.oc * f.oh * f.ow;
    if minor > 0 {
        let skip = work.as_ptr().align_offset(64).min(LANES - 1);
        let (xs, ys) = work[skip..].split_at_mut(a.cin * f.hp * f.wp * L);
        let ys = &mut ys[..out_len * L];
        for n0 in (0..minor).step_by(L) {
            minor_chunk::<T, L, OB, P, X16>(a, n0, L.min(minor - n0), out, xs, ys);
        }
    }
    if minor < a.batch {
        let in_len = a.cin * a.src_hw.0 * a.src_hw.1;
        let rest = Correlation {
            src: &a.src[minor * in_len..],
            batch: a.batch - minor,
            gate: a.gate.map(|g| &g[minor * out_len..]),
            ..*a
        };
        correlate_body::<T, NP>(&rest, &mut out[minor * out_len..], work);
    }
}

/// Elements of scratch [`correlate_minor`] needs for a correlation of `cin` channels into `oc`
/// on `f` (at most 16 samples a chunk, and up to 15 skipped to reach a cache line).
fn minor_work_len(cin: usize, oc: usize, f: &Flat) -> usize {
    LANES + (cin * f.hp * f.wp + oc * f.oh * f.ow) * LANES
}

/// The arguments of one batched weight gradient.
struct WeightGrad<'a, T> {
    x: &'a [T],
    dy: &'a [T],
    g: ConvGeometry,
    f: Flat,
    oc: usize,
    batch: usize,
    alpha: T,
}

/// Σ of `L` lanes (a power of two) by a fixed pairwise tree, halving: lane i + L/2 is added to
/// lane i, then i + L/4 to i, and so on (for 16 lanes: `h[i] = a[i] + a[i + 8]`, then
/// `q[i] = h[i] + h[i + 4]`, then `(q[0] + q[2]) + (q[1] + q[3])`).
#[inline(always)]
fn lane_sum<T: Real, const L: usize>(a: &[T; L]) -> T {
    const { assert!(L.is_power_of_two()) };
    let mut h = *a;
    let mut n = L;
    while n > 1 {
        n /= 2;
        for i in 0..n {
            h[i] += h[i + n];
        }
    }
    h[0]
}

/// The starts of the 16-position runs of a group: `s·stride + 16·i` for each sample s and
/// `16·i < nq`, in that order (a plain counter: `flat_map` over `step_by` does not compile to one).
struct Runs {
    q: usize,
    end: usize,
    next_sample: usize,
    last: usize,
    stride: usize,
    nq: usize,
}

impl Runs {
    #[inline(always)]
    fn new(samples: usize, stride: usize, nq: usize) -> Runs {
        Runs {
            q: 0,
            end: if samples == 0 { 0 } else { nq },
            next_sample: stride,
            last: samples.saturating_sub(1) * stride,
            stride,
            nq,
        }
    }
}

impl Iterator for Runs {
    type Item = usize;
    #[inline(always)]
    fn next(&mut self) -> Option<usize> {
        if self.q >= self.end {
            if self.end == 0 || self.next_sample > self.last {
                return None;
            }
            self.q = self.next_sample;
            self.end = self.q + self.nq;
            self.next_sample += self.stride;
        }
        let q = self.q;
        self.q += LANES;
        Some(q)
    }
}

/// The lane sums of a weight-gradient tile over a run of `samples` consecutive samples: `OB` rows
/// of the flat output gradient against `TB` shifted windows of the padded input, each `nq` long,
/// sample s's at `s·stride` further on in every slice. The 16 lanes of entry (o, t) live in
/// `lanes[at + o·row + 16·t..][..16]`: they are loaded, continued (lane q mod 16, an FMA chain over
/// the samples in order and increasing q within each) and stored back, so that calling this for
/// samples 0..2 and then 2..4 computes the same bits as one call for 0..4, and a group's lanes
/// can be filled one sample at a time while that sample's input and gradient stay in L1. One
/// generic version and, for f32, two with explicit vector registers (autovectorisation keeps these
/// accumulators on the stack); all give the same bits.
trait DotTile<T: Real> {
    /// # Safety
    /// The instruction set of the implementation must be available.
    #[allow(clippy::too_many_arguments)]
    unsafe fn dots<const OB: usize, const TB: usize>(
        ds: &[&[T]; OB],
        xs: &[&[T]; TB],
        nq: usize,
        samples: usize,
        stride: usize,
        lanes: &mut [T],
        at: usize,
        row: usize,
    );
}

/// Checks that the lanes of an `OB × TB` tile at `at` (rows `row` apart) lie inside `lanes` and
/// that every slice holds `samples` samples `stride` apart of `nq` positions.
#[inline(always)]
fn check_tile<T>(
    ds: &[&[T]],
    xs: &[&[T]],
    nq: usize,
    samples: usize,
    stride: usize,
    lanes: &[T],
    (at, row, ob, tb): (usize, usize, usize, usize),
) {
    let end = (samples.max(1) - 1) * stride + nq;
    for s in ds.iter().chain(xs) {
        assert!(s.len() >= end && nq.is_multiple_of(LANES));
    }
    assert!(ob >= 1 && tb >= 1 && at + (ob - 1) * row + tb * LANES <= lanes.len());
}

struct GenericDots;

impl<T: Real> DotTile<T> for GenericDots {
    #[inline(always)]
    unsafe fn dots<const OB: usize, const TB: usize>(
        ds: &[&[T]; OB],
        xs: &[&[T]; TB],
        nq: usize,
        samples: usize,
        stride: usize,
        lanes: &mut [T],
        at: usize,
        row: usize,
    ) {
        let mut acc = [[[T::zero(); LANES]; TB]; OB];
        for (o, acc) in acc.iter_mut().enumerate() {
            for (t, acc) in acc.iter_mut().enumerate() {
                acc.copy_from_slice(&lanes[at + o * row + t * LANES..][..LANES]);
            }
        }
        for q in Runs::new(samples, stride, nq) {
            for (acc, ds) in acc.iter_mut().zip(ds) {
                let dv: &[T; LANES] = ds[q..q + LANES].try_into().expect("a full run");
                for (acc, xs) in acc.iter_mut().zip(xs) {
                    let xv: &[T; LANES] = xs[q..q + LANES].try_into().expect("a full run");
                    for ((a, &dl), &xl) in acc.iter_mut().zip(dv).zip(xv) {
                        *a = dl.mul_add(xl, *a);
                    }
                }
            }
        }
        for (o, acc) in acc.iter().enumerate() {
            for (t, acc) in acc.iter().enumerate() {
                lanes[at + o * row + t * LANES..][..LANES].copy_from_slice(acc);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
struct Avx512Dots;

#[cfg(target_arch = "x86_64")]
impl DotTile<f32> for Avx512Dots {
    #[inline]
    #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
    unsafe fn dots<const OB: usize, const TB: usize>(
        ds: &[&[f32]; OB],
        xs: &[&[f32]; TB],
        nq: usize,
        samples: usize,
        stride: usize,
        lanes: &mut [f32],
        at: usize,
        row: usize,
    ) {
        use std::arch::x86_64::*;
        check_tile(ds, xs, nq, samples, stride, lanes, (at, row, OB, TB));
        let lp = lanes.as_mut_ptr();
        let mut acc = [[_mm512_setzero_ps(); TB]; OB];
        for (o, acc) in acc.iter_mut().enumerate() {
            for (t, a) in acc.iter_mut().enumerate() {
                // SAFETY: inside `lanes`, checked above.
                *a = unsafe { _mm512_loadu_ps(lp.add(at + o * row + t * LANES)) };
            }
        }
        for q in Runs::new(samples, stride, nq) {
            let mut xv = [_mm512_setzero_ps(); TB];
            for (v, xs) in xv.iter_mut().zip(xs) {
                // SAFETY: q + 16 ≤ end ≤ len, checked above.
                *v = unsafe { _mm512_loadu_ps(xs.as_ptr().add(q)) };
            }
            for (acc, ds) in acc.iter_mut().zip(ds) {
                // SAFETY: as above.
                let dv = unsafe { _mm512_loadu_ps(ds.as_ptr().add(q)) };
                for (a, &x) in acc.iter_mut().zip(&xv) {
                    *a = _mm512_fmadd_ps(dv, x, *a);
                }
            }
        }
        for (o, acc) in acc.iter().enumerate() {
            for (t, &a) in acc.iter().enumerate() {
                // SAFETY: as for the loads.
                unsafe { _mm512_storeu_ps(lp.add(at + o * row + t * LANES), a) };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
struct Avx2Dots;

#[cfg(target_arch = "x86_64")]
impl DotTile<f32> for Avx2Dots {
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dots<const OB: usize, const TB: usize>(
        ds: &[&[f32]; OB],
        xs: &[&[f32]; TB],
        nq: usize,
        samples: usize,
        stride: usize,
        lanes: &mut [f32],
        at: usize,
        row: usize,
    ) {
        use std::arch::x86_64::*;
        check_tile(ds, xs, nq, samples, stride, lanes, (at, row, OB, TB));
        let lp = lanes.as_mut_ptr();
        // Lanes 0..8 in the first register of a pair, 8..16 in the second.
        let mut acc = [[[_mm256_setzero_ps(); 2]; TB]; OB];
        for (o, acc) in acc.iter_mut().enumerate() {
            for (t, a) in acc.iter_mut().enumerate() {
                let l = at + o * row + t * LANES;
                // SAFETY: inside `lanes`, checked above.
                *a = unsafe { [_mm256_loadu_ps(lp.add(l)), _mm256_loadu_ps(lp.add(l + 8))] };
            }
        }
        for q in Runs::new(samples, stride, nq) {
            for (acc, ds) in acc.iter_mut().zip(ds) {
                // SAFETY: q + 16 ≤ end ≤ len, checked above.
                let dv = unsafe {
                    [
                        _mm256_loadu_ps(ds.as_ptr().add(q)),
                        _mm256_loadu_ps(ds.as_ptr().add(q + 8)),
                    ]
                };
                for (a, xs) in acc.iter_mut().zip(xs) {
                    // SAFETY: as above.
                    let xv = unsafe {
                        [
                            _mm256_loadu_ps(xs.as_ptr().add(q)),
                            _mm256_loadu_ps(xs.as_ptr().add(q + 8)),
                        ]
                    };
                    a[0] = _mm256_fmadd_ps(dv[0], xv[0], a[0]);
                    a[1] = _mm256_fmadd_ps(dv[1], xv[1], a[1]);
                }
            }
        }
        for (o, acc) in acc.iter().enumerate() {
            for (t, a) in acc.iter().enumerate() {
                let l = at + o * row + t * LANES;
                // SAFETY: as for the loads.
                unsafe {
                    _mm256_storeu_ps(lp.add(l), a[0]);
                    _mm256_storeu_ps(lp.add(l + 8), a[1]);
                }
            }
        }
    }
}

/// Continues the lanes of `OB` output channels from `o0` and `TB` taps from `t0` with samples
/// `s0..s0 + samples` of the group: `lanes[o, tap] += Σ_q d[o, q]·xp[offset(tap) + q]` lane by lane.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn weight_grad_tile<T: Real, K: DotTile<T>, const OB: usize, const TB: usize>(
    group: &[T],
    (s0, samples): (usize, usize),
    f: &Flat,
    cin: usize,
    o0: usize,
    t0: usize,
    r: usize,
    lanes: &mut [T],
) {
    // Each sample's block of `group`: its padded input (cin·cs), then its flat gradient (O·nq).
    let (kk, nq, stride) = (f.k * f.k, f.nq, group.len() / GROUP);
    let base = s0 * stride;
    let mut xs: [&[T]; TB] = [&[]; TB];
    for (t, xs) in xs.iter_mut().enumerate() {
        let tap = t0 + t;
        let off = (tap / kk) * f.cs + ((tap % kk) / f.k) * f.wp + tap % f.k;
        *xs = &group[base + off..];
    }
    let mut ds: [&[T]; OB] = [&[]; OB];
    for (o, ds) in ds.iter_mut().enumerate() {
        *ds = &group[base + cin * f.cs + (o0 + o) * nq..];
    }
    let (at, row) = ((o0 * r + t0) * LANES, r * LANES);
    // SAFETY: passed on to the caller.
    unsafe { K::dots::<OB, TB>(&ds, &xs, nq, samples, stride, lanes, at, row) };
}

/// Flat positions of one sample below which a group's samples are taken together: a larger plane
/// is taken one sample at a time, so that its gradient rows and input stay in L1 while every tile
/// passes over them (the same sums in the same order either way; see [`DotTile`]).
const ONE_SAMPLE_AT_A_TIME: usize = 256;

/// # Safety
/// `K`'s instruction set must be available.
#[inline(always)]
unsafe fn weight_grad_body<T: Real, K: DotTile<T>, const OBM: usize, const TBM: usize>(
    a: &WeightGrad<'_, T>,
    dw: &mut [T],
    work: &mut [T],
) {
    let (g, f) = (&a.g, &a.f);
    let r = g.rows();
    let stride = g.channels * f.cs + a.oc * f.nq;
    // Every block of the group (cs and nq are multiples of 16) starts on a cache line, so that the
    // gradient's loads never straddle two.
    let skip = work.as_ptr().align_offset(64).min(LANES - 1);
    let (group, lanes) = work[skip..].split_at_mut(GROUP * stride);
    let lanes = &mut lanes[..a.oc * r * LANES];
    let in_len = g.input_len();
    let out_len = a.oc * f.oh * f.ow;
    let chunk = if f.nq >= ONE_SAMPLE_AT_A_TIME {
        1
    } else {
        GROUP
    };
    for n0 in (0..a.batch).step_by(GROUP) {
        let samples = GROUP.min(a.batch - n0);
        for (s, block) in group.chunks_exact_mut(stride).take(samples).enumerate() {
            let n = n0 + s;
            let (xp, d) = block.split_at_mut(g.channels * f.cs);
            let x = &a.x[n * in_len..(n + 1) * in_len];
            place_channels(
                x,
                g.channels,
                (g.height, g.width),
                g.padding as isize,
                f,
                xp,
            );
            // The output gradient on the flat grid, 0 at the thrown-away columns and past the end.
            d.iter_mut().for_each(|v| *v = T::zero());
            let dy = &a.dy[n * out_len..(n + 1) * out_len];
            for o in 0..a.oc {
                for oy in 0..f.oh {
                    copy_row(
                        &mut d[o * f.nq + oy * f.wp..][..f.ow],
                        &dy[(o * f.oh + oy) * f.ow..][..f.ow],
                    );
                }
            }
        }
        let group = &*group;
        lanes.iter_mut().for_each(|v| *v = T::zero());
        for s0 in (0..samples).step_by(chunk) {
            let run = (s0, chunk.min(samples - s0));
            let mut o0 = 0;
            while o0 < a.oc {
                // OBM ≤ 6: a block is 1 to 6 output channels.
                let ob = (a.oc - o0).min(OBM);
                let mut t0 = 0;
                while t0 < r {
                    let tb = if r - t0 >= TBM { TBM } else { 1 };
                    macro_rules! tile {
                        ($ob:literal) => {
                            // SAFETY: passed on to the caller.
                            unsafe {
                                if tb == TBM {
                                    weight_grad_tile::<T, K, $ob, TBM>(
                                        group, run, f, g.channels, o0, t0, r, lanes,
                                    )
                                } else {
                                    weight_grad_tile::<T, K, $ob, 1>(
                                        group, run, f, g.channels, o0, t0, r, lanes,
                                    )
                                }
                            }
                        };
                    }
                    match ob {
                        6 => tile!(6),
                        5 => tile!(5),
                        4 => tile!(4),
                        3 => tile!(3),
                        2 => tile!(2),
                        _ => tile!(1),
                    }
                    t0 += tb;
                }
                o0 += ob;
            }
        }
        // The group's sum of each entry, by the fixed tree, times alpha added.
        for (v, l) in dw.iter_mut().zip(lanes.chunks_exact(LANES)) {
            let l: &[T; LANES] = l.try_into().expect("16 lanes");
            *v = a.alpha.mul_add(lane_sum(l), *v);
        }
    }
}

/// Batches of at least this many samples take the weight gradient sample-minor
/// ([`weight_grad_minor`]); a smaller batch (a per-sample gradient is a batch of 1), whose
/// vectors of samples would be mostly padding, takes it flat ([`weight_grad_body`]).
const MINOR_GRAD_MIN_BATCH: usize = 8;

/// Samples per block of the sample-minor weight gradient: one f32 vector of 16 lanes, or of 8 for
/// f64, on every instruction set (the lanes fix the summation order, so they are not chosen by
/// register width; an instruction set with narrower registers holds a block in several).
const fn grad_lanes<T>() -> usize {
    if std::mem::size_of::<T>() == 4 {
        16
    } else {
        8
    }
}

/// Bytes of the output gradient that one row chunk of the sample-minor weight gradient keeps in
/// L1 while every tile of taps passes over it.
const GRAD_CHUNK_BYTES: usize = 32 * 1024;

/// The offsets in `xs` of taps `t0..t0 + TB` (tap (c, ki, kj) at `((c·hp + ki)·wp + kj)·L`), after
/// checking that a tile of `OB` channels from `o0` over output rows `y0..y1` reads and writes only
/// inside `xs`, `ds` and `lanes` (the offsets grow with the tap, so the last one bounds them).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn grad_tile_offsets<const L: usize, const OB: usize, const TB: usize>(
    f: &Flat,
    r: usize,
    (o0, t0): (usize, usize),
    (y0, y1): (usize, usize),
    (xs, ds, lanes): (usize, usize, usize),
) -> [usize; TB] {
    let (k, kk, plane) = (f.k, f.k * f.k, f.oh * f.ow);
    let mut off = [0usize; TB];
    for (t, off) in off.iter_mut().enumerate() {
        let tap = t0 + t;
        *off = (((tap / kk) * f.hp + (tap % kk) / k) * f.wp + tap % k) * L;
    }
    assert!(y0 < y1 && y1 <= f.oh && t0 + TB <= r);
    assert!(off[TB - 1] + ((y1 - 1) * f.wp + f.ow) * L <= xs);
    assert!(((o0 + OB - 1) * plane + (y1 - 1) * f.ow + f.ow) * L <= ds);
    assert!(((o0 + OB - 1) * r + t0 + TB) * L <= lanes);
    off
}

/// A tile of the sample-minor weight gradient: continues the lanes of `OB` output channels from
/// `o0` and `TB` taps from `t0` over output rows `rows.0..rows.1`:
///
/// `lanes[o][t][l] += Σ_{oy, ox} ds[o][oy][ox][l] · xs[c][oy + ki][ox + kj][l]`, tap t = (c, ki, kj),
///
/// each lane one FMA chain over the positions in row-major order. Per position, TB + OB aligned
/// vector loads feed OB·TB vector FMAs, and no position is computed and thrown away. This generic
/// version and those of [`grad_tile_in_registers`] with explicit AVX-512 or AVX2 registers
/// (autovectorisation moves these accumulators through the stack) give the same bits.
#[inline(always)]
fn minor_grad_tile<T: Real, const L: usize, const OB: usize, const TB: usize>(
    (xs, ds): (&[T], &[T]),
    f: &Flat,
    r: usize,
    at: (usize, usize),
    rows: (usize, usize),
    lanes: &mut [T],
) {
    let (o0, t0) = at;
    let plane = f.oh * f.ow;
    let off = grad_tile_offsets::<L, OB, TB>(f, r, at, rows, (xs.len(), ds.len(), lanes.len()));
    let mut acc = [[[T::zero(); L]; TB]; OB];
    for (o, acc) in acc.iter_mut().enumerate() {
        for (t, a) in acc.iter_mut().enumerate() {
            a.copy_from_slice(&lanes[((o0 + o) * r + t0 + t) * L..][..L]);
        }
    }
    for oy in rows.0..rows.1 {
        for ox in 0..f.ow {
            let (xq, dq) = ((oy * f.wp + ox) * L, (oy * f.ow + ox) * L);
            let mut xv = [[T::zero(); L]; TB];
            for (v, &off) in xv.iter_mut().zip(&off) {
                // SAFETY: inside xs (`grad_tile_offsets`).
                *v = unsafe { std::ptr::read_unaligned(xs.as_ptr().add(off + xq).cast()) };
            }
            for (o, acc) in acc.iter_mut().enumerate() {
                // SAFETY: inside ds (`grad_tile_offsets`).
                let dv: [T; L] = unsafe {
                    std::ptr::read_unaligned(ds.as_ptr().add((o0 + o) * plane * L + dq).cast())
                };
                for (a, xv) in acc.iter_mut().zip(&xv) {
                    for ((a, &d), &x) in a.iter_mut().zip(&dv).zip(xv) {
                        *a = d.mul_add(x, *a);
                    }
                }
            }
        }
    }
    for (o, acc) in acc.iter().enumerate() {
        for (t, a) in acc.iter().enumerate() {
            lanes[((o0 + o) * r + t0 + t) * L..][..L].copy_from_slice(a);
        }
    }
}

/// [`minor_grad_tile`] with its accumulators in vector registers of one instruction set (the same
/// FMAs in the same order): `$v` holds `$w` lanes of `$t`, so a vector of the block's L lanes is
/// L / `$w` registers.
macro_rules! grad_tile_in_registers {
    ($name:ident, $feature:literal, $t:ty, $v:ty, $w:literal, $l:literal,
     $zero:ident, $load:ident, $store:ident, $fma:ident) => {
        /// # Safety
        /// T must be the macro's element type and its instruction set available.
        #[cfg(target_arch = "x86_64")]
        #[inline]
        #[target_feature(enable = $feature)]
        unsafe fn $name<T: Real, const OB: usize, const TB: usize>(
            (xs, ds): (&[T], &[T]),
            f: &Flat,
            r: usize,
            at: (usize, usize),
            rows: (usize, usize),
            lanes: &mut [T],
        ) {
            use std::arch::x86_64::*;
            const L: usize = $l;
            const H: usize = L / $w;
            let (o0, t0) = at;
            let plane = f.oh * f.ow;
            let off =
                grad_tile_offsets::<L, OB, TB>(f, r, at, rows, (xs.len(), ds.len(), lanes.len()));
            let (xp, dp) = (xs.as_ptr().cast::<$t>(), ds.as_ptr().cast::<$t>());
            let lp = lanes.as_mut_ptr().cast::<$t>();
            let mut acc: [[[$v; H]; TB]; OB] = [[[$zero(); H]; TB]; OB];
            for (o, acc) in acc.iter_mut().enumerate() {
                for (t, a) in acc.iter_mut().enumerate() {
                    let at = ((o0 + o) * r + t0 + t) * L;
                    for (h, a) in a.iter_mut().enumerate() {
                        // SAFETY: inside lanes (`grad_tile_offsets`); T is the element type.
                        *a = unsafe { $load(lp.add(at + h * $w)) };
                    }
                }
            }
            for oy in rows.0..rows.1 {
                // Row pointers, so that the position loop advances one index (few integer
                // instructions beside the loads and FMAs: the loop is issue-bound otherwise).
                // SAFETY (all offsets here and below): inside xs and ds (`grad_tile_offsets`).
                let xr: [*const $t; TB] =
                    std::array::from_fn(|t| unsafe { xp.add(off[t] + oy * f.wp * L) });
                let dr: [*const $t; OB] =
                    std::array::from_fn(|o| unsafe { dp.add(((o0 + o) * plane + oy * f.ow) * L) });
                for q in (0..f.ow * L).step_by(L) {
                    let mut xv: [[$v; H]; TB] = [[$zero(); H]; TB];
                    for (v, &x) in xv.iter_mut().zip(&xr) {
                        for (h, v) in v.iter_mut().enumerate() {
                            *v = unsafe { $load(x.add(q + h * $w)) };
                        }
                    }
                    for (acc, &d) in acc.iter_mut().zip(&dr) {
                        let mut dv: [$v; H] = [$zero(); H];
                        for (h, v) in dv.iter_mut().enumerate() {
                            *v = unsafe { $load(d.add(q + h * $w)) };
                        }
                        for (a, x) in acc.iter_mut().zip(&xv) {
                            for ((a, &d), &x) in a.iter_mut().zip(&dv).zip(x) {
                                *a = $fma(d, x, *a);
                            }
                        }
                    }
                }
            }
            for (o, acc) in acc.iter().enumerate() {
                for (t, a) in acc.iter().enumerate() {
                    let at = ((o0 + o) * r + t0 + t) * L;
                    for (h, &a) in a.iter().enumerate() {
                        // SAFETY: as for the loads.
                        unsafe { $store(lp.add(at + h * $w), a) };
                    }
                }
            }
        }
    };
}

grad_tile_in_registers!(
    grad_tile_zmm_f32,
    "avx512f",
    f32,
    __m512,
    16,
    16,
    _mm512_setzero_ps,
    _mm512_loadu_ps,
    _mm512_storeu_ps,
    _mm512_fmadd_ps
);
grad_tile_in_registers!(
    grad_tile_zmm_f64,
    "avx512f",
    f64,
    __m512d,
    8,
    8,
    _mm512_setzero_pd,
    _mm512_loadu_pd,
    _mm512_storeu_pd,
    _mm512_fmadd_pd
);
grad_tile_in_registers!(
    grad_tile_ymm_f32,
    "avx2,fma",
    f32,
    __m256,
    8,
    16,
    _mm256_setzero_ps,
    _mm256_loadu_ps,
    _mm256_storeu_ps,
    _mm256_fmadd_ps
);
grad_tile_in_registers!(
    grad_tile_ymm_f64,
    "avx2,fma",
    f64,
    __m256d,
    4,
    8,
    _mm256_setzero_pd,
    _mm256_loadu_pd,
    _mm256_storeu_pd,
    _mm256_fmadd_pd
);

/// The registers [`weight_grad_minor`]'s tiles keep their accumulators in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Regs {
    /// [`minor_grad_tile`], vectorised by the compiler.
    Generic,
    /// AVX-512 registers (the caller has AVX-512F).
    Zmm,
    /// AVX2 registers (the caller has AVX2 and FMA).
    Ymm,
}

/// A tile of [`weight_grad_minor`] in registers `regs` (T is f32 with 16 lanes or f64 with 8).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn grad_tile<T: Real, const L: usize, const OB: usize, const TB: usize>(
    regs: Regs,
    src: (&[T], &[T]),
    f: &Flat,
    r: usize,
    at: (usize, usize),
    rows: (usize, usize),
    lanes: &mut [T],
) {
    let f32 = std::mem::size_of::<T>() == 4;
    debug_assert_eq!(L, grad_lanes::<T>());
    // SAFETY: the caller has the instruction set of `regs`; T is f32 or f64 as checked.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        match regs {
            Regs::Zmm if f32 => return grad_tile_zmm_f32::<T, OB, TB>(src, f, r, at, rows, lanes),
            Regs::Zmm => return grad_tile_zmm_f64::<T, OB, TB>(src, f, r, at, rows, lanes),
            Regs::Ymm if f32 => return grad_tile_ymm_f32::<T, OB, TB>(src, f, r, at, rows, lanes),
            Regs::Ymm => return grad_tile_ymm_f64::<T, OB, TB>(src, f, r, at, rows, lanes),
            Regs::Generic => {}
        }
    }
    minor_grad_tile::<T, L, OB, TB>(src, f, r, at, rows, lanes)
}

/// [`weight_grad_minor`] with the block of [`grad_lanes`] samples: 16 in f32, 8 in f64.
#[inline(always)]
fn weight_grad_blocks<T: Real, const OB: usize, const TB: usize>(
    regs: Regs,
    a: &WeightGrad<'_, T>,
    dw: &mut [T],
    work: &mut [T],
) {
    if grad_lanes::<T>() == 16 {
        weight_grad_minor::<T, 16, OB, TB>(regs, a, dw, work)
    } else {
        weight_grad_minor::<T, 8, OB, TB>(regs, a, dw, work)
    }
}

/// The weight gradient with its samples vectorised, in blocks of `L` samples: the block's inputs
/// are laid out sample-minor with their padding (`xs[c][py][px][l]`, as the forward pass lays
/// them) and its output gradients too (`ds[o][oy][ox][l]`); lane l of entry (o, tap) is an FMA
/// chain over the output positions of sample l of the block ([`minor_grad_tile`]); the L lanes
/// are summed by [`lane_sum`]'s tree and the block's sum times alpha added to the output, block
/// after block (a short last block is padded with zero samples, whose lanes stay +0). The rows of
/// the output gradient are taken a chunk at a time that stays in L1 while every tile passes over
/// it (the same sums in the same order for any chunk).
#[inline(always)]
fn weight_grad_minor<T: Real, const L: usize, const OB: usize, const TB: usize>(
    regs: Regs,
    a: &WeightGrad<'_, T>,
    dw: &mut [T],
    work: &mut [T],
) {
    let (g, f) = (&a.g, &a.f);
    let (r, plane) = (g.rows(), f.oh * f.ow);
    let skip = work.as_ptr().align_offset(64).min(LANES - 1);
    let (xs, rest) = work[skip..].split_at_mut(g.channels * f.hp * f.wp * L);
    let (ds, rest) = rest.split_at_mut(a.oc * plane * L);
    let lanes = &mut rest[..a.oc * r * L];
    // The input as the forward pass places it; the output gradient unpadded (a k = 1 grid).
    let xa = Correlation {
        src: a.x,
        cin: g.channels,
        src_hw: (g.height, g.width),
        off: g.padding as isize,
        f: *f,
        w: &[],
        oc: 0,
        bias: None,
        batch: a.batch,
        accumulate: false,
        gate: None,
    };
    let da = Correlation {
        src: a.dy,
        cin: a.oc,
        src_hw: (f.oh, f.ow),
        off: 0,
        f: Flat::new(f.oh, f.ow, 1),
        ..xa
    };
    let chunk = (GRAD_CHUNK_BYTES / (a.oc * f.ow * L * std::mem::size_of::<T>())).max(1);
    for n0 in (0..a.batch).step_by(L) {
        let m = L.min(a.batch - n0);
        if regs == Regs::Zmm && L == 16 && std::mem::size_of::<T>() == 4 {
            place_block::<T, L, true>(&xa, n0, m, xs);
            place_block::<T, L, true>(&da, n0, m, ds);
        } else {
            place_block::<T, L, false>(&xa, n0, m, xs);
            place_block::<T, L, false>(&da, n0, m, ds);
        }
        let (xs, ds) = (&*xs, &*ds);
        lanes.iter_mut().for_each(|v| *v = T::zero());
        for y0 in (0..f.oh).step_by(chunk) {
            let rows = (y0, (y0 + chunk).min(f.oh));
            let mut o0 = 0;
            while o0 < a.oc {
                let ob = (a.oc - o0).min(OB);
                let mut t0 = 0;
                while t0 < r {
                    let tb = (r - t0).min(TB);
                    macro_rules! tile {
                        ($ob:literal, $tb:literal) => {
                            grad_tile::<T, L, $ob, $tb>(regs, (xs, ds), f, r, (o0, t0), rows, lanes)
                        };
                    }
                    with_tile_sizes!(ob, tb, tile);
                    t0 += tb;
                }
                o0 += ob;
            }
        }
        for (v, l) in dw.iter_mut().zip(lanes.chunks_exact(L)) {
            let l: &[T; L] = l.try_into().expect("L lanes");
            *v = a.alpha.mul_add(lane_sum(l), *v);
        }
    }
}

// One generic body, compiled for AVX-512, for AVX2 with FMA, and for the baseline; the choice is made
// at run time and does not change the results (see the module comment).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn correlate_avx512<T: Real>(
    a: &Correlation<'_, T>,
    out: &mut [T],
    work: &mut [T],
    layout: Layout,
) {
    // One zmm register of samples: 16 f32 or 8 f64; 6 × 4 tiles, 24 accumulators of 32.
    if std::mem::size_of::<T>() == 4 {
        correlate_minor::<T, 48, 16, 6, 4, true>(a, out, work, layout)
    } else {
        correlate_minor::<T, 48, 8, 6, 4, false>(a, out, work, layout)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn correlate_avx2<T: Real>(
    a: &Correlation<'_, T>,
    out: &mut [T],
    work: &mut [T],
    layout: Layout,
) {
    // One ymm register of samples; 6 × 2 tiles, 12 accumulators of 16.
    if std::mem::size_of::<T>() == 4 {
        correlate_minor::<T, 16, 8, 6, 2, false>(a, out, work, layout)
    } else {
        correlate_minor::<T, 16, 4, 6, 2, false>(a, out, work, layout)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn weight_grad_avx512<T: Real>(a: &WeightGrad<'_, T>, dw: &mut [T], work: &mut [T]) {
    // Blocks of one zmm register of samples, 6 × 4 tiles: 24 accumulators of 32.
    if a.batch >= MINOR_GRAD_MIN_BATCH {
        return weight_grad_blocks::<T, 6, 4>(Regs::Zmm, a, dw, work);
    }
    // SAFETY: the features are enabled here.
    unsafe {
        match f32_view(a, dw, work) {
            Some((a, dw, work)) => weight_grad_body::<f32, Avx512Dots, 6, 4>(&a, dw, work),
            None => weight_grad_body::<T, GenericDots, 3, 5>(a, dw, work),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn weight_grad_avx2<T: Real>(a: &WeightGrad<'_, T>, dw: &mut [T], work: &mut [T]) {
    // Blocks of two ymm registers of samples, 2 × 2 tiles: 8 accumulators of 16.
    if a.batch >= MINOR_GRAD_MIN_BATCH {
        return weight_grad_blocks::<T, 2, 2>(Regs::Ymm, a, dw, work);
    }
    // SAFETY: the features are enabled here.
    unsafe {
        match f32_view(a, dw, work) {
            Some((a, dw, work)) => weight_grad_body::<f32, Avx2Dots, 2, 3>(&a, dw, work),
            None => weight_grad_body::<T, GenericDots, 2, 3>(a, dw, work),
        }
    }
}

/// The same arguments typed as f32 when T is f32 (for the explicit f32 vector tiles), else `None`.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::type_complexity)]
fn f32_view<'a, T: Real>(
    a: &WeightGrad<'a, T>,
    dw: &'a mut [T],
    work: &'a mut [T],
) -> Option<(WeightGrad<'a, f32>, &'a mut [f32], &'a mut [f32])> {
    if std::any::TypeId::of::<T>() != std::any::TypeId::of::<f32>() {
        return None;
    }
    // SAFETY: T is f32 (the TypeIds are equal), so these are the same slices with their own type.
    let cast =
        |s: &'a [T]| unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<f32>(), s.len()) };
    let cast_mut = |s: &'a mut [T]| unsafe {
        std::slice::from_raw_parts_mut(s.as_mut_ptr().cast::<f32>(), s.len())
    };
    let view = WeightGrad {
        x: cast(a.x),
        dy: cast(a.dy),
        g: a.g,
        f: a.f,
        oc: a.oc,
        batch: a.batch,
        alpha: a.alpha.as_f64() as f32,
    };
    Some((view, cast_mut(dw), cast_mut(work)))
}

/// Which compiled copy of the kernels this machine runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    Avx512,
    Avx2,
    Baseline,
}

fn isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("fma")
        {
            return Isa::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Isa::Avx2;
        }
    }
    Isa::Baseline
}

fn correlate<T: Real>(
    a: &Correlation<'_, T>,
    out: &mut [T],
    work: &mut [T],
    isa: Isa,
    layout: Layout,
) {
    match isa {
        // SAFETY: the features were detected on this machine by `isa()`.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { correlate_avx512(a, out, work, layout) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { correlate_avx2(a, out, work, layout) },
        // One xmm register of samples (4 f32 or 2 f64).
        _ if std::mem::size_of::<T>() == 4 => {
            correlate_minor::<T, 16, 4, 6, 2, false>(a, out, work, layout)
        }
        _ => correlate_minor::<T, 16, 2, 6, 2, false>(a, out, work, layout),
    }
}

fn grow<T: Real>(work: &mut Vec<T>, len: usize) {
    if work.len() < len {
        work.resize(len, T::zero());
    }
}

/// The forward pass of a stride-1, zero-padded 2-D convolution (PyTorch's `conv2d`, a
/// cross-correlation) over a batch, computed directly (no im2col):
///
/// `y[n, o, oy, ox] (+)= b[o] + Σ_{c,ki,kj} w[o, c, ki, kj] · x[n, c, oy + ki − pad, ox + kj − pad]`
///
/// (x is 0 outside the image). Shapes: `x` `[batch, C, H, W]`, `w` `[O, C, k, k]`, `bias` `[O]`,
/// `y` `[batch, O, ho, wo]` with `(ho, wo) = g.output_size()`. `y` is overwritten, or added to when
/// `accumulate`. `work` is scratch, grown to [`conv2d_work_len`] if shorter. Order of the sums: see
/// the module comment.
///
/// **Panics** if a buffer is shorter than its shape or the geometry's stride is not 1.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_forward<T: Real>(
    g: &ConvGeometry,
    out_channels: usize,
    w: &[T],
    bias: Option<&[T]>,
    x: &[T],
    batch: usize,
    accumulate: bool,
    y: &mut [T],
    work: &mut Vec<T>,
) {
    conv2d_forward_on(
        g,
        out_channels,
        w,
        bias,
        x,
        batch,
        accumulate,
        y,
        work,
        isa(),
        public_layout(),
    )
}

#[allow(clippy::too_many_arguments)]
fn conv2d_forward_on<T: Real>(
    g: &ConvGeometry,
    out_channels: usize,
    w: &[T],
    bias: Option<&[T]>,
    x: &[T],
    batch: usize,
    accumulate: bool,
    y: &mut [T],
    work: &mut Vec<T>,
    isa: Isa,
    layout: Layout,
) {
    assert_eq!(g.stride, 1, "the direct convolution kernels take stride 1");
    let (ho, wo) = g.output_size();
    let a = Correlation {
        src: &x[..batch * g.input_len()],
        cin: g.channels,
        src_hw: (g.height, g.width),
        off: g.padding as isize,
        f: Flat::new(ho, wo, g.kernel),
        w: &w[..out_channels * g.rows()],
        oc: out_channels,
        bias: bias.map(|b| &b[..out_channels]),
        batch,
        accumulate,
        gate: None,
    };
    grow(work, conv2d_work_len(g, out_channels));
    correlate(
        &a,
        &mut y[..batch * out_channels * ho * wo],
        work,
        isa,
        layout,
    );
}

/// The input gradient of [`conv2d_forward`] (its adjoint in x) over a batch:
///
/// `dx[n, c, iy, ix] (+)= Σ_{o,ki,kj} w[o, c, ki, kj] · dy[n, o, iy + pad − ki, ix + pad − kj]`
///
/// (dy is 0 outside its `ho × wo` plane). This is itself a correlation, of dy padded by
/// `k − 1 − pad` with the flipped, transposed kernel `w'[c, o, a, b] = w[o, c, k−1−a, k−1−b]`, and is
/// computed by the same kernel. Shapes: `w` `[O, C, k, k]`, `dy` `[batch, O, ho, wo]`, `dx`
/// `[batch, C, H, W]`, overwritten or, when `accumulate`, added to.
///
/// **Panics** if a buffer is shorter than its shape or the geometry's stride is not 1.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_input_grad<T: Real>(
    g: &ConvGeometry,
    out_channels: usize,
    w: &[T],
    dy: &[T],
    batch: usize,
    accumulate: bool,
    dx: &mut [T],
    work: &mut Vec<T>,
) {
    conv2d_input_grad_on(
        g,
        out_channels,
        w,
        dy,
        batch,
        accumulate,
        None,
        dx,
        work,
        isa(),
        public_layout(),
    )
}

/// [`conv2d_input_grad`] gated by `gate` (`[batch, C, H, W]`, laid out as `dx`), written, not
/// accumulated: `dx[i] = zero_unless_positive(gate[i], (W ⋆ᵀ dy)[i])`, i.e. 1[gate > 0] ⊙ W ⋆ᵀ dy.
/// With `gate` the output of a ReLU in front of the convolution this is the ReLU's backward
/// (PyTorch's `threshold_backward`, ∂x = 1[y > 0] ⊙ δ) applied where the input gradient is written,
/// to the same bits as the two passes one after the other, without a pass of its own over `dx`.
///
/// **Panics** if a buffer is shorter than its shape or the geometry's stride is not 1.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_input_grad_gated<T: Real>(
    g: &ConvGeometry,
    out_channels: usize,
    w: &[T],
    dy: &[T],
    batch: usize,
    gate: &[T],
    dx: &mut [T],
    work: &mut Vec<T>,
) {
    conv2d_input_grad_on(
        g,
        out_channels,
        w,
        dy,
        batch,
        false,
        Some(gate),
        dx,
        work,
        isa(),
        public_layout(),
    )
}

#[allow(clippy::too_many_arguments)]
fn conv2d_input_grad_on<T: Real>(
    g: &ConvGeometry,
    out_channels: usize,
    w: &[T],
    dy: &[T],
    batch: usize,
    accumulate: bool,
    gate: Option<&[T]>,
    dx: &mut [T],
    work: &mut Vec<T>,
    isa: Isa,
    layout: Layout,
) {
    assert_eq!(g.stride, 1, "the direct convolution kernels take stride 1");
    assert!(
        gate.is_none() || !accumulate,
        "a gated input gradient is written, not accumulated"
    );
    let (ho, wo) = g.output_size();
    let (c, o, k) = (g.channels, out_channels, g.kernel);
    grow(work, conv2d_work_len(g, out_channels));
    let (flipped, rest) = work.split_at_mut(o * g.rows());
    let kk = k * k;
    for oc in 0..o {
        for ic in 0..c {
            for t in 0..kk {
                flipped[(ic * o + oc) * kk + t] = w[(oc * c + ic) * kk + kk - 1 - t];
            }
        }
    }
    let a = Correlation {
        src: &dy[..batch * o * ho * wo],
        cin: o,
        src_hw: (ho, wo),
        off: k as isize - 1 - g.padding as isize,
        f: Flat::new(g.height, g.width, k),
        w: flipped,
        oc: c,
        bias: None,
        batch,
        accumulate,
        gate: gate.map(|v| &v[..batch * g.input_len()]),
    };
    correlate(&a, &mut dx[..batch * g.input_len()], rest, isa, layout);
}

/// The weight gradient of [`conv2d_forward`] over a batch, scaled:
///
/// `dw[o, c, ki, kj] (+)= alpha · Σ_n Σ_{oy,ox} dy[n, o, oy, ox] · x[n, c, oy + ki − pad, ox + kj − pad]`
///
/// Shapes: `x` `[batch, C, H, W]`, `dy` `[batch, O, ho, wo]`, `dw` `[O, C, k, k]`, overwritten or,
/// when `accumulate`, added to. The sum of each block of consecutive samples (16 in f32 and 8 in f64
/// for a batch of at least 8, else 4; see the module comment) is added as `alpha·s`, block after
/// block (one sample with `alpha` = the scale gives a per-sample gradient).
///
/// **Panics** if a buffer is shorter than its shape or the geometry's stride is not 1.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_weight_grad<T: Real>(
    g: &ConvGeometry,
    out_channels: usize,
    x: &[T],
    dy: &[T],
    batch: usize,
    alpha: T,
    accumulate: bool,
    dw: &mut [T],
    work: &mut Vec<T>,
) {
    conv2d_weight_grad_on(
        g,
        out_channels,
        x,
        dy,
        batch,
        alpha,
        accumulate,
        dw,
        work,
        isa(),
    )
}

#[allow(clippy::too_many_arguments)]
fn conv2d_weight_grad_on<T: Real>(
    g: &ConvGeometry,
    out_channels: usize,
    x: &[T],
    dy: &[T],
    batch: usize,
    alpha: T,
    accumulate: bool,
    dw: &mut [T],
    work: &mut Vec<T>,
    isa: Isa,
) {
    assert_eq!(g.stride, 1, "the direct convolution kernels take stride 1");
    let (ho, wo) = g.output_size();
    let dw = &mut dw[..out_channels * g.rows()];
    if !accumulate {
        dw.iter_mut().for_each(|v| *v = T::zero());
    }
    let a = WeightGrad {
        x: &x[..batch * g.input_len()],
        dy: &dy[..batch * out_channels * ho * wo],
        g: *g,
        f: Flat::new(ho, wo, g.kernel),
        oc: out_channels,
        batch,
        alpha,
    };
    grow(work, conv2d_work_len(g, out_channels));
    match isa {
        // SAFETY: the features were detected on this machine by `isa()`.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { weight_grad_avx512(&a, dw, work) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { weight_grad_avx2(&a, dw, work) },
        _ if batch >= MINOR_GRAD_MIN_BATCH => {
            weight_grad_blocks::<T, 1, 1>(Regs::Generic, &a, dw, work)
        }
        // SAFETY: the generic tile needs no particular instruction set.
        _ => unsafe { weight_grad_body::<T, GenericDots, 2, 3>(&a, dw, work) },
    }
}

/// The bias gradient of [`conv2d_forward`] over a batch, scaled:
///
/// `db[o] (+)= alpha · Σ_n Σ_{oy,ox} dy[n, o, oy, ox]`
///
/// Shapes: `dy` `[batch, O, plane]` (plane = ho·wo), `db` `[O]`, overwritten or, when `accumulate`,
/// added to. Summed in 16 lanes (position p of every sample goes to lane p mod 16, in sample order)
/// reduced by the weight gradient's pairwise tree: a serial sum would be one chain of dependent
/// additions per channel, slower than the convolution it belongs to.
///
/// **Panics** if a buffer is shorter than its shape.
pub fn conv2d_bias_grad<T: Real>(
    dy: &[T],
    batch: usize,
    out_channels: usize,
    plane: usize,
    alpha: T,
    accumulate: bool,
    db: &mut [T],
) {
    let dy = &dy[..batch * out_channels * plane];
    // The 16 lane additions are one vector addition with AVX-512 (four with the baseline's SSE2);
    // the same additions in the same order either way.
    super::cpu_kernels::vectorised(
        #[inline(always)]
        || {
            for (o, b) in db[..out_channels].iter_mut().enumerate() {
                let mut acc = [T::zero(); LANES];
                for n in 0..batch {
                    let row = &dy[(n * out_channels + o) * plane..][..plane];
                    let mut runs = row.chunks_exact(LANES);
                    for run in &mut runs {
                        for (a, &v) in acc.iter_mut().zip(run) {
                            *a += v;
                        }
                    }
                    for (a, &v) in acc.iter_mut().zip(runs.remainder()) {
                        *a += v;
                    }
                }
                let s = alpha * lane_sum(&acc);
                *b = if accumulate { *b + s } else { s };
            }
        },
    );
}

#[cfg(test)]
mod tests;
