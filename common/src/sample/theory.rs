//! Learning coefficients known in closed form, to set beside λ̂.
//!
//! - [`reduced_rank_regression`]: the two-layer linear network x ↦ B·A·x (Aoyagi & Watanabe 2005,
//!   "Stochastic complexities of reduced rank regression in Bayesian estimation", Neural Networks
//!   18(7), Theorem 1).
//! - [`deep_linear_network`]: the L-layer linear network x ↦ W_L ⋯ W_1·x (Aoyagi 2024, "Consideration
//!   on the learning efficiency of multiple-layered neural networks with linear units", Neural
//!   Networks 172, Theorem 1; the form devinterp's and Lau et al.'s DLN experiments use).
//!
//! Both are the real log canonical threshold λ and its multiplicity m of the model at a true
//! parameter whose end-to-end matrix has rank r, for a regression with Gaussian noise and inputs
//! whose covariance is positive definite (the formulas do not depend on the input distribution or the
//! noise variance). Widths are given from input to output: `[N, H₁, …, H_{L−1}, M]`, so layer ℓ's
//! weight is `H_ℓ × H_{ℓ−1}` as `nn.Linear(H_{ℓ−1}, H_ℓ, bias=False)` stores it.

use crate::model::{Layer, Network};
use crate::{Error, Result};
use serde_json::{json, Value};

/// A learning coefficient λ with its multiplicity m (the order of the pole of the zeta function).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LearningCoefficient {
    pub lambda: f64,
    pub multiplicity: usize,
}

fn check_rank(widths: &[usize], rank: usize) -> Result<()> {
    if let Some(i) = widths.iter().position(|&w| w == 0) {
        return Err(Error::invalid(format!(
            "linear network widths {widths:?}: width {i} is 0"
        )));
    }
    let narrowest = widths.iter().copied().min().unwrap_or(0);
    if rank > narrowest {
        return Err(Error::invalid(format!(
            "linear network widths {widths:?}: the true rank {rank} exceeds the narrowest width \
             {narrowest}, so no parameter of the model has it"
        )));
    }
    Ok(())
}

/// λ and m of reduced rank regression: x ∈ ℝᴺ ↦ B·A·x with A `H × N`, B `M × H`, at a true
/// parameter whose product B₀A₀ has rank r ≤ min(N, H, M) (Aoyagi & Watanabe 2005, Theorem 1):
///
/// 1. If N + r ≤ M + H, M + r ≤ N + H and H + r ≤ M + N:
///    λ = [2(H + r)(M + N) − (M − N)² − (H + r)²] / 8 with m = 1 when M + H + N + r is even, and
///    λ = [2(H + r)(M + N) − (M − N)² − (H + r)² + 1] / 8 with m = 2 when it is odd;
/// 2. if M + H < N + r: λ = (HM − Hr + Nr)/2, m = 1;
/// 3. if N + H < M + r: λ = (HN − Hr + Mr)/2, m = 1;
/// 4. if M + N < H + r: λ = MN/2, m = 1 (the hidden layer is wider than the map needs).
///
/// # Errors
/// A zero width, or a rank above the narrowest width.
pub fn reduced_rank_regression(
    input: usize,
    hidden: usize,
    output: usize,
    rank: usize,
) -> Result<LearningCoefficient> {
    check_rank(&[input, hidden, output], rank)?;
    let (n, h, m, r) = (input as i64, hidden as i64, output as i64, rank as i64);
    let (lambda2, mult) = if n + r <= m + h && m + r <= n + h && h + r <= m + n {
        // Twice λ·4 keeps the arithmetic in integers: 8λ = 2(H+r)(M+N) − (M−N)² − (H+r)² (+1).
        let eight = 2 * (h + r) * (m + n) - (m - n).pow(2) - (h + r).pow(2);
        if (m + h + n + r) % 2 == 0 {
            (eight as f64 / 4.0, 1)
        } else {
            ((eight + 1) as f64 / 4.0, 2)
        }
    } else if m + h < n + r {
        ((h * m - h * r + n * r) as f64, 1)
    } else if n + h < m + r {
        ((h * n - h * r + m * r) as f64, 1)
    } else {
        ((m * n) as f64, 1)
    };
    Ok(LearningCoefficient {
        lambda: lambda2 / 2.0,
        multiplicity: mult,
    })
}

/// λ and m of a deep linear network x ∈ ℝ^{H₁} ↦ W_L ⋯ W_1·x, widths `[H₁, …, H_{L+1}]` from
/// input to output, at a true parameter whose product has rank r (Aoyagi 2024, Theorem 1).
///
/// With Mⱼ = Hⱼ − r (j = 1, …, L + 1) there is a subset S of the indices, of size ℓ + 1, with
/// max_{σ∈S} M_σ < min_{k∉S} M_k, Σ_{σ∈S} M_σ ≥ ℓ·max_{σ∈S} M_σ and Σ_{σ∈S} M_σ < ℓ·min_{k∉S} M_k
/// (a condition on the complement holds when it is empty). It is found among the sets of the
/// smallest Mⱼ (a set with a larger M inside and a smaller one outside breaks the first condition).
/// With M̄ = ⌈Σ_S M_σ / ℓ⌉ and a = Σ_S M_σ − (M̄ − 1)·ℓ:
///
/// λ = [−r² + r(H₁ + H_{L+1})]/2 + a(ℓ − a)/(4ℓ) − ℓ(ℓ − 1)/4·(Σ_S M_σ/ℓ)² + ½·Σ_{σ<σ′ ∈ S} M_σ·M_σ′,
/// m = a(ℓ − a) + 1.
///
/// One layer (`widths` of length 2) is a regular model: λ = H₁·H₂/2, m = 1. For two layers this is
/// [`reduced_rank_regression`] (tested on every small case).
///
/// # Errors
/// Fewer than two widths, a zero width, or a rank above the narrowest width.
pub fn deep_linear_network(widths: &[usize], rank: usize) -> Result<LearningCoefficient> {
    if widths.len() < 2 {
        return Err(Error::invalid(format!(
            "linear network widths {widths:?}: need an input and an output width"
        )));
    }
    check_rank(widths, rank)?;
    if widths.len() == 2 {
        return Ok(LearningCoefficient {
            lambda: (widths[0] * widths[1]) as f64 / 2.0,
            multiplicity: 1,
        });
    }
    let r = rank as f64;
    let mut m: Vec<i64> = widths.iter().map(|&h| (h - rank) as i64).collect();
    m.sort_unstable();
    // S is the ℓ + 1 smallest Mⱼ for the first ℓ ≥ 1 that meets the conditions. Ties across the
    // boundary (M_σ = M_k) break the strict first condition, so only sizes at a change of value can
    // qualify; the theorem guarantees one does.
    let subset = (2..=m.len())
        .map(|size| &m[..size])
        .find(|s| {
            let ell = s.len() as i64 - 1;
            let sum: i64 = s.iter().sum();
            let max = *s.last().expect("non-empty");
            let rest = &m[s.len()..];
            let below = rest.first().is_none_or(|&k| max < k);
            let balanced = sum >= ell * max;
            let small = rest.first().is_none_or(|&k| sum < ell * k);
            below && balanced && small
        })
        .ok_or_else(|| {
            Error::invalid(format!(
                "linear network widths {widths:?}, rank {rank}: no index set meets Aoyagi's \
                 conditions (this contradicts the theorem; please report it)"
            ))
        })?;
    let ell = subset.len() as i64 - 1;
    let sum: i64 = subset.iter().sum();
    // M̄ = ⌈sum/ℓ⌉ in integers (sum ≥ 0, ℓ ≥ 1).
    let mbar = (sum + ell - 1) / ell;
    let a = sum - (mbar - 1) * ell;
    let pairs: i64 = (0..subset.len())
        .flat_map(|i| (i + 1..subset.len()).map(move |j| (i, j)))
        .map(|(i, j)| subset[i] * subset[j])
        .sum();
    let (h_in, h_out) = (widths[0] as f64, widths[widths.len() - 1] as f64);
    let (ell_f, sum_f, a_f) = (ell as f64, sum as f64, a as f64);
    let lambda = (-r * r + r * (h_in + h_out)) / 2.0 + a_f * (ell_f - a_f) / (4.0 * ell_f)
        - ell_f * (ell_f - 1.0) / 4.0 * (sum_f / ell_f).powi(2)
        + pairs as f64 / 2.0;
    Ok(LearningCoefficient {
        lambda,
        multiplicity: (a * (ell - a) + 1) as usize,
    })
}

/// A network that is a deep linear network at given weights: its widths (input to output) and the
/// numerical rank of W_L ⋯ W_1.
#[derive(Clone, Debug, PartialEq)]
pub struct DeepLinearStructure {
    pub widths: Vec<usize>,
    pub rank: usize,
    /// The singular values of the product, descending.
    pub singular_values: Vec<f64>,
    /// Singular values at or below it count as zero: σ_max · max(M, N) · ε_f32 (NumPy's
    /// `matrix_rank` rule for float32 weights).
    pub tolerance: f64,
}

impl DeepLinearStructure {
    /// The widths and rank of `net` at `params` when every layer is a `Linear` without bias (a
    /// deep linear network); `None` otherwise. The rank is read from the singular values of the
    /// product in f64 (the eigenvalues of PᵀP).
    pub fn of(net: &Network, params: &[f32]) -> Option<Self> {
        let mut widths = Vec::new();
        let mut weights = Vec::new();
        for layer in &net.layers {
            match layer {
                Layer::Linear(l) if !l.has_bias() => {
                    if widths.is_empty() {
                        widths.push(l.inputs);
                    }
                    widths.push(l.outputs);
                    weights.push(net.layout.tensors[l.weight].range());
                }
                _ => return None,
            }
        }
        if weights.is_empty() || params.len() != net.num_params() {
            return None;
        }
        // P = W_L ⋯ W_1 (M × N) in f64, and the eigenvalues of PᵀP (ascending).
        let w: Vec<f64> = weights
            .iter()
            .flat_map(|r| params[r.clone()].iter().map(|&v| v as f64))
            .collect();
        let p = super::deep_linear::product(&widths, &w, 0, widths.len() - 1);
        let (n, m) = (widths[0], *widths.last().expect("at least one layer"));
        let (values, _) = crate::optim::gram_eigen(&p, m, n).ok()?;
        let mut singular_values: Vec<f64> = values.iter().map(|&v| v.max(0.0).sqrt()).collect();
        singular_values.reverse();
        let tolerance = singular_values[0] * m.max(n) as f64 * f32::EPSILON as f64;
        let rank = singular_values.iter().filter(|&&s| s > tolerance).count();
        Some(DeepLinearStructure {
            widths,
            rank,
            singular_values,
            tolerance,
        })
    }

    /// Aoyagi's λ for these widths and rank, as the record's `theory` object: what λ̂ estimates when
    /// the weights are a true parameter (the data realisable by them).
    pub fn theory(&self) -> Result<Value> {
        let lc = deep_linear_network(&self.widths, self.rank)?;
        Ok(json!({
            "model": "deep linear network",
            "widths": self.widths,
            "rank": self.rank,
            "rank_tolerance": self.tolerance,
            "lambda": lc.lambda,
            "multiplicity": lc.multiplicity,
            "formula": "Aoyagi 2024, Neural Networks 172 (Theorem 1)",
            "assumes": "the checkpoint is a true parameter: the data are realisable by it (a teacher's own weights)",
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The deep formula with two layers is Aoyagi & Watanabe's reduced rank regression, on every
    /// case with widths 1..=7 and every admissible rank (an independent derivation of the same λ).
    #[test]
    fn two_layers_agree_with_reduced_rank_regression_on_every_small_case() {
        let mut cases = 0;
        for n in 1..=7 {
            for h in 1..=7 {
                for m in 1..=7 {
                    for r in 0..=n.min(h).min(m) {
                        let rrr = reduced_rank_regression(n, h, m, r).unwrap();
                        let dln = deep_linear_network(&[n, h, m], r).unwrap();
                        assert!(
                            (rrr.lambda - dln.lambda).abs() < 1e-12,
                            "N={n} H={h} M={m} r={r}: RRR {rrr:?}, DLN {dln:?}"
                        );
                        assert_eq!(
                            rrr.multiplicity, dln.multiplicity,
                            "N={n} H={h} M={m} r={r}"
                        );
                        cases += 1;
                    }
                }
            }
        }
        assert!(cases > 1000);
    }

    /// Cases worked by hand. A hidden layer at least as wide as the map it carries is free: the
    /// model is then regular in the product, λ = (number of entries of the rank-r matrices)/2 —
    /// for r = min(N, M) and H ≥ N + M that is MN/2 (case 4). A one-unit bottleneck at r = 1:
    /// B·A = b·aᵀ has N + M − 1 free directions, λ = (N + M − 1)/2 (case 1 with H = r = 1). And
    /// with r = 0 and N = H = M = 1, x ↦ b·a·x at b·a = 0 is the normal crossing a²b² of
    /// [`super::super::AnalyticPotential`]: λ = 1/2, m = 2.
    #[test]
    fn hand_worked_cases() {
        let rrr = |n, h, m, r| reduced_rank_regression(n, h, m, r).unwrap();
        assert_eq!(rrr(3, 9, 4, 3).lambda, 6.0);
        assert_eq!(rrr(3, 1, 4, 1).lambda, 3.0);
        assert_eq!(rrr(5, 1, 2, 1).lambda, 3.0);
        assert_eq!(
            rrr(1, 1, 1, 0),
            LearningCoefficient {
                lambda: 0.5,
                multiplicity: 2
            }
        );
        // Full rank through square layers: near an invertible product, W ↦ W₃W₂W₁ is a submersion
        // onto the N×N matrices, so its fibres are smooth and λ = N²/2 (one layer's worth), m = 1.
        for n in 1..=5 {
            let lc = deep_linear_network(&[n, n, n, n], n).unwrap();
            assert!(
                (lc.lambda - (n * n) as f64 / 2.0).abs() < 1e-12,
                "{n}: {lc:?}"
            );
            assert_eq!(lc.multiplicity, 1);
        }
        // A single layer is regular.
        assert_eq!(deep_linear_network(&[4, 3], 2).unwrap().lambda, 6.0);
    }

    /// λ is symmetric under reversing the network (x ↦ Wᵀ… is the transposed model, with the same
    /// zeta function), and it never exceeds half the parameter count (d/2 bounds λ).
    #[test]
    fn reversal_symmetry_and_the_regular_bound() {
        let cases: &[(&[usize], usize)] = &[
            (&[5, 5, 5], 2),
            (&[10, 10, 10, 10], 5),
            (&[8, 12, 6, 10], 3),
            (&[10, 20, 20, 10], 5),
            (&[3, 7, 2, 9, 4], 1),
            (&[6, 2, 6, 2, 6], 0),
        ];
        for &(w, r) in cases {
            let fwd = deep_linear_network(w, r).unwrap();
            let rev: Vec<usize> = w.iter().rev().copied().collect();
            let bwd = deep_linear_network(&rev, r).unwrap();
            assert!((fwd.lambda - bwd.lambda).abs() < 1e-12, "{w:?} r={r}");
            let d: usize = w.windows(2).map(|p| p[0] * p[1]).sum();
            assert!(
                fwd.lambda <= d as f64 / 2.0 + 1e-12,
                "{w:?}: {fwd:?} vs d/2 {}",
                d / 2
            );
            assert!(fwd.lambda > 0.0);
        }
    }

    /// Values of the four deep cases, each computed by hand from the theorem (S, ℓ, a shown).
    #[test]
    fn the_four_deep_cases() {
        // [5,5,5], r = 2: M = (3,3,3); ℓ = 2, sum 9 ≥ 2·3; S = all. M̄ = ⌈9/2⌉ = 5, a = 9 − 8 = 1.
        // λ = (−4 + 2·10)/2 + 1·1/8 − 2·1/4·(9/2)² + ½(9+9+9) = 8 + 0.125 − 10.125 + 13.5 = 11.5.
        let lc = deep_linear_network(&[5, 5, 5], 2).unwrap();
        assert!((lc.lambda - 11.5).abs() < 1e-12, "{lc:?}");
        assert_eq!(lc.multiplicity, 2);
        // [10,20,20,10], r = 5: M = (5,15,15,5) sorted (5,5,15,15). Size 2: ℓ = 1, sum 10 ≥ 5,
        // 10 < 15 → S = {5, 5}. M̄ = 10, a = 10 − 9 = 1, ℓ − a = 0.
        // λ = (−25 + 5·20)/2 + 0 − 0 + ½·25 = 37.5 + 12.5 = 50.
        let lc = deep_linear_network(&[10, 20, 20, 10], 5).unwrap();
        assert!((lc.lambda - 50.0).abs() < 1e-12, "{lc:?}");
        assert_eq!(lc.multiplicity, 1);
    }

    #[test]
    fn impossible_ranks_and_widths_are_refused() {
        let err = deep_linear_network(&[5, 2, 5], 3).unwrap_err().to_string();
        assert!(
            err.contains("rank 3 exceeds the narrowest width 2"),
            "{err}"
        );
        assert!(deep_linear_network(&[5], 0).is_err());
        assert!(deep_linear_network(&[5, 0, 5], 0).is_err());
        assert!(reduced_rank_regression(2, 2, 2, 3).is_err());
    }

    /// The structure of a bias-free linear spec at a rank-2 teacher: widths, rank 2 from the
    /// singular values, and λ = 11.5; a network with a bias or a nonlinearity is not one.
    #[test]
    fn deep_linear_structure_reads_widths_and_rank() {
        use crate::model::{Activation, Architecture, NetSpec, Network};
        let spec = serde_json::json!({"input": [5], "layers": [
            {"type": "linear", "out": 5, "bias": false},
            {"type": "linear", "out": 5, "bias": false}], "loss": "mse"});
        let net = Network::new(Architecture::Spec(Box::new(
            NetSpec::from_json("dln", &spec).unwrap(),
        )));
        let mut params: Vec<f32> = crate::model::initialise(&net, 3);
        // First weight u₁v₁ᵀ + u₂v₂ᵀ (rank 2); the second is the random initialisation.
        for r in 0..5 {
            for c in 0..5 {
                let (r, c) = (r as f32, c as f32);
                params[(r * 5.0 + c) as usize] =
                    0.1 * (r + 1.0) * (c - 2.0) + 0.2 * (r % 2.0) * c * c;
            }
        }
        let s = DeepLinearStructure::of(&net, &params).unwrap();
        assert_eq!(s.widths, vec![5, 5, 5]);
        assert_eq!(s.rank, 2, "{:?}", s.singular_values);
        assert_eq!(s.theory().unwrap()["lambda"], 11.5);
        let mlp = Network::new(Architecture::mlp(vec![4], Activation::Identity));
        let p: Vec<f32> = crate::model::initialise(&mlp, 1);
        assert!(DeepLinearStructure::of(&mlp, &p).is_none());
    }
}
