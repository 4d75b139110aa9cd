//! A monomial of the parameters times the input, devinterp's `Polynomial` test model (its
//! normal-crossing accuracy test, `tests/slt/sampler_accuracy_test.py`): y = P(w)·x element-wise,
//! P(w) = Πᵢ wᵢ^{kᵢ}, one tensor `weights` `[d]` (zeros, as devinterp's: the singular point) and
//! fixed integer powers kᵢ ≥ 0. With the mean squared error on y = σ·ξ independent of x, the
//! population loss is E[x²]·Πᵢ wᵢ^{2kᵢ} + σ², a normal crossing with λ = minᵢ 1/(2kᵢ)
//! (Watanabe 2009, "Algebraic geometry and statistical learning theory", §2.4;
//! [`crate::sample::analytic`]).
//!
//! With gᵢ = ∂P/∂wᵢ = kᵢ·wᵢ^{kᵢ−1}·Π_{j≠i} wⱼ^{kⱼ} and hᵢⱼ = ∂²P/∂wᵢ∂wⱼ, δ = ∂L/∂y and
//! S = Σ δ ⊙ x (over the batch and the features):
//!
//! backward ∂x = P·δ, ∂wᵢ = gᵢ·S; R-forward R{P} = Σᵢ gᵢ·vᵢ, R{y} = P·R{x} + R{P}·x;
//! R-backward (Pearlmutter 1994) (H·v)ᵢ = gᵢ·(Σ R{δ} ⊙ x + Σ δ ⊙ R{x}) + (Σⱼ hᵢⱼ·vⱼ)·S and
//! R{∂x} = P·R{δ} + R{P}·δ; the Gauss–Newton product keeps gᵢ·Σ R{δ} ⊙ x and P·R{δ} (the terms in
//! δ dropped). Per-sample gradients gₙ,ᵢ = gᵢ·Σ_f δₙ ⊙ xₙ. Linear in each parameter alone (the
//! Hessian's diagonal has no second-derivative term) when every kᵢ ≤ 1.
//!
//! P and its derivatives are formed on the host in f64 from the d parameters (d is small); the
//! element-wise work is the backend's `copy`, `scale`, `axpy` and `dot`.

use super::{LayerOps, Pass, PerSample, RPass, Scope, Scratch};
use crate::device::Backend;
use crate::model::layout::Init;
use crate::Real;
use std::ops::Range;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Monomial {
    /// Features per sample in and out.
    pub features: usize,
    /// k₁, …, k_d.
    pub powers: Vec<u32>,
    /// The tensor's index in the layout.
    pub weight: usize,
    span: Range<usize>,
}

/// wᵏ (w⁰ = 1, also at w = 0).
fn pow(w: f64, k: u32) -> f64 {
    (0..k).fold(1.0, |a, _| a * w)
}

impl Monomial {
    /// devinterp's `Polynomial(powers)` over samples of `features` features: `weights` `[d]`
    /// (zeros) in `scope`.
    pub fn new(scope: &mut Scope<'_>, features: usize, powers: Vec<u32>) -> Self {
        let weight = scope.tensor("weights", vec![powers.len()], Init::Zeros);
        let span = scope.range(weight);
        Monomial {
            features,
            powers,
            weight,
            span,
        }
    }

    /// The d parameters (or the direction's block) in f64, from backend memory.
    fn host<T: Real, B: Backend>(&self, be: &B, all: B::View<'_, T>) -> Vec<f64> {
        let mut w = vec![T::zero(); self.powers.len()];
        be.download(B::slice(all, self.span.clone()), &mut w);
        w.iter().map(|v| v.as_f64()).collect()
    }

    /// Πᵢ wᵢ^{kᵢ} differentiated once in wᵢ for each i in `lowered` (an index twice: twice): the
    /// factor of wᵢ becomes kᵢ·(kᵢ − 1)…·wᵢ^{kᵢ−m}, and 0 past its power.
    fn product(&self, w: &[f64], lowered: &[usize]) -> f64 {
        let mut p = 1.0;
        for (i, (&wi, &k)) in w.iter().zip(&self.powers).enumerate() {
            let by = lowered.iter().filter(|&&j| j == i).count() as u32;
            if by > k {
                return 0.0;
            }
            // The falling factorial k·(k − 1)… of differentiating `by` times.
            let factor: f64 = (0..by).map(|m| f64::from(k - m)).product();
            p *= factor * pow(wi, k - by);
        }
        p
    }

    /// P(w).
    fn value(&self, w: &[f64]) -> f64 {
        self.product(w, &[])
    }

    /// gᵢ = ∂P/∂wᵢ.
    fn gradient(&self, w: &[f64]) -> Vec<f64> {
        (0..w.len()).map(|i| self.product(w, &[i])).collect()
    }

    /// Σⱼ hᵢⱼ·vⱼ, hᵢⱼ = ∂²P/∂wᵢ∂wⱼ.
    fn hessian_times(&self, w: &[f64], v: &[f64]) -> Vec<f64> {
        (0..w.len())
            .map(|i| (0..w.len()).map(|j| self.product(w, &[i, j]) * v[j]).sum())
            .collect()
    }

    /// Adds (or writes, when `write`) α·`values` into the layer's block of `out`.
    fn put<T: Real, B: Backend>(
        &self,
        be: &B,
        values: &[f64],
        alpha: f64,
        out: B::ViewMut<'_, T>,
        write: bool,
    ) {
        let host: Vec<T> = values.iter().map(|&v| T::of_f64(alpha * v)).collect();
        let buf = be.upload(&host);
        let block = B::slice_mut(out, self.span.clone());
        if write {
            be.copy(B::view(&buf), block);
        } else {
            be.axpy(T::one(), B::view(&buf), block);
        }
    }
}

impl LayerOps for Monomial {
    fn kind(&self) -> &'static str {
        "Monomial"
    }
    fn in_features(&self) -> usize {
        self.features
    }
    fn out_features(&self) -> usize {
        self.features
    }
    fn tensors(&self) -> Range<usize> {
        self.weight..self.weight + 1
    }
    fn piecewise_linear(&self) -> bool {
        self.powers.iter().all(|&k| k <= 1)
    }
    fn scratch_len(&self, _batch: usize, _batched: bool) -> (usize, usize) {
        (0, 0)
    }
    fn index_len(&self, _batch: usize) -> usize {
        0
    }
    fn state_len(&self, _batch: usize) -> usize {
        0
    }
    fn saved_len(&self, _batch: usize) -> usize {
        0
    }
    fn forward_flops(&self, _batch: usize) -> f64 {
        0.0
    }
    fn sample_wise(&self) -> bool {
        true
    }

    #[allow(clippy::too_many_arguments)]
    fn forward<B: Backend, T: Real>(
        &self,
        params: B::View<'_, T>,
        x: B::View<'_, T>,
        batch: usize,
        y: B::ViewMut<'_, T>,
        _indices: B::ViewMut<'_, u32>,
        _state: B::ViewMut<'_, T>,
        sc: &mut Scratch<T, B>,
    ) {
        let be = &sc.backend;
        let n = batch * self.features;
        let p = self.value(&self.host(be, params));
        let mut y = B::slice_mut(y, 0..n);
        be.copy(B::slice(x, 0..n), B::reborrow(&mut y));
        be.scale(T::of_f64(p), y);
    }

    fn backward<B: Backend, T: Real>(
        &self,
        pass: &Pass<'_, T, B>,
        dy: B::View<'_, T>,
        grad: Option<B::ViewMut<'_, T>>,
        dx: Option<B::ViewMut<'_, T>>,
        sc: &mut Scratch<T, B>,
    ) {
        let be = &sc.backend;
        let n = pass.batch * self.features;
        let w = self.host(be, pass.params);
        let (dy, x) = (B::slice(dy, 0..n), B::slice(pass.x, 0..n));
        if let Some(grad) = grad {
            let s = be.dot(dy, x);
            self.put(be, &self.gradient(&w), s, grad, true);
        }
        if let Some(dx) = dx {
            let mut dx = B::slice_mut(dx, 0..n);
            be.copy(dy, B::reborrow(&mut dx));
            be.scale(T::of_f64(self.value(&w)), dx);
        }
    }

    fn r_forward<B: Backend, T: Real>(
        &self,
        pass: &Pass<'_, T, B>,
        v: B::View<'_, T>,
        rx: Option<B::View<'_, T>>,
        ry: B::ViewMut<'_, T>,
        _saved: &mut [B::Buffer<T>; 2],
        sc: &mut Scratch<T, B>,
    ) {
        let be = &sc.backend;
        let n = pass.batch * self.features;
        let w = self.host(be, pass.params);
        let vw = self.host(be, v);
        let rp: f64 = self.gradient(&w).iter().zip(&vw).map(|(g, v)| g * v).sum();
        let mut ry = B::slice_mut(ry, 0..n);
        let x = B::slice(pass.x, 0..n);
        match rx {
            Some(rx) => {
                be.copy(B::slice(rx, 0..n), B::reborrow(&mut ry));
                be.scale(T::of_f64(self.value(&w)), B::reborrow(&mut ry));
                be.axpy(T::of_f64(rp), x, ry);
            }
            None => {
                be.copy(x, B::reborrow(&mut ry));
                be.scale(T::of_f64(rp), ry);
            }
        }
    }

    fn r_backward<B: Backend, T: Real>(
        &self,
        pass: &Pass<'_, T, B>,
        r: &RPass<'_, T, B>,
        hv: B::ViewMut<'_, T>,
        rdx: Option<B::ViewMut<'_, T>>,
        _saved: &[B::Buffer<T>; 2],
        sc: &mut Scratch<T, B>,
    ) {
        let be = &sc.backend;
        let n = pass.batch * self.features;
        let second_order = !r.gauss_newton;
        let w = self.host(be, pass.params);
        let vw = self.host(be, r.v);
        let g = self.gradient(&w);
        let (x, dy, rdy) = (
            B::slice(pass.x, 0..n),
            B::slice(r.dy, 0..n),
            B::slice(r.rdy, 0..n),
        );
        // Σ R{δ} ⊙ x, and the terms in δ: Σ δ ⊙ R{x} and S = Σ δ ⊙ x.
        let mut first = be.dot(rdy, x);
        let mut block = vec![0.0; w.len()];
        if second_order {
            if let Some(rx) = r.rx {
                first += be.dot(dy, B::slice(rx, 0..n));
            }
            let s = be.dot(dy, x);
            for (b, h) in block.iter_mut().zip(self.hessian_times(&w, &vw)) {
                *b += h * s;
            }
        }
        for (b, gi) in block.iter_mut().zip(&g) {
            *b += gi * first;
        }
        self.put(be, &block, r.alpha.as_f64(), hv, false);
        if let Some(rdx) = rdx {
            let mut rdx = B::slice_mut(rdx, 0..n);
            be.copy(rdy, B::reborrow(&mut rdx));
            be.scale(T::of_f64(self.value(&w)), B::reborrow(&mut rdx));
            if second_order {
                let rp: f64 = g.iter().zip(&vw).map(|(g, v)| g * v).sum();
                be.axpy(T::of_f64(rp), dy, rdx);
            }
        }
    }

    fn per_sample(&self) -> PerSample {
        PerSample::Materialise
    }

    #[allow(clippy::too_many_arguments)]
    fn per_sample_gradients<B: Backend, T: Real>(
        &self,
        params: B::View<'_, T>,
        x: B::View<'_, T>,
        dy: B::View<'_, T>,
        batch: usize,
        scale: T,
        mut rows: B::ViewMut<'_, T>,
        stride: usize,
        sc: &mut Scratch<T, B>,
    ) {
        let be = &sc.backend;
        let (f, d) = (self.features, self.powers.len());
        let g = self.gradient(&self.host(be, params));
        for s in 0..batch {
            let span = s * f..(s + 1) * f;
            let sn = be.dot(B::slice(dy, span.clone()), B::slice(x, span)) * scale.as_f64();
            let host: Vec<T> = g.iter().map(|&gi| T::of_f64(gi * sn)).collect();
            let buf = be.upload(&host);
            be.copy(
                B::view(&buf),
                B::slice_mut(B::reborrow(&mut rows), s * stride..s * stride + d),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::layout::TensorSpec;

    fn monomial(powers: Vec<u32>) -> Monomial {
        let mut tensors: Vec<TensorSpec> = Vec::new();
        Monomial::new(&mut Scope::root(&mut tensors), 1, powers)
    }

    /// P, its gradient and its Hessian against the closed forms of w₁·w₂³ (and a zero power).
    #[test]
    fn derivatives_of_the_monomial_are_its_closed_forms() {
        let m = monomial(vec![1, 3, 0]);
        let w = [1.5, -0.5, 7.0];
        let (a, b) = (w[0], w[1]);
        assert_eq!(m.value(&w), a * b * b * b);
        assert_eq!(m.gradient(&w), vec![b * b * b, 3.0 * a * b * b, 0.0]);
        // H = [[0, 3b²], [3b², 6ab]] in the first two; the third row and column vanish.
        let v = [0.25, 2.0, -1.0];
        let want = [
            3.0 * b * b * v[1],
            3.0 * b * b * v[0] + 6.0 * a * b * v[1],
            0.0,
        ];
        for (g, w) in m.hessian_times(&w, &v).iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{g} vs {w}");
        }
        // At the singular point w = 0 every derivative of w₁w₂ but the mixed second vanishes.
        let m = monomial(vec![1, 1]);
        assert_eq!(m.gradient(&[0.0, 0.0]), vec![0.0, 0.0]);
        assert_eq!(m.hessian_times(&[0.0, 0.0], &[1.0, 0.0]), vec![0.0, 1.0]);
        assert!(m.piecewise_linear() && !monomial(vec![2, 1]).piecewise_linear());
    }
}
