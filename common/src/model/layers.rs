//! Layers: Linear, Conv2d (each with its activation fused), 2×2 max-pool, and the softmax
//! cross-entropy loss. Each is written over the backend operations of [`crate::device::cpu`].
//!
//! Activations are applied in place on a layer's output and differentiated from that output
//! (ReLU: 1[y > 0], as PyTorch's `threshold_backward`; tanh: 1 − y²), so no pre-activation is kept.

use super::arch::Activation;
use super::layout::ParamLayout;
use crate::device::cpu::{col2im, gemm, im2col};
use crate::Real;

/// One layer of a network. `tensor` is the index of its weight in the [`ParamLayout`]; its bias is
/// `tensor + 1`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layer {
    /// y = act(x Wᵀ + b), W `[outputs, inputs]`.
    Linear {
        inputs: usize,
        outputs: usize,
        tensor: usize,
        activation: Activation,
    },
    /// y = act(W ⋆ x + b): stride-1 cross-correlation with zero padding, W
    /// `[out_channels, in_channels, kernel, kernel]`, input `[in_channels, height, width]`.
    Conv2d {
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        padding: usize,
        height: usize,
        width: usize,
        tensor: usize,
        activation: Activation,
    },
    /// 2×2 max-pool with stride 2 (the first maximum in scan order wins ties, as PyTorch's CPU kernel).
    MaxPool2 {
        channels: usize,
        height: usize,
        width: usize,
    },
}

/// Scratch buffers shared by all layers of a network.
#[derive(Clone, Debug, Default)]
pub struct Scratch<T> {
    /// im2col matrix (and its gradient): `[C·k·k, batch·ho·wo]`.
    pub cols: Vec<T>,
    /// Convolution output before the scatter to NCHW (and its gradient): `[O, batch·ho·wo]`.
    pub conv: Vec<T>,
}

impl Layer {
    /// Features per sample going in.
    pub fn in_features(&self) -> usize {
        match self {
            Layer::Linear { inputs, .. } => *inputs,
            Layer::Conv2d {
                in_channels,
                height,
                width,
                ..
            } => in_channels * height * width,
            Layer::MaxPool2 {
                channels,
                height,
                width,
            } => channels * height * width,
        }
    }

    /// Features per sample coming out.
    pub fn out_features(&self) -> usize {
        match self {
            Layer::Linear { outputs, .. } => *outputs,
            Layer::Conv2d { out_channels, .. } => {
                let (ho, wo) = self.conv_output_size();
                out_channels * ho * wo
            }
            Layer::MaxPool2 {
                channels,
                height,
                width,
            } => channels * (height / 2) * (width / 2),
        }
    }

    /// (ho, wo) of a convolution.
    pub fn conv_output_size(&self) -> (usize, usize) {
        match self {
            Layer::Conv2d {
                kernel,
                padding,
                height,
                width,
                ..
            } => (
                height + 2 * padding + 1 - kernel,
                width + 2 * padding + 1 - kernel,
            ),
            _ => (0, 0),
        }
    }

    /// Scratch sizes (cols, conv) this layer needs for a batch.
    pub fn scratch_len(&self, batch: usize) -> (usize, usize) {
        match self {
            Layer::Conv2d {
                in_channels,
                out_channels,
                kernel,
                ..
            } => {
                let _ = (out_channels, batch);
                let (ho, wo) = self.conv_output_size();
                (in_channels * kernel * kernel * ho * wo, 0)
            }
            _ => (0, 0),
        }
    }

    /// Scratch sizes (cols, conv) for a whole batch in one im2col matrix `[C·k·k, batch·ho·wo]` and
    /// one product `[O, batch·ho·wo]`, the layout of the curvature code's batched convolutions.
    pub fn batched_scratch_len(&self, batch: usize) -> (usize, usize) {
        match self {
            Layer::Conv2d {
                in_channels,
                out_channels,
                kernel,
                ..
            } => {
                let (ho, wo) = self.conv_output_size();
                (
                    in_channels * kernel * kernel * batch * ho * wo,
                    out_channels * batch * ho * wo,
                )
            }
            _ => (0, 0),
        }
    }

    /// The weight tensor index, if the layer has parameters.
    pub fn tensor(&self) -> Option<usize> {
        match self {
            Layer::Linear { tensor, .. } | Layer::Conv2d { tensor, .. } => Some(*tensor),
            Layer::MaxPool2 { .. } => None,
        }
    }

    pub fn activation(&self) -> Activation {
        match self {
            Layer::Linear { activation, .. } | Layer::Conv2d { activation, .. } => *activation,
            Layer::MaxPool2 { .. } => Activation::Identity,
        }
    }

    /// Forward pass for `batch` samples: `y ← layer(x)`. `argmax` receives the max-pool winners.
    #[allow(clippy::too_many_arguments)]
    pub fn forward<T: Real>(
        &self,
        layout: &ParamLayout,
        params: &[T],
        x: &[T],
        batch: usize,
        y: &mut [T],
        argmax: &mut [u32],
        scratch: &mut Scratch<T>,
    ) {
        match *self {
            Layer::Linear {
                inputs,
                outputs,
                tensor,
                activation,
            } => {
                let w = &params[layout.tensors[tensor].range()];
                let b = &params[layout.tensors[tensor + 1].range()];
                gemm(
                    false,
                    true,
                    batch,
                    outputs,
                    inputs,
                    T::one(),
                    x,
                    w,
                    T::zero(),
                    y,
                );
                for row in y[..batch * outputs].chunks_exact_mut(outputs) {
                    add_bias_activate(row, b, activation);
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
                activation,
            } => {
                // One sample at a time: its im2col matrix (C·k·k × ho·wo) stays in the L2 cache, and
                // the product W·cols is already that sample's NCHW output block.
                let (ho, wo) = self.conv_output_size();
                let plane = ho * wo;
                let r = in_channels * kernel * kernel;
                let in_len = in_channels * height * width;
                let w = &params[layout.tensors[tensor].range()];
                let b = &params[layout.tensors[tensor + 1].range()];
                let cols = &mut scratch.cols[..r * plane];
                for n in 0..batch {
                    im2col(
                        &x[n * in_len..(n + 1) * in_len],
                        1,
                        in_channels,
                        height,
                        width,
                        kernel,
                        padding,
                        cols,
                    );
                    let out = &mut y[n * out_channels * plane..(n + 1) * out_channels * plane];
                    gemm(
                        false,
                        false,
                        out_channels,
                        plane,
                        r,
                        T::one(),
                        w,
                        cols,
                        T::zero(),
                        out,
                    );
                    for (o, row) in out.chunks_exact_mut(plane).enumerate() {
                        add_scalar_activate(row, b[o], activation);
                    }
                }
            }
            Layer::MaxPool2 {
                channels,
                height,
                width,
            } => {
                let (ho, wo) = (height / 2, width / 2);
                for nc in 0..batch * channels {
                    let base = nc * height * width;
                    for i in 0..ho {
                        for j in 0..wo {
                            let mut best = base + 2 * i * width + 2 * j;
                            let mut m = x[best];
                            for (di, dj) in [(0, 1), (1, 0), (1, 1)] {
                                let idx = base + (2 * i + di) * width + 2 * j + dj;
                                let v = x[idx];
                                if v > m || v.is_nan() {
                                    m = v;
                                    best = idx;
                                }
                            }
                            let o = (nc * ho + i) * wo + j;
                            y[o] = m;
                            argmax[o] = best as u32;
                        }
                    }
                }
            }
        }
    }

    /// Backward pass. On entry `dy` holds ∂L/∂y; it is multiplied in place by the activation's
    /// derivative (taken from `y`). The layer's parameter gradients are written (not accumulated) into
    /// `grad`, and ∂L/∂x into `dx` when it is given.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<T: Real>(
        &self,
        layout: &ParamLayout,
        params: &[T],
        x: &[T],
        y: &[T],
        dy: &mut [T],
        batch: usize,
        argmax: &[u32],
        grad: &mut [T],
        dx: Option<&mut [T]>,
        scratch: &mut Scratch<T>,
    ) {
        let out = batch * self.out_features();
        activation_backward(self.activation(), &y[..out], &mut dy[..out]);
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
                    T::one(),
                    dy,
                    x,
                    T::zero(),
                    &mut grad[wr.clone()],
                );
                column_sums(&dy[..out], outputs, &mut grad[br]);
                if let Some(dx) = dx {
                    gemm(
                        false,
                        false,
                        batch,
                        inputs,
                        outputs,
                        T::one(),
                        dy,
                        &params[wr],
                        T::zero(),
                        dx,
                    );
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
                // Per sample n: ∂W += dy_n · cols_nᵀ, ∂b += row sums of dy_n, and
                // dx_n = col2im(Wᵀ · dy_n), with dy_n the sample's [O, ho·wo] block.
                let (ho, wo) = self.conv_output_size();
                let plane = ho * wo;
                let r = in_channels * kernel * kernel;
                let in_len = in_channels * height * width;
                let wr = layout.tensors[tensor].range();
                let br = layout.tensors[tensor + 1].range();
                let cols = &mut scratch.cols[..r * plane];
                grad[br.clone()].iter_mut().for_each(|v| *v = T::zero());
                let mut dx = dx;
                for n in 0..batch {
                    let dyn_ = &dy[n * out_channels * plane..(n + 1) * out_channels * plane];
                    for (gb, row) in grad[br.clone()].iter_mut().zip(dyn_.chunks_exact(plane)) {
                        *gb += row.iter().copied().sum::<T>();
                    }
                    let xn = &x[n * in_len..(n + 1) * in_len];
                    im2col(xn, 1, in_channels, height, width, kernel, padding, cols);
                    let beta = if n == 0 { T::zero() } else { T::one() };
                    gemm(
                        false,
                        true,
                        out_channels,
                        r,
                        plane,
                        T::one(),
                        dyn_,
                        cols,
                        beta,
                        &mut grad[wr.clone()],
                    );
                    if let Some(dx) = dx.as_deref_mut() {
                        gemm(
                            true,
                            false,
                            r,
                            plane,
                            out_channels,
                            T::one(),
                            &params[wr.clone()],
                            dyn_,
                            T::zero(),
                            cols,
                        );
                        let dxn = &mut dx[n * in_len..(n + 1) * in_len];
                        dxn.iter_mut().for_each(|v| *v = T::zero());
                        col2im(cols, 1, in_channels, height, width, kernel, padding, dxn);
                    }
                }
            }
            Layer::MaxPool2 { .. } => {
                if let Some(dx) = dx {
                    let dx = &mut dx[..batch * self.in_features()];
                    dx.iter_mut().for_each(|v| *v = T::zero());
                    for (g, &i) in dy[..out].iter().zip(&argmax[..out]) {
                        dx[i as usize] += *g;
                    }
                }
            }
        }
    }
}

#[inline]
fn add_bias_activate<T: Real>(row: &mut [T], bias: &[T], activation: Activation) {
    match activation {
        Activation::Relu => {
            for (v, &b) in row.iter_mut().zip(bias) {
                let s = *v + b;
                *v = if s > T::zero() { s } else { T::zero() };
            }
        }
        Activation::Tanh => {
            for (v, &b) in row.iter_mut().zip(bias) {
                *v = (*v + b).tanh();
            }
        }
        Activation::Identity => {
            for (v, &b) in row.iter_mut().zip(bias) {
                *v += b;
            }
        }
    }
}

#[inline]
fn add_scalar_activate<T: Real>(row: &mut [T], b: T, activation: Activation) {
    match activation {
        Activation::Relu => row.iter_mut().for_each(|v| {
            let s = *v + b;
            *v = if s > T::zero() { s } else { T::zero() };
        }),
        Activation::Tanh => row.iter_mut().for_each(|v| *v = (*v + b).tanh()),
        Activation::Identity => row.iter_mut().for_each(|v| *v += b),
    }
}

/// dy ← dy ⊙ act′, with act′ expressed through the output y.
#[inline]
fn activation_backward<T: Real>(activation: Activation, y: &[T], dy: &mut [T]) {
    match activation {
        Activation::Relu => {
            // A select, not a branch: half the units are off in no predictable pattern, and a
            // branch per element mispredicts about half the time.
            for (d, &v) in dy.iter_mut().zip(y) {
                *d = if v > T::zero() { *d } else { T::zero() };
            }
        }
        Activation::Tanh => {
            for (d, &v) in dy.iter_mut().zip(y) {
                *d *= T::one() - v * v;
            }
        }
        Activation::Identity => {}
    }
}

/// out[j] = Σ_i m[i, j] for a row-major matrix with `cols` columns.
fn column_sums<T: Real>(m: &[T], cols: usize, out: &mut [T]) {
    out.iter_mut().for_each(|v| *v = T::zero());
    for row in m.chunks_exact(cols) {
        for (o, &v) in out.iter_mut().zip(row) {
            *o += v;
        }
    }
}

/// Mean softmax cross-entropy over a batch, as `nn.CrossEntropyLoss()`:
/// L = (1/B) Σ_n [logsumexp(z_n) − z_n[y_n]], computed stably with the row maximum.
///
/// Returns (Σ_n loss_n in f64, number of rows whose arg-max is the label). When `dlogits` is given it
/// receives ∂L/∂z = (softmax(z_n) − onehot(y_n))·`scale` (scale = 1/B for the mean).
pub fn softmax_cross_entropy<T: Real>(
    logits: &[T],
    labels: &[usize],
    classes: usize,
    scale: T,
    mut dlogits: Option<&mut [T]>,
) -> (f64, usize) {
    let mut total = 0.0f64;
    let mut correct = 0usize;
    for (n, (z, &y)) in logits.chunks_exact(classes).zip(labels).enumerate() {
        let mut m = z[0];
        let mut arg = 0;
        for (c, &v) in z.iter().enumerate() {
            if v > m {
                m = v;
                arg = c;
            }
        }
        if arg == y {
            correct += 1;
        }
        match dlogits.as_deref_mut() {
            Some(d) => {
                // One exp per logit: d ← exp(z − m), then scale to (softmax − onehot)·scale.
                let d = &mut d[n * classes..(n + 1) * classes];
                let mut sum = T::zero();
                for (dv, &v) in d.iter_mut().zip(z) {
                    *dv = (v - m).exp();
                    sum += *dv;
                }
                total += (m + sum.ln() - z[y]).as_f64();
                let inv = scale / sum;
                for dv in d.iter_mut() {
                    *dv *= inv;
                }
                d[y] -= scale;
            }
            None => {
                let sum: T = z.iter().map(|&v| (v - m).exp()).sum();
                total += (m + sum.ln() - z[y]).as_f64();
            }
        }
    }
    (total, correct)
}
