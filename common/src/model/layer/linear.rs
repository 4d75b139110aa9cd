//! `nn.Linear`: y = x·Wᵀ + b, W `[outputs, inputs]`, b `[outputs]` (or no b: `bias=False`, every
//! term in b below dropped).
//!
//! Backward: ∂W = δᵀ·x, ∂b = Σₙ δₙ, ∂x = δ·W. R-forward: R{y} = x·Vᵀ + R{x}·Wᵀ + v_b. R-backward
//! (Pearlmutter 1994): (H·v)_W = R{δ}ᵀ·x + δᵀ·R{x}, (H·v)_b = Σₙ R{δ}ₙ, R{∂x} = R{δ}·W + δ·V; the terms
//! in δ couple this layer's parameters with those below and are dropped for the Gauss–Newton product.

use super::{LayerOps, Pass, PerSample, RPass, Scope, Scratch};
use crate::device::cpu::gemm;
use crate::model::layout::Init;
use crate::Real;
use std::ops::Range;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Linear {
    pub inputs: usize,
    pub outputs: usize,
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
            weight,
            w,
            b,
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
        self.inputs
    }
    fn out_features(&self) -> usize {
        self.outputs
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
    fn saved_len(&self, _batch: usize) -> usize {
        0
    }
    fn forward_flops(&self, batch: usize) -> f64 {
        2.0 * (batch * self.inputs * self.outputs) as f64
    }
    fn sample_wise(&self) -> bool {
        // One matrix product over the batch: its blocking, and so its rounding, depend on the batch.
        false
    }

    fn forward<T: Real>(
        &self,
        params: &[T],
        x: &[T],
        batch: usize,
        y: &mut [T],
        _indices: &mut [u32],
        _sc: &mut Scratch<T>,
    ) {
        let (n_in, n_out) = (self.inputs, self.outputs);
        let w = &params[self.w.clone()];
        gemm(
            false,
            true,
            batch,
            n_out,
            n_in,
            T::one(),
            x,
            w,
            T::zero(),
            y,
        );
        if let Some(b) = &self.b {
            let b = &params[b.clone()];
            for row in y[..batch * n_out].chunks_exact_mut(n_out) {
                for (v, &bias) in row.iter_mut().zip(b) {
                    *v += bias;
                }
            }
        }
    }

    fn backward<T: Real>(
        &self,
        pass: &Pass<'_, T>,
        dy: &[T],
        grad: Option<&mut [T]>,
        dx: Option<&mut [T]>,
        _sc: &mut Scratch<T>,
    ) {
        let (n_in, n_out, batch) = (self.inputs, self.outputs, pass.batch);
        let dy = &dy[..batch * n_out];
        if let Some(grad) = grad {
            gemm(
                true,
                false,
                n_out,
                n_in,
                batch,
                T::one(),
                dy,
                pass.x,
                T::zero(),
                &mut grad[self.w.clone()],
            );
            if let Some(b) = &self.b {
                let gb = &mut grad[b.clone()];
                gb.iter_mut().for_each(|v| *v = T::zero());
                for row in dy.chunks_exact(n_out) {
                    for (o, &v) in gb.iter_mut().zip(row) {
                        *o += v;
                    }
                }
            }
        }
        if let Some(dx) = dx {
            let w = &pass.params[self.w.clone()];
            gemm(
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

    fn r_forward<T: Real>(
        &self,
        pass: &Pass<'_, T>,
        v: &[T],
        rx: Option<&[T]>,
        ry: &mut [T],
        _saved: &mut [Vec<T>; 2],
        _sc: &mut Scratch<T>,
    ) {
        let (n_in, n_out, batch) = (self.inputs, self.outputs, pass.batch);
        let vw = &v[self.w.clone()];
        gemm(
            false,
            true,
            batch,
            n_out,
            n_in,
            T::one(),
            pass.x,
            vw,
            T::zero(),
            ry,
        );
        if let Some(rx) = rx {
            let w = &pass.params[self.w.clone()];
            gemm(
                false,
                true,
                batch,
                n_out,
                n_in,
                T::one(),
                rx,
                w,
                T::one(),
                ry,
            );
        }
        if let Some(b) = &self.b {
            let vb = &v[b.clone()];
            for row in ry[..batch * n_out].chunks_exact_mut(n_out) {
                for (r, &b) in row.iter_mut().zip(vb) {
                    *r += b;
                }
            }
        }
    }

    fn r_backward<T: Real>(
        &self,
        pass: &Pass<'_, T>,
        r: &RPass<'_, T>,
        hv: &mut [T],
        rdx: Option<&mut [T]>,
        _saved: &[Vec<T>; 2],
        _sc: &mut Scratch<T>,
    ) {
        let (n_in, n_out, batch) = (self.inputs, self.outputs, pass.batch);
        let out = batch * n_out;
        let (rdy, dy) = (&r.rdy[..out], &r.dy[..out]);
        let second_order = !r.gauss_newton;
        let hw = &mut hv[self.w.clone()];
        gemm(
            true,
            false,
            n_out,
            n_in,
            batch,
            r.alpha,
            rdy,
            pass.x,
            T::one(),
            hw,
        );
        if let (Some(rx), true) = (r.rx, second_order) {
            gemm(
                true,
                false,
                n_out,
                n_in,
                batch,
                r.alpha,
                dy,
                rx,
                T::one(),
                hw,
            );
        }
        if let Some(b) = &self.b {
            let hb = &mut hv[b.clone()];
            for row in rdy.chunks_exact(n_out) {
                for (h, &v) in hb.iter_mut().zip(row) {
                    *h += r.alpha * v;
                }
            }
        }
        if let Some(rdx) = rdx {
            let w = &pass.params[self.w.clone()];
            gemm(
                false,
                false,
                batch,
                n_in,
                n_out,
                T::one(),
                rdy,
                w,
                T::zero(),
                rdx,
            );
            if second_order {
                let vw = &r.v[self.w.clone()];
                gemm(
                    false,
                    false,
                    batch,
                    n_in,
                    n_out,
                    T::one(),
                    dy,
                    vw,
                    T::one(),
                    rdx,
                );
            }
        }
    }

    fn per_sample(&self) -> PerSample {
        PerSample::OuterProduct {
            inputs: self.inputs,
            outputs: self.outputs,
            weight: self.weight,
            bias: self.b.is_some(),
        }
    }

    fn per_sample_gradients<T: Real>(
        &self,
        _params: &[T],
        x: &[T],
        dy: &[T],
        batch: usize,
        scale: T,
        rows: &mut [T],
        stride: usize,
        _sc: &mut Scratch<T>,
    ) {
        let (n_in, n_out) = (self.inputs, self.outputs);
        let width = n_out * n_in + if self.b.is_some() { n_out } else { 0 };
        for n in 0..batch {
            let (a, d) = (
                &x[n * n_in..(n + 1) * n_in],
                &dy[n * n_out..(n + 1) * n_out],
            );
            let row = &mut rows[n * stride..n * stride + width];
            let (gw, gb) = row.split_at_mut(n_out * n_in);
            for (o, g) in gw.chunks_exact_mut(n_in).enumerate() {
                let f = scale * d[o];
                for (gi, &ai) in g.iter_mut().zip(a) {
                    *gi = f * ai;
                }
            }
            for (g, &di) in gb.iter_mut().zip(d) {
                *g = scale * di;
            }
        }
    }
}
