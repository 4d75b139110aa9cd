//! `nn.GELU()` (exact, `approximate='none'`): y = x·Φ(x), Φ the standard normal CDF
//! (Hendrycks & Gimpel 2016, "Gaussian Error Linear Units").
//!
//! φ′(x) = Φ(x) + x·ϕ(x) and φ″(x) = ϕ(x)·(2 − x²), ϕ the standard normal density, evaluated in
//! f64. Unlike ReLU and tanh its derivative is not a function of its output, so it reads the input.
//!
//! Two evaluations of (Φ, ϕ), both in f64: in f64 networks (verification) statrs' `erf` and the
//! system `exp`, accurate to rounding; in f32 networks [`cdf_pdf_fast`], branch-free and without
//! library calls so that the element loops vectorise, with a relative error below 10⁻¹⁰ — a
//! thousandth of f32's half-ulp, so the f32 outputs are the correctly rounded values of the f64
//! ones (to one ulp at the rare ties; tested below).

use super::Elementwise;
use crate::Real;
use statrs::function::erf::{erf, erfc};
use std::f64::consts::{FRAC_1_SQRT_2, LOG2_E, PI};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gelu {
    pub features: usize,
}

/// (Φ(x), ϕ(x)) to f64 rounding: statrs' erf and erfc, Φ(x) = ½·(1 + erf(x/√2)) for x ≥ 0 and
/// ½·erfc(−x/√2) below (where 1 + erf cancels: below x ≈ −8.3 it would give 0).
#[inline]
fn cdf_pdf_exact(x: f64) -> (f64, f64) {
    let cdf = if x < 0.0 {
        0.5 * erfc(-x * FRAC_1_SQRT_2)
    } else {
        0.5 * (1.0 + erf(x * FRAC_1_SQRT_2))
    };
    (cdf, (-0.5 * x * x).exp() / (2.0 * PI).sqrt())
}

/// eᵃ for a ∈ [−708, 0] (relative error below 10⁻¹⁴), without branches or library calls: a = k·ln 2 + r
/// with k = round(a/ln 2) (the 1.5·2⁵² rounding trick, which leaves k in the low bits), ln 2 in
/// two parts (Cody & Waite 1980, "Software manual for the elementary functions"), eʳ (|r| ≤ ½·ln 2)
/// by its Taylor polynomial to r¹¹ (remainder below 0.35¹²/12! < 10⁻¹⁴), 2ᵏ built from its bits.
#[inline(always)]
fn exp_nonpositive(a: f64) -> f64 {
    const SHIFT: f64 = 6_755_399_441_055_744.0; // 1.5·2⁵²
    const LN2_HI: f64 = 0.693_147_180_369_123_8; // ln 2 to 32 bits
    const LN2_LO: f64 = 1.908_214_929_270_587_7e-10; // ln 2 − LN2_HI
    let shifted = a * LOG2_E + SHIFT;
    let k = shifted - SHIFT;
    let r = (a - k * LN2_HI) - k * LN2_LO;
    let mut p = 1.0 / 39_916_800.0; // 1/11!
    for d in [
        3_628_800.0,
        362_880.0,
        40_320.0,
        5_040.0,
        720.0,
        120.0,
        24.0,
        6.0,
        2.0,
        1.0,
        1.0,
    ] {
        p = p * r + 1.0 / d;
    }
    // The low bits of `shifted` hold k (two's complement, |k| < 2¹¹); +1023 is the biased
    // exponent, which the shift moves into place (the high bits fall off).
    let scale = f64::from_bits(shifted.to_bits().wrapping_add(1023) << 52);
    p * scale
}

/// The scaled complementary error function erfcx(z) = e^{z²}·erfc(z) for z ≥ 0, as a polynomial
/// of degree 14 in t = 2/(1 + 0.3·z) − 1 ∈ (−1, 1] (z ∈ [0, ∞) maps onto it; erfcx is smooth in t,
/// as in the single-interval fit of Press et al., "Numerical Recipes", §6.2, `erfcc`). The
/// coefficients (lowest first) are a weighted least-squares Chebyshev fit of the relative error
/// against mpmath's erfc at 30 digits, converted to powers of t: maximum relative error 3.6·10⁻¹¹
/// on z ∈ [0, 30] (checked against statrs below).
const ERFCX: [f64; 15] = [
    0.162_489_960_933_149_96,
    0.300_751_739_386_441_6,
    0.237_652_317_142_163_95,
    0.158_749_872_913_723_58,
    0.087_840_158_740_339_46,
    0.038_681_585_032_540_47,
    0.012_378_776_932_471_525,
    0.002_086_955_600_331_410_6,
    -0.000_331_637_459_470_967_7,
    -0.000_293_565_053_631_364_57,
    -3.676_715_763_878_462_4e-5,
    2.502_797_399_442_301e-5,
    8.040_338_307_891_772e-6,
    -1.615_868_121_600_280_5e-6,
    -8.494_841_846_051_547e-7,
];

/// (Φ(x), ϕ(x)) with relative error below 10⁻¹⁰, branch-free: with E = e^{−x²/2} (so
/// ϕ = E/√(2π)) and z = |x|/√2, erfc(z) = e^{−z²}·erfcx(z) = E·erfcx(z), and Φ(x) = ½·erfc(z) for
/// x < 0, 1 − ½·erfc(z) otherwise (no cancellation in the lower tail). E is computed to f64
/// rounding of x²/2 (exact for f32 inputs), clamped at e^{−708}, where Φ and ϕ are far below
/// f32's smallest number. NaN stays NaN.
#[inline(always)]
pub(crate) fn cdf_pdf_fast(x: f64) -> (f64, f64) {
    let e = exp_nonpositive((-0.5 * x * x).max(-708.0));
    let z = x.abs() * FRAC_1_SQRT_2;
    let t = 2.0 / (1.0 + 0.3 * z) - 1.0;
    let mut r = ERFCX[14];
    for &c in ERFCX[..14].iter().rev() {
        r = r * t + c;
    }
    let half_erfc = 0.5 * e * r;
    let cdf = if x < 0.0 { half_erfc } else { 1.0 - half_erfc };
    (cdf, e * (0.5 / PI).sqrt())
}

/// (Φ(x), ϕ(x)) for a network in `T`: the exact evaluation in f64 networks, the fast one in f32
/// (whose outputs it rounds to the same values, see the module comment).
#[inline(always)]
fn cdf_pdf<T: Real>(x: f64) -> (f64, f64) {
    if std::mem::size_of::<T>() < std::mem::size_of::<f64>() {
        cdf_pdf_fast(x)
    } else {
        cdf_pdf_exact(x)
    }
}

impl Elementwise for Gelu {
    fn module(&self) -> &'static str {
        "GELU"
    }
    fn features(&self) -> usize {
        self.features
    }
    fn second_derivative_vanishes(&self) -> bool {
        false
    }
    fn keeps_derivative(&self) -> bool {
        true
    }
    #[inline(always)]
    fn value<T: Real>(&self, x: T) -> T {
        let x = x.as_f64();
        T::of_f64(x * cdf_pdf::<T>(x).0)
    }
    #[inline(always)]
    fn value_and_derivative<T: Real>(&self, x: T) -> (T, T) {
        let x = x.as_f64();
        let (cdf, pdf) = cdf_pdf::<T>(x);
        (T::of_f64(x * cdf), T::of_f64(cdf + x * pdf))
    }
    #[inline(always)]
    fn backward_one<T: Real>(&self, x: T, y: T, g: T) -> T {
        g * self.derivative(x, y)
    }
    #[inline(always)]
    fn derivative<T: Real>(&self, x: T, _y: T) -> T {
        let x = x.as_f64();
        let (cdf, pdf) = cdf_pdf::<T>(x);
        T::of_f64(cdf + x * pdf)
    }
    #[inline(always)]
    fn add_second_order<T: Real>(&self, r: T, x: T, y: T, rx: T, dy: T) -> T {
        r + self.second_derivative(x, y) * rx * dy
    }
    fn keeps_second_derivative(&self) -> bool {
        true
    }
    /// φ″(x) = ϕ(x)·(2 − x²), evaluated in f64 and rounded to `T` once.
    #[inline(always)]
    fn second_derivative<T: Real>(&self, x: T, _y: T) -> T {
        let x64 = x.as_f64();
        T::of_f64(cdf_pdf::<T>(x64).1 * (2.0 - x64 * x64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs over the whole range that matters (and past it): a fine grid on [−40, 40] and
    /// every f32 between ±2⁻²⁰ and ±2⁻¹⁰ at a coarse stride (the small-x end).
    fn inputs() -> Vec<f64> {
        let mut xs: Vec<f64> = (-400_000..=400_000).map(|i| i as f64 * 1e-4).collect();
        let mut b = (2f32.powi(-20)).to_bits();
        while b < (2f32.powi(-10)).to_bits() {
            let v = f32::from_bits(b) as f64;
            xs.extend([v, -v]);
            b += 997;
        }
        xs
    }

    /// The fast (Φ, ϕ) against statrs' erf / erfc and the system exp: relative error below
    /// 2·10⁻¹⁰ in Φ (both tails; Φ is tiny for x < 0) and 10⁻¹³ in ϕ, down to where they leave
    /// f64's normal range. (statrs' erfc is itself off by 8.5·10⁻¹¹ at x = −1.0125, where mpmath
    /// at 30 digits puts the fast Φ within 3.1·10⁻¹¹: the bound is statrs' error plus the fit's.)
    #[test]
    fn fast_cdf_and_pdf_match_the_exact_ones() {
        let mut worst = (0.0f64, 0.0f64);
        for x in inputs() {
            let (c, p) = cdf_pdf_fast(x);
            let (ce, pe) = cdf_pdf_exact(x);
            if ce > 1e-300 {
                worst.0 = worst.0.max((c / ce - 1.0).abs());
            }
            if pe > 1e-300 {
                worst.1 = worst.1.max((p / pe - 1.0).abs());
            }
        }
        assert!(worst.0 < 2e-10 && worst.1 < 1e-13, "{worst:?}");
        assert!(cdf_pdf_fast(f64::NAN).0.is_nan());
        let (c, p) = cdf_pdf_fast(f64::INFINITY);
        assert!(c == 1.0 && p < 1e-300, "{c} {p}");
        assert!((cdf_pdf_fast(0.0).0 - 0.5).abs() < 1e-10);
    }

    /// e^a against the system exp on [−708, 0].
    #[test]
    fn exp_matches_the_system_exp() {
        for i in 0..=708_000 {
            let a = -(i as f64) * 1e-3;
            let (got, want) = (exp_nonpositive(a), a.exp());
            assert!((got / want - 1.0).abs() < 1e-14, "{a}: {got} vs {want}");
        }
    }

    /// In f32 the layer's value, φ′ and φ″ term are those of the exact evaluation rounded to f32:
    /// equal, or one ulp apart where the exact value lies within 10⁻¹⁰ of a rounding tie (fewer
    /// than one in a hundred), or, where φ′ = Φ + x·ϕ cancels to near 0 (x ≈ −0.75), within
    /// 10⁻⁹ of the size of its terms (an f32 evaluation of the sum errs by 10⁻⁷ of it).
    #[test]
    fn f32_gelu_rounds_to_the_exact_values() {
        let g = Gelu { features: 1 };
        // ±0 are equal; elsewhere the distance in representable numbers (same signs here).
        let ulps = |a: f32, b: f32| {
            if a == b {
                0
            } else {
                (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs()
            }
        };
        let (mut off, mut n) = (0usize, 0usize);
        for x in inputs() {
            let x32 = x as f32;
            let xe = x32 as f64;
            let (ce, pe) = cdf_pdf_exact(xe);
            let want = [
                (xe * ce) as f32,
                (ce + xe * pe) as f32,
                (pe * (2.0 - xe * xe)) as f32,
            ];
            let got = [
                g.value(x32),
                g.derivative(x32, 0.0),
                g.add_second_order(0.0f32, x32, 0.0, 1.0, 1.0),
            ];
            let scale = [xe.abs() * ce, ce + (xe * pe).abs(), (pe * (2.0 + xe * xe)).abs()];
            for ((a, b), s) in got.iter().zip(&want).zip(scale) {
                let d = ulps(*a, *b);
                let close = ((*a as f64) - (*b as f64)).abs() <= 1e-9 * s + 1e-37;
                assert!(d <= 1 || close, "x = {x32}: {got:?} vs {want:?}");
                off += (d >= 1) as usize;
                n += 1;
            }
        }
        assert!(off * 100 < n, "{off} of {n} off by an ulp or more");
    }
}
