//! `nn.Conv2d`: y = W ⋆ x + b, a zero-padded, strided cross-correlation; W
//! `[out_channels, in_channels, k, k]`, input `[in_channels, height, width]` per sample, the bias
//! optional (`bias=False`).
//!
//! With stride 1 it is computed directly by the backend's convolution operations (on the CPU the
//! kernels of [`crate::device::cpu_conv`], no im2col matrix); with a larger stride, one sample at a
//! time, by lowering (`im2col`, then a product with W; Chellapilla et al. 2006, "High performance
//! convolutional neural networks for document processing"): y = W·cols(x) + b, ∂W = Σₙ δₙ·cols(xₙ)ᵀ,
//! ∂x = col2im(Wᵀ·δ). Either way y = W ⋆ x + b, ∂W = Σₙ δₙ ⋆ xₙ (the weight-gradient
//! correlation), ∂b = Σ δ over samples and positions, ∂x = W ⋆ᵀ δ (the adjoint of x ↦ W ⋆ x).
//! All three are linear in each argument, so the R-operator is Linear's with ⋆ for the product
//! (Pearlmutter 1994): R{y} = V ⋆ x + W ⋆ R{x} + v_b, (H·v)_W = R{δ} ⋆ x + δ ⋆ R{x},
//! (H·v)_b = Σ R{δ}, R{∂x} = W ⋆ᵀ R{δ} + V ⋆ᵀ δ. Every pass works one sample at a time, so a
//! sample's padded input and output stay in L1/L2.

use super::{LayerOps, Pass, PerSample, RPass, Scope, Scratch};
use crate::device::cpu_conv::conv2d_work_len;
use crate::device::{Backend, ConvGeometry};
use crate::model::layout::Init;
use crate::Real;
use std::ops::Range;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conv2d {
    /// The input's channels, height and width, the kernel size, the padding and the stride.
    pub geometry: ConvGeometry,
    pub out_channels: usize,
    /// Index of the weight in the layout; the bias, when there is one, is the next tensor.
    pub weight: usize,
    w: Range<usize>,
    /// Empty without a bias.
    b: Range<usize>,
}

impl Conv2d {
    /// `weight` `[out_channels, channels, k, k]` and `bias` `[out_channels]` in `scope`, PyTorch's
    /// default initialisation.
    pub fn new(scope: &mut Scope<'_>, geometry: ConvGeometry, out_channels: usize) -> Self {
        Conv2d::with_bias(scope, geometry, out_channels, true)
    }

    /// [`Conv2d::new`], with a `bias` tensor only when `bias` (`nn.Conv2d(…, bias=False)`
    /// otherwise).
    pub fn with_bias(
        scope: &mut Scope<'_>,
        geometry: ConvGeometry,
        out_channels: usize,
        bias: bool,
    ) -> Self {
        let g = geometry;
        let init = Init::torch_default(g.rows());
        let weight = scope.tensor(
            "weight",
            vec![out_channels, g.channels, g.kernel, g.kernel],
            init,
        );
        let w = scope.range(weight);
        let b = if bias {
            let index = scope.tensor("bias", vec![out_channels], init);
            scope.range(index)
        } else {
            w.end..w.end
        };
        Conv2d {
            geometry,
            out_channels,
            weight,
            w,
            b,
        }
    }

    /// (ho, wo) of the output.
    pub fn output_size(&self) -> (usize, usize) {
        self.geometry.output_size()
    }

    /// Whether it has a bias tensor.
    pub fn has_bias(&self) -> bool {
        !self.b.is_empty()
    }

    /// Whether the direct kernels compute it (stride 1); otherwise it is lowered.
    fn direct(&self) -> bool {
        self.geometry.stride == 1
    }

    /// The im2col matrix of one sample, `[C·k·k, ho·wo]` (the lowered route's scratch).
    fn cols_len(&self) -> usize {
        self.geometry.rows() * self.geometry.plane()
    }

    /// y (+)= W ⋆ x + b for `batch` samples (the bias only when given).
    #[allow(clippy::too_many_arguments)]
    fn correlate<B: Backend, T: Real>(
        &self,
        be: &B,
        w: B::View<'_, T>,
        bias: Option<B::View<'_, T>>,
        x: B::View<'_, T>,
        batch: usize,
        accumulate: bool,
        mut y: B::ViewMut<'_, T>,
        cols: &mut B::Buffer<T>,
    ) {
        let (g, o) = (&self.geometry, self.out_channels);
        if self.direct() {
            return be.conv2d_forward(g, o, w, bias, x, batch, accumulate, y, cols);
        }
        let (rows, plane, in_len) = (g.rows(), g.plane(), g.input_len());
        be.ensure_len(cols, self.cols_len());
        let beta = if accumulate { T::one() } else { T::zero() };
        for n in 0..batch {
            let colsn = B::slice_mut(B::view_mut(cols), 0..rows * plane);
            be.im2col(B::slice(x, n * in_len..(n + 1) * in_len), 1, g, colsn);
            let yn = B::slice_mut(B::reborrow(&mut y), n * o * plane..(n + 1) * o * plane);
            let colsn = B::slice(B::view(cols), 0..rows * plane);
            be.gemm(false, false, o, plane, rows, T::one(), w, colsn, beta, yn);
            if let Some(bias) = bias {
                let yn = B::slice_mut(B::reborrow(&mut y), n * o * plane..(n + 1) * o * plane);
                be.add_bias_planes(yn, bias);
            }
        }
    }

    /// dx (+)= W ⋆ᵀ dy for `batch` samples.
    #[allow(clippy::too_many_arguments)]
    fn correlate_adjoint<B: Backend, T: Real>(
        &self,
        be: &B,
        w: B::View<'_, T>,
        dy: B::View<'_, T>,
        batch: usize,
        accumulate: bool,
        mut dx: B::ViewMut<'_, T>,
        cols: &mut B::Buffer<T>,
    ) {
        let (g, o) = (&self.geometry, self.out_channels);
        if self.direct() {
            return be.conv2d_input_grad(g, o, w, dy, batch, accumulate, dx, cols);
        }
        let (rows, plane, in_len) = (g.rows(), g.plane(), g.input_len());
        be.ensure_len(cols, self.cols_len());
        if !accumulate {
            be.fill(B::slice_mut(B::reborrow(&mut dx), 0..batch * in_len), T::zero());
        }
        for n in 0..batch {
            let dyn_ = B::slice(dy, n * o * plane..(n + 1) * o * plane);
            let dcols = B::slice_mut(B::view_mut(cols), 0..rows * plane);
            be.gemm(true, false, rows, plane, o, T::one(), w, dyn_, T::zero(), dcols);
            let dxn = B::slice_mut(B::reborrow(&mut dx), n * in_len..(n + 1) * in_len);
            be.col2im(B::slice(B::view(cols), 0..rows * plane), 1, g, dxn);
        }
    }

    /// dw (+)= alpha·Σₙ dyₙ ⋆ xₙ for `batch` samples.
    #[allow(clippy::too_many_arguments)]
    fn correlate_weight<B: Backend, T: Real>(
        &self,
        be: &B,
        x: B::View<'_, T>,
        dy: B::View<'_, T>,
        batch: usize,
        alpha: T,
        accumulate: bool,
        mut dw: B::ViewMut<'_, T>,
        cols: &mut B::Buffer<T>,
    ) {
        let (g, o) = (&self.geometry, self.out_channels);
        if self.direct() {
            return be.conv2d_weight_grad(g, o, x, dy, batch, alpha, accumulate, dw, cols);
        }
        let (rows, plane, in_len) = (g.rows(), g.plane(), g.input_len());
        be.ensure_len(cols, self.cols_len());
        for n in 0..batch {
            let colsn = B::slice_mut(B::view_mut(cols), 0..rows * plane);
            be.im2col(B::slice(x, n * in_len..(n + 1) * in_len), 1, g, colsn);
            let dyn_ = B::slice(dy, n * o * plane..(n + 1) * o * plane);
            let beta = if accumulate || n > 0 { T::one() } else { T::zero() };
            let dw = B::slice_mut(B::reborrow(&mut dw), 0..o * rows);
            let colsn = B::slice(B::view(cols), 0..rows * plane);
            be.gemm(false, true, o, rows, plane, alpha, dyn_, colsn, beta, dw);
        }
        if batch == 0 && !accumulate {
            be.fill(B::slice_mut(dw, 0..o * rows), T::zero());
        }
    }
}

impl Conv2d {
    /// ∂b = Σ δ and ∂W = Σₙ δₙ ⋆ xₙ into `grad` (written) when it is given.
    fn parameter_gradients<B: Backend, T: Real>(
        &self,
        pass: &Pass<'_, T, B>,
        dy: B::View<'_, T>,
        grad: Option<B::ViewMut<'_, T>>,
        sc: &mut Scratch<T, B>,
    ) {
        let (o, batch) = (self.out_channels, pass.batch);
        let plane = self.geometry.plane();
        let Scratch { backend: be, cols, .. } = sc;
        if let Some(mut grad) = grad {
            if self.has_bias() {
                let gb = B::slice_mut(B::reborrow(&mut grad), self.b.clone());
                be.conv2d_bias_grad(dy, batch, o, plane, T::one(), false, gb);
            }
            let gw = B::slice_mut(grad, self.w.clone());
            self.correlate_weight(be, pass.x, dy, batch, T::one(), false, gw, cols);
        }
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
        self.weight..self.weight + 1 + usize::from(self.has_bias())
    }
    fn piecewise_linear(&self) -> bool {
        true
    }
    fn scratch_len(&self, _batch: usize, _batched: bool) -> (usize, usize) {
        if self.direct() {
            // One sample's padded input and flat output, reused for every sample (see cpu_conv).
            (conv2d_work_len(&self.geometry, self.out_channels), 0)
        } else {
            // One sample's im2col matrix.
            (self.cols_len(), 0)
        }
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
        // Both routes work one sample at a time already.
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
        let w = B::slice(params, self.w.clone());
        let b = self.has_bias().then(|| B::slice(params, self.b.clone()));
        let Scratch { backend, cols, .. } = sc;
        self.correlate(backend, w, b, x, batch, false, y, cols);
    }

    fn backward<B: Backend, T: Real>(
        &self,
        pass: &Pass<'_, T, B>,
        dy: B::View<'_, T>,
        grad: Option<B::ViewMut<'_, T>>,
        dx: Option<B::ViewMut<'_, T>>,
        sc: &mut Scratch<T, B>,
    ) {
        self.parameter_gradients(pass, dy, grad, sc);
        if let Some(dx) = dx {
            let Scratch { backend: be, cols, .. } = sc;
            let w = B::slice(pass.params, self.w.clone());
            self.correlate_adjoint(be, w, dy, pass.batch, false, dx, cols);
        }
    }

    /// The direct route writes ∂x = 1[x > 0] ⊙ W ⋆ᵀ δ in one pass
    /// ([`Backend::conv2d_input_grad_gated`]); the lowered route has no such pass.
    fn backward_gated<B: Backend, T: Real>(
        &self,
        pass: &Pass<'_, T, B>,
        dy: B::View<'_, T>,
        grad: Option<B::ViewMut<'_, T>>,
        dx: B::ViewMut<'_, T>,
        sc: &mut Scratch<T, B>,
    ) -> bool {
        if !self.direct() {
            return false;
        }
        self.parameter_gradients(pass, dy, grad, sc);
        let Scratch { backend: be, cols, .. } = sc;
        let (g, o, batch) = (&self.geometry, self.out_channels, pass.batch);
        let w = B::slice(pass.params, self.w.clone());
        let x = B::slice(pass.x, 0..batch * g.input_len());
        be.conv2d_input_grad_gated(g, o, w, dy, batch, x, dx, cols);
        true
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
        let batch = pass.batch;
        let vw = B::slice(v, self.w.clone());
        let vb = self.has_bias().then(|| B::slice(v, self.b.clone()));
        let Scratch { backend: be, cols, .. } = sc;
        self.correlate(be, vw, vb, pass.x, batch, false, B::reborrow(&mut ry), cols);
        if let Some(rx) = rx {
            let w = B::slice(pass.params, self.w.clone());
            self.correlate(be, w, None, rx, batch, true, ry, cols);
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
        let (o, batch) = (self.out_channels, pass.batch);
        let plane = self.geometry.plane();
        let second_order = !rp.gauss_newton;
        let out = batch * o * plane;
        let (rdy, dy) = (B::slice(rp.rdy, 0..out), B::slice(rp.dy, 0..out));
        let Scratch { backend: be, cols, .. } = sc;
        if self.has_bias() {
            let hb = B::slice_mut(B::reborrow(&mut hv), self.b.clone());
            be.conv2d_bias_grad(rdy, batch, o, plane, rp.alpha, true, hb);
        }
        let mut hw = B::slice_mut(hv, self.w.clone());
        let a = rp.alpha;
        self.correlate_weight(be, pass.x, rdy, batch, a, true, B::reborrow(&mut hw), cols);
        if second_order {
            if let Some(rx) = rp.rx {
                self.correlate_weight(be, rx, dy, batch, a, true, hw, cols);
            }
        }
        if let Some(mut rdx) = rdx {
            let w = B::slice(pass.params, self.w.clone());
            self.correlate_adjoint(be, w, rdy, batch, false, B::reborrow(&mut rdx), cols);
            if second_order {
                let vw = B::slice(rp.v, self.w.clone());
                self.correlate_adjoint(be, vw, dy, batch, true, rdx, cols);
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
        let nb = self.b.len();
        let Scratch { backend: be, cols, .. } = sc;
        for n in 0..batch {
            let dyn_ = B::slice(dy, n * o * plane..(n + 1) * o * plane);
            let row = B::slice_mut(B::reborrow(&mut rows), n * stride..n * stride + nw + nb);
            let (gw, gb) = B::split_at_mut(row, nw);
            let xn = B::slice(x, n * in_len..(n + 1) * in_len);
            self.correlate_weight(be, xn, dyn_, 1, scale, false, gw, cols);
            if nb > 0 {
                be.conv2d_bias_grad(dyn_, 1, o, plane, scale, false, gb);
            }
        }
    }
}
