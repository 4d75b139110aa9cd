//! The direct kernels against plain loops over the definitions (f64), in f64 and f32, on every
//! instruction set this machine has, and bit for bit across those instruction sets.

use super::*;

/// (channels, height, width, kernel, padding, out_channels, batch).
type Spec = (usize, usize, usize, usize, usize, usize, usize);

/// LeNet's three convolutions, odd and non-square sides, padding ≥ kernel (the input gradient
/// then crops), an even kernel, 1×1 images and kernels, more output channels than one register
/// block (17 = 6 + 6 + 5, also sample-minor), taps that leave every remainder of the weight
/// gradient's tiles of 4 (100, 150, 27, 18 and 25 taps), a batch of 7 (the flat weight gradient's
/// groups of 4 and 3), batches of 8 and 9 (the sample-minor weight gradient's smallest: in f32 one
/// short block; in f64 one full block, and one of 8 and one of 1), 7 output rows taken in row
/// chunks of 6 and 1, and batches of 19 and 27 (sample-minor chunks of 16 or 8 and a last chunk
/// that is short: taken flat, or padded with zero samples; the 150-tap ones go sample-minor under
/// `Layout::Auto` too).
const GEOMETRIES: &[Spec] = &[
    (1, 28, 28, 5, 0, 6, 2),
    (6, 24, 24, 5, 2, 6, 2),
    (6, 12, 12, 5, 0, 16, 2),
    (3, 7, 5, 3, 1, 4, 3),
    (2, 6, 9, 3, 3, 7, 2),
    (4, 5, 5, 5, 4, 17, 1),
    (2, 1, 1, 1, 0, 3, 2),
    (5, 9, 11, 4, 2, 2, 2),
    (3, 5, 8, 5, 0, 1, 2),
    (2, 6, 7, 3, 1, 5, 9),
    (2, 6, 7, 3, 1, 5, 7),
    (6, 12, 12, 5, 0, 16, 8),
    (4, 5, 5, 5, 4, 17, 9),
    (1, 12, 10, 5, 0, 6, 9),
    (2, 9, 10, 3, 0, 10, 9),
    (6, 12, 12, 5, 0, 16, 19),
    (6, 24, 24, 5, 2, 6, 27),
    (3, 7, 5, 3, 1, 4, 27),
];

fn geometry(&(c, h, w, k, p, _, _): &Spec) -> ConvGeometry {
    ConvGeometry {
        channels: c,
        height: h,
        width: w,
        kernel: k,
        padding: p,
        stride: 1,
    }
}

fn isas() -> Vec<Isa> {
    let mut v = vec![Isa::Baseline];
    #[cfg(target_arch = "x86_64")]
    {
        let has = |f: &str| match f {
            "avx2" => std::arch::is_x86_feature_detected!("avx2"),
            "fma" => std::arch::is_x86_feature_detected!("fma"),
            "avx512f" => std::arch::is_x86_feature_detected!("avx512f"),
            _ => std::arch::is_x86_feature_detected!("avx512vl"),
        };
        if has("avx2") && has("fma") {
            v.push(Isa::Avx2);
        }
        if has("avx512f") && has("avx512vl") && has("fma") {
            v.push(Isa::Avx512);
        }
    }
    v
}

fn values(n: usize, seed: f64) -> Vec<f64> {
    (0..n).map(|i| ((i as f64 + 0.5) * seed).sin()).collect()
}

/// x[n, c, iy, ix] with iy, ix possibly outside the image (then 0).
fn at(x: &[f64], g: &ConvGeometry, n: usize, c: usize, iy: isize, ix: isize) -> f64 {
    if iy < 0 || ix < 0 || iy >= g.height as isize || ix >= g.width as isize {
        return 0.0;
    }
    x[((n * g.channels + c) * g.height + iy as usize) * g.width + ix as usize]
}

/// The three operations by their definitions: y = b + w ⋆ x, dx = ∂⟨dy, y⟩/∂x, dw = ∂⟨dy, y⟩/∂w,
/// each returned with the sum of the absolute values of its terms (for the f32 tolerance).
#[allow(clippy::type_complexity)]
fn reference(
    g: &ConvGeometry,
    o: usize,
    batch: usize,
    w: &[f64],
    b: &[f64],
    x: &[f64],
    dy: &[f64],
) -> [(Vec<f64>, Vec<f64>); 3] {
    let (ho, wo) = g.output_size();
    let (c, k, pad) = (g.channels, g.kernel, g.padding as isize);
    let mut y = (
        vec![0.0; batch * o * ho * wo],
        vec![0.0; batch * o * ho * wo],
    );
    let mut dx = (vec![0.0; x.len()], vec![0.0; x.len()]);
    let mut dw = (vec![0.0; w.len()], vec![0.0; w.len()]);
    for n in 0..batch {
        for (oc, &bias) in b.iter().enumerate().take(o) {
            for oy in 0..ho {
                for ox in 0..wo {
                    let yi = ((n * o + oc) * ho + oy) * wo + ox;
                    y.0[yi] = bias;
                    y.1[yi] = bias.abs();
                    for ic in 0..c {
                        for ki in 0..k {
                            for kj in 0..k {
                                let iy = (oy + ki) as isize - pad;
                                let ix = (ox + kj) as isize - pad;
                                let wi = ((oc * c + ic) * k + ki) * k + kj;
                                let xv = at(x, g, n, ic, iy, ix);
                                y.0[yi] += w[wi] * xv;
                                y.1[yi] += (w[wi] * xv).abs();
                                dw.0[wi] += dy[yi] * xv;
                                dw.1[wi] += (dy[yi] * xv).abs();
                                if iy >= 0
                                    && ix >= 0
                                    && iy < g.height as isize
                                    && ix < g.width as isize
                                {
                                    let xi = ((n * c + ic) * g.height + iy as usize) * g.width
                                        + ix as usize;
                                    dx.0[xi] += w[wi] * dy[yi];
                                    dx.1[xi] += (w[wi] * dy[yi]).abs();
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    [y, dx, dw]
}

fn assert_close<T: Real>(what: &str, got: &[T], want: &(Vec<f64>, Vec<f64>), rel: f64) {
    assert_eq!(got.len(), want.0.len(), "{what}: length");
    for (i, (g, (w, scale))) in got.iter().zip(want.0.iter().zip(&want.1)).enumerate() {
        let err = (g.as_f64() - w).abs();
        assert!(
            err <= rel * scale.max(1e-300),
            "{what}[{i}]: got {g}, want {w} (|terms| {scale})"
        );
    }
}

/// Runs the three kernels on `isa` in precision T, with `accumulate` over a non-zero start (which
/// is then subtracted back out exactly: the start is a power of two times a small integer).
#[allow(clippy::type_complexity)]
fn run<T: Real>(
    g: &ConvGeometry,
    o: usize,
    batch: usize,
    (w, b, x, dy): (&[f64], &[f64], &[f64], &[f64]),
    alpha: f64,
    accumulate: bool,
    (isa, layout): (Isa, Layout),
) -> [Vec<T>; 3] {
    let cast = |v: &[f64]| v.iter().map(|&a| T::of_f64(a)).collect::<Vec<T>>();
    let (w, b, x, dy) = (cast(w), cast(b), cast(x), cast(dy));
    let start = |n: usize| vec![T::of_f64(if accumulate { 2.0 } else { f64::NAN }); n];
    let mut work = Vec::new();
    let (ho, wo) = g.output_size();
    let mut y = start(batch * o * ho * wo);
    conv2d_forward_on(
        g,
        o,
        &w,
        Some(&b),
        &x,
        batch,
        accumulate,
        &mut y,
        &mut work,
        isa,
        layout,
    );
    let mut dx = start(x.len());
    conv2d_input_grad_on(
        g, o, &w, &dy, batch, accumulate, None, &mut dx, &mut work, isa, layout,
    );
    let mut dw = start(w.len());
    let a = T::of_f64(alpha);
    conv2d_weight_grad_on(g, o, &x, &dy, batch, a, accumulate, &mut dw, &mut work, isa);
    if accumulate {
        for v in y.iter_mut().chain(dx.iter_mut()).chain(dw.iter_mut()) {
            *v -= T::of_f64(2.0);
        }
    }
    [y, dx, dw]
}

fn check<T: Real>(rel: f64) {
    for spec in GEOMETRIES {
        let g = geometry(spec);
        let (o, batch) = (spec.5, spec.6);
        let (ho, wo) = g.output_size();
        let w = values(o * g.rows(), 0.731);
        let b = values(o, 1.37);
        let x = values(batch * g.input_len(), 0.219);
        let dy = values(batch * o * ho * wo, 0.577);
        let [y_ref, dx_ref, dw_ref] = reference(&g, o, batch, &w, &b, &x, &dy);
        let alpha = 0.75;
        let dw_ref = (
            dw_ref.0.iter().map(|v| alpha * v).collect::<Vec<_>>(),
            dw_ref.1.iter().map(|v| alpha * v).collect::<Vec<_>>(),
        );
        let mut first: Option<[Vec<T>; 3]> = None;
        let layouts = [Layout::Flat, Layout::Minor, Layout::Auto];
        for (isa, layout) in isas().into_iter().flat_map(|i| layouts.map(|l| (i, l))) {
            for accumulate in [false, true] {
                let what = format!(
                    "{spec:?} {isa:?} {layout:?} {} accumulate {accumulate}",
                    T::NAME
                );
                let out = run::<T>(
                    &g,
                    o,
                    batch,
                    (&w, &b, &x, &dy),
                    alpha,
                    accumulate,
                    (isa, layout),
                );
                // Accumulating onto 2 and subtracting it rounds twice more in f32.
                let rel = if accumulate { rel * 4.0 } else { rel };
                assert_close(&format!("forward {what}"), &out[0], &y_ref, rel);
                assert_close(&format!("input grad {what}"), &out[1], &dx_ref, rel);
                assert_close(&format!("weight grad {what}"), &out[2], &dw_ref, rel);
                if accumulate {
                    continue;
                }
                match &first {
                    None => first = Some(out),
                    // Every instruction set and layout computes the same bits (the module's
                    // promise).
                    Some(f) => {
                        for (a, b) in f.iter().zip(&out) {
                            let same = a.iter().zip(b).all(|(p, q)| p.to_bits_eq(q));
                            assert!(same, "{what}: differs from Baseline Flat");
                        }
                    }
                }
            }
        }
    }
}

trait BitsEq {
    fn to_bits_eq(&self, other: &Self) -> bool;
}
impl<T: Real> BitsEq for T {
    fn to_bits_eq(&self, other: &Self) -> bool {
        self.as_f64().to_bits() == other.as_f64().to_bits()
    }
}

#[test]
fn kernels_match_the_definitions_in_f64() {
    check::<f64>(1e-13);
}

#[test]
fn kernels_match_the_definitions_in_f32() {
    check::<f32>(2e-6);
}

/// The sample-minor tiles skip the kernel rows that read padding; the flat ones multiply those
/// zeros. The sums agree to the bit even where products underflow to −0 (the one case in which
/// adding a zero product changes a chain: −0 + (+0) = +0): inputs of −2⁻⁷⁰ and weights of 2⁻⁸⁰
/// make every product −2⁻¹⁵⁰, which rounds to −0, so the chains end in −0 or +0 depending on
/// whether the last tap read padding, and the zero bias added last makes both +0.
#[test]
fn skipping_padding_rows_keeps_the_bits_where_products_underflow() {
    let tiny = |e: i32| 2f64.powi(e);
    for spec in [
        (6, 24, 24, 5, 2, 6, 19),
        (6, 12, 12, 5, 0, 16, 16),
        (2, 6, 7, 3, 3, 5, 17),
    ] {
        let g = geometry(&spec);
        let (o, batch) = (spec.5, spec.6);
        let (ho, wo) = g.output_size();
        let w = vec![tiny(-80); o * g.rows()];
        let b = vec![0.0; o];
        let x = vec![-tiny(-70); batch * g.input_len()];
        let dy = vec![-tiny(-70); batch * o * ho * wo];
        let mut first: Option<[Vec<f32>; 3]> = None;
        for isa in isas() {
            for layout in [Layout::Flat, Layout::Minor] {
                let out = run::<f32>(&g, o, batch, (&w, &b, &x, &dy), 1.0, false, (isa, layout));
                for v in out[0].iter().chain(&out[1]) {
                    assert_eq!(v.to_bits(), 0, "{spec:?} {isa:?} {layout:?}: not +0");
                }
                match &first {
                    None => first = Some(out),
                    Some(f) => assert!(
                        f.iter()
                            .zip(&out)
                            .all(|(a, b)| a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits())),
                        "{spec:?} {isa:?} {layout:?}: differs"
                    ),
                }
            }
        }
    }
}

/// The scratch length is enough for all three kernels: none of them grows a buffer sized by
/// [`conv2d_work_len`].
#[test]
fn work_len_covers_every_kernel() {
    for spec in GEOMETRIES {
        let g = geometry(spec);
        let (o, batch) = (spec.5, spec.6);
        let (ho, wo) = g.output_size();
        let len = conv2d_work_len(&g, o);
        let mut work = vec![0f32; len];
        let ptr = work.as_ptr();
        let w = vec![0.5f32; o * g.rows()];
        let x = vec![1f32; batch * g.input_len()];
        let mut y = vec![0f32; batch * o * ho * wo];
        conv2d_forward(&g, o, &w, None, &x, batch, false, &mut y, &mut work);
        let mut dx = x.clone();
        conv2d_input_grad(&g, o, &w, &y, batch, false, &mut dx, &mut work);
        let mut dw = w.clone();
        conv2d_weight_grad(&g, o, &x, &y, batch, 1.0, false, &mut dw, &mut work);
        assert_eq!(work.len(), len, "{spec:?}");
        assert_eq!(work.as_ptr(), ptr, "{spec:?}");
    }
}

/// The bias gradient against the plain sum, in f64 and f32, with plane sizes that are and are not
/// multiples of the 16 lanes, accumulating and not.
#[test]
fn bias_gradient_matches_the_plain_sum() {
    for &(batch, o, plane) in &[(1, 1, 1), (3, 6, 576), (9, 16, 64), (2, 5, 35), (4, 3, 17)] {
        let dy = values(batch * o * plane, 0.377);
        let alpha = 0.625;
        let mut want = (vec![0.0; o], vec![0.0; o]);
        for n in 0..batch {
            for c in 0..o {
                for &v in &dy[(n * o + c) * plane..][..plane] {
                    want.0[c] += alpha * v;
                    want.1[c] += (alpha * v).abs();
                }
            }
        }
        let mut db = vec![f64::NAN; o];
        conv2d_bias_grad(&dy, batch, o, plane, alpha, false, &mut db);
        assert_close("bias grad f64", &db, &want, 1e-14);
        let dy32: Vec<f32> = dy.iter().map(|&v| v as f32).collect();
        let mut db32 = vec![2f32; o];
        conv2d_bias_grad(&dy32, batch, o, plane, alpha as f32, true, &mut db32);
        db32.iter_mut().for_each(|v| *v -= 2.0);
        assert_close("bias grad f32", &db32, &want, 4e-6);
    }
}

/// This thread's CPU time in seconds (`clock_gettime(CLOCK_THREAD_CPUTIME_ID)`): unlike the wall
/// clock, not charged with the other processes' time slices on a shared machine.
fn thread_cpu_seconds() -> f64 {
    #[repr(C)]
    struct Timespec {
        sec: i64,
        nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
    }
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    let mut ts = Timespec { sec: 0, nsec: 0 };
    // SAFETY: a valid clock id and a valid out pointer.
    let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    ts.sec as f64 + ts.nsec as f64 * 1e-9
}

/// Best of `reps` thread-CPU times of `f`.
fn best_of(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t = thread_cpu_seconds();
            f();
            thread_cpu_seconds() - t
        })
        .fold(f64::INFINITY, f64::min)
}

/// The kernels' rates on the LeNet's convolutions at batch 128 in f32 on this machine's best
/// instruction set (or `CONV_BENCH_ISA`'s), flat and sample-minor (thread CPU time, best of
/// `CONV_BENCH_REPS`, 30 by default), and the weight gradient of a batch of 4 (the flat order of
/// small batches, per sample): `cargo test --release -p common --lib cpu_conv::tests::kernel_rates
/// -- --ignored --nocapture`.
#[test]
#[ignore = "a timing, not a check: run by hand"]
fn kernel_rates() {
    let reps = std::env::var("CONV_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    // CONV_BENCH_ISA=avx2 or baseline times that instruction set's kernels instead.
    let isa = match std::env::var("CONV_BENCH_ISA").as_deref() {
        Ok("avx2") => Isa::Avx2,
        Ok("baseline") => Isa::Baseline,
        _ => isa(),
    };
    assert!(isas().contains(&isa), "{isa:?} is not available here");
    let batch = 128;
    let convs: &[(&str, Spec)] = &[
        ("conv1 1→6 28×28", (1, 28, 28, 5, 0, 6, batch)),
        ("extra 6→6 24×24 pad 2", (6, 24, 24, 5, 2, 6, batch)),
        ("conv2 6→16 12×12", (6, 12, 12, 5, 0, 16, batch)),
    ];
    println!("isa {isa:?}, batch {batch}, best of {reps}, GFLOP/s (thread CPU time)");
    for (name, spec) in convs {
        let g = geometry(spec);
        let o = spec.5;
        let (ho, wo) = g.output_size();
        let w: Vec<f32> = values(o * g.rows(), 0.731)
            .iter()
            .map(|&v| v as f32)
            .collect();
        let b: Vec<f32> = values(o, 1.37).iter().map(|&v| v as f32).collect();
        let x: Vec<f32> = values(batch * g.input_len(), 0.219)
            .iter()
            .map(|&v| v as f32)
            .collect();
        let dy: Vec<f32> = values(batch * o * ho * wo, 0.577)
            .iter()
            .map(|&v| v as f32)
            .collect();
        let flops = 2.0 * (batch * o * ho * wo * g.rows()) as f64;
        let mut work = vec![0f32; conv2d_work_len(&g, o)];
        let mut y = vec![0f32; dy.len()];
        let mut dx = vec![0f32; x.len()];
        let mut dw = vec![0f32; w.len()];
        let mut line = format!("{name}:");
        for layout in [Layout::Flat, Layout::Minor] {
            let t = best_of(reps, || {
                conv2d_forward_on(
                    &g,
                    o,
                    &w,
                    Some(&b),
                    &x,
                    batch,
                    false,
                    &mut y,
                    &mut work,
                    isa,
                    layout,
                )
            });
            line += &format!(" forward {layout:?} {:.1}", flops / t / 1e9);
            let t = best_of(reps, || {
                conv2d_input_grad_on(
                    &g, o, &w, &dy, batch, false, None, &mut dx, &mut work, isa, layout,
                )
            });
            line += &format!(" input grad {layout:?} {:.1}", flops / t / 1e9);
        }
        let t = best_of(reps, || {
            conv2d_weight_grad_on(&g, o, &x, &dy, batch, 1.0, false, &mut dw, &mut work, isa)
        });
        line += &format!(" weight grad {:.1}", flops / t / 1e9);
        let t = best_of(reps, || {
            conv2d_weight_grad_on(&g, o, &x, &dy, 4, 1.0, false, &mut dw, &mut work, isa)
        });
        line += &format!(
            " (batch 4, flat: {:.1})",
            flops / batch as f64 * 4.0 / t / 1e9
        );
        println!("{line}");
    }
}

/// The gated input gradient is, bit for bit, the input gradient followed by a ReLU's backward
/// (`zero_unless_positive(gate, dx)`) on every geometry, instruction set and layout, in f32 and f64:
/// the gate holds positive, negative, +0, −0 and NaN values (a NaN gate closes, as `y > 0` is false),
/// and δ is 0 on a stretch of the first sample (its sums are then ±0, which the write-back's + 0
/// makes +0 before the gate, in both routes).
#[test]
fn gated_input_gradient_is_the_input_gradient_then_the_relu_backward() {
    fn check<T: Real>() {
        for spec in GEOMETRIES {
            let g = geometry(spec);
            let (o, batch) = (spec.5, spec.6);
            let (ho, wo) = g.output_size();
            let cast = |v: &[f64]| v.iter().map(|&a| T::of_f64(a)).collect::<Vec<T>>();
            let w = cast(&values(o * g.rows(), 0.731));
            let mut dy = cast(&values(batch * o * ho * wo, 0.577));
            let zeroed = (dy.len() / 4).min(7);
            dy[..zeroed].iter_mut().for_each(|v| *v = -T::zero());
            let special = [T::zero(), -T::zero(), T::of_f64(f64::NAN)];
            let gate: Vec<T> = cast(&values(batch * g.input_len(), 0.419))
                .into_iter()
                .enumerate()
                .map(|(i, v)| if i % 5 == 0 { special[i / 5 % 3] } else { v })
                .collect();
            for isa in isas() {
                for layout in [Layout::Flat, Layout::Minor, Layout::Auto] {
                    let mut work = Vec::new();
                    let mut want = vec![T::of_f64(f64::NAN); gate.len()];
                    conv2d_input_grad_on(
                        &g, o, &w, &dy, batch, false, None, &mut want, &mut work, isa, layout,
                    );
                    for (d, &y) in want.iter_mut().zip(&gate) {
                        *d = zero_unless_positive(y, *d);
                    }
                    let mut got = vec![T::of_f64(f64::NAN); gate.len()];
                    conv2d_input_grad_on(
                        &g,
                        o,
                        &w,
                        &dy,
                        batch,
                        false,
                        Some(&gate),
                        &mut got,
                        &mut work,
                        isa,
                        layout,
                    );
                    let what = format!("{spec:?} {isa:?} {layout:?} {}", T::NAME);
                    let first = want.iter().zip(&got).position(|(a, b)| !a.to_bits_eq(b));
                    assert_eq!(first, None, "{what}: gated differs");
                    assert!(got.iter().any(|v| *v != T::zero()), "{what}: all zero");
                }
            }
        }
    }
    check::<f32>();
    check::<f64>();
}
