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
//! step, so the output is exactly normal up to floating-point rounding.

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

/// Fills `out` with independent N(0, 1) variates from `rng`, in order.
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
    fn same_stream_same_noise() {
        let mut a = vec![0f32; 1000];
        let mut b = vec![0f32; 1000];
        fill_standard_normal(&mut stream(3, Purpose::Chain, 2), &mut a);
        fill_standard_normal(&mut stream(3, Purpose::Chain, 2), &mut b);
        assert_eq!(a, b);
    }
}
