//! Element-wise activations as layers: y = φ(x) per feature. A type implements [`Elementwise`]
//! (its φ, φ′ and second-order term) and gets every [`LayerOps`] method from here:
//!
//! backward ∂x = φ′ ⊙ δ; R-forward R{y} = φ′ ⊙ R{x}; R-backward (Pearlmutter 1994)
//! R{∂x} = φ′ ⊙ R{δ} + φ″(x) ⊙ R{x} ⊙ δ, the φ″ term dropped for the Gauss–Newton product.

use super::{LayerOps, Pass, PerSample, RPass, Scratch};
use crate::Real;
use std::ops::Range;

/// An element-wise activation over `features()` features per sample.
pub trait Elementwise {
    /// The PyTorch module (`ReLU`, `Tanh`, `GELU`).
    fn module(&self) -> &'static str;
    fn features(&self) -> usize;
    /// Whether φ″ = 0 almost everywhere (the layer is piecewise linear).
    fn second_derivative_vanishes(&self) -> bool;
    /// φ(x).
    fn value<T: Real>(&self, x: T) -> T;
    /// φ′ ⊙ g at one element with input x and output y (each type reads what its derivative needs).
    fn backward_one<T: Real>(&self, x: T, y: T, g: T) -> T;
    /// φ′(x) as a factor, for the R-passes.
    fn derivative<T: Real>(&self, x: T, y: T) -> T;
    /// r + φ″(x)·rx·δ at one element (`r` = φ′·R{δ} so far, `rx` = R{x}, `dy` = δ); only called when
    /// [`Elementwise::second_derivative_vanishes`] is false.
    fn add_second_order<T: Real>(&self, r: T, x: T, y: T, rx: T, dy: T) -> T;
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
    fn saved_len(&self, _batch: usize) -> usize {
        0
    }
    fn forward_flops(&self, _batch: usize) -> f64 {
        0.0
    }
    fn sample_wise(&self) -> bool {
        true
    }

    fn forward<T: Real>(
        &self,
        _params: &[T],
        x: &[T],
        batch: usize,
        y: &mut [T],
        _indices: &mut [u32],
        _sc: &mut Scratch<T>,
    ) {
        let n = batch * self.features();
        for (v, &s) in y[..n].iter_mut().zip(&x[..n]) {
            *v = self.value(s);
        }
    }

    fn backward<T: Real>(
        &self,
        pass: &Pass<'_, T>,
        dy: &[T],
        _grad: Option<&mut [T]>,
        dx: Option<&mut [T]>,
        _sc: &mut Scratch<T>,
    ) {
        let Some(dx) = dx else { return };
        let n = pass.batch * self.features();
        let (x, y) = (&pass.x[..n], &pass.y[..n]);
        for (((d, &g), &xi), &yi) in dx[..n].iter_mut().zip(&dy[..n]).zip(x).zip(y) {
            *d = self.backward_one(xi, yi, g);
        }
    }

    fn r_forward<T: Real>(
        &self,
        pass: &Pass<'_, T>,
        _v: &[T],
        rx: Option<&[T]>,
        ry: &mut [T],
        _saved: &mut [Vec<T>; 2],
        _sc: &mut Scratch<T>,
    ) {
        let n = pass.batch * self.features();
        let Some(rx) = rx else {
            ry[..n].iter_mut().for_each(|r| *r = T::zero());
            return;
        };
        let (x, y) = (&pass.x[..n], &pass.y[..n]);
        for (((r, &s), &xi), &yi) in ry[..n].iter_mut().zip(&rx[..n]).zip(x).zip(y) {
            *r = self.derivative(xi, yi) * s;
        }
    }

    fn r_backward<T: Real>(
        &self,
        pass: &Pass<'_, T>,
        r: &RPass<'_, T>,
        _hv: &mut [T],
        rdx: Option<&mut [T]>,
        _saved: &[Vec<T>; 2],
        _sc: &mut Scratch<T>,
    ) {
        let Some(rdx) = rdx else { return };
        let n = pass.batch * self.features();
        let (x, y) = (&pass.x[..n], &pass.y[..n]);
        for (((d, &g), &xi), &yi) in rdx[..n].iter_mut().zip(&r.rdy[..n]).zip(x).zip(y) {
            *d = g * self.derivative(xi, yi);
        }
        if let (false, false, Some(rx)) = (self.second_derivative_vanishes(), r.gauss_newton, r.rx)
        {
            for ((((d, &xi), &yi), &s), &g) in rdx[..n]
                .iter_mut()
                .zip(x)
                .zip(y)
                .zip(&rx[..n])
                .zip(&r.dy[..n])
            {
                *d = self.add_second_order(*d, xi, yi, s, g);
            }
        }
    }

    fn per_sample(&self) -> PerSample {
        PerSample::None
    }

    fn per_sample_gradients<T: Real>(
        &self,
        _params: &[T],
        _x: &[T],
        _dy: &[T],
        _batch: usize,
        _scale: T,
        _rows: &mut [T],
        _stride: usize,
        _sc: &mut Scratch<T>,
    ) {
    }
}
