//! Restricted λ̂: sampling only some of a model's tensors, the rest held at w* (devinterp's
//! `optimize_over`, the "weight-restricted" LLC of Wang et al. 2024, "Differentiation and
//! specialization of attention heads via the refined local learning coefficient").
//!
//! A [`Restricted`] potential is the inner potential as a function of the selected coordinates u
//! alone, L(u) = L_inner(w*[free ← u]): its gradient is the inner gradient's selected block. SGLD on
//! it moves only those coordinates, with the localisation γ·(u − u*) over them, which is what
//! devinterp does when the optimiser is given a subset of the parameters (the others get no update
//! and no noise). λ̂ = nβ·(E[L] − L(w*)) is then the restricted learning coefficient.

use super::potential::{PView, PViewMut, Potential};
use crate::device::Backend;
use crate::model::ParamLayout;
use crate::rng::Stream;
use crate::{Error, Result};
use std::ops::Range;

/// Whether `name` matches the shell-style `pattern`: `*` any run of characters (dots included), `?`
/// any one character, everything else itself.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Iterative matching with one backtrack point (the last `*`): linear in practice, never
    // exponential.
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some((i, j));
            i += 1;
        } else if let Some((si, sj)) = star {
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

/// The tensors of `layout` that `patterns` select, in layout order.
///
/// # Errors
/// No pattern, an empty pattern, or a pattern that matches no tensor (the message lists the names).
pub fn select_tensors(layout: &ParamLayout, patterns: &[String]) -> Result<Vec<usize>> {
    if patterns.is_empty() {
        return Err(Error::invalid("--only: no tensor name given"));
    }
    for p in patterns {
        if p.is_empty() {
            return Err(Error::invalid("--only: an empty tensor name"));
        }
        if !layout.tensors.iter().any(|t| glob_match(p, &t.name)) {
            let names = layout.names();
            let shown = if names.len() > 40 {
                format!("{}, … ({} in all)", names[..40].join(", "), names.len())
            } else {
                names.join(", ")
            };
            return Err(Error::invalid(format!(
                "--only {p}: no tensor of the model matches (its tensors: {shown})"
            )));
        }
    }
    Ok((0..layout.tensors.len())
        .filter(|&i| {
            patterns
                .iter()
                .any(|p| glob_match(p, &layout.tensors[i].name))
        })
        .collect())
}

/// A potential over the coordinates of some tensors, the others fixed at w*.
pub struct Restricted<'a, P> {
    inner: &'a P,
    /// The full w*, f32 as the chains hold it.
    w_star: Vec<f32>,
    /// The selected blocks of the flat vector, in order.
    free: Vec<Range<usize>>,
    dim: usize,
}

/// A chain's inner state and the full-length weights and gradient it scatters into (on the
/// inner potential's backend `B`).
pub struct RestrictedChainState<S, B: Backend> {
    inner: S,
    w: B::Buffer<f32>,
    grad: B::Buffer<f32>,
}

impl<'a, P: Potential> Restricted<'a, P> {
    /// `inner` restricted to the tensors `tensors` of `layout` (indices, e.g. from
    /// [`select_tensors`]), around `w_star`.
    ///
    /// # Errors
    /// A `w_star` or layout that does not match the potential's dimension, or no tensor selected.
    pub fn new(
        inner: &'a P,
        layout: &ParamLayout,
        tensors: &[usize],
        w_star: &[f32],
    ) -> Result<Self> {
        if w_star.len() != inner.dim() || layout.total() != inner.dim() {
            return Err(Error::invalid(format!(
                "restricted potential: w* has {} values and the layout {}, the potential {}",
                w_star.len(),
                layout.total(),
                inner.dim()
            )));
        }
        let free: Vec<Range<usize>> = tensors
            .iter()
            .filter_map(|&i| layout.tensors.get(i).map(|t| t.range()))
            .collect();
        let dim = free.iter().map(|r| r.len()).sum();
        if dim == 0 {
            return Err(Error::invalid(
                "restricted potential: the selected tensors have no parameters",
            ));
        }
        Ok(Restricted {
            inner,
            w_star: w_star.to_vec(),
            free,
            dim,
        })
    }

    /// The selected coordinates of a full vector (u* = `gather(w*)`).
    pub fn gather(&self, full: &[f32]) -> Vec<f32> {
        self.free
            .iter()
            .flat_map(|r| full[r.clone()].iter().copied())
            .collect()
    }

    /// Writes `u` into the selected blocks of `full` (host vectors).
    fn scatter_host(&self, u: &[f32], full: &mut [f32]) {
        let mut at = 0;
        for r in &self.free {
            full[r.clone()].copy_from_slice(&u[at..at + r.len()]);
            at += r.len();
        }
    }

    /// Writes `u` into the selected blocks of `full` on the backend.
    fn scatter(&self, u: PView<'_, P>, full: &mut <P::Backend as Backend>::Buffer<f32>) {
        let be = self.inner.backend();
        let mut at = 0;
        for r in &self.free {
            let dst = <P::Backend as Backend>::slice_mut(
                <P::Backend as Backend>::view_mut(full),
                r.clone(),
            );
            be.copy(<P::Backend as Backend>::slice(u, at..at + r.len()), dst);
            at += r.len();
        }
    }
}

impl<P: Potential> Potential for Restricted<'_, P> {
    type Backend = P::Backend;
    type ChainState = RestrictedChainState<P::ChainState, P::Backend>;

    fn backend(&self) -> &P::Backend {
        self.inner.backend()
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn samples(&self) -> usize {
        self.inner.samples()
    }
    fn batch_size(&self) -> usize {
        self.inner.batch_size()
    }
    fn chain_state(&self) -> Self::ChainState {
        let be = self.inner.backend();
        RestrictedChainState {
            inner: self.inner.chain_state(),
            w: be.upload(&self.w_star),
            grad: be.zeros(self.w_star.len()),
        }
    }
    fn recycle(&self, state: Self::ChainState) {
        self.inner.recycle(state.inner);
    }
    fn loss_and_gradient(
        &self,
        s: &mut Self::ChainState,
        rng: &mut Stream,
        u: PView<'_, Self>,
        mut grad: PViewMut<'_, Self>,
    ) -> Result<f64> {
        type B<P> = <P as Potential>::Backend;
        self.scatter(u, &mut s.w);
        let loss = self.inner.loss_and_gradient(
            &mut s.inner,
            rng,
            B::<P>::view(&s.w),
            B::<P>::view_mut(&mut s.grad),
        )?;
        let be = self.inner.backend();
        let mut at = 0;
        for r in &self.free {
            be.copy(
                B::<P>::slice(B::<P>::view(&s.grad), r.clone()),
                B::<P>::slice_mut(B::<P>::reborrow(&mut grad), at..at + r.len()),
            );
            at += r.len();
        }
        Ok(loss)
    }
    fn minibatch_loss(
        &self,
        s: &mut Self::ChainState,
        rng: &mut Stream,
        u: PView<'_, Self>,
    ) -> Result<f64> {
        self.scatter(u, &mut s.w);
        self.inner
            .minibatch_loss(&mut s.inner, rng, <P::Backend as Backend>::view(&s.w))
    }
    fn full_loss(&self, u: &[f32]) -> Result<f64> {
        let mut w = self.w_star.clone();
        self.scatter_host(u, &mut w);
        self.inner.full_loss(&w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Init, TensorSpec};
    use crate::sample::{run_chains, AnalyticPotential, SgldConfig};

    #[test]
    fn globs_match_like_a_shell() {
        assert!(glob_match("fc_1.weight", "fc_1.weight"));
        assert!(glob_match("fc_*", "fc_1.weight"));
        assert!(glob_match("*.bias", "conv1.0.bias"));
        assert!(glob_match("?.weight", "1.weight"));
        assert!(!glob_match("?.weight", "13.weight"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(!glob_match("fc_1", "fc_1.weight"));
        // Many stars against a long name stay fast (no exponential backtracking).
        let long = "a".repeat(5000);
        assert!(!glob_match(&format!("{}b", "*a".repeat(50)), &long));
    }

    fn layout(shapes: &[(&str, usize)]) -> ParamLayout {
        let mut offset = 0;
        let tensors = shapes
            .iter()
            .map(|&(name, numel)| {
                let t = TensorSpec {
                    name: name.to_string(),
                    shape: vec![numel],
                    offset,
                    numel,
                    init: Init::torch_default(1),
                };
                offset += numel;
                t
            })
            .collect();
        ParamLayout { tensors }
    }

    #[test]
    fn selection_by_pattern_and_refusals() {
        let l = layout(&[
            ("1.weight", 6),
            ("1.bias", 2),
            ("3.weight", 4),
            ("3.bias", 2),
        ]);
        assert_eq!(select_tensors(&l, &["3.*".into()]).unwrap(), vec![2, 3]);
        assert_eq!(
            select_tensors(&l, &["*.bias".into(), "1.weight".into()]).unwrap(),
            vec![0, 1, 3]
        );
        let err = select_tensors(&l, &["fc.*".into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--only fc.*: no tensor of the model matches"),
            "{err}"
        );
        assert!(err.contains("1.weight, 1.bias, 3.weight, 3.bias"), "{err}");
        assert!(select_tensors(&l, &[]).is_err());
        assert!(select_tensors(&l, &[String::new()]).is_err());
    }

    /// On L = w₁²·w₂² (the normal crossing) around w* = (0, 1), sampling only w₁ is the regular
    /// one-dimensional L = w₁² near 0, whose λ is 1/2 (the SGLD chain then is an Ornstein–Uhlenbeck
    /// process with a known stationary variance); and the frozen coordinate never moves.
    #[test]
    fn only_the_selected_coordinates_move_and_the_loss_is_the_inner_one() {
        let inner = AnalyticPotential::Monomial { powers: vec![1, 1] };
        let l = layout(&[("a", 1), ("b", 1)]);
        let w_star = [0.0f32, 1.0];
        let pot = Restricted::new(&inner, &l, &[0], &w_star).unwrap();
        assert_eq!(pot.dim(), 1);
        assert_eq!(pot.gather(&w_star), vec![0.0]);
        // L(u) = u²·1² and ∂L/∂u = 2u.
        let mut s = pot.chain_state();
        let mut rng = crate::rng::stream(1, crate::rng::Purpose::Chain, 0);
        let mut g = [0.0f32];
        let loss = pot
            .loss_and_gradient(&mut s, &mut rng, &[0.5], &mut g)
            .unwrap();
        assert_eq!((loss, g[0]), (0.25, 1.0));
        assert_eq!(s.w, vec![0.5, 1.0]);
        assert_eq!(pot.full_loss(&[0.5]).unwrap(), 0.25);
        // E[nβ·u²] under exp(−nβ u²) is 1/2; SGLD with ε·nβ = 0.01 samples the stationary variance
        // 1/(nβ(2 − εnβ)) of u' = (1 − εnβ)u + √ε ξ, so the mean is exactly 1/(2 − 0.01). The
        // autocorrelation time is 1/(εnβ) = 100 steps: 4 chains × 200,000 draws give an ESS near
        // 4,000 and a standard error near 0.011 (sd of nβu² is 1/√2 per draw); the bound is 4 of them.
        let nbeta = 100.0;
        let cfg = SgldConfig {
            step_size: 1e-4,
            nbeta,
            localization: 0.0,
            weight_decay: 0.0,
            bounding_box: None,
            draws: 200_000,
            burn_in: 5_000,
            thin: 1,
            chains: 4,
            threads: 2,
            seed: 5,
        };
        let traces = run_chains(&pot, &[0.0], &cfg).unwrap();
        let mean: f64 = traces
            .iter()
            .map(|t| t.losses.iter().sum::<f64>() / t.losses.len() as f64)
            .sum::<f64>()
            / traces.len() as f64;
        let llc = nbeta * mean;
        assert!((llc - 1.0 / 1.99).abs() < 0.045, "λ̂ {llc}");
    }
}
