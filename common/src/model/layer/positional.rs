//! A learned positional embedding: y = x + W for x `[seq, dim]` and W `weight` `[seq, dim]`
//! (position t gets row t; GPT-2's `wpe`, written as a parameter added to its input). PyTorch's
//! module is the `Positional` class that [`crate::model::NetSpec::torch_source`] prints, whose
//! `weight` is drawn N(0, 1) as `nn.Embedding(seq, dim)`'s would be.
//!
//! The output is x plus a parameter, so every derivative is an identity: ∂W = Σₙ δₙ, ∂x = δ,
//! R{y} = R{x} + V, (H·v)_W = Σₙ R{δ}ₙ, R{∂x} = R{δ}, per-sample gradients δₙ; no term in δ.
//! Piecewise linear (linear).

use super::{LayerOps, Pass, PerSample, RPass, Scope, Scratch};
use crate::device::Backend;
use crate::model::layout::Init;
use crate::Real;
use std::ops::Range;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Positional {
    pub seq: usize,
    pub dim: usize,
    /// Index of `weight` in the layout.
    pub weight: usize,
    w: Range<usize>,
}

impl Positional {
    /// `weight` `[seq, dim]` in `scope`, N(0, 1).
    pub fn new(scope: &mut Scope<'_>, seq: usize, dim: usize) -> Self {
        let weight = scope.tensor("weight", vec![seq, dim], Init::StandardNormal);
        let w = scope.range(weight);
        Positional {
            seq,
            dim,
            weight,
            w,
        }
    }

    fn features(&self) -> usize {
        self.seq * self.dim
    }
}

impl LayerOps for Positional {
    fn kind(&self) -> &'static str {
        "Positional"
    }
    fn in_features(&self) -> usize {
        self.features()
    }
    fn out_features(&self) -> usize {
        self.features()
    }
    fn tensors(&self) -> Range<usize> {
        self.weight..self.weight + 1
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
        params: B::View<'_, T>,
        x: B::View<'_, T>,
        batch: usize,
        y: B::ViewMut<'_, T>,
        _indices: B::ViewMut<'_, u32>,
        _state: B::ViewMut<'_, T>,
        sc: &mut Scratch<T, B>,
    ) {
        let n = batch * self.features();
        let mut y = B::slice_mut(y, 0..n);
        sc.backend.copy(B::slice(x, 0..n), B::reborrow(&mut y));
        sc.backend
            .add_bias_rows(y, B::slice(params, self.w.clone()));
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
        let dy = B::slice(dy, 0..pass.batch * self.features());
        if let Some(grad) = grad {
            let mut gw = B::slice_mut(grad, self.w.clone());
            be.fill(B::reborrow(&mut gw), T::zero());
            be.add_column_sums(T::one(), dy, gw);
        }
        if let Some(dx) = dx {
            be.copy(dy, B::slice_mut(dx, 0..pass.batch * self.features()));
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
        let n = pass.batch * self.features();
        let mut ry = B::slice_mut(ry, 0..n);
        match rx {
            Some(rx) => be.copy(B::slice(rx, 0..n), B::reborrow(&mut ry)),
            None => be.fill(B::reborrow(&mut ry), T::zero()),
        }
        be.add_bias_rows(ry, B::slice(v, self.w.clone()));
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
        let n = pass.batch * self.features();
        let rdy = B::slice(r.rdy, 0..n);
        be.add_column_sums(r.alpha, rdy, B::slice_mut(hv, self.w.clone()));
        if let Some(rdx) = rdx {
            be.copy(rdy, B::slice_mut(rdx, 0..n));
        }
    }

    fn per_sample(&self) -> PerSample {
        PerSample::Materialise
    }

    fn per_sample_gradients<B: Backend, T: Real>(
        &self,
        _params: B::View<'_, T>,
        _x: B::View<'_, T>,
        dy: B::View<'_, T>,
        batch: usize,
        scale: T,
        mut rows: B::ViewMut<'_, T>,
        stride: usize,
        sc: &mut Scratch<T, B>,
    ) {
        let (be, f) = (&sc.backend, self.features());
        for n in 0..batch {
            let mut row = B::slice_mut(B::reborrow(&mut rows), n * stride..n * stride + f);
            be.copy(B::slice(dy, n * f..(n + 1) * f), B::reborrow(&mut row));
            be.scale(scale, row);
        }
    }
}
