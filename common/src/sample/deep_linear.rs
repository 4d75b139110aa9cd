//! The population loss of a deep linear network, a potential whose learning coefficient is known in
//! closed form ([`super::theory::deep_linear_network`]), to verify the sampler on a singular model
//! with many parameters (devinterp's and Lau et al.'s deep-linear-network check).
//!
//! The network is x ↦ W_L ⋯ W_1·x, weights `[H_ℓ, H_{ℓ−1}]` as `nn.Linear(…, bias=False)` stores
//! them, flattened in layer order. With inputs of second moment E[x·xᵀ] = σ²·I (x ~ U(−a, a)ᴺ has
//! σ² = a²/3) and targets y = P*·x (+ noise, which adds a constant), PyTorch's `F.mse_loss`
//! (the mean over the M outputs) has the expectation
//!
//! L(w) = (σ²/M)·‖Q‖²_F,  Q = W_L ⋯ W_1 − P*,
//!
//! (+ the noise variance) with gradient ∂L/∂W_ℓ = (2σ²/M)·A_ℓᵀ·Q·B_ℓᵀ, where A_ℓ = W_L ⋯ W_{ℓ+1} and
//! B_ℓ = W_{ℓ−1} ⋯ W_1 (identities at the ends). Being the population loss it is deterministic: the
//! "minibatch" loss is L itself and its gradient exact, so a chain's λ̂ measures the sampler alone.

use super::potential::Potential;
use crate::device::CpuBackend;
use crate::rng::Stream;
use crate::{Error, Result};

/// A deep linear network's population MSE around a true product P*.
#[derive(Clone, Debug, PartialEq)]
pub struct DeepLinearPotential {
    /// `[N, H₁, …, M]`, input to output.
    widths: Vec<usize>,
    /// P*, `M × N` row-major.
    target: Vec<f64>,
    /// σ², the inputs' second moment per coordinate.
    input_second_moment: f64,
}

/// C (m×n) = A (m×k) · B (k×n), row-major, in f64.
fn matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for p in 0..k {
            let aip = a[i * k + p];
            for j in 0..n {
                c[i * n + j] += aip * b[p * n + j];
            }
        }
    }
    c
}

/// The `rows × rows` identity.
fn identity(rows: usize) -> Vec<f64> {
    let mut e = vec![0.0; rows * rows];
    for i in 0..rows {
        e[i * rows + i] = 1.0;
    }
    e
}

/// The weights of layer ℓ (1-based) of a network of `widths` within the flat vector `w`.
fn layer<'w>(widths: &[usize], w: &'w [f64], l: usize) -> &'w [f64] {
    let start: usize = widths.windows(2).take(l - 1).map(|p| p[0] * p[1]).sum();
    &w[start..start + widths[l] * widths[l - 1]]
}

/// W_hi ⋯ W_{lo+1} (`H_hi × H_lo`, row-major) of a network of `widths` with flat weights `w`
/// (layers in order, each `[H_ℓ, H_{ℓ−1}]`); the identity when hi = lo. With lo = 0 and
/// hi = L it is the end-to-end matrix x ↦ W_L ⋯ W_1·x.
pub(crate) fn product(widths: &[usize], w: &[f64], lo: usize, hi: usize) -> Vec<f64> {
    let mut p = identity(widths[lo]);
    for l in lo + 1..=hi {
        p = matmul(
            layer(widths, w, l),
            &p,
            widths[l],
            widths[l - 1],
            widths[lo],
        );
    }
    p
}

impl DeepLinearPotential {
    /// The potential of a network of `widths` around the product of `w_star`'s layers, for inputs of
    /// second moment `input_second_moment` per coordinate.
    ///
    /// # Errors
    /// Fewer than two widths, a zero width, a `w_star` of the wrong length, or a second moment that is
    /// not positive and finite.
    pub fn new(widths: &[usize], w_star: &[f64], input_second_moment: f64) -> Result<Self> {
        if widths.len() < 2 || widths.contains(&0) {
            return Err(Error::invalid(format!(
                "deep linear network widths {widths:?}: need at least two, none 0"
            )));
        }
        if !(input_second_moment.is_finite() && input_second_moment > 0.0) {
            return Err(Error::invalid(format!(
                "deep linear network: input second moment {input_second_moment} must be positive"
            )));
        }
        let mut pot = DeepLinearPotential {
            widths: widths.to_vec(),
            target: Vec::new(),
            input_second_moment,
        };
        if w_star.len() != pot.dim() {
            return Err(Error::invalid(format!(
                "deep linear network widths {widths:?} have {} weights, w* has {}",
                pot.dim(),
                w_star.len()
            )));
        }
        pot.target = pot.product(w_star, 0, widths.len() - 1);
        Ok(pot)
    }

    /// W_hi ⋯ W_{lo+1} (`H_hi × H_lo`); the identity when hi = lo.
    fn product(&self, w: &[f64], lo: usize, hi: usize) -> Vec<f64> {
        product(&self.widths, w, lo, hi)
    }

    /// Q = W_L ⋯ W_1 − P*.
    fn residual(&self, w: &[f64]) -> Vec<f64> {
        let mut q = self.product(w, 0, self.widths.len() - 1);
        q.iter_mut().zip(&self.target).for_each(|(q, t)| *q -= t);
        q
    }

    fn outputs(&self) -> usize {
        *self.widths.last().expect("at least two widths")
    }

    /// L(w) = (σ²/M)·‖Q‖²_F in f64.
    pub fn value(&self, w: &[f64]) -> f64 {
        let q = self.residual(w);
        self.input_second_moment / self.outputs() as f64 * q.iter().map(|v| v * v).sum::<f64>()
    }

    /// ∂L/∂W_ℓ = (2σ²/M)·A_ℓᵀ·Q·B_ℓᵀ for every layer, into `grad` (length [`Potential::dim`]).
    pub fn gradient(&self, w: &[f64], grad: &mut [f64]) {
        let depth = self.widths.len() - 1;
        let q = self.residual(w);
        let (n, m) = (self.widths[0], self.outputs());
        let c = 2.0 * self.input_second_moment / m as f64;
        let mut offset = 0;
        for l in 1..=depth {
            let (rows, cols) = (self.widths[l], self.widths[l - 1]);
            let a = self.product(w, l, depth); // M × H_l
            let b = self.product(w, 0, l - 1); // H_{l−1} × N
                                               // Aᵀ·Q: H_l × N.
            let mut atq = vec![0.0; rows * n];
            for i in 0..m {
                for r in 0..rows {
                    let air = a[i * rows + r];
                    for j in 0..n {
                        atq[r * n + j] += air * q[i * n + j];
                    }
                }
            }
            // (Aᵀ·Q)·Bᵀ: H_l × H_{l−1}.
            let g = &mut grad[offset..offset + rows * cols];
            for r in 0..rows {
                for s in 0..cols {
                    let dot: f64 = (0..n).map(|j| atq[r * n + j] * b[s * n + j]).sum();
                    g[r * cols + s] = c * dot;
                }
            }
            offset += rows * cols;
        }
    }
}

/// A chain's f64 copies of its weights and gradient.
pub struct DeepLinearChainState {
    w: Vec<f64>,
    g: Vec<f64>,
}

impl Potential for DeepLinearPotential {
    type Backend = CpuBackend;
    type ChainState = DeepLinearChainState;

    fn backend(&self) -> &CpuBackend {
        &CpuBackend
    }

    fn dim(&self) -> usize {
        self.widths.windows(2).map(|p| p[0] * p[1]).sum()
    }
    fn samples(&self) -> usize {
        1
    }
    fn batch_size(&self) -> usize {
        1
    }
    fn chain_state(&self) -> DeepLinearChainState {
        DeepLinearChainState {
            w: vec![0.0; self.dim()],
            g: vec![0.0; self.dim()],
        }
    }
    fn loss_and_gradient(
        &self,
        s: &mut DeepLinearChainState,
        _rng: &mut Stream,
        w: &[f32],
        grad: &mut [f32],
    ) -> Result<f64> {
        s.w.iter_mut().zip(w).for_each(|(a, &b)| *a = b as f64);
        self.gradient(&s.w, &mut s.g);
        grad.iter_mut().zip(&s.g).for_each(|(a, &b)| *a = b as f32);
        Ok(self.value(&s.w))
    }
    fn minibatch_loss(
        &self,
        s: &mut DeepLinearChainState,
        _rng: &mut Stream,
        w: &[f32],
    ) -> Result<f64> {
        s.w.iter_mut().zip(w).for_each(|(a, &b)| *a = b as f64);
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
    use crate::rng::{stream, Purpose};

    fn random(n: usize, seed: u64) -> Vec<f64> {
        let mut rng = stream(seed, Purpose::Init, 0);
        (0..n).map(|_| rng.normal()).collect()
    }

    /// The gradient against central differences of the loss (f64, step 1e-6), for three depths, at
    /// a point away from w* (so every factor of the chain rule is exercised).
    #[test]
    fn gradient_matches_central_differences() {
        for widths in [vec![3, 2], vec![3, 4, 2], vec![2, 3, 4, 3]] {
            let d: usize = widths.windows(2).map(|p| p[0] * p[1]).sum();
            let pot = DeepLinearPotential::new(&widths, &random(d, 1), 100.0 / 3.0).unwrap();
            let w = random(d, 2);
            let mut g = vec![0.0; d];
            pot.gradient(&w, &mut g);
            for i in 0..d {
                let h = 1e-6;
                let (mut up, mut down) = (w.clone(), w.clone());
                up[i] += h;
                down[i] -= h;
                let fd = (pot.value(&up) - pot.value(&down)) / (2.0 * h);
                assert!(
                    (g[i] - fd).abs() <= 1e-6 * (1.0 + fd.abs()),
                    "{widths:?} ∂{i}: {} vs {fd}",
                    g[i]
                );
            }
        }
    }

    /// L(w*) = 0, L ≥ 0, and the loss is the mean over outputs of E[(Q·x)²] for x ~ U(−10, 10)ᴺ:
    /// checked against a Monte Carlo average over 200,000 inputs (relative error ≈ 0.3%).
    #[test]
    fn loss_is_the_population_mse() {
        let widths = [3, 4, 2];
        let w_star = random(20, 3);
        let pot = DeepLinearPotential::new(&widths, &w_star, 100.0 / 3.0).unwrap();
        assert_eq!(pot.value(&w_star), 0.0);
        let w = random(20, 4);
        let q = pot.residual(&w);
        let mut rng = stream(5, Purpose::Init, 1);
        let draws = 200_000;
        let mut sum = 0.0;
        for _ in 0..draws {
            let x: Vec<f64> = (0..3).map(|_| 20.0 * rng.uniform() - 10.0).collect();
            for i in 0..2 {
                let e: f64 = (0..3).map(|j| q[i * 3 + j] * x[j]).sum();
                sum += e * e / 2.0;
            }
        }
        let mc = sum / draws as f64;
        let exact = pot.value(&w);
        assert!((mc - exact).abs() < 0.01 * exact, "MC {mc} vs {exact}");
    }

    #[test]
    fn bad_shapes_are_refused() {
        assert!(DeepLinearPotential::new(&[3], &[], 1.0).is_err());
        assert!(DeepLinearPotential::new(&[3, 0, 2], &[], 1.0).is_err());
        let err = DeepLinearPotential::new(&[3, 2], &[0.0; 5], 1.0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("have 6 weights, w* has 5"), "{err}");
        assert!(DeepLinearPotential::new(&[3, 2], &[0.0; 6], 0.0).is_err());
    }
}
