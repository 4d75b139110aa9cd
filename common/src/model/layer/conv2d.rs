//! `nn.Conv2d` with stride 1: y = W ⋆ x + b, a zero-padded cross-correlation; W
//! `[out_channels, in_channels, k, k]`, input `[in_channels, height, width]` per sample.
//!
//! Computed directly by the kernels of [`crate::device::cpu_conv`] (no im2col matrix): y = W ⋆ x + b,
//! ∂W = Σₙ δₙ ⋆ xₙ (the weight-gradient correlation), ∂b = Σ δ over samples and positions,
//! ∂x = W ⋆ᵀ δ (the input-gradient correlation, the adjoint of x ↦ W ⋆ x). All three are linear in
//! each argument, so the R-operator is Linear's with ⋆ for the product (Pearlmutter 1994):
//! R{y} = V ⋆ x + W ⋆ R{x} + v_b, (H·v)_W = R{δ} ⋆ x + δ ⋆ R{x}, (H·v)_b = Σ R{δ},
//! R{∂x} = W ⋆ᵀ R{δ} + V ⋆ᵀ δ. Every pass works one sample at a time, so a sample's padded input
//! and output stay in L1/L2.

use super::{LayerOps, Pass, PerSample, RPass, Scope, Scratch};
use crate::device::cpu::ConvGeometry;
use crate::device::cpu_conv::{
    conv2d_bias_grad, conv2d_forward, conv2d_input_grad, conv2d_weight_grad, conv2d_work_len,
};
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

    fn forward<T: Real>(
        &self,
        params: &[T],
        x: &[T],
        batch: usize,
        y: &mut [T],
        _indices: &mut [u32],
        sc: &mut Scratch<T>,
    ) {
        let (w, b) = (&params[self.w.clone()], &params[self.b.clone()]);
        let (g, o) = (&self.geometry, self.out_channels);
        conv2d_forward(g, o, w, Some(b), x, batch, false, y, &mut sc.cols);
    }

    fn backward<T: Real>(
        &self,
        pass: &Pass<'_, T>,
        dy: &[T],
        grad: Option<&mut [T]>,
        dx: Option<&mut [T]>,
        sc: &mut Scratch<T>,
    ) {
        let (g, o, batch) = (&self.geometry, self.out_channels, pass.batch);
        let plane = g.plane();
        if let Some(grad) = grad {
            let gb = &mut grad[self.b.clone()];
            conv2d_bias_grad(dy, batch, o, plane, T::one(), false, gb);
            let gw = &mut grad[self.w.clone()];
            conv2d_weight_grad(g, o, pass.x, dy, batch, T::one(), false, gw, &mut sc.cols);
        }
        if let Some(dx) = dx {
            let w = &pass.params[self.w.clone()];
            conv2d_input_grad(g, o, w, dy, batch, false, dx, &mut sc.cols);
        }
    }

    fn r_forward<T: Real>(
        &self,
        pass: &Pass<'_, T>,
        v: &[T],
        rx: Option<&[T]>,
        ry: &mut [T],
        _saved: &mut [Vec<T>; 2],
        sc: &mut Scratch<T>,
    ) {
        // R{y} = V ⋆ x + v_b, then + W ⋆ R{x}.
        let (g, o, batch) = (&self.geometry, self.out_channels, pass.batch);
        let (vw, vb) = (&v[self.w.clone()], &v[self.b.clone()]);
        conv2d_forward(g, o, vw, Some(vb), pass.x, batch, false, ry, &mut sc.cols);
        if let Some(rx) = rx {
            let w = &pass.params[self.w.clone()];
            conv2d_forward(g, o, w, None, rx, batch, true, ry, &mut sc.cols);
        }
    }

    fn r_backward<T: Real>(
        &self,
        pass: &Pass<'_, T>,
        rp: &RPass<'_, T>,
        hv: &mut [T],
        rdx: Option<&mut [T]>,
        _saved: &[Vec<T>; 2],
        sc: &mut Scratch<T>,
    ) {
        let (g, o, batch) = (&self.geometry, self.out_channels, pass.batch);
        let plane = g.plane();
        let second_order = !rp.gauss_newton;
        let (rdy, dy) = (&rp.rdy[..batch * o * plane], &rp.dy[..batch * o * plane]);
        let hb = &mut hv[self.b.clone()];
        conv2d_bias_grad(rdy, batch, o, plane, rp.alpha, true, hb);
        let hw = &mut hv[self.w.clone()];
        conv2d_weight_grad(g, o, pass.x, rdy, batch, rp.alpha, true, hw, &mut sc.cols);
        if second_order {
            if let Some(rx) = rp.rx {
                conv2d_weight_grad(g, o, rx, dy, batch, rp.alpha, true, hw, &mut sc.cols);
            }
        }
        if let Some(rdx) = rdx {
            let w = &pass.params[self.w.clone()];
            conv2d_input_grad(g, o, w, rdy, batch, false, rdx, &mut sc.cols);
            if second_order {
                let vw = &rp.v[self.w.clone()];
                conv2d_input_grad(g, o, vw, dy, batch, true, rdx, &mut sc.cols);
            }
        }
    }

    fn per_sample(&self) -> PerSample {
        PerSample::Materialise
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
        sc: &mut Scratch<T>,
    ) {
        let g = &self.geometry;
        let (plane, in_len, o) = (g.plane(), g.input_len(), self.out_channels);
        let nw = o * g.rows();
        for n in 0..batch {
            let dyn_ = &dy[n * o * plane..(n + 1) * o * plane];
            let row = &mut rows[n * stride..n * stride + nw + o];
            let (gw, gb) = row.split_at_mut(nw);
            let xn = &x[n * in_len..(n + 1) * in_len];
            conv2d_weight_grad(g, o, xn, dyn_, 1, scale, false, gw, &mut sc.cols);
            conv2d_bias_grad(dyn_, 1, o, plane, scale, false, gb);
        }
    }
}
