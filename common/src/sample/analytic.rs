//! Analytic potentials with a known learning coefficient, to verify the samplers.
//!
//! For L(w) = ∏ᵢ wᵢ^{2kᵢ} near w* = 0 the learning coefficient is λ = minᵢ 1/(2kᵢ) with multiplicity
//! the number of i attaining it (Watanabe 2009, "Algebraic Geometry and Statistical Learning Theory",
//! §2.4 normal crossings); for L(w) = Σᵢ wᵢ² in d dimensions (regular) λ = d/2. The potential is
//! deterministic: the "minibatch" loss is L itself and its gradient exact.

use super::potential::Potential;
use crate::device::CpuBackend;
use crate::rng::Stream;
use crate::Result;

/// An analytic potential over d coordinates.
#[derive(Clone, Debug, PartialEq)]
pub enum AnalyticPotential {
    /// L(w) = Σᵢ wᵢ², λ = d/2.
    Quadratic { dim: usize },
    /// L(w) = ∏ᵢ wᵢ^{2kᵢ}, λ = minᵢ 1/(2kᵢ) over the kᵢ ≥ 1. `[1, 1]` is the normal crossing w₁²w₂².
    /// A power 0 makes its coordinate a free (flat) direction: the factor wᵢ⁰ = 1, gradient 0.
    Monomial { powers: Vec<u32> },
}

impl AnalyticPotential {
    /// The learning coefficient λ at w* = 0 and its multiplicity. Coordinates with power 0 do not
    /// enter it; with every power 0 (or none) L ≡ 1 and λ = 0 (multiplicity 1).
    pub fn learning_coefficient(&self) -> (f64, usize) {
        match self {
            AnalyticPotential::Quadratic { dim } => (*dim as f64 / 2.0, 1),
            AnalyticPotential::Monomial { powers } => {
                let kmax = powers.iter().copied().max().unwrap_or(0);
                if kmax == 0 {
                    return (0.0, 1);
                }
                let m = powers.iter().filter(|&&k| k == kmax).count();
                (1.0 / (2.0 * kmax as f64), m)
            }
        }
    }

    /// L(w) in f64.
    pub fn value(&self, w: &[f64]) -> f64 {
        match self {
            AnalyticPotential::Quadratic { .. } => w.iter().map(|x| x * x).sum(),
            AnalyticPotential::Monomial { powers } => w
                .iter()
                .zip(powers)
                .map(|(x, &k)| x.powi(2 * k as i32))
                .product(),
        }
    }

    /// ∂L/∂wᵢ = 2kᵢ·wᵢ^{2kᵢ−1}·∏_{j≠i} wⱼ^{2kⱼ} in f64; 0 where kᵢ = 0 (the factor is the constant 1:
    /// the formula's 0·wᵢ⁻¹ would be NaN at wᵢ = 0).
    pub fn gradient(&self, w: &[f64], grad: &mut [f64]) {
        match self {
            AnalyticPotential::Quadratic { .. } => {
                for (g, x) in grad.iter_mut().zip(w) {
                    *g = 2.0 * x;
                }
            }
            AnalyticPotential::Monomial { powers } => {
                for i in 0..w.len() {
                    if powers[i] == 0 {
                        grad[i] = 0.0;
                        continue;
                    }
                    let mut g = 2.0 * powers[i] as f64 * w[i].powi(2 * powers[i] as i32 - 1);
                    for j in 0..w.len() {
                        if j != i {
                            g *= w[j].powi(2 * powers[j] as i32);
                        }
                    }
                    grad[i] = g;
                }
            }
        }
    }
}

/// Buffers of a chain on an analytic potential.
pub struct AnalyticChainState {
    w: Vec<f64>,
    g: Vec<f64>,
}

impl Potential for AnalyticPotential {
    type Backend = CpuBackend;
    type ChainState = AnalyticChainState;

    fn backend(&self) -> &CpuBackend {
        &CpuBackend
    }

    fn dim(&self) -> usize {
        match self {
            AnalyticPotential::Quadratic { dim } => *dim,
            AnalyticPotential::Monomial { powers } => powers.len(),
        }
    }
    fn samples(&self) -> usize {
        1
    }
    fn batch_size(&self) -> usize {
        1
    }
    fn chain_state(&self) -> AnalyticChainState {
        AnalyticChainState {
            w: vec![0.0; self.dim()],
            g: vec![0.0; self.dim()],
        }
    }
    fn loss_and_gradient(
        &self,
        s: &mut AnalyticChainState,
        _rng: &mut Stream,
        w: &[f32],
        grad: &mut [f32],
    ) -> Result<f64> {
        for (a, &b) in s.w.iter_mut().zip(w) {
            *a = b as f64;
        }
        self.gradient(&s.w, &mut s.g);
        for (a, &b) in grad.iter_mut().zip(&s.g) {
            *a = b as f32;
        }
        Ok(self.value(&s.w))
    }
    fn minibatch_loss(
        &self,
        s: &mut AnalyticChainState,
        _rng: &mut Stream,
        w: &[f32],
    ) -> Result<f64> {
        for (a, &b) in s.w.iter_mut().zip(w) {
            *a = b as f64;
        }
        Ok(self.value(&s.w))
    }
    fn full_loss(&self, w: &[f32]) -> Result<f64> {
        let w: Vec<f64> = w.iter().map(|&x| x as f64).collect();
        Ok(self.value(&w))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ∂L/∂wᵢ against central differences of L (in f64, step 1e-5), for every power 0..=3 in each
    /// position, at w = 0, at negative and positive w and at mixed signs: finite everywhere, and a
    /// power 0 (a factor wᵢ⁰ = 1) has gradient 0 in its coordinate, also at wᵢ = 0 (0·w⁻¹ would be
    /// NaN there).
    #[test]
    fn monomial_gradients_are_finite_and_match_differences() {
        let points: [[f64; 2]; 5] = [
            [0.0, 0.0],
            [-0.7, -1.3],
            [0.4, 1.1],
            [-0.9, 0.0],
            [0.0, 0.6],
        ];
        for a in 0..=3u32 {
            for b in 0..=3u32 {
                let pot = AnalyticPotential::Monomial { powers: vec![a, b] };
                for w in &points {
                    let mut g = [0.0; 2];
                    pot.gradient(w, &mut g);
                    for i in 0..2 {
                        assert!(g[i].is_finite(), "{a},{b} at {w:?}: ∂{i} = {}", g[i]);
                        let h = 1e-5;
                        let (mut up, mut down) = (*w, *w);
                        up[i] += h;
                        down[i] -= h;
                        let fd = (pot.value(&up) - pot.value(&down)) / (2.0 * h);
                        assert!(
                            (g[i] - fd).abs() <= 1e-6 * (1.0 + fd.abs()),
                            "{a},{b} at {w:?}: ∂{i} = {} vs {fd}",
                            g[i]
                        );
                    }
                }
                // A power 0 contributes nothing to its own coordinate's gradient.
                let mut g = [1.0; 2];
                pot.gradient(&[0.0, 0.0], &mut g);
                if a == 0 {
                    assert_eq!(g[0], 0.0);
                }
                if b == 0 {
                    assert_eq!(g[1], 0.0);
                }
            }
        }
    }

    /// A chain from w* = 0 on w₁⁰·w₂² (a flat direction next to a quadratic one) stays finite.
    #[test]
    fn chain_on_a_power_zero_monomial_does_not_diverge() {
        let pot = AnalyticPotential::Monomial { powers: vec![0, 1] };
        let cfg = crate::sample::SgldConfig {
            step_size: 1e-3,
            nbeta: 10.0,
            localization: 1.0,
            weight_decay: 0.0,
            bounding_box: None,
            draws: 200,
            burn_in: 0,
            thin: 1,
            chains: 2,
            threads: 1,
            seed: 3,
        };
        for t in crate::sample::run_chains(&pot, &[0.0, 0.0], &cfg).unwrap() {
            assert_eq!(t.diverged_at, None, "chain {}", t.chain);
            assert_eq!(t.losses.len(), 200);
        }
    }

    /// Coordinates with power 0 do not enter λ: [0, 1] is w₂² (λ = 1/2, multiplicity 1); all powers 0
    /// is the constant L = 1, whose volume does not shrink (λ = 0).
    #[test]
    fn zero_powers_do_not_enter_the_learning_coefficient() {
        let lc = |p: Vec<u32>| AnalyticPotential::Monomial { powers: p }.learning_coefficient();
        assert_eq!(lc(vec![0, 1]), (0.5, 1));
        assert_eq!(lc(vec![2, 0, 2]), (0.25, 2));
        assert_eq!(lc(vec![0, 0]).0, 0.0);
    }
}
