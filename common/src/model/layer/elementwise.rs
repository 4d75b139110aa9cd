//! Element-wise activations as layers: y = φ(x) per feature. A type implements [`Elementwise`]
//! (its φ, φ′ and second-order term) and gets every [`LayerOps`] method from here:
//!
//! backward ∂x = φ′ ⊙ δ; R-forward R{y} = φ′ ⊙ R{x}; R-backward (Pearlmutter 1994)
//! R{∂x} = φ′ ⊙ R{δ} + φ″(x) ⊙ R{x} ⊙ δ, the φ″ term dropped for the Gauss–Newton product. The
//! loops are the backend's activation operations, which evaluate the scalar methods below. An
//! activation that keeps its derivative ([`Elementwise::keeps_derivative`]) writes φ′ into its
//! state in the forward pass, and the other passes multiply by it (the same products, so the same
//! bits as evaluating φ′ again). One that keeps its second derivative
//! ([`Elementwise::keeps_second_derivative`], GELU) has φ″ prepared for the R-backward
//! ([`LayerOps::r_prepare`]) where the Hessian operator caches its chunks, and the R-backward
//! multiplies by it (again the same products).

use super::{LayerOps, Pass, PerSample, RPass, Scratch};
use crate::device::Backend;
use crate::Real;
use std::ops::Range;

/// An element-wise activation over `features()` features per sample.
pub trait Elementwise {
    /// The PyTorch module (`ReLU`, `Tanh`, `GELU`).
    fn module(&self) -> &'static str;
    fn features(&self) -> usize;
    /// Whether φ″ = 0 almost everywhere (the layer is piecewise linear).
    fn second_derivative_vanishes(&self) -> bool;
    /// Whether the forward pass keeps φ′(x) (in the layer's state, [`LayerOps::state_len`]) for
    /// the later passes, which then multiply by it instead of evaluating φ′ again: for activations
    /// whose φ′ costs more than a load (GELU's erf and exp), not for ReLU or tanh (φ′ from y).
    fn keeps_derivative(&self) -> bool;
    /// φ(x).
    fn value<T: Real>(&self, x: T) -> T;
    /// (φ(x), φ′(x)), the same values as [`Elementwise::value`] and [`Elementwise::derivative`];
    /// an activation that keeps its derivative computes both from one evaluation.
    #[inline(always)]
    fn value_and_derivative<T: Real>(&self, x: T) -> (T, T) {
        let y = self.value(x);
        (y, self.derivative(x, y))
    }
    /// φ′ ⊙ g at one element with input x and output y (each type reads what its derivative needs).
    fn backward_one<T: Real>(&self, x: T, y: T, g: T) -> T;
    /// φ′(x) as a factor, for the R-passes.
    fn derivative<T: Real>(&self, x: T, y: T) -> T;
    /// r + φ″(x)·rx·δ at one element (`r` = φ′·R{δ} so far, `rx` = R{x}, `dy` = δ); only called when
    /// [`Elementwise::second_derivative_vanishes`] is false.
    fn add_second_order<T: Real>(&self, r: T, x: T, y: T, rx: T, dy: T) -> T;
    /// Whether φ′ ⊙ g is the gate 1[y > 0] on the output, [`Elementwise::backward_one`]`(x, y, g)`
    /// = `zero_unless_positive(y, g)` for every x, y, g (ReLU), and φ″ = 0: the layer after it may
    /// then apply its backward ([`LayerOps::output_gate`]). The default: not.
    fn derivative_is_output_gate(&self) -> bool {
        false
    }
    /// Whether the Hessian operator keeps φ″(x) per element for its R-backward
    /// ([`LayerOps::prepared_len`]), which then multiplies by it instead of evaluating φ″ on
    /// every product: for activations whose φ″ costs more than a few operations (GELU's exp).
    fn keeps_second_derivative(&self) -> bool {
        false
    }
    /// φ″(x) as a factor such that [`Elementwise::add_second_order`]`(r, x, y, rx, dy)` is
    /// r + φ″·rx·δ, evaluated in that order, to the bit; only called where
    /// [`Elementwise::keeps_second_derivative`] is true (the default is that sum's term at
    /// rx = δ = 1).
    fn second_derivative<T: Real>(&self, x: T, y: T) -> T {
        self.add_second_order(T::zero(), x, y, T::one(), T::one())
    }
}

impl<A: Elementwise> LayerOps for A {
    fn kind(&self) -> &'static str {
        self.module()
    }
    fn in_features(&self) -> usize {
        self.features()
    }
    fn out_features(&self) -> usize {
        self.features()
    }
    fn tensors(&self) -> Range<usize> {
        0..0
    }
    fn piecewise_linear(&self) -> bool {
        self.second_derivative_vanishes()
    }
    fn scratch_len(&self, _batch: usize, _batched: bool) -> (usize, usize) {
        (0, 0)
    }
    fn index_len(&self, _batch: usize) -> usize {
        0
    }
    fn state_len(&self, batch: usize) -> usize {
        if self.keeps_derivative() {
            batch * self.features()
        } else {
            0
        }
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
        _params: B::View<'_, T>,
        x: B::View<'_, T>,
        batch: usize,
        y: B::ViewMut<'_, T>,
        _indices: B::ViewMut<'_, u32>,
        state: B::ViewMut<'_, T>,
        sc: &mut Scratch<T, B>,
    ) {
        let n = batch * self.features();
        if self.keeps_derivative() {
            sc.backend.activation_forward_keep(
                self,
                B::slice(x, 0..n),
                B::slice_mut(y, 0..n),
                B::slice_mut(state, 0..n),
            );
        } else {
            sc.backend
                .activation_forward(self, B::slice(x, 0..n), B::slice_mut(y, 0..n));
        }
    }

    fn backward<B: Backend, T: Real>(
        &self,
        pass: &Pass<'_, T, B>,
        dy: B::View<'_, T>,
        _grad: Option<B::ViewMut<'_, T>>,
        dx: Option<B::ViewMut<'_, T>>,
        sc: &mut Scratch<T, B>,
    ) {
        let Some(dx) = dx else { return };
        let n = pass.batch * self.features();
        if self.keeps_derivative() {
            let (d, dy) = (B::slice(pass.state, 0..n), B::slice(dy, 0..n));
            sc.backend.multiply(dy, d, B::slice_mut(dx, 0..n));
            return;
        }
        sc.backend.activation_backward(
            self,
            B::slice(pass.x, 0..n),
            B::slice(pass.y, 0..n),
            B::slice(dy, 0..n),
            B::slice_mut(dx, 0..n),
        );
    }

    fn r_forward<B: Backend, T: Real>(
        &self,
        pass: &Pass<'_, T, B>,
        _v: B::View<'_, T>,
        rx: Option<B::View<'_, T>>,
        ry: B::ViewMut<'_, T>,
        _saved: &mut [B::Buffer<T>; 2],
        sc: &mut Scratch<T, B>,
    ) {
        let n = pass.batch * self.features();
        if let (true, Some(rx)) = (self.keeps_derivative(), rx) {
            let (d, rx) = (B::slice(pass.state, 0..n), B::slice(rx, 0..n));
            sc.backend.multiply(d, rx, B::slice_mut(ry, 0..n));
            return;
        }
        sc.backend.activation_r_forward(
            self,
            B::slice(pass.x, 0..n),
            B::slice(pass.y, 0..n),
            rx.map(|rx| B::slice(rx, 0..n)),
            B::slice_mut(ry, 0..n),
        );
    }

    fn r_backward<B: Backend, T: Real>(
        &self,
        pass: &Pass<'_, T, B>,
        r: &RPass<'_, T, B>,
        _hv: B::ViewMut<'_, T>,
        rdx: Option<B::ViewMut<'_, T>>,
        _saved: &[B::Buffer<T>; 2],
        sc: &mut Scratch<T, B>,
    ) {
        let Some(rdx) = rdx else { return };
        let n = pass.batch * self.features();
        // The φ″ term: dropped where φ″ = 0, for the Gauss–Newton product, and for the first layer.
        let second = match (self.second_derivative_vanishes(), r.gauss_newton, r.rx) {
            (false, false, Some(rx)) => Some((B::slice(rx, 0..n), B::slice(r.dy, 0..n))),
            _ => None,
        };
        if self.keeps_derivative() {
            let mut rdx = B::slice_mut(rdx, 0..n);
            let (d, rdy) = (B::slice(pass.state, 0..n), B::slice(r.rdy, 0..n));
            sc.backend.multiply(rdy, d, B::reborrow(&mut rdx));
            match (second, r.prepared) {
                (Some((rx, dy)), Some(d2)) => {
                    let d2 = B::slice(d2, 0..n);
                    sc.backend.add_triple_product(d2, rx, dy, rdx);
                }
                (Some((rx, dy)), None) => sc.backend.activation_add_second_order(
                    self,
                    B::slice(pass.x, 0..n),
                    B::slice(pass.y, 0..n),
                    rx,
                    dy,
                    rdx,
                ),
                (None, _) => {}
            }
            return;
        }
        sc.backend.activation_r_backward(
            self,
            B::slice(pass.x, 0..n),
            B::slice(pass.y, 0..n),
            B::slice(r.rdy, 0..n),
            second,
            B::slice_mut(rdx, 0..n),
        );
    }

    fn prepared_len(&self, batch: usize) -> usize {
        if self.keeps_second_derivative() && !self.second_derivative_vanishes() {
            batch * self.features()
        } else {
            0
        }
    }

    fn r_prepare<B: Backend, T: Real>(
        &self,
        pass: &Pass<'_, T, B>,
        _dy: B::View<'_, T>,
        out: B::ViewMut<'_, T>,
        sc: &mut Scratch<T, B>,
    ) {
        let n = self.prepared_len(pass.batch);
        if n > 0 {
            sc.backend.activation_second_derivative(
                self,
                B::slice(pass.x, 0..n),
                B::slice(pass.y, 0..n),
                B::slice_mut(out, 0..n),
            );
        }
    }

    fn output_gate(&self) -> bool {
        self.derivative_is_output_gate() && self.second_derivative_vanishes()
    }

    fn per_sample(&self) -> PerSample {
        PerSample::None
    }

    fn per_sample_gradients<B: Backend, T: Real>(
        &self,
        _params: B::View<'_, T>,
        _x: B::View<'_, T>,
        _dy: B::View<'_, T>,
        _batch: usize,
        _scale: T,
        _rows: B::ViewMut<'_, T>,
        _stride: usize,
        _sc: &mut Scratch<T, B>,
    ) {
    }
}
