//! Seeded random streams.
//!
//! Every random choice in the toolkit comes from a Xoshiro256++ stream derived from the user's seed and
//! a purpose tag, so that data order, initialisation and each sampler chain are independent, reproducible
//! and documented: `stream(seed, purpose, index)` seeds Xoshiro256++ through SplitMix64 from
//! `seed ^ hash(purpose) ^ index·φ`.
//!
//! [`noise`]: fast standard-normal variates from a stream ([`NoiseSource`]: Box–Muller on eight
//! interleaved generators), for SGLD and the direction-noise control.

pub mod noise;
pub use noise::NoiseSource;

use rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

/// What a stream is used for; each purpose gets an independent stream for the same seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// Parameter initialisation.
    Init,
    /// The permutation of the training set in an epoch (index = epoch).
    Shuffle,
    /// A sampler chain (index = chain).
    Chain,
    /// Probe vectors (Hutchinson, Lanczos).
    Probe,
    /// Labels drawn from the model (sampled Fisher).
    Labels,
    /// Noise added to the update direction (`--direction-noise`; index = step).
    DirectionNoise,
    /// Synthetic data (`datagen`: inputs and target noise; index = which).
    Data,
}

impl Purpose {
    fn tag(self) -> u64 {
        match self {
            Purpose::Init => 0x1a1b_1c1d_0000_0001,
            Purpose::Shuffle => 0x2a2b_2c2d_0000_0002,
            Purpose::Chain => 0x3a3b_3c3d_0000_0003,
            Purpose::Probe => 0x4a4b_4c4d_0000_0004,
            Purpose::Labels => 0x5a5b_5c5d_0000_0005,
            Purpose::DirectionNoise => 0x6a6b_6c6d_0000_0006,
            Purpose::Data => 0x7a7b_7c7d_0000_0007,
        }
    }
}

/// A seeded Xoshiro256++ stream with the draws the numerics need.
#[derive(Clone, Debug)]
pub struct Stream {
    inner: Xoshiro256PlusPlus,
    cached_normal: Option<f64>,
}

/// The stream for `(seed, purpose, index)`.
pub fn stream(seed: u64, purpose: Purpose, index: u64) -> Stream {
    let mixed = seed ^ purpose.tag() ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    Stream {
        inner: Xoshiro256PlusPlus::seed_from_u64(mixed),
        cached_normal: None,
    }
}

impl Stream {
    pub fn next_u64(&mut self) -> u64 {
        self.inner.next_u64()
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.inner.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi).
    pub fn uniform_in(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Uniform integer in 0..n (Lemire's nearly-divisionless rejection, unbiased).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        let threshold = n.wrapping_neg() % n;
        loop {
            let x = self.inner.next_u64();
            let m = (x as u128) * (n as u128);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// Standard normal by the Marsaglia polar method (two draws per accepted pair).
    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.cached_normal.take() {
            return z;
        }
        loop {
            let u = 2.0 * self.uniform() - 1.0;
            let v = 2.0 * self.uniform() - 1.0;
            let s = u * u + v * v;
            if s > 0.0 && s < 1.0 {
                let f = (-2.0 * s.ln() / s).sqrt();
                self.cached_normal = Some(v * f);
                return u * f;
            }
        }
    }

    /// ±1 with probability ½ each.
    pub fn rademacher(&mut self) -> f64 {
        if self.inner.next_u64() >> 63 == 0 {
            1.0
        } else {
            -1.0
        }
    }

    /// A uniformly random permutation of 0..n (Fisher–Yates).
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.below(i as u64 + 1) as usize;
            p.swap(i, j);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<u64> = (0..4)
            .map(|_| stream(1, Purpose::Init, 0).next_u64())
            .collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(
            stream(1, Purpose::Init, 0).next_u64(),
            stream(1, Purpose::Shuffle, 0).next_u64()
        );
        assert_ne!(
            stream(1, Purpose::Chain, 0).next_u64(),
            stream(1, Purpose::Chain, 1).next_u64()
        );
    }

    #[test]
    fn permutation_is_a_permutation() {
        let mut p = stream(7, Purpose::Shuffle, 3).permutation(1000);
        p.sort_unstable();
        assert!(p.iter().enumerate().all(|(i, &x)| i == x));
    }

    #[test]
    fn normal_has_unit_moments() {
        let mut s = stream(3, Purpose::Chain, 0);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| s.normal()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        // Standard errors: 1/sqrt(n) = 0.0022 for the mean, sqrt(2/n) = 0.0032 for the variance.
        assert!(mean.abs() < 5.0 * 0.0023, "mean {mean}");
        assert!((var - 1.0).abs() < 5.0 * 0.0032, "var {var}");
    }

    #[test]
    fn below_is_uniform() {
        let mut s = stream(5, Purpose::Probe, 0);
        let mut counts = [0usize; 7];
        let n = 70_000;
        for _ in 0..n {
            counts[s.below(7) as usize] += 1;
        }
        // Each count ~ Binomial(n, 1/7): sd = sqrt(n p (1-p)) ~ 92.6.
        for c in counts {
            assert!((c as f64 - 10_000.0).abs() < 5.0 * 92.6, "{counts:?}");
        }
    }
}
