//! Pearlmutter's R-operator for each layer: forward-mode differentiation, along a parameter direction
//! v, of the forward pass and of the backward pass.
//!
//! Notation for a layer with input a (`x`), pre-activation s = W·a + b (or W ⋆ a + b), output
//! y = φ(s), and, from the ordinary backward pass, δ = ∂L/∂y and ds = φ′(s) ⊙ δ. R{·} is the
//! directional derivative d/dε at ε = 0 of a quantity computed at θ + ε·v (Pearlmutter 1994, "Fast
//! exact multiplication by the Hessian"):
//!
//! - R-forward: R{s} = V_W·a + W·R{a} + V_b, R{y} = φ′(s) ⊙ R{s}; max-pool: R{y} = R{a} at the forward's
//!   arg-max (the pool is linear where the winners do not change).
//! - R-backward: R{ds} = φ′(s) ⊙ R{δ} + φ″(s) ⊙ R{s} ⊙ δ (for tanh φ″(s)·δ = −2y ⊙ ds, zero for
//!   ReLU and identity); (H·v)_W = R{ds}ᵀ·a + dsᵀ·R{a}; (H·v)_b = Σ R{ds};
//!   R{δ_prev} = R{ds}·W + ds·V_W.
//!
//! The terms with ds (the last two of the weight block and of R{δ_prev}, and the φ″ term) couple
//! the parameters of different layers and make the product the exact Hessian; dropping them
//! (`gauss_newton = true`) leaves the Gauss–Newton product Jᵀ·A·J·v. Every matrix product goes
//! through [`crate::device::cpu`].

use crate::device::cpu::{col2im, gemm, im2col};
use crate::model::{Activation, Layer, ParamLayout};
use crate::Real;

/// Scratch buffers of the R-passes, shared by all layers: an im2col matrix, room for two stacked
/// convolution outputs in `[out_channels, batch·ho·wo]` layout, and a stacked weight pair.
#[derive(Clone, Debug, Default)]
pub(crate) struct RScratch<T> {
    pub cols: Vec<T>,
    pub conv_a: Vec<T>,
    pub stack: Vec<T>,
}

impl<T: Real> RScratch<T> {
    /// Scratch sized for the largest layer of `layers` at `batch` samples.
    pub fn new(layers: &[Layer], batch: usize) -> Self {
        let (cols, conv) = layers
            .iter()
            .map(|l| l.batched_scratch_len(batch))
            .fold((0, 0), |(a, b), (c, d)| (a.max(c), b.max(d)));
        RScratch {
            cols: vec![T::zero(); cols],
            conv_a: vec![T::zero(); 2 * conv],
            stack: Vec::new(),
        }
    }
}

/// Per-layer im2col buffers kept from the R-forward to the R-backward (empty for non-convolutions).
pub(crate) fn saved_cols<T: Real>(layers: &[Layer], batch: usize) -> Vec<[Vec<T>; 2]> {
    layers
        .iter()
        .map(|l| {
            let (cols, _) = l.batched_scratch_len(batch);
            [vec![T::zero(); cols], vec![T::zero(); cols]]
        })
        .collect()
}

/// φ′ expressed through the output y: ReLU 1[y > 0] (PyTorch's `threshold_backward`), tanh 1 − y²,
/// identity 1.
#[inline]
fn derivative_from_output<T: Real>(activation: Activation, y: T) -> T {
    match activation {
        Activation::Relu => {
            if y > T::zero() {
                T::one()
            } else {
                T::zero()
            }
        }
        Activation::Tanh => T::one() - y * y,
        Activation::Identity => T::one(),
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

impl Layer {
    /// R-forward of one layer for `batch` samples. A convolution leaves the im2col matrices of x
    /// and R{x} in `saved` for [`Layer::r_backward`]. `v` is the full flat direction; `rx` is R{x} (None
    /// when the input does not depend on θ, i.e. for the first layer); `y` and `argmax` are the
    /// forward pass's output and pool winners. Writes R{s} into `rs` and R{y} into `ry` (for
    /// max-pool only `ry`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn r_forward<T: Real>(
        &self,
        layout: &ParamLayout,
        params: &[T],
        v: &[T],
        x: &[T],
        rx: Option<&[T]>,
        y: &[T],
        batch: usize,
        argmax: &[u32],
        rs: &mut [T],
        ry: &mut [T],
        saved: &mut [Vec<T>; 2],
        sc: &mut RScratch<T>,
    ) {
        let out = batch * self.out_features();
        match *self {
            Layer::Linear {
                inputs,
                outputs,
                tensor,
                ..
            } => {
                let wr = layout.tensors[tensor].range();
                let vb = &v[layout.tensors[tensor + 1].range()];
                gemm(
                    false,
                    true,
                    batch,
                    outputs,
                    inputs,
                    T::one(),
                    x,
                    &v[wr.clone()],
                    T::zero(),
                    rs,
                );
                if let Some(rx) = rx {
                    gemm(
                        false,
                        true,
                        batch,
                        outputs,
                        inputs,
                        T::one(),
                        rx,
                        &params[wr],
                        T::one(),
                        rs,
                    );
                }
                for row in rs[..out].chunks_exact_mut(outputs) {
                    for (r, &b) in row.iter_mut().zip(vb) {
                        *r += b;
                    }
                }
            }
            Layer::Conv2d {
                in_channels,
                out_channels,
                kernel,
                padding,
                height,
                width,
                tensor,
                ..
            } => {
                let (ho, wo) = self.conv_output_size();
                let plane = ho * wo;
                let r = in_channels * kernel * kernel;
                let ncols = batch * plane;
                let wr = layout.tensors[tensor].range();
                let vb = &v[layout.tensors[tensor + 1].range()];
                // The im2col matrices of x and R{x} are kept in `saved` for the R-backward.
                let [cols_x, cols_rx] = saved;
                let cols = &mut cols_x[..r * ncols];
                let conv = &mut sc.conv_a[..out_channels * ncols];
                im2col(x, batch, in_channels, height, width, kernel, padding, cols);
                gemm(
                    false,
                    false,
                    out_channels,
                    ncols,
                    r,
                    T::one(),
                    &v[wr.clone()],
                    cols,
                    T::zero(),
                    conv,
                );
                if let Some(rx) = rx {
                    let cols = &mut cols_rx[..r * ncols];
                    im2col(rx, batch, in_channels, height, width, kernel, padding, cols);
                    gemm(
                        false,
                        false,
                        out_channels,
                        ncols,
                        r,
                        T::one(),
                        &params[wr],
                        cols,
                        T::one(),
                        conv,
                    );
                }
                for n in 0..batch {
                    for o in 0..out_channels {
                        let src = &conv[o * ncols + n * plane..][..plane];
                        let dst = &mut rs[(n * out_channels + o) * plane..][..plane];
                        for (d, &s) in dst.iter_mut().zip(src) {
                            *d = s + vb[o];
                        }
                    }
                }
            }
            Layer::MaxPool2 { .. } => {
                match rx {
                    Some(rx) => {
                        for (r, &i) in ry[..out].iter_mut().zip(&argmax[..out]) {
                            *r = rx[i as usize];
                        }
                    }
                    None => ry[..out].iter_mut().for_each(|r| *r = T::zero()),
                }
                return;
            }
        }
        let act = self.activation();
        for ((r, &s), &yv) in ry[..out].iter_mut().zip(&rs[..out]).zip(&y[..out]) {
            *r = derivative_from_output(act, yv) * s;
        }
    }

    /// R-backward of one layer. On entry `rdelta` holds R{δ} (δ = ∂L/∂y); it is turned in place into
    /// R{ds}. `ds` is the ordinary backward's ∂L/∂s of this layer (for max-pool: ∂L/∂y), `rs` the
    /// R-forward's R{s}; `saved` what the R-forward left there. The layer's block of H·v (or G·v) times `alpha` is added into `hv` (full
    /// length P); R{δ} of the layer's input is written into `rdx` when given. With `gauss_newton`
    /// the terms in ds are dropped.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn r_backward<T: Real>(
        &self,
        layout: &ParamLayout,
        params: &[T],
        v: &[T],
        x: &[T],
        rx: Option<&[T]>,
        y: &[T],
        ds: &[T],
        rs: &[T],
        rdelta: &mut [T],
        batch: usize,
        argmax: &[u32],
        alpha: T,
        hv: &mut [T],
        rdx: Option<&mut [T]>,
        gauss_newton: bool,
        saved: &[Vec<T>; 2],
        sc: &mut RScratch<T>,
    ) {
        let out = batch * self.out_features();
        let act = self.activation();
        let rds = &mut rdelta[..out];
        for (r, &yv) in rds.iter_mut().zip(&y[..out]) {
            *r *= derivative_from_output(act, yv);
        }
        if act == Activation::Tanh && !gauss_newton {
            // φ″(s)·δ = −2·y·(1 − y²)·δ = −2·y·ds.
            let two = T::of_f64(2.0);
            for (((r, &yv), &s), &d) in rds
                .iter_mut()
                .zip(&y[..out])
                .zip(&rs[..out])
                .zip(&ds[..out])
            {
                *r -= two * yv * s * d;
            }
        }
        let second_order = !gauss_newton;
        match *self {
            Layer::Linear {
                inputs,
                outputs,
                tensor,
                ..
            } => {
                let wr = layout.tensors[tensor].range();
                let br = layout.tensors[tensor + 1].range();
                gemm(
                    true,
                    false,
                    outputs,
                    inputs,
                    batch,
                    alpha,
                    rds,
                    x,
                    T::one(),
                    &mut hv[wr.clone()],
                );
                if let (Some(rx), true) = (rx, second_order) {
                    gemm(
                        true,
                        false,
                        outputs,
                        inputs,
                        batch,
                        alpha,
                        ds,
                        rx,
                        T::one(),
                        &mut hv[wr.clone()],
                    );
                }
                let hb = &mut hv[br];
                for row in rds.chunks_exact(outputs) {
                    for (h, &r) in hb.iter_mut().zip(row) {
                        *h += alpha * r;
                    }
                }
                if let Some(rdx) = rdx {
                    gemm(
                        false,
                        false,
                        batch,
                        inputs,
                        outputs,
                        T::one(),
                        rds,
                        &params[wr.clone()],
                        T::zero(),
                        rdx,
                    );
                    if second_order {
                        gemm(
                            false,
                            false,
                            batch,
                            inputs,
                            outputs,
                            T::one(),
                            ds,
                            &v[wr],
                            T::one(),
                            rdx,
                        );
                    }
                }
            }
            Layer::Conv2d {
                in_channels,
                out_channels,
                kernel,
                padding,
                height,
                width,
                tensor,
                ..
            } => {
                let (ho, wo) = self.conv_output_size();
                let plane = ho * wo;
                let r = in_channels * kernel * kernel;
                let ncols = batch * plane;
                let wr = layout.tensors[tensor].range();
                let br = layout.tensors[tensor + 1].range();
                // conv_a holds [R{dconv}; dconv] (2·O × ncols) so that R{dcols} = Wᵀ·R{dconv} + Vᵀ·dconv
                // is one product with the stacked [W; V] (inner dimension 2·O).
                let (rdconv, dconv) =
                    sc.conv_a[..2 * out_channels * ncols].split_at_mut(out_channels * ncols);
                nchw_to_channel_major(rds, batch, out_channels, plane, rdconv);
                for (o, h) in hv[br].iter_mut().enumerate() {
                    let s: T = rdconv[o * ncols..(o + 1) * ncols].iter().copied().sum();
                    *h += alpha * s;
                }
                // im2col of x and R{x}, saved by the R-forward.
                gemm(
                    false,
                    true,
                    out_channels,
                    r,
                    ncols,
                    alpha,
                    rdconv,
                    &saved[0][..r * ncols],
                    T::one(),
                    &mut hv[wr.clone()],
                );
                if second_order {
                    nchw_to_channel_major(&ds[..out], batch, out_channels, plane, dconv);
                    if rx.is_some() {
                        gemm(
                            false,
                            true,
                            out_channels,
                            r,
                            ncols,
                            alpha,
                            dconv,
                            &saved[1][..r * ncols],
                            T::one(),
                            &mut hv[wr.clone()],
                        );
                    }
                }
                if let Some(rdx) = rdx {
                    let cols = &mut sc.cols[..r * ncols];
                    if second_order {
                        let wlen = out_channels * r;
                        sc.stack.resize(2 * wlen, T::zero());
                        sc.stack[..wlen].copy_from_slice(&params[wr.clone()]);
                        sc.stack[wlen..].copy_from_slice(&v[wr]);
                        gemm(
                            true,
                            false,
                            r,
                            ncols,
                            2 * out_channels,
                            T::one(),
                            &sc.stack,
                            &sc.conv_a[..2 * out_channels * ncols],
                            T::zero(),
                            cols,
                        );
                    } else {
                        gemm(
                            true,
                            false,
                            r,
                            ncols,
                            out_channels,
                            T::one(),
                            &params[wr],
                            &sc.conv_a[..out_channels * ncols],
                            T::zero(),
                            cols,
                        );
                    }
                    let rdx = &mut rdx[..batch * in_channels * height * width];
                    rdx.iter_mut().for_each(|d| *d = T::zero());
                    col2im(
                        cols,
                        batch,
                        in_channels,
                        height,
                        width,
                        kernel,
                        padding,
                        rdx,
                    );
                }
            }
            Layer::MaxPool2 { .. } => {
                if let Some(rdx) = rdx {
                    let rdx = &mut rdx[..batch * self.in_features()];
                    rdx.iter_mut().for_each(|d| *d = T::zero());
                    for (g, &i) in rds.iter().zip(&argmax[..out]) {
                        rdx[i as usize] += *g;
                    }
                }
            }
        }
    }

    /// Backpropagates an output cotangent through the layer's input only (no parameter gradient):
    /// `delta` (∂/∂y on entry) becomes ∂/∂s = φ′ ⊙ delta in place, and ∂/∂x is written into `dx`.
    /// Used by the exact trace, which needs the per-sample ∂/∂s of every layer for C seeds.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn backprop_input<T: Real>(
        &self,
        layout: &ParamLayout,
        params: &[T],
        y: &[T],
        delta: &mut [T],
        batch: usize,
        argmax: &[u32],
        dx: Option<&mut [T]>,
        sc: &mut RScratch<T>,
    ) {
        let out = batch * self.out_features();
        let act = self.activation();
        for (d, &yv) in delta[..out].iter_mut().zip(&y[..out]) {
            *d *= derivative_from_output(act, yv);
        }
        let Some(dx) = dx else { return };
        match *self {
            Layer::Linear {
                inputs,
                outputs,
                tensor,
                ..
            } => {
                let w = &params[layout.tensors[tensor].range()];
                gemm(
                    false,
                    false,
                    batch,
                    inputs,
                    outputs,
                    T::one(),
                    delta,
                    w,
                    T::zero(),
                    dx,
                );
            }
            Layer::Conv2d {
                in_channels,
                out_channels,
                kernel,
                padding,
                height,
                width,
                tensor,
                ..
            } => {
                let (ho, wo) = self.conv_output_size();
                let plane = ho * wo;
                let r = in_channels * kernel * kernel;
                let ncols = batch * plane;
                let w = &params[layout.tensors[tensor].range()];
                let dconv = &mut sc.conv_a[..out_channels * ncols];
                nchw_to_channel_major(&delta[..out], batch, out_channels, plane, dconv);
                let cols = &mut sc.cols[..r * ncols];
                gemm(
                    true,
                    false,
                    r,
                    ncols,
                    out_channels,
                    T::one(),
                    w,
                    dconv,
                    T::zero(),
                    cols,
                );
                let dx = &mut dx[..batch * in_channels * height * width];
                dx.iter_mut().for_each(|d| *d = T::zero());
                col2im(cols, batch, in_channels, height, width, kernel, padding, dx);
            }
            Layer::MaxPool2 { .. } => {
                let dx = &mut dx[..batch * self.in_features()];
                dx.iter_mut().for_each(|d| *d = T::zero());
                for (g, &i) in delta[..out].iter().zip(&argmax[..out]) {
                    dx[i as usize] += *g;
                }
            }
        }
    }
}

/// R-operator of the mean softmax cross-entropy's gradient with respect to the logits:
/// g = scale·(p − onehot(y)) ⇒ R{g} = scale·A·R{z} with A = diag(p) − p·pᵀ, p = softmax(z).
/// `logits` and `rz` are `batch × classes`; the result goes into `rg`. (The label drops out: A does
/// not depend on it.)
pub(crate) fn softmax_ce_r<T: Real>(
    logits: &[T],
    rz: &[T],
    classes: usize,
    scale: T,
    rg: &mut [T],
) {
    for ((z, r), g) in logits
        .chunks_exact(classes)
        .zip(rz.chunks_exact(classes))
        .zip(rg.chunks_exact_mut(classes))
    {
        let m = z.iter().copied().fold(T::neg_infinity(), T::max);
        let mut sum = T::zero();
        for (gi, &zi) in g.iter_mut().zip(z) {
            *gi = (zi - m).exp();
            sum += *gi;
        }
        let mut pr = T::zero();
        for (gi, &ri) in g.iter_mut().zip(r) {
            *gi = *gi / sum;
            pr += *gi * ri;
        }
        for (gi, &ri) in g.iter_mut().zip(r) {
            *gi = scale * *gi * (ri - pr);
        }
    }
}

/// Softmax probabilities of each row of `logits` (`batch × classes`), into `p`.
pub(crate) fn softmax_rows<T: Real>(logits: &[T], classes: usize, p: &mut [T]) {
    for (z, q) in logits
        .chunks_exact(classes)
        .zip(p.chunks_exact_mut(classes))
    {
        let m = z.iter().copied().fold(T::neg_infinity(), T::max);
        let mut sum = T::zero();
        for (qi, &zi) in q.iter_mut().zip(z) {
            *qi = (zi - m).exp();
            sum += *qi;
        }
        q.iter_mut().for_each(|qi| *qi = *qi / sum);
    }
}
