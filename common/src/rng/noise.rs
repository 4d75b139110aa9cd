//! Fast standard-normal noise for SGLD: the Box–Muller transform on eight interleaved generators.
//!
//! SGLD draws one N(0, 1) variate per parameter and step (101,770 per step for the MNIST MLP), so the
//! noise must cost little next to the forward and backward passes. Table methods (the ziggurat) need
//! a table lookup and a rejection branch per variate, which vectorise badly (AVX2's gathers are slow);
//! the Box–Muller transform (Box & Muller 1958, "A note on the generation of random normal deviates",
//! Ann. Math. Statist. 29(2)) has neither:
//!
//!   for independent U₁ ∈ (0, 1], Θ uniform on [0, 2π):  Z₁ = √(−2 ln U₁)·cos Θ,  Z₂ = √(−2 ln U₁)·sin Θ
//!
//! are independent standard normals. It is exact; here it is evaluated in f32 with polynomial
//! approximations of ln, sin and cos accurate to a few units in the last place (Moshier's Cephes
//! `logf`, `sinf`, `cosf` minimax coefficients), checked in the tests against the f64 formula on the
//! same uniforms.
//!
//! The uniforms come from eight Xoshiro256++ generators (Blackman & Vigna 2018) advanced together,
//! one 64-bit word each per round, seeded from the chain's [`Stream`]. Generators 0–3 give eight
//! 32-bit halves (generator l's low half, then its high half) that set the radii; generators 4–7 give
//! eight halves that set the angles. Pair k of a round uses radius half k and angle half k:
//!
//! - U₁ = (⌊h/2⌋ + ½)·2⁻³¹ with h the radius half, rounded to f32: U₁ ∈ [2⁻³², 1], so |Z| ≤ 6.66
//!   (P(√(−2 ln U₁) > 6.66) = 2.3·10⁻¹⁰ is the mass not represented);
//! - Θ = q·π/2 + φ: the angle half's top 2 bits give the quadrant q, its next 24 bits f ∈ [0, 1) and
//!   φ = (f − ½)·π/2 ∈ [−π/4, π/4); cos and sin are evaluated at φ (where the polynomials are
//!   accurate) and rotated by q quarter turns (a swap and sign flips, exact).
//!
//! Round output: the eight Z₁ of pairs 0–7, then their eight Z₂. The AVX-512 path (two rounds'
//! sixteen pairs side by side), the AVX2 path and the portable path perform the same f32 operations
//! in the same order (no fused multiply-adds), so the numbers do not depend on the processor.

use super::Stream;

/// Interleaved generators.
const GENERATORS: usize = 8;
/// Variates per round of the generators.
pub const ROUND: usize = 16;

const HALF_PI: f32 = std::f32::consts::FRAC_PI_2;
/// 2⁻³¹ and 2⁻²⁴.
const TWO_M31: f32 = 1.0 / 2_147_483_648.0;
const TWO_M24: f32 = 1.0 / 16_777_216.0;

// Cephes logf (S. L. Moshier, Cephes Math Library 2.2): ln x for x = m·2ᵉ, m ∈ [√½, √2).
const SQRT_HALF: f32 = std::f32::consts::FRAC_1_SQRT_2;
// The coefficients as Cephes prints them (more digits than f32 holds; the compiler rounds them).
#[allow(clippy::excessive_precision)]
const LOG_P: [f32; 9] = [
    7.037_683_6e-2,
    -1.151_461_03e-1,
    1.167_699_87e-1,
    -1.242_014_08e-1,
    1.424_932_28e-1,
    -1.666_805_77e-1,
    2.000_071_48e-1,
    -2.499_999_4e-1,
    3.333_333_1e-1,
];
/// ln 2 split as 0.693359375 (exact in a few bits) − 2.12194440e−4.
#[allow(clippy::excessive_precision)]
const LN2_HI: f32 = 0.693_359_375;
#[allow(clippy::excessive_precision)]
const LN2_LO: f32 = -2.121_944_4e-4;
// Cephes sinf / cosf on [−π/4, π/4].
#[allow(clippy::excessive_precision)]
const SIN_P: [f32; 3] = [-1.951_529_6e-4, 8.332_160_9e-3, -1.666_665_5e-1];
#[allow(clippy::excessive_precision)]
const COS_P: [f32; 3] = [2.443_315_7e-5, -1.388_731_6e-3, 4.166_664_6e-2];

/// ln x for a positive normal f32 (Cephes `logf`): x = m·2ᵉ with m ∈ [½, 1) moved to [√½, √2),
/// ln x = e·ln 2 + ln(1 + t), ln(1 + t) = t − t²/2 + t³·P(t).
#[inline(always)]
fn ln(x: f32) -> f32 {
    let bits = x.to_bits();
    let mut e = ((bits >> 23) & 0xff) as i32 - 126;
    let m = f32::from_bits((bits & 0x807f_ffff) | 0x3f00_0000);
    let t = if m < SQRT_HALF {
        e -= 1;
        m + m - 1.0
    } else {
        m - 1.0
    };
    let e = e as f32;
    let z = t * t;
    let mut p = LOG_P[0];
    for &c in &LOG_P[1..] {
        p = p * t + c;
    }
    let mut y = p * t * z;
    y += LN2_LO * e;
    y += (-0.5) * z;
    let r = t + y;
    r + LN2_HI * e
}

/// (cos φ, sin φ) for |φ| ≤ π/4 (Cephes `cosf`, `sinf`).
#[inline(always)]
fn cos_sin(phi: f32) -> (f32, f32) {
    let z = phi * phi;
    let s = ((SIN_P[0] * z + SIN_P[1]) * z + SIN_P[2]) * z * phi + phi;
    let c = ((COS_P[0] * z + COS_P[1]) * z + COS_P[2]) * z * z + (-0.5) * z + 1.0;
    (c, s)
}

/// One Box–Muller pair from a radius half `h` and an angle half `a` (see the module documentation).
#[inline(always)]
fn pair(h: u32, a: u32) -> (f32, f32) {
    let u1 = ((h >> 1) as i32 as f32 + 0.5) * TWO_M31;
    let r = (-2.0 * ln(u1)).sqrt();
    let f = ((a >> 6) & 0x00ff_ffff) as i32 as f32 * TWO_M24;
    let (c, s) = cos_sin((f - 0.5) * HALF_PI);
    let q = a >> 30;
    // Rotation by q quarter turns: (c, s) → (−s, c) → (−c, −s) → (s, −c).
    let (x, y) = if q & 1 == 1 { (s, c) } else { (c, s) };
    let x_sign = ((q ^ (q >> 1)) & 1) << 31;
    let y_sign = (q >> 1) << 31;
    (
        r * f32::from_bits(x.to_bits() ^ x_sign),
        r * f32::from_bits(y.to_bits() ^ y_sign),
    )
}

/// Eight Xoshiro256++ generators and the Box–Muller transform (see the module documentation),
/// seeded from a [`Stream`] so the noise is a deterministic function of the chain's seeded stream.
#[derive(Clone, Debug)]
pub struct NoiseSource {
    /// `state[k][l]`: state word k of generator l.
    state: [[u64; GENERATORS]; 4],
}

impl NoiseSource {
    /// Takes 32 words from `rng`, four per generator (a generator whose state is all zero,
    /// probability 2⁻²⁵⁶, gets a fixed non-zero word).
    pub fn from_stream(rng: &mut Stream) -> Self {
        let per_generator: [[u64; 4]; GENERATORS] = std::array::from_fn(|_| {
            let mut s = [
                rng.next_u64(),
                rng.next_u64(),
                rng.next_u64(),
                rng.next_u64(),
            ];
            if s == [0; 4] {
                s[0] = 0x9E37_79B9_7F4A_7C15;
            }
            s
        });
        NoiseSource {
            state: std::array::from_fn(|k| std::array::from_fn(|l| per_generator[l][k])),
        }
    }

    /// One Xoshiro256++ step of each generator: the radius halves (generators 0–3) and the angle
    /// halves (generators 4–7).
    #[inline(always)]
    fn next_round(&mut self) -> ([u32; 8], [u32; 8]) {
        let [s0, s1, s2, s3] = &mut self.state;
        let mut out = [0u64; GENERATORS];
        for l in 0..GENERATORS {
            out[l] = s0[l]
                .wrapping_add(s3[l])
                .rotate_left(23)
                .wrapping_add(s0[l]);
            let t = s1[l] << 17;
            s2[l] ^= s0[l];
            s3[l] ^= s1[l];
            s1[l] ^= s2[l];
            s0[l] ^= s3[l];
            s2[l] ^= t;
            s3[l] = s3[l].rotate_left(45);
        }
        let half = |k: usize| (out[k / 2] >> (32 * (k % 2))) as u32;
        (
            std::array::from_fn(half),
            std::array::from_fn(|k| half(8 + k)),
        )
    }

    /// Fills `out` with independent N(0, 1) variates, sixteen per round of the generators. A call
    /// uses ⌈len/16⌉ rounds and drops the unused variates of the last one, so filling a vector in
    /// pieces whose lengths are multiples of 16 gives the same numbers as filling it at once.
    pub fn fill(&mut self, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512dq")
                && std::arch::is_x86_feature_detected!("avx512vl")
            {
                // SAFETY: the processor has these (checked just above).
                unsafe { self.fill_avx512(out) };
                return;
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the processor has AVX2 (checked just above).
                unsafe { self.fill_avx2(out) };
                return;
            }
        }
        self.fill_portable(out);
    }

    /// [`Self::fill`] without SIMD intrinsics (the reference the AVX2 path must equal bit for bit).
    pub fn fill_portable(&mut self, out: &mut [f32]) {
        let mut chunks = out.chunks_exact_mut(ROUND);
        for chunk in &mut chunks {
            self.round_into(chunk);
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            self.round_into(rest);
        }
    }

    /// One round, of which the first `dst.len()` variates are written.
    #[inline(always)]
    fn round_into(&mut self, dst: &mut [f32]) {
        let (radius, angle) = self.next_round();
        let mut values = [0f32; ROUND];
        for k in 0..8 {
            let (x, y) = pair(radius[k], angle[k]);
            values[k] = x;
            values[8 + k] = y;
        }
        dst.copy_from_slice(&values[..dst.len()]);
    }

    /// Two rounds into `out` (32 long): the portable code of [`Self::round_into`] written over
    /// lane arrays, the sixteen pairs of both rounds side by side, so that the compiler keeps the
    /// eight generators' state words in one 512-bit register each (a rotate is one instruction) and
    /// evaluates sixteen pairs per vector; the same operations in the same order per pair.
    #[inline(always)]
    fn two_rounds_into(&mut self, out: &mut [f32]) {
        let (r0, a0) = self.next_round();
        let (r1, a1) = self.next_round();
        let h: [u32; 16] = std::array::from_fn(|k| if k < 8 { r0[k] } else { r1[k - 8] });
        let a: [u32; 16] = std::array::from_fn(|k| if k < 8 { a0[k] } else { a1[k - 8] });
        let mut x = [0f32; 16];
        let mut y = [0f32; 16];
        for k in 0..16 {
            (x[k], y[k]) = pair(h[k], a[k]);
        }
        out[..8].copy_from_slice(&x[..8]);
        out[8..16].copy_from_slice(&y[..8]);
        out[16..24].copy_from_slice(&x[8..]);
        out[24..32].copy_from_slice(&y[8..]);
    }

    /// [`Self::fill_portable`] compiled for AVX-512, two rounds at a time
    /// ([`Self::two_rounds_into`]); a last single or partial round as the portable path.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2")]
    unsafe fn fill_avx512(&mut self, out: &mut [f32]) {
        let mut chunks = out.chunks_exact_mut(2 * ROUND);
        for chunk in &mut chunks {
            self.two_rounds_into(chunk);
        }
        self.fill_portable(chunks.into_remainder());
    }

    /// [`Self::fill_portable`] in AVX2: each state word of the eight generators in two registers,
    /// eight pairs per round in one f32 register; the same operations in the same order.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn fill_avx2(&mut self, out: &mut [f32]) {
        use std::arch::x86_64::*;
        #[inline(always)]
        unsafe fn rotl<const L: i32, const R: i32>(x: __m256i) -> __m256i {
            _mm256_or_si256(_mm256_slli_epi64::<L>(x), _mm256_srli_epi64::<R>(x))
        }
        #[inline(always)]
        unsafe fn poly(x: __m256, coefficients: &[f32]) -> __m256 {
            let mut p = _mm256_set1_ps(coefficients[0]);
            for &c in &coefficients[1..] {
                p = _mm256_add_ps(_mm256_mul_ps(p, x), _mm256_set1_ps(c));
            }
            p
        }
        let ptr = |k: usize, g: usize| self.state[k][4 * g..].as_ptr().cast::<__m256i>();
        // s[k][g]: state word k of generators 4g..4g+4.
        let mut s = [[_mm256_setzero_si256(); 2]; 4];
        for (k, sk) in s.iter_mut().enumerate() {
            for (g, v) in sk.iter_mut().enumerate() {
                *v = _mm256_loadu_si256(ptr(k, g));
            }
        }
        let set = _mm256_set1_ps;
        let seti = _mm256_set1_epi32;
        let mut chunks = out.chunks_exact_mut(ROUND);
        for chunk in &mut chunks {
            let mut words = [_mm256_setzero_si256(); 2];
            for g in 0..2 {
                let [s0, s1, s2, s3] = [s[0][g], s[1][g], s[2][g], s[3][g]];
                words[g] = _mm256_add_epi64(rotl::<23, 41>(_mm256_add_epi64(s0, s3)), s0);
                let t = _mm256_slli_epi64::<17>(s1);
                let s2 = _mm256_xor_si256(s2, s0);
                let s3 = _mm256_xor_si256(s3, s1);
                let s1 = _mm256_xor_si256(s1, s2);
                let s0 = _mm256_xor_si256(s0, s3);
                let s2 = _mm256_xor_si256(s2, t);
                let s3 = rotl::<45, 19>(s3);
                s[0][g] = s0;
                s[1][g] = s1;
                s[2][g] = s2;
                s[3][g] = s3;
            }
            // Little-endian: 32-bit element 2l is generator l's low half, 2l + 1 its high half.
            let [h, a] = words;
            // U₁ and ln U₁ (Cephes logf, branch-free).
            let u1 = _mm256_mul_ps(
                _mm256_add_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32::<1>(h)), set(0.5)),
                set(TWO_M31),
            );
            let bits = _mm256_castps_si256(u1);
            let e = _mm256_sub_epi32(
                _mm256_and_si256(_mm256_srli_epi32::<23>(bits), seti(0xff)),
                seti(126),
            );
            let m = _mm256_castsi256_ps(_mm256_or_si256(
                _mm256_and_si256(bits, seti(0x807f_ffff_u32 as i32)),
                seti(0x3f00_0000),
            ));
            let small = _mm256_cmp_ps::<_CMP_LT_OQ>(m, set(SQRT_HALF));
            // e − 1 where m < √½ (the mask is −1 there).
            let e = _mm256_cvtepi32_ps(_mm256_add_epi32(e, _mm256_castps_si256(small)));
            let t = _mm256_blendv_ps(
                _mm256_sub_ps(m, set(1.0)),
                _mm256_sub_ps(_mm256_add_ps(m, m), set(1.0)),
                small,
            );
            let z = _mm256_mul_ps(t, t);
            let mut y = _mm256_mul_ps(_mm256_mul_ps(poly(t, &LOG_P), t), z);
            y = _mm256_add_ps(y, _mm256_mul_ps(set(LN2_LO), e));
            y = _mm256_add_ps(y, _mm256_mul_ps(set(-0.5), z));
            let ln_u1 = _mm256_add_ps(_mm256_add_ps(t, y), _mm256_mul_ps(set(LN2_HI), e));
            let r = _mm256_sqrt_ps(_mm256_mul_ps(set(-2.0), ln_u1));
            // The angle.
            let f = _mm256_mul_ps(
                _mm256_cvtepi32_ps(_mm256_and_si256(
                    _mm256_srli_epi32::<6>(a),
                    seti(0x00ff_ffff),
                )),
                set(TWO_M24),
            );
            let phi = _mm256_mul_ps(_mm256_sub_ps(f, set(0.5)), set(HALF_PI));
            let z = _mm256_mul_ps(phi, phi);
            let sin = _mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(poly(z, &SIN_P), z), phi), phi);
            let cos = _mm256_add_ps(
                _mm256_add_ps(
                    _mm256_mul_ps(_mm256_mul_ps(poly(z, &COS_P), z), z),
                    _mm256_mul_ps(set(-0.5), z),
                ),
                set(1.0),
            );
            let q = _mm256_srli_epi32::<30>(a);
            let odd =
                _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(q, seti(1)), seti(1)));
            let x = _mm256_blendv_ps(cos, sin, odd);
            let yv = _mm256_blendv_ps(sin, cos, odd);
            let x_sign = _mm256_slli_epi32::<31>(_mm256_xor_si256(q, _mm256_srli_epi32::<1>(q)));
            let y_sign = _mm256_slli_epi32::<31>(_mm256_srli_epi32::<1>(q));
            let x = _mm256_xor_ps(x, _mm256_castsi256_ps(x_sign));
            let yv = _mm256_xor_ps(yv, _mm256_castsi256_ps(y_sign));
            _mm256_storeu_ps(chunk.as_mut_ptr(), _mm256_mul_ps(r, x));
            _mm256_storeu_ps(chunk[8..].as_mut_ptr(), _mm256_mul_ps(r, yv));
        }
        for (k, sk) in s.iter().enumerate() {
            for (g, v) in sk.iter().enumerate() {
                _mm256_storeu_si256(self.state[k][4 * g..].as_mut_ptr().cast(), *v);
            }
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            self.round_into(rest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{stream, Purpose};
    use crate::sample::special::normal_cdf;

    #[test]
    fn transform_matches_the_f64_formula() {
        // Every pair against Box–Muller in f64 on the same uniforms, over 4 million pairs with the
        // extremes of both halves included.
        let mut rng = stream(5, Purpose::Chain, 0);
        let mut worst = 0f64;
        let extremes = [
            0u32,
            1,
            2,
            0x7fff_ffff,
            0x8000_0000,
            0xffff_fffe,
            0xffff_ffff,
        ];
        let mut check = |h: u32, a: u32| {
            let (x, y) = pair(h, a);
            // U₁ as the f32 it is (its rounding near 1 is a property of the uniform, not of the
            // transform under test).
            let u1 = (((h >> 1) as i32 as f32 + 0.5) * TWO_M31) as f64;
            let r = (-2.0 * u1.ln()).sqrt();
            let f = ((a >> 6) & 0x00ff_ffff) as f64 * 2f64.powi(-24);
            // Θ = q·π/2 + φ with φ = (f − ½)·π/2.
            let theta = ((a >> 30) as f64 + f - 0.5) * std::f64::consts::FRAC_PI_2;
            let (ex, ey) = (r * theta.cos(), r * theta.sin());
            let err = ((x as f64 - ex).abs()).max((y as f64 - ey).abs()) / r.max(1.0);
            worst = worst.max(err);
        };
        for &h in &extremes {
            for &a in &extremes {
                check(h, a);
            }
        }
        for _ in 0..4_000_000 {
            let w = rng.next_u64();
            check(w as u32, (w >> 32) as u32);
        }
        // f32 rounding of the radius, the polynomials and the products: a few units of 2⁻²⁴ = 6e-8
        // (measured: 1.7e-7 for this seed).
        assert!(worst < 4e-7, "worst relative error {worst:e}");
    }

    /// Every path the processor has against the portable one, over lengths that end in each way
    /// (partial round, one whole round left, two).
    #[test]
    fn avx2_avx512_and_portable_paths_agree_bit_for_bit() {
        type Fill = fn(&mut NoiseSource, &mut [f32]);
        let mut paths: Vec<(&str, Fill)> = vec![("dispatch", NoiseSource::fill)];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the processor has AVX2.
                paths.push(("avx2", |s, o| unsafe { s.fill_avx2(o) }));
            }
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512dq")
                && std::arch::is_x86_feature_detected!("avx512vl")
            {
                // SAFETY: the processor has these.
                paths.push(("avx512", |s, o| unsafe { s.fill_avx512(o) }));
            }
        }
        for (name, fill) in paths {
            let mut a = NoiseSource::from_stream(&mut stream(9, Purpose::Chain, 3));
            let mut b = a.clone();
            for len in [1usize, 15, 16, 17, 31, 32, 33, 48, 512, 1000, 101_770] {
                let mut x = vec![0f32; len];
                let mut y = vec![0f32; len];
                fill(&mut a, &mut x);
                b.fill_portable(&mut y);
                let xb: Vec<u32> = x.iter().map(|v| v.to_bits()).collect();
                let yb: Vec<u32> = y.iter().map(|v| v.to_bits()).collect();
                assert_eq!(xb, yb, "{name}, length {len}");
            }
            // The generators' states agree afterwards too.
            assert_eq!(a.state, b.state, "{name}: state");
        }
    }

    #[test]
    fn pieces_of_whole_rounds_equal_one_fill() {
        let mut a = NoiseSource::from_stream(&mut stream(2, Purpose::Chain, 0));
        let mut b = a.clone();
        let mut whole = vec![0f32; 1000];
        a.fill(&mut whole);
        let mut pieces = vec![0f32; 1000];
        for piece in pieces.chunks_mut(512) {
            b.fill(piece);
        }
        assert_eq!(whole, pieces);
    }

    #[test]
    fn noise_is_standard_normal() {
        let mut src = NoiseSource::from_stream(&mut stream(12, Purpose::Chain, 0));
        let n = 1_000_001; // not a multiple of 16: the last, partial round runs too
        let mut v = vec![0f32; n];
        src.fill(&mut v);
        let xs: Vec<f64> = v.iter().map(|&x| x as f64).collect();
        let nf = n as f64;
        let mean = xs.iter().sum::<f64>() / nf;
        let m2 = xs.iter().map(|x| x * x).sum::<f64>() / nf;
        let m4 = xs.iter().map(|x| x.powi(4)).sum::<f64>() / nf;
        // Standard errors for n = 1e6: mean 1e-3, E[x²] sqrt(2/n) = 1.4e-3, E[x⁴] sqrt(96/n) = 9.8e-3.
        assert!(mean.abs() < 5e-3, "mean {mean}");
        assert!((m2 - 1.0).abs() < 5.0 * 1.42e-3, "E[x^2] {m2}");
        assert!((m4 - 3.0).abs() < 5.0 * 9.8e-3, "E[x^4] {m4}");
        // Tails beyond 3 and 4: binomial standard deviation sqrt(p/n).
        for cut in [3.0, 4.0] {
            let p = 2.0 * (1.0 - normal_cdf(cut));
            let tail = xs.iter().filter(|x| x.abs() > cut).count() as f64 / nf;
            assert!(
                (tail - p).abs() < 5.0 * (p / nf).sqrt(),
                "tail beyond {cut}: {tail} vs {p}"
            );
        }
        // Kolmogorov–Smirnov: sup |F_n − Φ| < 1.95/sqrt(n) at the 0.1% level.
        let mut sorted = xs.clone();
        sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let d = sorted
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                let f = normal_cdf(x);
                (f - i as f64 / nf)
                    .abs()
                    .max(((i + 1) as f64 / nf - f).abs())
            })
            .fold(0.0, f64::max);
        assert!(d < 1.95 / nf.sqrt(), "KS distance {d}");
        // The two variates of a pair (k and k + 8 of a round) are independent: their correlation and
        // the correlation of their squares are ~ N(0, 1/n_pairs).
        let rounds = n / ROUND;
        let np = (rounds * 8) as f64;
        let (mut c, mut c2) = (0f64, 0f64);
        for r in 0..rounds {
            for k in 0..8 {
                let (x, y) = (xs[r * ROUND + k], xs[r * ROUND + 8 + k]);
                c += x * y;
                c2 += (x * x - 1.0) * (y * y - 1.0) / 2.0;
            }
        }
        assert!(
            (c / np).abs() < 5.0 / np.sqrt(),
            "pair correlation {}",
            c / np
        );
        assert!(
            (c2 / np).abs() < 5.0 / np.sqrt(),
            "pair correlation of squares {}",
            c2 / np
        );
    }
}
