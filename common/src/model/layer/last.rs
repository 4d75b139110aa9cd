//! The last position of a sequence: y = x[seq − 1, :] for x `[seq, dim]`, so y is `[dim]`
//! (`x[:, -1]` in PyTorch; the `Last` module that [`crate::model::NetSpec::torch_source`] prints).
//! The read-out of modular addition, whose answer is predicted at the `=` token.
//!
//! A selection, linear in x: ∂x is δ at the last position and 0 elsewhere, R{y} the last position
//! of R{x}, R{∂x} likewise from R{δ}; no parameters.

use super::{LayerOps, Pass, PerSample, RPass, Scratch};
use crate::device::Backend;
use crate::Real;
use std::ops::Range;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Last {
    pub seq: usize,
    pub dim: usize,
}

impl Last {
    /// y ← the last position of each sample of `x`.
    fn select<B: Backend, T: Real>(
        &self,
        be: &B,
        x: B::View<'_, T>,
        batch: usize,
        mut y: B::ViewMut<'_, T>,
    ) {
        let (s, d) = (self.seq, self.dim);
        for n in 0..batch {
            let at = (n * s + s - 1) * d;
            be.copy(
                B::slice(x, at..at + d),
                B::slice_mut(B::reborrow(&mut y), n * d..(n + 1) * d),
            );
        }
    }

    /// dx ← δ at each sample's last position, 0 elsewhere (the adjoint of `select`).
    fn spread<B: Backend, T: Real>(
        &self,
        be: &B,
        dy: B::View<'_, T>,
        batch: usize,
        dx: B::ViewMut<'_, T>,
    ) {
        let (s, d) = (self.seq, self.dim);
        let mut dx = B::slice_mut(dx, 0..batch * s * d);
        be.fill(B::reborrow(&mut dx), T::zero());
        for n in 0..batch {
            let at = (n * s + s - 1) * d;
            be.copy(
                B::slice(dy, n * d..(n + 1) * d),
                B::slice_mut(B::reborrow(&mut dx), at..at + d),
            );
        }
    }
}

impl LayerOps for Last {
    fn kind(&self) -> &'static str {
        "Last"
    }
    fn in_features(&self) -> usize {
        self.seq * self.dim
    }
    fn out_features(&self) -> usize {
        self.dim
    }
    fn tensors(&self) -> Range<usize> {
        0..0
    }
    fn piecewise_linear(&self) -> bool {
        true
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

    fn forward<B: Backend, T: Real>(
        &self,
        _params: B::View<'_, T>,
        x: B::View<'_, T>,
        batch: usize,
        y: B::ViewMut<'_, T>,
        _indices: B::ViewMut<'_, u32>,
        _state: B::ViewMut<'_, T>,
        sc: &mut Scratch<T, B>,
    ) {
        self.select(&sc.backend, x, batch, y);
    }

    fn backward<B: Backend, T: Real>(
        &self,
        pass: &Pass<'_, T, B>,
        dy: B::View<'_, T>,
        _grad: Option<B::ViewMut<'_, T>>,
        dx: Option<B::ViewMut<'_, T>>,
        sc: &mut Scratch<T, B>,
    ) {
        if let Some(dx) = dx {
            self.spread(&sc.backend, dy, pass.batch, dx);
        }
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
        match rx {
            Some(rx) => self.select(&sc.backend, rx, pass.batch, ry),
            None => sc
                .backend
                .fill(B::slice_mut(ry, 0..pass.batch * self.dim), T::zero()),
        }
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
        if let Some(rdx) = rdx {
            self.spread(&sc.backend, r.rdy, pass.batch, rdx);
        }
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
