//! `nn.Embedding(num, dim)`: a sample is a sequence of `seq` token ids (integral floats in the input
//! x, 0 ≤ id < num), and position t of the output is row id_t of the table W `[num, dim]`:
//! y[t, :] = W[id_t, :], so y is `[seq, dim]`.
//!
//! The output is linear in W and does not depend on θ through x, so: ∂W = Σₙ Σₜ e_{id}·δₜᵀ (the
//! rows of δ added into the rows of their ids), no input gradient (ids are data; the layer is the
//! network's first), R{y}[t, :] = V[id_t, :], (H·v)_W = Σ e_{id}·R{δ}ₜᵀ (no term in δ: the second
//! derivative of y in W is zero), per-sample gradients the scatter of one sample's δ. Piecewise
//! linear (linear) in the parameters.
//!
//! The ids are checked once, when a data set is matched to the network
//! ([`crate::model::Network::check_input`]), so a pass never meets a bad one.

use super::{LayerOps, Pass, PerSample, RPass, Scope, Scratch};
use crate::device::Backend;
use crate::model::layout::Init;
use crate::Real;
use std::ops::Range;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Embedding {
    /// The vocabulary: ids are in 0..num.
    pub num: usize,
    pub dim: usize,
    /// Tokens per sample.
    pub seq: usize,
    /// Index of `weight` in the layout.
    pub weight: usize,
    w: Range<usize>,
}

/// The table row of token value `value` for a vocabulary of `num`: `Some(id)` when `value` is an
/// integer in 0..num.
pub fn token_id(value: f64, num: usize) -> Option<usize> {
    (value >= 0.0 && value.fract() == 0.0 && value < num as f64).then_some(value as usize)
}

impl Embedding {
    /// `weight` `[num, dim]` in `scope`, N(0, 1) as PyTorch's default, for sequences of `seq`.
    pub fn new(scope: &mut Scope<'_>, num: usize, dim: usize, seq: usize) -> Self {
        let weight = scope.tensor("weight", vec![num, dim], Init::StandardNormal);
        let w = scope.range(weight);
        Embedding {
            num,
            dim,
            seq,
            weight,
            w,
        }
    }

    /// The first input value that is not a token id of this vocabulary: (its index, the value).
    pub fn first_bad_id<T: Real>(&self, x: &[T]) -> Option<(usize, f64)> {
        x.iter()
            .map(|v| v.as_f64())
            .enumerate()
            .find(|&(_, v)| token_id(v, self.num).is_none())
    }
}

impl LayerOps for Embedding {
    fn kind(&self) -> &'static str {
        "Embedding"
    }
    fn in_features(&self) -> usize {
        self.seq
    }
    fn out_features(&self) -> usize {
        self.seq * self.dim
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
        sc.backend.embedding_gather(
            B::slice(params, self.w.clone()),
            B::slice(x, 0..batch * self.seq),
            self.dim,
            B::slice_mut(y, 0..batch * self.out_features()),
        );
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
        let n = pass.batch * self.seq;
        if let Some(grad) = grad {
            let mut gw = B::slice_mut(grad, self.w.clone());
            be.fill(B::reborrow(&mut gw), T::zero());
            be.embedding_scatter_add(
                T::one(),
                B::slice(dy, 0..n * self.dim),
                B::slice(pass.x, 0..n),
                self.dim,
                gw,
            );
        }
        if let Some(dx) = dx {
            // Ids are data: nothing flows back to them.
            be.fill(B::slice_mut(dx, 0..n), T::zero());
        }
    }

    fn r_forward<B: Backend, T: Real>(
        &self,
        pass: &Pass<'_, T, B>,
        v: B::View<'_, T>,
        _rx: Option<B::View<'_, T>>,
        ry: B::ViewMut<'_, T>,
        _saved: &mut [B::Buffer<T>; 2],
        sc: &mut Scratch<T, B>,
    ) {
        sc.backend.embedding_gather(
            B::slice(v, self.w.clone()),
            B::slice(pass.x, 0..pass.batch * self.seq),
            self.dim,
            B::slice_mut(ry, 0..pass.batch * self.out_features()),
        );
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
        let n = pass.batch * self.seq;
        be.embedding_scatter_add(
            r.alpha,
            B::slice(r.rdy, 0..n * self.dim),
            B::slice(pass.x, 0..n),
            self.dim,
            B::slice_mut(hv, self.w.clone()),
        );
        if let Some(rdx) = rdx {
            be.fill(B::slice_mut(rdx, 0..n), T::zero());
        }
    }

    fn per_sample(&self) -> PerSample {
        PerSample::Materialise
    }

    fn per_sample_gradients<B: Backend, T: Real>(
        &self,
        _params: B::View<'_, T>,
        x: B::View<'_, T>,
        dy: B::View<'_, T>,
        batch: usize,
        scale: T,
        mut rows: B::ViewMut<'_, T>,
        stride: usize,
        sc: &mut Scratch<T, B>,
    ) {
        let (be, s, d, width) = (&sc.backend, self.seq, self.dim, self.num * self.dim);
        for n in 0..batch {
            let mut row = B::slice_mut(B::reborrow(&mut rows), n * stride..n * stride + width);
            be.fill(B::reborrow(&mut row), T::zero());
            be.embedding_scatter_add(
                scale,
                B::slice(dy, n * s * d..(n + 1) * s * d),
                B::slice(x, n * s..(n + 1) * s),
                d,
                row,
            );
        }
    }
}
