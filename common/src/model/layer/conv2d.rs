//! `nn.Conv2d` with stride 1: y = W ⋆ x + b, a zero-padded cross-correlation; W
//! `[out_channels, in_channels, k, k]`, input `[in_channels, height, width]` per sample.
//!
//! Lowered to matrix products by im2col: with cols = im2col(x) (`[C·k·k, ho·wo]` per sample),
//! y = W·cols + b, ∂W = Σₙ δₙ·colsₙᵀ, ∂b = Σ δ over samples and positions, ∂x = col2im(Wᵀ·δ).
//! The R-operator is Linear's on the lowered matrices: R{y} = V·cols + W·im2col(R{x}) + v_b,
//! (H·v)_W = R{δ}·colsᵀ + δ·im2col(R{x})ᵀ, R{∂x} = col2im(Wᵀ·R{δ} + Vᵀ·δ) (Pearlmutter 1994).
//! Training lowers one sample at a time (its im2col matrix stays in cache); the R-passes lower a
//! whole chunk at once (`[C·k·k, batch·ho·wo]`).

use super::{LayerOps, Pass, PerSample, RPass, Scope, Scratch};
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
    fn scratch_len(&self, batch: usize, batched: bool) -> (usize, usize) {
        let (r, plane) = (self.geometry.rows(), self.geometry.plane());
        if batched {
            (r * batch * plane, 2 * self.out_channels * batch * plane)
        } else {
            (r * plane, 0)
        }
    }
    fn index_len(&self, _batch: usize) -> usize {
        0
    }
    fn saved_len(&self, batch: usize) -> usize {
        self.geometry.rows() * batch * self.geometry.plane()
    }
    fn forward_flops(&self, batch: usize) -> f64 {
        2.0 * (self.out_channels * self.geometry.rows() * batch * self.geometry.plane()) as f64
    }
    fn sample_wise(&self) -> bool {
        // The forward lowers and multiplies one sample at a time already.
        true
    }

    fn forward<B: Backend, T: Real>(
        &self,
        params: B::View<'_, T>,
        x: B::View<'_, T>,
        batch: usize,
        mut y: B::ViewMut<'_, T>,
        _indices: B::ViewMut<'_, u32>,
        sc: &mut Scratch<T, B>,
    ) {
        // One sample at a time: its im2col matrix (C·k·k × ho·wo) stays in the L2 cache, and the
        // product W·cols is already that sample's NCHW output block.
        let g = &self.geometry;
        let (plane, r, in_len, o) = (g.plane(), g.rows(), g.input_len(), self.out_channels);
        let w = B::slice(params, self.w.clone());
        let b = B::slice(params, self.b.clone());
        let be = &sc.backend;
        let mut cols = B::slice_mut(B::view_mut(&mut sc.cols), 0..r * plane);
        for n in 0..batch {
            let xn = B::slice(x, n * in_len..(n + 1) * in_len);
            be.im2col(xn, 1, g, B::reborrow(&mut cols));
            let mut out = B::slice_mut(B::reborrow(&mut y), n * o * plane..(n + 1) * o * plane);
            let c = B::freeze(&cols);
            be.gemm(false, false, o, plane, r, T::one(), w, c, T::zero(), B::reborrow(&mut out));
            be.add_bias_planes(out, b);
        }
    }

    fn backward<B: Backend, T: Real>(
        &self,
        pass: &Pass<'_, T, B>,
        dy: B::View<'_, T>,
        mut grad: Option<B::ViewMut<'_, T>>,
        mut dx: Option<B::ViewMut<'_, T>>,
        sc: &mut Scratch<T, B>,
    ) {
        // Per sample n: ∂W += δₙ·colsₙᵀ, ∂b += row sums of δₙ, and ∂xₙ = col2im(Wᵀ·δₙ), with δₙ the
        // sample's [O, ho·wo] block.
        let g = &self.geometry;
        let (plane, r, in_len, o) = (g.plane(), g.rows(), g.input_len(), self.out_channels);
        let be = &sc.backend;
        let mut cols = B::slice_mut(B::view_mut(&mut sc.cols), 0..r * plane);
        if let Some(grad) = grad.as_mut() {
            be.fill(B::slice_mut(B::reborrow(grad), self.b.clone()), T::zero());
        }
        for n in 0..pass.batch {
            let dyn_ = B::slice(dy, n * o * plane..(n + 1) * o * plane);
            if let Some(grad) = grad.as_mut() {
                be.row_sums(
                    T::one(),
                    dyn_,
                    true,
                    B::slice_mut(B::reborrow(grad), self.b.clone()),
                );
                let xn = B::slice(pass.x, n * in_len..(n + 1) * in_len);
                be.im2col(xn, 1, g, B::reborrow(&mut cols));
                let beta = if n == 0 { T::zero() } else { T::one() };
                let gw = B::slice_mut(B::reborrow(grad), self.w.clone());
                let c = B::freeze(&cols);
                be.gemm(false, true, o, r, plane, T::one(), dyn_, c, beta, gw);
            }
            if let Some(dx) = dx.as_mut() {
                let w = B::slice(pass.params, self.w.clone());
                be.gemm(
                    true,
                    false,
                    r,
                    plane,
                    o,
                    T::one(),
                    w,
                    dyn_,
                    T::zero(),
                    B::reborrow(&mut cols),
                );
                let mut dxn = B::slice_mut(B::reborrow(dx), n * in_len..(n + 1) * in_len);
                be.fill(B::reborrow(&mut dxn), T::zero());
                be.col2im(B::freeze(&cols), 1, g, dxn);
            }
        }
    }

    fn r_forward<B: Backend, T: Real>(
        &self,
        pass: &Pass<'_, T, B>,
        v: B::View<'_, T>,
        rx: Option<B::View<'_, T>>,
        ry: B::ViewMut<'_, T>,
        saved: &mut [B::Buffer<T>; 2],
        sc: &mut Scratch<T, B>,
    ) {
        let g = &self.geometry;
        let (plane, r, o, batch) = (g.plane(), g.rows(), self.out_channels, pass.batch);
        let ncols = batch * plane;
        let be = &sc.backend;
        // The im2col matrices of x and R{x} are kept in `saved` for the R-backward.
        let [cols_x, cols_rx] = saved;
        let mut cols = B::slice_mut(B::view_mut(cols_x), 0..r * ncols);
        let mut conv = B::slice_mut(B::view_mut(&mut sc.conv), 0..o * ncols);
        be.im2col(pass.x, batch, g, B::reborrow(&mut cols));
        be.gemm(
            false,
            false,
            o,
            ncols,
            r,
            T::one(),
            B::slice(v, self.w.clone()),
            B::freeze(&cols),
            T::zero(),
            B::reborrow(&mut conv),
        );
        if let Some(rx) = rx {
            let mut cols = B::slice_mut(B::view_mut(cols_rx), 0..r * ncols);
            be.im2col(rx, batch, g, B::reborrow(&mut cols));
            let w = B::slice(pass.params, self.w.clone());
            let c = B::freeze(&cols);
            be.gemm(false, false, o, ncols, r, T::one(), w, c, T::one(), B::reborrow(&mut conv));
        }
        let vb = B::slice(v, self.b.clone());
        be.channel_major_to_nchw_add_bias(B::freeze(&conv), vb, batch, plane, ry);
    }

    fn r_backward<B: Backend, T: Real>(
        &self,
        pass: &Pass<'_, T, B>,
        rp: &RPass<'_, T, B>,
        mut hv: B::ViewMut<'_, T>,
        rdx: Option<B::ViewMut<'_, T>>,
        saved: &[B::Buffer<T>; 2],
        sc: &mut Scratch<T, B>,
    ) {
        let g = &self.geometry;
        let (plane, r, o, batch) = (g.plane(), g.rows(), self.out_channels, pass.batch);
        let ncols = batch * plane;
        let out = batch * o * plane;
        let second_order = !rp.gauss_newton;
        let Scratch {
            backend: be,
            cols,
            conv,
            stack,
            ..
        } = sc;
        // sc.conv holds [R{δ}; δ] (2·O × ncols) so that R{dcols} = Wᵀ·R{δ} + Vᵀ·δ is one product with
        // the stacked [W; V] (inner dimension 2·O).
        let mut both = B::slice_mut(B::view_mut(conv), 0..2 * o * ncols);
        {
            let (mut rdconv, dconv) = B::split_at_mut(B::reborrow(&mut both), o * ncols);
            be.to_channel_major(
                B::slice(rp.rdy, 0..out),
                batch,
                o,
                plane,
                B::reborrow(&mut rdconv),
            );
            let rdconv = B::freeze(&rdconv);
            be.row_sums(
                rp.alpha,
                rdconv,
                true,
                B::slice_mut(B::reborrow(&mut hv), self.b.clone()),
            );
            let mut hw = B::slice_mut(B::reborrow(&mut hv), self.w.clone());
            be.gemm(
                false,
                true,
                o,
                r,
                ncols,
                rp.alpha,
                rdconv,
                B::slice(B::view(&saved[0]), 0..r * ncols),
                T::one(),
                B::reborrow(&mut hw),
            );
            if second_order {
                let mut dconv = dconv;
                be.to_channel_major(
                    B::slice(rp.dy, 0..out),
                    batch,
                    o,
                    plane,
                    B::reborrow(&mut dconv),
                );
                if rp.rx.is_some() {
                    let cols_rx = B::slice(B::view(&saved[1]), 0..r * ncols);
                    let d = B::freeze(&dconv);
                    be.gemm(false, true, o, r, ncols, rp.alpha, d, cols_rx, T::one(), hw);
                }
            }
        }
        if let Some(rdx) = rdx {
            let mut cols = B::slice_mut(B::view_mut(cols), 0..r * ncols);
            let w = B::slice(pass.params, self.w.clone());
            if second_order {
                let wlen = o * r;
                be.ensure_len(stack, 2 * wlen);
                let mut st = B::slice_mut(B::view_mut(stack), 0..2 * wlen);
                be.copy(w, B::slice_mut(B::reborrow(&mut st), 0..wlen));
                be.copy(
                    B::slice(rp.v, self.w.clone()),
                    B::slice_mut(B::reborrow(&mut st), wlen..2 * wlen),
                );
                be.gemm(
                    true,
                    false,
                    r,
                    ncols,
                    2 * o,
                    T::one(),
                    B::freeze(&st),
                    B::freeze(&both),
                    T::zero(),
                    B::reborrow(&mut cols),
                );
            } else {
                let rdconv = B::slice(B::freeze(&both), 0..o * ncols);
                be.gemm(
                    true,
                    false,
                    r,
                    ncols,
                    o,
                    T::one(),
                    w,
                    rdconv,
                    T::zero(),
                    B::reborrow(&mut cols),
                );
            }
            let mut rdx = B::slice_mut(rdx, 0..batch * g.input_len());
            be.fill(B::reborrow(&mut rdx), T::zero());
            be.col2im(B::freeze(&cols), batch, g, rdx);
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
        let (plane, r, in_len, o) = (g.plane(), g.rows(), g.input_len(), self.out_channels);
        let nw = o * r;
        let be = &sc.backend;
        let mut cols = B::slice_mut(B::view_mut(&mut sc.cols), 0..r * plane);
        for n in 0..batch {
            be.im2col(
                B::slice(x, n * in_len..(n + 1) * in_len),
                1,
                g,
                B::reborrow(&mut cols),
            );
            let dyn_ = B::slice(dy, n * o * plane..(n + 1) * o * plane);
            let row = B::slice_mut(B::reborrow(&mut rows), n * stride..n * stride + nw + o);
            let (gw, gb) = B::split_at_mut(row, nw);
            let c = B::freeze(&cols);
            be.gemm(false, true, o, r, plane, scale, dyn_, c, T::zero(), gw);
            be.row_sums(scale, dyn_, false, gb);
        }
    }
}
