//! Analytic potentials with a known learning coefficient, to verify the samplers.
//!
//! For L(w) = ∏ᵢ wᵢ^{2kᵢ} near w* = 0 the learning coefficient is λ = minᵢ 1/(2kᵢ) with multiplicity
//! the number of i attaining it (Watanabe 2009, "Algebraic Geometry and Statistical Learning Theory",
//! §2.4 normal crossings); for L(w) = Σᵢ wᵢ² in d dimensions (regular) λ = d/2. The potential is
//! deterministic: the "minibatch" loss is L itself and its gradient exact.

use super::potential::Potential;
use crate::rng::Stream;
use crate::Result;

/// An analytic potential over d coordinates.
#[derive(Clone, Debug, PartialEq)]
pub enum AnalyticPotential {
    /// L(w) = Σᵢ wᵢ², λ = d/2.
    Quadratic { dim: usize },
    /// L(w) = ∏ᵢ wᵢ^{2kᵢ} (kᵢ ≥ 1), λ = minᵢ 1/(2kᵢ). `[1, 1]` is the normal crossing w₁²w₂².
    Monomial { powers: Vec<u32> },
}

impl AnalyticPotential {
    /// The learning coefficient λ at w* = 0 and its multiplicity.
    pub fn learning_coefficient(&self) -> (f64, usize) {
        match self {
            AnalyticPotential::Quadratic { dim } => (*dim as f64 / 2.0, 1),
            AnalyticPotential::Monomial { powers } => {
                let kmax = *powers.iter().max().expect("at least one power");
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

    /// ∂L/∂wᵢ in f64.
    pub fn gradient(&self, w: &[f64], grad: &mut [f64]) {
        match self {
            AnalyticPotential::Quadratic { .. } => {
                for (g, x) in grad.iter_mut().zip(w) {
                    *g = 2.0 * x;
                }
            }
            AnalyticPotential::Monomial { powers } => {
                for i in 0..w.len() {
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
    type ChainState = AnalyticChainState;

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
    ) -> f64 {
        for (a, &b) in s.w.iter_mut().zip(w) {
            *a = b as f64;
        }
        self.gradient(&s.w, &mut s.g);
        for (a, &b) in grad.iter_mut().zip(&s.g) {
            *a = b as f32;
        }
        self.value(&s.w)
    }
    fn minibatch_loss(&self, s: &mut AnalyticChainState, _rng: &mut Stream, w: &[f32]) -> f64 {
        for (a, &b) in s.w.iter_mut().zip(w) {
            *a = b as f64;
        }
        self.value(&s.w)
    }
    fn full_loss(&self, w: &[f32]) -> Result<f64> {
        let w: Vec<f64> = w.iter().map(|&x| x as f64).collect();
        Ok(self.value(&w))
    }
}
