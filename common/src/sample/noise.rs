//! Fast standard-normal noise for SGLD: the ziggurat method.
//!
//! SGLD draws one N(0, 1) variate per parameter and step (101,770 per step for the MNIST MLP), so the
//! polar method of [`crate::rng::Stream::normal`] (a logarithm and a square root per pair) would cost
//! more than the forward and backward passes. This is the 128-layer ziggurat of Marsaglia & Tsang
//! (2000, "The ziggurat method for generating random variables", J. Stat. Softw. 5(8)) in the
//! formulation of Doornik (2005, "An improved ziggurat method to generate normal random samples"):
//! one 64-bit draw gives the layer (7 low bits) and a uniform in (−1, 1) (53 high bits), which are
//! disjoint, avoiding the correlation Doornik points out in the original. About 99% of draws take the
//! fast path (one comparison and one multiplication); the rest use the exact wedge or tail rejection
//! step, so the output is exactly normal up to floating-point rounding. [`NoiseSource::fill`], used by
//! the sampler, splits each 64-bit draw into two 32-bit halves on the fast path (Marsaglia & Tsang's
//! original 32-bit layout) to halve the generator's cost.

use crate::rng::Stream;
use std::sync::OnceLock;

const LAYERS: usize = 128;
/// Start of the tail, r, and the common area of each layer, v (Marsaglia & Tsang, 128 layers).
const R: f64 = 3.442_619_855_899;
const V: f64 = 9.912_563_035_262_17e-3;

struct Tables {
    /// x[i], i = 0..=128: x[0] = v/f(r) (the base layer's pseudo-width), x[1] = r, x[128] = 0.
    x: [f64; LAYERS + 1],
    /// x[i+1]/x[i]: the fast-path acceptance bound of layer i.
    ratio: [f64; LAYERS],
}

fn density(x: f64) -> f64 {
    (-0.5 * x * x).exp()
}

fn tables() -> &'static Tables {
    static T: OnceLock<Tables> = OnceLock::new();
    T.get_or_init(|| {
        let mut x = [0.0; LAYERS + 1];
        x[0] = V / density(R);
        x[1] = R;
        for i in 2..LAYERS {
            x[i] = (-2.0 * (V / x[i - 1] + density(x[i - 1])).ln()).sqrt();
        }
        x[LAYERS] = 0.0;
        let ratio = std::array::from_fn(|i| x[i + 1] / x[i]);
        Tables { x, ratio }
    })
}

/// One standard normal variate.
#[inline]
pub fn standard_normal(rng: &mut Stream) -> f64 {
    let t = tables();
    loop {
        let bits = rng.next_u64();
        let layer = (bits & 0x7f) as usize;
        // 53 high bits → u uniform in [−1, 1).
        let u = 2.0 * ((bits >> 11) as f64 * (1.0 / (1u64 << 53) as f64)) - 1.0;
        if u.abs() < t.ratio[layer] {
            return u * t.x[layer];
        }
        if layer == 0 {
            // The tail beyond r (Marsaglia 1964): x = r + a with a ~ Exp(r) accepted w.p. exp(−a²/2).
            loop {
                let a = -(1.0 - rng.uniform()).ln() / R;
                let b = -(1.0 - rng.uniform()).ln();
                if 2.0 * b > a * a {
                    return if u < 0.0 { -(R + a) } else { R + a };
                }
            }
        }
        // The wedge between layers: accept x = u·x[i] with probability proportional to the density
        // above the lower layer's height.
        let x = u * t.x[layer];
        let f0 = (-0.5 * (t.x[layer] * t.x[layer] - x * x)).exp();
        let f1 = (-0.5 * (t.x[layer + 1] * t.x[layer + 1] - x * x)).exp();
        if f1 + rng.uniform() * (f0 - f1) < 1.0 {
            return x;
        }
    }
}

/// A Xoshiro256++ generator (Blackman & Vigna 2018) inlined for the noise loop, seeded from a
/// [`Stream`] so the noise stays a deterministic function of the chain's seeded stream.
#[derive(Clone, Debug)]
pub struct NoiseSource {
    s: [u64; 4],
}

impl NoiseSource {
    /// Takes four words from `rng` as the state (a zero state, probability 2⁻²⁵⁶, is replaced).
    pub fn from_stream(rng: &mut Stream) -> Self {
        let mut s = [
            rng.next_u64(),
            rng.next_u64(),
            rng.next_u64(),
            rng.next_u64(),
        ];
        if s == [0; 4] {
            s[0] = 0x9E37_79B9_7F4A_7C15;
        }
        NoiseSource { s }
    }

    #[inline(always)]
    fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    #[inline(always)]
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// The slow path of [`Self::fill`] for layer `layer` with uniform `u` ∈ [−1, 1): the tail (layer
    /// 0) or the wedge test, drawing until a variate is accepted.
    #[cold]
    fn slow(&mut self, t: &Tables, mut layer: usize, mut u: f64) -> f64 {
        loop {
            if u.abs() < t.ratio[layer] {
                return u * t.x[layer];
            }
            if layer == 0 {
                loop {
                    let a = -(1.0 - self.uniform()).ln() / R;
                    let b = -(1.0 - self.uniform()).ln();
                    if 2.0 * b > a * a {
                        return if u < 0.0 { -(R + a) } else { R + a };
                    }
                }
            }
            let x = u * t.x[layer];
            let f0 = (-0.5 * (t.x[layer] * t.x[layer] - x * x)).exp();
            let f1 = (-0.5 * (t.x[layer + 1] * t.x[layer + 1] - x * x)).exp();
            if f1 + self.uniform() * (f0 - f1) < 1.0 {
                return x;
            }
            let bits = self.next_u64();
            layer = (bits & 0x7f) as usize;
            u = 2.0 * ((bits >> 11) as f64 * (1.0 / (1u64 << 53) as f64)) - 1.0;
        }
    }

    /// Fills `out` with independent N(0, 1) variates: the same ziggurat as [`standard_normal`], with
    /// one 64-bit draw split into two 32-bit halves on the fast path (7 bits of layer, 24 bits of
    /// uniform each: the f32 output has a 24-bit significand, so no precision is lost).
    pub fn fill(&mut self, out: &mut [f32]) {
        let t = tables();
        let mut x32 = [0f32; LAYERS];
        let mut ratio32 = [0f32; LAYERS];
        for i in 0..LAYERS {
            x32[i] = t.x[i] as f32;
            ratio32[i] = t.ratio[i] as f32;
        }
        const SCALE: f32 = 1.0 / (1u32 << 23) as f32;
        let mut pairs = out.chunks_exact_mut(2);
        for pair in &mut pairs {
            let bits = self.next_u64();
            for (k, v) in pair.iter_mut().enumerate() {
                let w = (bits >> (32 * k)) as u32;
                let layer = (w & 0x7f) as usize;
                // 24 high bits → u ∈ [−1, 1) in steps of 2⁻²³.
                let u = (w >> 8) as f32 * SCALE - 1.0;
                *v = if u.abs() < ratio32[layer] {
                    u * x32[layer]
                } else {
                    self.slow(t, layer, u as f64) as f32
                };
            }
        }
        for v in pairs.into_remainder() {
            let bits = self.next_u64();
            let layer = (bits & 0x7f) as usize;
            let u = 2.0 * ((bits >> 11) as f64 * (1.0 / (1u64 << 53) as f64)) - 1.0;
            *v = self.slow(t, layer, u) as f32;
        }
    }
}

/// Fills `out` with independent N(0, 1) variates from `rng`, one [`standard_normal`] each.
pub fn fill_standard_normal(rng: &mut Stream, out: &mut [f32]) {
    for v in out.iter_mut() {
        *v = standard_normal(rng) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{stream, Purpose};
    use crate::sample::special::normal_cdf;

    #[test]
    fn moments_and_tails_are_normal() {
        let mut rng = stream(11, Purpose::Chain, 0);
        let n = 1_000_000;
        let xs: Vec<f64> = (0..n).map(|_| standard_normal(&mut rng)).collect();
        let nf = n as f64;
        let mean = xs.iter().sum::<f64>() / nf;
        let m2 = xs.iter().map(|x| x * x).sum::<f64>() / nf;
        let m4 = xs.iter().map(|x| x.powi(4)).sum::<f64>() / nf;
        // Standard errors for n = 1e6: mean 1e-3, E[x²] sqrt(2/n) = 1.4e-3, E[x⁴] sqrt(96/n) = 9.8e-3.
        assert!(mean.abs() < 5e-3, "mean {mean}");
        assert!((m2 - 1.0).abs() < 5.0 * 1.42e-3, "E[x^2] {m2}");
        assert!((m4 - 3.0).abs() < 5.0 * 9.8e-3, "E[x^4] {m4}");
        // Tail beyond r = 3.4426 (drawn by the separate tail routine): P = 2(1 − Φ(r)) = 5.76e-4,
        // binomial sd sqrt(n p) / n = 2.4e-5.
        let p_tail = 2.0 * (1.0 - normal_cdf(R));
        let tail = xs.iter().filter(|x| x.abs() > R).count() as f64 / nf;
        assert!(
            (tail - p_tail).abs() < 5.0 * (p_tail / nf).sqrt(),
            "tail {tail} vs {p_tail}"
        );
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
    }

    #[test]
    fn fast_source_is_normal() {
        let mut src = NoiseSource::from_stream(&mut stream(12, Purpose::Chain, 0));
        let n = 1_000_001; // odd: the remainder path runs too
        let mut v = vec![0f32; n];
        src.fill(&mut v);
        let xs: Vec<f64> = v.iter().map(|&x| x as f64).collect();
        let nf = n as f64;
        let mean = xs.iter().sum::<f64>() / nf;
        let m2 = xs.iter().map(|x| x * x).sum::<f64>() / nf;
        let m4 = xs.iter().map(|x| x.powi(4)).sum::<f64>() / nf;
        // The same standard errors as above (n = 1e6).
        assert!(mean.abs() < 5e-3, "mean {mean}");
        assert!((m2 - 1.0).abs() < 5.0 * 1.42e-3, "E[x^2] {m2}");
        assert!((m4 - 3.0).abs() < 5.0 * 9.8e-3, "E[x^4] {m4}");
        let p_tail = 2.0 * (1.0 - normal_cdf(R));
        let tail = xs.iter().filter(|x| x.abs() > R).count() as f64 / nf;
        assert!(
            (tail - p_tail).abs() < 5.0 * (p_tail / nf).sqrt(),
            "tail {tail} vs {p_tail}"
        );
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
        // Consecutive halves of one 64-bit draw are independent: correlation ~ N(0, 1/n).
        let c: f64 = xs.chunks_exact(2).map(|p| p[0] * p[1]).sum::<f64>() / (nf / 2.0);
        assert!(c.abs() < 5.0 / (nf / 2.0).sqrt(), "pair correlation {c}");
    }

    #[test]
    fn same_stream_same_noise() {
        let mut a = vec![0f32; 1000];
        let mut b = vec![0f32; 1000];
        fill_standard_normal(&mut stream(3, Purpose::Chain, 2), &mut a);
        fill_standard_normal(&mut stream(3, Purpose::Chain, 2), &mut b);
        assert_eq!(a, b);
    }
}
