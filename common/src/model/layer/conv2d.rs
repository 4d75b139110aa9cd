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
use crate::device::cpu::{col2im, gemm, im2col, ConvGeometry};
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

/// NCHW `[batch, channels, plane]` → `[channels, batch·plane]` (the convolution's gemm layout).
fn nchw_to_channel_major<T: Real>(
    src: &[T],
    batch: usize,
    channels: usize,
    plane: usize,
    dst: &mut [T],
) {
    let ncols = batch * plane;
    for n in 0..batch {
        for o in 0..channels {
            dst[o * ncols + n * plane..][..plane]
                .copy_from_slice(&src[(n * channels + o) * plane..][..plane]);
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

    fn forward<T: Real>(
        &self,
        params: &[T],
        x: &[T],
        batch: usize,
        y: &mut [T],
        _indices: &mut [u32],
        sc: &mut Scratch<T>,
    ) {
        // One sample at a time: its im2col matrix (C·k·k × ho·wo) stays in the L2 cache, and the
        // product W·cols is already that sample's NCHW output block.
        let g = &self.geometry;
        let (plane, r, in_len, o) = (g.plane(), g.rows(), g.input_len(), self.out_channels);
        let w = &params[self.w.clone()];
        let b = &params[self.b.clone()];
        let cols = &mut sc.cols[..r * plane];
        for n in 0..batch {
            im2col(&x[n * in_len..(n + 1) * in_len], 1, g, cols);
            let out = &mut y[n * o * plane..(n + 1) * o * plane];
            gemm(false, false, o, plane, r, T::one(), w, cols, T::zero(), out);
            for (row, &bias) in out.chunks_exact_mut(plane).zip(b) {
                row.iter_mut().for_each(|v| *v += bias);
            }
        }
    }

    fn backward<T: Real>(
        &self,
        pass: &Pass<'_, T>,
        dy: &[T],
        mut grad: Option<&mut [T]>,
        mut dx: Option<&mut [T]>,
        sc: &mut Scratch<T>,
    ) {
        // Per sample n: ∂W += δₙ·colsₙᵀ, ∂b += row sums of δₙ, and ∂xₙ = col2im(Wᵀ·δₙ), with δₙ the
        // sample's [O, ho·wo] block.
        let g = &self.geometry;
        let (plane, r, in_len, o) = (g.plane(), g.rows(), g.input_len(), self.out_channels);
        let cols = &mut sc.cols[..r * plane];
        if let Some(grad) = grad.as_deref_mut() {
            grad[self.b.clone()].iter_mut().for_each(|v| *v = T::zero());
        }
        for n in 0..pass.batch {
            let dyn_ = &dy[n * o * plane..(n + 1) * o * plane];
            if let Some(grad) = grad.as_deref_mut() {
                for (gb, row) in grad[self.b.clone()]
                    .iter_mut()
                    .zip(dyn_.chunks_exact(plane))
                {
                    *gb += row.iter().copied().sum::<T>();
                }
                im2col(&pass.x[n * in_len..(n + 1) * in_len], 1, g, cols);
                let beta = if n == 0 { T::zero() } else { T::one() };
                let gw = &mut grad[self.w.clone()];
                gemm(false, true, o, r, plane, T::one(), dyn_, cols, beta, gw);
            }
            if let Some(dx) = dx.as_deref_mut() {
                let w = &pass.params[self.w.clone()];
                gemm(true, false, r, plane, o, T::one(), w, dyn_, T::zero(), cols);
                let dxn = &mut dx[n * in_len..(n + 1) * in_len];
                dxn.iter_mut().for_each(|v| *v = T::zero());
                col2im(cols, 1, g, dxn);
            }
        }
    }

    fn r_forward<T: Real>(
        &self,
        pass: &Pass<'_, T>,
        v: &[T],
        rx: Option<&[T]>,
        ry: &mut [T],
        saved: &mut [Vec<T>; 2],
        sc: &mut Scratch<T>,
    ) {
        let g = &self.geometry;
        let (plane, r, o, batch) = (g.plane(), g.rows(), self.out_channels, pass.batch);
        let ncols = batch * plane;
        // The im2col matrices of x and R{x} are kept in `saved` for the R-backward.
        let [cols_x, cols_rx] = saved;
        let cols = &mut cols_x[..r * ncols];
        let conv = &mut sc.conv[..o * ncols];
        im2col(pass.x, batch, g, cols);
        gemm(
            false,
            false,
            o,
            ncols,
            r,
            T::one(),
            &v[self.w.clone()],
            cols,
            T::zero(),
            conv,
        );
        if let Some(rx) = rx {
            let cols = &mut cols_rx[..r * ncols];
            im2col(rx, batch, g, cols);
            let w = &pass.params[self.w.clone()];
            gemm(false, false, o, ncols, r, T::one(), w, cols, T::one(), conv);
        }
        let vb = &v[self.b.clone()];
        for n in 0..batch {
            for (c, &b) in vb.iter().enumerate() {
                let src = &conv[c * ncols + n * plane..][..plane];
                let dst = &mut ry[(n * o + c) * plane..][..plane];
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d = s + b;
                }
            }
        }
    }

    fn r_backward<T: Real>(
        &self,
        pass: &Pass<'_, T>,
        rp: &RPass<'_, T>,
        hv: &mut [T],
        rdx: Option<&mut [T]>,
        saved: &[Vec<T>; 2],
        sc: &mut Scratch<T>,
    ) {
        let g = &self.geometry;
        let (plane, r, o, batch) = (g.plane(), g.rows(), self.out_channels, pass.batch);
        let ncols = batch * plane;
        let out = batch * o * plane;
        let second_order = !rp.gauss_newton;
        // sc.conv holds [R{δ}; δ] (2·O × ncols) so that R{dcols} = Wᵀ·R{δ} + Vᵀ·δ is one product with
        // the stacked [W; V] (inner dimension 2·O).
        let (rdconv, dconv) = sc.conv[..2 * o * ncols].split_at_mut(o * ncols);
        nchw_to_channel_major(&rp.rdy[..out], batch, o, plane, rdconv);
        for (c, h) in hv[self.b.clone()].iter_mut().enumerate() {
            let s: T = rdconv[c * ncols..(c + 1) * ncols].iter().copied().sum();
            *h += rp.alpha * s;
        }
        let hw = &mut hv[self.w.clone()];
        gemm(
            false,
            true,
            o,
            r,
            ncols,
            rp.alpha,
            rdconv,
            &saved[0][..r * ncols],
            T::one(),
            hw,
        );
        if second_order {
            nchw_to_channel_major(&rp.dy[..out], batch, o, plane, dconv);
            if rp.rx.is_some() {
                let cols_rx = &saved[1][..r * ncols];
                gemm(
                    false,
                    true,
                    o,
                    r,
                    ncols,
                    rp.alpha,
                    dconv,
                    cols_rx,
                    T::one(),
                    hw,
                );
            }
        }
        if let Some(rdx) = rdx {
            let cols = &mut sc.cols[..r * ncols];
            let w = &pass.params[self.w.clone()];
            if second_order {
                let wlen = o * r;
                sc.stack.resize(2 * wlen, T::zero());
                sc.stack[..wlen].copy_from_slice(w);
                sc.stack[wlen..].copy_from_slice(&rp.v[self.w.clone()]);
                let stacked = &sc.conv[..2 * o * ncols];
                gemm(
                    true,
                    false,
                    r,
                    ncols,
                    2 * o,
                    T::one(),
                    &sc.stack,
                    stacked,
                    T::zero(),
                    cols,
                );
            } else {
                let rdconv = &sc.conv[..o * ncols];
                gemm(
                    true,
                    false,
                    r,
                    ncols,
                    o,
                    T::one(),
                    w,
                    rdconv,
                    T::zero(),
                    cols,
                );
            }
            let rdx = &mut rdx[..batch * g.input_len()];
            rdx.iter_mut().for_each(|d| *d = T::zero());
            col2im(cols, batch, g, rdx);
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
        let (plane, r, in_len, o) = (g.plane(), g.rows(), g.input_len(), self.out_channels);
        let nw = o * r;
        for n in 0..batch {
            let cols = &mut sc.cols[..r * plane];
            im2col(&x[n * in_len..(n + 1) * in_len], 1, g, cols);
            let dyn_ = &dy[n * o * plane..(n + 1) * o * plane];
            let row = &mut rows[n * stride..n * stride + nw + o];
            let (gw, gb) = row.split_at_mut(nw);
            gemm(false, true, o, r, plane, scale, dyn_, cols, T::zero(), gw);
            for (c, b) in gb.iter_mut().enumerate() {
                *b = scale * dyn_[c * plane..(c + 1) * plane].iter().copied().sum::<T>();
            }
        }
    }
}
