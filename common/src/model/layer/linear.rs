//! `nn.Linear`: y = x·Wᵀ + b, W `[outputs, inputs]`, b `[outputs]` (or no b: `bias=False`, every
//! term in b below dropped).
//!
//! Backward: ∂W = δᵀ·x, ∂b = Σₙ δₙ, ∂x = δ·W. R-forward: R{y} = x·Vᵀ + R{x}·Wᵀ + v_b. R-backward
//! (Pearlmutter 1994): (H·v)_W = R{δ}ᵀ·x + δᵀ·R{x}, (H·v)_b = Σₙ R{δ}ₙ, R{∂x} = R{δ}·W + δ·V; the terms
//! in δ couple this layer's parameters with those below and are dropped for the Gauss–Newton product.
//!
//! On a sequence (`positions` > 1: a sample is `[positions, inputs]`, as `nn.Linear` maps the last
//! axis) every pass is the same over B·positions rows; a sample's gradient is then the sum over its
//! positions, gₙ = [Σₜ δₙₜ·aₙₜᵀ, Σₜ δₙₜ], which has no outer-product form, so its per-sample
//! gradients are materialised (one gemm per sample).

use super::{LayerOps, Pass, PerSample, RPass, Scope, Scratch};
use crate::device::Backend;
use crate::model::layout::Init;
use crate::Real;
use std::ops::Range;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Linear {
    pub inputs: usize,
    pub outputs: usize,
    /// Rows of `inputs` per sample (1 for a flat input).
    pub positions: usize,
    /// Index of the weight in the layout; the bias, when there is one, is the next tensor.
    pub weight: usize,
    w: Range<usize>,
    b: Option<Range<usize>>,
}

impl Linear {
    /// `weight` `[outputs, inputs]` and `bias` `[outputs]` in `scope`, PyTorch's default
    /// initialisation.
    pub fn new(scope: &mut Scope<'_>, inputs: usize, outputs: usize) -> Self {
        Linear::with_bias(scope, inputs, outputs, true)
    }

    /// `nn.Linear(inputs, outputs, bias=bias)`: without a bias only `weight` is added.
    pub fn with_bias(scope: &mut Scope<'_>, inputs: usize, outputs: usize, bias: bool) -> Self {
        let init = Init::torch_default(inputs);
        let weight = scope.tensor("weight", vec![outputs, inputs], init);
        let w = scope.range(weight);
        let b = bias.then(|| {
            let b = scope.tensor("bias", vec![outputs], init);
            scope.range(b)
        });
        Linear {
            inputs,
            outputs,
            positions: 1,
            weight,
            w,
            b,
        }
    }

    /// `nn.Linear(inputs, outputs, bias=bias)` applied to each of `positions` rows of a sample
    /// (`[positions, inputs]` → `[positions, outputs]`).
    pub fn per_position(
        scope: &mut Scope<'_>,
        positions: usize,
        inputs: usize,
        outputs: usize,
        bias: bool,
    ) -> Self {
        Linear {
            positions,
            ..Linear::with_bias(scope, inputs, outputs, bias)
        }
    }

    /// Whether it has a bias.
    pub fn has_bias(&self) -> bool {
        self.b.is_some()
    }
}

impl LayerOps for Linear {
    fn kind(&self) -> &'static str {
        "Linear"
    }
    fn in_features(&self) -> usize {
        self.positions * self.inputs
    }
    fn out_features(&self) -> usize {
        self.positions * self.outputs
    }
    fn tensors(&self) -> Range<usize> {
        self.weight..self.weight + 1 + usize::from(self.b.is_some())
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
    fn forward_flops(&self, batch: usize) -> f64 {
        2.0 * (batch * self.positions * self.inputs * self.outputs) as f64
    }
    fn sample_wise(&self) -> bool {
        // One matrix product over the batch: its blocking, and so its rounding, depend on the batch.
        false
    }

    #[allow(clippy::too_many_arguments)]
    fn forward<B: Backend, T: Real>(
        &self,
        params: B::View<'_, T>,
        x: B::View<'_, T>,
        batch: usize,
        mut y: B::ViewMut<'_, T>,
        _indices: B::ViewMut<'_, u32>,
        _state: B::ViewMut<'_, T>,
        sc: &mut Scratch<T, B>,
    ) {
        let (n_in, n_out, batch) = (self.inputs, self.outputs, batch * self.positions);
        let be = &sc.backend;
        let w = B::slice(params, self.w.clone());
        be.gemm(
            false,
            true,
            batch,
            n_out,
            n_in,
            T::one(),
            x,
            w,
            T::zero(),
            B::reborrow(&mut y),
        );
        if let Some(b) = &self.b {
            be.add_bias_rows(B::slice_mut(y, 0..batch * n_out), B::slice(params, b.clone()));
        }
    }

    fn backward<B: Backend, T: Real>(
        &self,
        pass: &Pass<'_, T, B>,
        dy: B::View<'_, T>,
        grad: Option<B::ViewMut<'_, T>>,
        dx: Option<B::ViewMut<'_, T>>,
        sc: &mut Scratch<T, B>,
    ) {
        let (n_in, n_out, batch) = (self.inputs, self.outputs, pass.batch * self.positions);
        let be = &sc.backend;
        let dy = B::slice(dy, 0..batch * n_out);
        if let Some(mut grad) = grad {
            be.gemm(
                true,
                false,
                n_out,
                n_in,
                batch,
                T::one(),
                dy,
                pass.x,
                T::zero(),
                B::slice_mut(B::reborrow(&mut grad), self.w.clone()),
            );
            if let Some(b) = &self.b {
                let mut gb = B::slice_mut(grad, b.clone());
                be.fill(B::reborrow(&mut gb), T::zero());
                be.add_column_sums(T::one(), dy, gb);
            }
        }
        if let Some(dx) = dx {
            let w = B::slice(pass.params, self.w.clone());
            be.gemm(
                false,
                false,
                batch,
                n_in,
                n_out,
                T::one(),
                dy,
                w,
                T::zero(),
                dx,
            );
        }
    }

    fn r_forward<B: Backend, T: Real>(
        &self,
        pass: &Pass<'_, T, B>,
        v: B::View<'_, T>,
        rx: Option<B::View<'_, T>>,
        mut ry: B::ViewMut<'_, T>,
        _saved: &mut [B::Buffer<T>; 2],
        sc: &mut Scratch<T, B>,
    ) {
        let (n_in, n_out, batch) = (self.inputs, self.outputs, pass.batch * self.positions);
        let be = &sc.backend;
        let vw = B::slice(v, self.w.clone());
        be.gemm(
            false,
            true,
            batch,
            n_out,
            n_in,
            T::one(),
            pass.x,
            vw,
            T::zero(),
            B::reborrow(&mut ry),
        );
        if let Some(rx) = rx {
            let w = B::slice(pass.params, self.w.clone());
            be.gemm(
                false,
                true,
                batch,
                n_out,
                n_in,
                T::one(),
                rx,
                w,
                T::one(),
                B::reborrow(&mut ry),
            );
        }
        if let Some(b) = &self.b {
            let vb = B::slice(v, b.clone());
            be.add_bias_rows(B::slice_mut(ry, 0..batch * n_out), vb);
        }
    }

    fn r_backward<B: Backend, T: Real>(
        &self,
        pass: &Pass<'_, T, B>,
        r: &RPass<'_, T, B>,
        mut hv: B::ViewMut<'_, T>,
        rdx: Option<B::ViewMut<'_, T>>,
        _saved: &[B::Buffer<T>; 2],
        sc: &mut Scratch<T, B>,
    ) {
        let (n_in, n_out, batch) = (self.inputs, self.outputs, pass.batch * self.positions);
        let be = &sc.backend;
        let out = batch * n_out;
        let (rdy, dy) = (B::slice(r.rdy, 0..out), B::slice(r.dy, 0..out));
        let second_order = !r.gauss_newton;
        {
            let mut hw = B::slice_mut(B::reborrow(&mut hv), self.w.clone());
            be.gemm(
                true,
                false,
                n_out,
                n_in,
                batch,
                r.alpha,
                rdy,
                pass.x,
                T::one(),
                B::reborrow(&mut hw),
            );
            if let (Some(rx), true) = (r.rx, second_order) {
                be.gemm(true, false, n_out, n_in, batch, r.alpha, dy, rx, T::one(), hw);
            }
        }
        if let Some(b) = &self.b {
            be.add_column_sums(r.alpha, rdy, B::slice_mut(hv, b.clone()));
        }
        if let Some(mut rdx) = rdx {
            let w = B::slice(pass.params, self.w.clone());
            be.gemm(
                false,
                false,
                batch,
                n_in,
                n_out,
                T::one(),
                rdy,
                w,
                T::zero(),
                B::reborrow(&mut rdx),
            );
            if second_order {
                let vw = B::slice(r.v, self.w.clone());
                be.gemm(false, false, batch, n_in, n_out, T::one(), dy, vw, T::one(), rdx);
            }
        }
    }

    fn per_sample(&self) -> PerSample {
        if self.positions > 1 {
            return PerSample::Materialise;
        }
        PerSample::OuterProduct {
            inputs: self.inputs,
            outputs: self.outputs,
            weight: self.weight,
            bias: self.b.is_some(),
        }
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
        // Row n: [scale·δₙ·aₙᵀ, scale·δₙ] (no second part without a bias); over positions,
        // [scale·Δₙᵀ·Aₙ, scale·Σₜ δₙₜ].
        let (n_in, n_out) = (self.inputs, self.outputs);
        let width = n_out * n_in + if self.b.is_some() { n_out } else { 0 };
        let be = &sc.backend;
        let t = self.positions;
        if t > 1 {
            for n in 0..batch {
                let (a, d) = (
                    B::slice(x, n * t * n_in..(n + 1) * t * n_in),
                    B::slice(dy, n * t * n_out..(n + 1) * t * n_out),
                );
                let row = B::slice_mut(
                    B::reborrow(&mut rows),
                    n * stride..n * stride + width,
                );
                let (gw, mut gb) = B::split_at_mut(row, n_out * n_in);
                be.gemm(true, false, n_out, n_in, t, scale, d, a, T::zero(), gw);
                if self.b.is_some() {
                    be.fill(B::reborrow(&mut gb), T::zero());
                    be.add_column_sums(scale, d, gb);
                }
            }
            return;
        }
        for n in 0..batch {
            let (a, d) = (
                B::slice(x, n * n_in..(n + 1) * n_in),
                B::slice(dy, n * n_out..(n + 1) * n_out),
            );
            let row = B::slice_mut(
                B::reborrow(&mut rows),
                n * stride..n * stride + width,
            );
            let (gw, mut gb) = B::split_at_mut(row, n_out * n_in);
            be.outer(scale, d, a, gw);
            if self.b.is_some() {
                be.copy(d, B::reborrow(&mut gb));
                be.scale(scale, gb);
            }
        }
    }
}
