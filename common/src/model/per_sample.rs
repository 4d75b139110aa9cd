//! Per-sample gradients of a batch, as the three products exact natural-gradient methods need:
//! the Gram matrix K = G Gᵀ, G v and Gᵀ c, where G ∈ R^{B×P} stacks the per-sample gradients
//! gₙ = ∂ℓₙ/∂θ of the unscaled per-sample losses ℓₙ.
//!
//! They are read from a [`Workspace`] after [`Network::loss_and_gradient`] on the same batch: the
//! layer inputs (`acts`) and ∂L/∂(pre-activation) (`deltas`, already multiplied by the activation's
//! derivative). L is the batch mean, so the per-sample deltas are B·`deltas`.
//!
//! Linear layers never materialise per-sample gradients: with inputs A (B×in) and output gradients
//! Δ (B×out), gₙ = [δₙ aₙᵀ, δₙ] (weight, bias), so G Gᵀ = (A Aᵀ + 1) ⊙ (Δ Δᵀ), (G v)ₙ = δₙᵀ V aₙ + δₙ·v_b
//! and Gᵀ c = [Δᵀ diag(c) A, Δᵀ c] (the "Gram of a Linear layer" identity, e.g. Goodfellow 2015,
//! "Efficient per-example gradient computations"). Convolutions materialise theirs, one im2col and
//! one gemm per sample, into a B × P_conv matrix.

use super::arch::Activation;
use super::layers::{softmax_cross_entropy, Layer};
use super::network::{Network, Workspace};
use crate::device::cpu::{gemm, im2col};
use crate::Real;

/// Buffers for the per-sample products of one batch size.
#[derive(Clone, Debug, Default)]
pub struct PerSampleScratch<T> {
    batch: usize,
    /// Per-sample gradients of the convolution layers: `B × P_conv`, each row the blocks
    /// (weight, bias) of every convolution in layer order.
    conv_grads: Vec<T>,
    /// (layer index, first parameter, end) of each convolution's contiguous weight+bias block, and its
    /// column offset in `conv_grads`.
    conv_blocks: Vec<(usize, usize, usize, usize)>,
    conv_params: usize,
    cols: Vec<T>,
    tmp: Vec<T>,
    aat: Vec<T>,
    ddt: Vec<T>,
    vec_c: Vec<T>,
}

impl Network {
    /// Forward and backward of the mean cross-entropy on a batch, leaving in `ws` what the
    /// per-sample products read (layer outputs and ∂L/∂(pre-activation) of every layer) without the
    /// parameter gradient: for networks of Linear layers only the input-gradient products are done
    /// (dx = δ·W), saving one gemm per layer; other networks run [`Network::loss_and_gradient`] with
    /// `grad_scratch` (length P) as the gradient buffer. Returns the mean loss.
    pub fn per_sample_pass<T: Real>(
        &self,
        params: &[T],
        x: &[T],
        labels: &[usize],
        ws: &mut Workspace<T>,
        grad_scratch: &mut [T],
    ) -> f64 {
        let all_linear = self
            .layers
            .iter()
            .all(|l| matches!(l, Layer::Linear { .. }));
        if !all_linear {
            return self.loss_and_gradient(params, x, labels, grad_scratch, ws);
        }
        let batch = labels.len();
        self.forward(params, x, batch, ws);
        let last = self.layers.len() - 1;
        let classes = self.classes();
        let scale = T::one() / T::of_usize(batch);
        let (loss_sum, _) = softmax_cross_entropy(
            &ws.acts[last][..batch * classes],
            labels,
            classes,
            scale,
            Some(&mut ws.deltas[last][..batch * classes]),
        );
        for i in (0..self.layers.len()).rev() {
            let Layer::Linear {
                inputs,
                outputs,
                tensor,
                activation,
            } = self.layers[i]
            else {
                unreachable!()
            };
            let n = batch * outputs;
            let (dbefore, drest) = ws.deltas.split_at_mut(i);
            let dy = &mut drest[0][..n];
            let y = &ws.acts[i][..n];
            match activation {
                Activation::Relu => {
                    for (d, &v) in dy.iter_mut().zip(y) {
                        if v <= T::zero() {
                            *d = T::zero();
                        }
                    }
                }
                Activation::Tanh => {
                    for (d, &v) in dy.iter_mut().zip(y) {
                        *d *= T::one() - v * v;
                    }
                }
                Activation::Identity => {}
            }
            if i > 0 {
                let w = &params[self.layout.tensors[tensor].range()];
                gemm(
                    false,
                    false,
                    batch,
                    inputs,
                    outputs,
                    T::one(),
                    dy,
                    w,
                    T::zero(),
                    &mut dbefore[i - 1][..batch * inputs],
                );
            }
        }
        loss_sum / batch as f64
    }

    /// Scratch for the per-sample products of up to `batch` samples.
    pub fn per_sample_scratch<T: Real>(&self, batch: usize) -> PerSampleScratch<T> {
        let mut blocks = Vec::new();
        let mut pc = 0;
        let (mut max_cols, mut max_width) = (0, 0);
        for (i, l) in self.layers.iter().enumerate() {
            max_width = max_width.max(l.in_features()).max(l.out_features());
            if let Layer::Conv2d { tensor, .. } = *l {
                let w = &self.layout.tensors[tensor];
                let b = &self.layout.tensors[tensor + 1];
                assert_eq!(
                    w.offset + w.numel,
                    b.offset,
                    "conv weight and bias are adjacent"
                );
                let n = w.numel + b.numel;
                blocks.push((i, w.offset, b.offset + b.numel, pc));
                pc += n;
                max_cols = max_cols.max(l.scratch_len(1).0);
            }
        }
        PerSampleScratch {
            batch,
            conv_grads: vec![T::zero(); batch * pc],
            conv_blocks: blocks,
            conv_params: pc,
            cols: vec![T::zero(); max_cols],
            tmp: vec![T::zero(); batch * max_width],
            aat: vec![T::zero(); batch * batch],
            ddt: vec![T::zero(); batch * batch],
            vec_c: vec![T::zero(); pc],
        }
    }

    fn layer_input<'a, T: Real>(&self, i: usize, x: &'a [T], ws: &'a Workspace<T>) -> &'a [T] {
        if i == 0 {
            x
        } else {
            &ws.acts[i - 1]
        }
    }

    /// Materialises the convolution layers' per-sample gradients (needed before the products below
    /// when the network has convolutions). `ws` holds `loss_and_gradient` of these `batch` samples.
    pub fn per_sample_prepare<T: Real>(
        &self,
        x: &[T],
        batch: usize,
        ws: &Workspace<T>,
        sc: &mut PerSampleScratch<T>,
    ) {
        assert!(batch <= sc.batch, "per-sample scratch too small");
        let s = T::of_usize(batch);
        let pc = sc.conv_params;
        for &(i, start, end, col) in &sc.conv_blocks {
            let Layer::Conv2d {
                in_channels,
                out_channels,
                kernel,
                padding,
                height,
                width,
                ..
            } = self.layers[i]
            else {
                unreachable!()
            };
            let (ho, wo) = self.layers[i].conv_output_size();
            let plane = ho * wo;
            let r = in_channels * kernel * kernel;
            let input = self.layer_input(i, x, ws);
            let per_in = in_channels * height * width;
            let per_out = out_channels * plane;
            let nw = out_channels * r;
            debug_assert_eq!(end - start, nw + out_channels);
            for n in 0..batch {
                let cols = &mut sc.cols[..r * plane];
                im2col(
                    &input[n * per_in..(n + 1) * per_in],
                    1,
                    in_channels,
                    height,
                    width,
                    kernel,
                    padding,
                    cols,
                );
                let dy = &ws.deltas[i][n * per_out..(n + 1) * per_out];
                let row = &mut sc.conv_grads[n * pc + col..n * pc + col + nw + out_channels];
                let (gw, gb) = row.split_at_mut(nw);
                gemm(
                    false,
                    true,
                    out_channels,
                    r,
                    plane,
                    s,
                    dy,
                    cols,
                    T::zero(),
                    gw,
                );
                for (o, b) in gb.iter_mut().enumerate() {
                    *b = s * dy[o * plane..(o + 1) * plane].iter().copied().sum::<T>();
                }
            }
        }
    }

    /// K = G Gᵀ (`batch × batch`, row-major): Kₙₘ = gₙ·gₘ. Requires [`Network::per_sample_prepare`].
    pub fn per_sample_gram<T: Real>(
        &self,
        x: &[T],
        batch: usize,
        ws: &Workspace<T>,
        sc: &mut PerSampleScratch<T>,
        gram: &mut [T],
    ) {
        let b = batch;
        let gram = &mut gram[..b * b];
        gram.iter_mut().for_each(|v| *v = T::zero());
        let s2 = T::of_usize(b * b);
        for (i, l) in self.layers.iter().enumerate() {
            if let Layer::Linear {
                inputs, outputs, ..
            } = *l
            {
                let a = self.layer_input(i, x, ws);
                let d = &ws.deltas[i];
                gemm(
                    false,
                    true,
                    b,
                    b,
                    inputs,
                    T::one(),
                    a,
                    a,
                    T::zero(),
                    &mut sc.aat,
                );
                gemm(
                    false,
                    true,
                    b,
                    b,
                    outputs,
                    T::one(),
                    d,
                    d,
                    T::zero(),
                    &mut sc.ddt,
                );
                for ((k, &aa), &dd) in gram.iter_mut().zip(&sc.aat).zip(&sc.ddt) {
                    *k += s2 * (aa + T::one()) * dd;
                }
            }
        }
        if sc.conv_params > 0 {
            let pc = sc.conv_params;
            gemm(
                false,
                true,
                b,
                b,
                pc,
                T::one(),
                &sc.conv_grads,
                &sc.conv_grads,
                T::one(),
                gram,
            );
        }
    }

    /// out = G v (`batch`): outₙ = gₙ·v for a parameter-space vector v (length P).
    pub fn per_sample_dots<T: Real>(
        &self,
        x: &[T],
        batch: usize,
        ws: &Workspace<T>,
        sc: &mut PerSampleScratch<T>,
        v: &[T],
        out: &mut [T],
    ) {
        let b = batch;
        let out = &mut out[..b];
        out.iter_mut().for_each(|o| *o = T::zero());
        let s = T::of_usize(b);
        for (i, l) in self.layers.iter().enumerate() {
            if let Layer::Linear {
                inputs,
                outputs,
                tensor,
                ..
            } = *l
            {
                let a = self.layer_input(i, x, ws);
                let d = &ws.deltas[i];
                let vw = &v[self.layout.tensors[tensor].range()];
                let vb = &v[self.layout.tensors[tensor + 1].range()];
                // M = Δ V (B×in); outₙ += s·(Mₙ·aₙ + δₙ·v_b).
                let m = &mut sc.tmp[..b * inputs];
                gemm(
                    false,
                    false,
                    b,
                    inputs,
                    outputs,
                    T::one(),
                    d,
                    vw,
                    T::zero(),
                    m,
                );
                for n in 0..b {
                    let mw: T = m[n * inputs..(n + 1) * inputs]
                        .iter()
                        .zip(&a[n * inputs..(n + 1) * inputs])
                        .map(|(&p, &q)| p * q)
                        .sum();
                    let mb: T = d[n * outputs..(n + 1) * outputs]
                        .iter()
                        .zip(vb)
                        .map(|(&p, &q)| p * q)
                        .sum();
                    out[n] += s * (mw + mb);
                }
            }
        }
        if sc.conv_params > 0 {
            for &(_, start, end, col) in &sc.conv_blocks {
                sc.vec_c[col..col + end - start].copy_from_slice(&v[start..end]);
            }
            gemm(
                false,
                false,
                b,
                1,
                sc.conv_params,
                T::one(),
                &sc.conv_grads,
                &sc.vec_c,
                T::one(),
                out,
            );
        }
    }

    /// out = Gᵀ c (length P): Σₙ cₙ gₙ, written (not accumulated) into `out`.
    pub fn per_sample_combine<T: Real>(
        &self,
        x: &[T],
        batch: usize,
        ws: &Workspace<T>,
        sc: &mut PerSampleScratch<T>,
        c: &[T],
        out: &mut [T],
    ) {
        let b = batch;
        let s = T::of_usize(b);
        for (i, l) in self.layers.iter().enumerate() {
            if let Layer::Linear {
                inputs,
                outputs,
                tensor,
                ..
            } = *l
            {
                let a = self.layer_input(i, x, ws);
                let d = &ws.deltas[i];
                // Δ′ = diag(s·c) Δ; weight block Δ′ᵀ A, bias block column sums of Δ′.
                let dc = &mut sc.tmp[..b * outputs];
                for n in 0..b {
                    let f = s * c[n];
                    for (p, &q) in dc[n * outputs..(n + 1) * outputs]
                        .iter_mut()
                        .zip(&d[n * outputs..(n + 1) * outputs])
                    {
                        *p = f * q;
                    }
                }
                let wr = self.layout.tensors[tensor].range();
                gemm(
                    true,
                    false,
                    outputs,
                    inputs,
                    b,
                    T::one(),
                    dc,
                    a,
                    T::zero(),
                    &mut out[wr],
                );
                let ob = &mut out[self.layout.tensors[tensor + 1].range()];
                ob.iter_mut().for_each(|v| *v = T::zero());
                for row in dc.chunks_exact(outputs) {
                    for (o, &v) in ob.iter_mut().zip(row) {
                        *o += v;
                    }
                }
            }
        }
        if sc.conv_params > 0 {
            let pc = sc.conv_params;
            gemm(
                true,
                false,
                pc,
                1,
                b,
                T::one(),
                &sc.conv_grads,
                c,
                T::zero(),
                &mut sc.vec_c,
            );
            for &(_, start, end, col) in &sc.conv_blocks {
                out[start..end].copy_from_slice(&sc.vec_c[col..col + end - start]);
            }
        }
    }
}
