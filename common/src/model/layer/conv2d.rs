//! `nn.Conv2d` with stride 1: y = W ⋆ x + b, a zero-padded cross-correlation; W
//! `[out_channels, in_channels, k, k]`, input `[in_channels, height, width]` per sample.
//!
//! Computed directly by the backend's convolution operations (on the CPU the kernels of
//! [`crate::device::cpu_conv`], no im2col matrix): y = W ⋆ x + b,
//! ∂W = Σₙ δₙ ⋆ xₙ (the weight-gradient correlation), ∂b = Σ δ over samples and positions,
//! ∂x = W ⋆ᵀ δ (the input-gradient correlation, the adjoint of x ↦ W ⋆ x). All three are linear in
//! each argument, so the R-operator is Linear's with ⋆ for the product (Pearlmutter 1994):
//! R{y} = V ⋆ x + W ⋆ R{x} + v_b, (H·v)_W = R{δ} ⋆ x + δ ⋆ R{x}, (H·v)_b = Σ R{δ},
//! R{∂x} = W ⋆ᵀ R{δ} + V ⋆ᵀ δ. Every pass works one sample at a time, so a sample's padded input
//! and output stay in L1/L2.

use super::{LayerOps, Pass, PerSample, RPass, Scope, Scratch};
use crate::device::cpu_conv::conv2d_work_len;
use crate::device::{Backend, ConvGeometry};
use crate::model::layout::Init;
use crate::Real;
use std::ops::Range;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conv2d {
    /// The input's channels, height and width, the kernel size and the padding.
    pub geometry: ConvGeometry,
    pub out_channels: usize,
    /// Index of the weight in the layout; the bias is the next tensor.
    pub weight: usize,
    w: Range<usize>,
    b: Range<usize>,
}

impl Conv2d {
    /// `weight` `[out_channels, channels, k, k]` and `bias` `[out_channels]` in `scope`, PyTorch's
    /// default initialisation.
    pub fn new(scope: &mut Scope<'_>, geometry: ConvGeometry, out_channels: usize) -> Self {
        let g = geometry;
        let init = Init::torch_default(g.rows());
        let weight = scope.tensor(
            "weight",
            vec![out_channels, g.channels, g.kernel, g.kernel],
            init,
        );
        let bias = scope.tensor("bias", vec![out_channels], init);
        Conv2d {
            geometry,
            out_channels,
            weight,
            w: scope.range(weight),
            b: scope.range(bias),
        }
    }

    /// (ho, wo) of the output.
    pub fn output_size(&self) -> (usize, usize) {
        self.geometry.output_size()
    }
}

impl LayerOps for Conv2d {
    fn kind(&self) -> &'static str {
        "Conv2d"
    }
    fn in_features(&self) -> usize {
        self.geometry.input_len()
    }
    fn out_features(&self) -> usize {
        self.out_channels * self.geometry.plane()
    }
    fn tensors(&self) -> Range<usize> {
        self.weight..self.weight + 2
    }
    fn piecewise_linear(&self) -> bool {
        true
    }
    fn scratch_len(&self, _batch: usize, _batched: bool) -> (usize, usize) {
        // One sample's padded input and flat output, reused for every sample (see cpu_conv).
        (conv2d_work_len(&self.geometry, self.out_channels), 0)
    }
    fn index_len(&self, _batch: usize) -> usize {
        0
    }
    fn state_len(&self, _batch: usize) -> usize {
        0
    }
    fn saved_len(&self, _batch: usize) -> usize {
        // The R-backward reads x and R{x} themselves; nothing is lowered and kept.
        0
    }
    fn forward_flops(&self, batch: usize) -> f64 {
        2.0 * (self.out_channels * self.geometry.rows() * batch * self.geometry.plane()) as f64
    }
    fn sample_wise(&self) -> bool {
        // The kernels work one sample at a time already.
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
        let (w, b) = (B::slice(params, self.w.clone()), B::slice(params, self.b.clone()));
        let (g, o) = (&self.geometry, self.out_channels);
        let Scratch { backend, cols, .. } = sc;
        backend.conv2d_forward(g, o, w, Some(b), x, batch, false, y, cols);
    }

    fn backward<B: Backend, T: Real>(
        &self,
        pass: &Pass<'_, T, B>,
        dy: B::View<'_, T>,
        grad: Option<B::ViewMut<'_, T>>,
        dx: Option<B::ViewMut<'_, T>>,
        sc: &mut Scratch<T, B>,
    ) {
        let (g, o, batch) = (&self.geometry, self.out_channels, pass.batch);
        let plane = g.plane();
        let Scratch { backend: be, cols, .. } = sc;
        if let Some(mut grad) = grad {
            let gb = B::slice_mut(B::reborrow(&mut grad), self.b.clone());
            be.conv2d_bias_grad(dy, batch, o, plane, T::one(), false, gb);
            let gw = B::slice_mut(grad, self.w.clone());
            be.conv2d_weight_grad(g, o, pass.x, dy, batch, T::one(), false, gw, cols);
        }
        if let Some(dx) = dx {
            let w = B::slice(pass.params, self.w.clone());
            be.conv2d_input_grad(g, o, w, dy, batch, false, dx, cols);
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
        // R{y} = V ⋆ x + v_b, then + W ⋆ R{x}.
        let (g, o, batch) = (&self.geometry, self.out_channels, pass.batch);
        let (vw, vb) = (B::slice(v, self.w.clone()), B::slice(v, self.b.clone()));
        let Scratch { backend: be, cols, .. } = sc;
        be.conv2d_forward(g, o, vw, Some(vb), pass.x, batch, false, B::reborrow(&mut ry), cols);
        if let Some(rx) = rx {
            let w = B::slice(pass.params, self.w.clone());
            be.conv2d_forward(g, o, w, None, rx, batch, true, ry, cols);
        }
    }

    fn r_backward<B: Backend, T: Real>(
        &self,
        pass: &Pass<'_, T, B>,
        rp: &RPass<'_, T, B>,
        mut hv: B::ViewMut<'_, T>,
        rdx: Option<B::ViewMut<'_, T>>,
        _saved: &[B::Buffer<T>; 2],
        sc: &mut Scratch<T, B>,
    ) {
        let (g, o, batch) = (&self.geometry, self.out_channels, pass.batch);
        let plane = g.plane();
        let second_order = !rp.gauss_newton;
        let out = batch * o * plane;
        let (rdy, dy) = (B::slice(rp.rdy, 0..out), B::slice(rp.dy, 0..out));
        let Scratch { backend: be, cols, .. } = sc;
        let hb = B::slice_mut(B::reborrow(&mut hv), self.b.clone());
        be.conv2d_bias_grad(rdy, batch, o, plane, rp.alpha, true, hb);
        let mut hw = B::slice_mut(hv, self.w.clone());
        be.conv2d_weight_grad(g, o, pass.x, rdy, batch, rp.alpha, true, B::reborrow(&mut hw), cols);
        if second_order {
            if let Some(rx) = rp.rx {
                be.conv2d_weight_grad(g, o, rx, dy, batch, rp.alpha, true, hw, cols);
            }
        }
        if let Some(mut rdx) = rdx {
            let w = B::slice(pass.params, self.w.clone());
            be.conv2d_input_grad(g, o, w, rdy, batch, false, B::reborrow(&mut rdx), cols);
            if second_order {
                let vw = B::slice(rp.v, self.w.clone());
                be.conv2d_input_grad(g, o, vw, dy, batch, true, rdx, cols);
            }
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
        let g = &self.geometry;
        let (plane, in_len, o) = (g.plane(), g.input_len(), self.out_channels);
        let nw = o * g.rows();
        let Scratch { backend: be, cols, .. } = sc;
        for n in 0..batch {
            let dyn_ = B::slice(dy, n * o * plane..(n + 1) * o * plane);
            let row = B::slice_mut(B::reborrow(&mut rows), n * stride..n * stride + nw + o);
            let (gw, gb) = B::split_at_mut(row, nw);
            let xn = B::slice(x, n * in_len..(n + 1) * in_len);
            be.conv2d_weight_grad(g, o, xn, dyn_, 1, scale, false, gw, cols);
            be.conv2d_bias_grad(dyn_, 1, o, plane, scale, false, gb);
        }
    }
}
