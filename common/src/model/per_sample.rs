//! Per-sample gradients of a batch, as the three products exact natural-gradient methods need:
//! the Gram matrix K = G Gᵀ, G v and Gᵀ c, where G ∈ R^{B×P} stacks the per-sample gradients
//! gₙ = ∂ℓₙ/∂θ of the unscaled per-sample losses ℓₙ.
//!
//! They are read from a [`Workspace`] after [`Network::per_sample_pass`] on the same batch: the
//! layer inputs and the cotangents of the layer outputs. L is the batch mean, so the per-sample
//! cotangents are B·`deltas`.
//!
//! Each layer says how ([`PerSample`]): layers whose per-sample gradient is an outer product δₙ·aₙᵀ
//! (Linear) never materialise it — G Gᵀ = (A Aᵀ + 1) ⊙ (Δ Δᵀ), (G v)ₙ = δₙᵀ V aₙ + δₙ·v_b and
//! Gᵀ c = [Δᵀ diag(c) A, Δᵀ c] (the "Gram of a Linear layer" identity, e.g. Goodfellow 2015,
//! "Efficient per-example gradient computations"); every other layer with parameters materialises
//! its per-sample gradients ([`LayerOps::per_sample_gradients`]) into one B × P_m matrix, whose
//! products are single gemms.

use super::layer::{LayerOps, PerSample, Scratch};
use super::network::{Network, Workspace};
use crate::device::{Backend, CpuBackend};
use crate::Real;

/// A layer whose per-sample gradients are materialised: (layer index, its first parameter, end),
/// and its column offset in the materialised matrix.
#[derive(Clone, Copy, Debug, Default)]
struct Block {
    layer: usize,
    start: usize,
    end: usize,
    col: usize,
}

/// Buffers for the per-sample products of one batch size.
#[derive(Clone, Debug, Default)]
pub struct PerSampleScratch<T: Real> {
    batch: usize,
    /// Per-sample gradients of the materialised layers: `B × P_m`, each row the layers' blocks in
    /// layer order.
    materialised: Vec<T>,
    blocks: Vec<Block>,
    materialised_params: usize,
    lowering: Scratch<T>,
    tmp: Vec<T>,
    aat: Vec<T>,
    ddt: Vec<T>,
    vec_c: Vec<T>,
    /// The row dots of [`Network::per_sample_dots`].
    row_dots: Vec<T>,
}

/// `out[n] ← Σₖ m[n, k]·a[n, k]` for the rows of two row-major `[rows, width]` matrices, each
/// summed left to right from −0 as `Iterator::sum` does (the same bits), four rows side by side:
/// their chains of additions are independent, so the loop is not bound by one chain's latency.
fn dots_of_rows<'a, T: Real>(m: &'a [T], a: &'a [T], width: usize, out: &mut [T]) {
    let dot = |n: usize| -> T {
        let (mr, ar) = (
            &m[n * width..(n + 1) * width],
            &a[n * width..(n + 1) * width],
        );
        mr.iter().zip(ar).map(|(&p, &q)| p * q).sum()
    };
    let rows = out.len();
    let mut n = 0;
    while n + 4 <= rows {
        let row = |v: &'a [T], r: usize| &v[(n + r) * width..(n + r + 1) * width];
        let (m0, m1, m2, m3) = (row(m, 0), row(m, 1), row(m, 2), row(m, 3));
        let (a0, a1, a2, a3) = (row(a, 0), row(a, 1), row(a, 2), row(a, 3));
        let mut acc = [T::of_f64(-0.0); 4];
        for k in 0..width {
            acc[0] += m0[k] * a0[k];
            acc[1] += m1[k] * a1[k];
            acc[2] += m2[k] * a2[k];
            acc[3] += m3[k] * a3[k];
        }
        out[n..n + 4].copy_from_slice(&acc);
        n += 4;
    }
    for (n, o) in out.iter_mut().enumerate().skip(n) {
        *o = dot(n);
    }
}

impl Network {
    /// Forward and backward of the mean loss on a batch, leaving in `ws` what the per-sample
    /// products read (layer outputs and their cotangents) without the parameter gradient. Returns
    /// the mean loss.
    pub fn per_sample_pass<'a, T: Real>(
        &self,
        params: &[T],
        x: &[T],
        targets: impl Into<super::loss::Targets<'a, T>>,
        ws: &mut Workspace<T>,
    ) -> f64 {
        let targets = targets.into();
        self.forward(params, x, targets.len(), ws);
        self.per_sample_pass_after_forward(params, x, targets, ws)
    }

    /// [`Network::per_sample_pass`] when `ws` already holds [`Network::forward`] of the same
    /// `params` and `x` for `targets.len()` samples (the sampled Fisher draws its targets from those
    /// logits): the loss, its cotangent and the backward pass, without running the forward pass
    /// again. The same values to the bit.
    pub fn per_sample_pass_after_forward<'a, T: Real>(
        &self,
        params: &[T],
        x: &[T],
        targets: impl Into<super::loss::Targets<'a, T>>,
        ws: &mut Workspace<T>,
    ) -> f64 {
        let targets = targets.into();
        let loss = self.loss_cotangent(targets, ws);
        self.backward(params, x, targets.len(), None, ws);
        loss
    }

    /// Scratch for the per-sample products of up to `batch` samples.
    pub fn per_sample_scratch<T: Real>(&self, batch: usize) -> PerSampleScratch<T> {
        let mut blocks = Vec::new();
        let mut pm = 0;
        let mut max_width = 0;
        for (i, l) in self.layers.iter().enumerate() {
            max_width = max_width.max(l.in_features()).max(l.out_features());
            if l.per_sample() == PerSample::Materialise {
                let t = l.tensors();
                let start = self.layout.tensors[t.start].offset;
                let end = self.layout.tensors[t.end - 1].range().end;
                blocks.push(Block {
                    layer: i,
                    start,
                    end,
                    col: pm,
                });
                pm += end - start;
            }
        }
        PerSampleScratch {
            batch,
            materialised: vec![T::zero(); batch * pm],
            blocks,
            materialised_params: pm,
            lowering: Scratch::for_layers(&self.layers, 1, false),
            tmp: vec![T::zero(); batch * max_width],
            aat: vec![T::zero(); batch * batch],
            ddt: vec![T::zero(); batch * batch],
            vec_c: vec![T::zero(); pm],
            row_dots: vec![T::zero(); batch],
        }
    }

    fn layer_input<'a, T: Real>(&self, i: usize, x: &'a [T], ws: &'a Workspace<T>) -> &'a [T] {
        if i == 0 {
            x
        } else {
            &ws.acts[i - 1]
        }
    }

    /// Materialises the per-sample gradients of the layers without a closed form (needed before
    /// the products below). `ws` holds [`Network::per_sample_pass`] of these `batch` samples at
    /// `params`.
    pub fn per_sample_prepare<T: Real>(
        &self,
        params: &[T],
        x: &[T],
        batch: usize,
        ws: &Workspace<T>,
        sc: &mut PerSampleScratch<T>,
    ) {
        assert!(batch <= sc.batch, "per-sample scratch too small");
        let s = T::of_usize(batch);
        let pm = sc.materialised_params;
        for b in &sc.blocks {
            let input = self.layer_input(b.layer, x, ws);
            self.layers[b.layer].per_sample_gradients(
                params,
                input,
                &ws.deltas[b.layer][..],
                batch,
                s,
                &mut sc.materialised[b.col..],
                pm,
                &mut sc.lowering,
            );
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
        let be = CpuBackend;
        let b = batch;
        let gram = &mut gram[..b * b];
        gram.iter_mut().for_each(|v| *v = T::zero());
        let s2 = T::of_usize(b * b);
        for (i, l) in self.layers.iter().enumerate() {
            if let PerSample::OuterProduct {
                inputs,
                outputs,
                bias,
                ..
            } = l.per_sample()
            {
                // The bias column's aₙ·aₘ term is 1 (its input is the constant 1).
                let one = if bias { T::one() } else { T::zero() };
                let a = self.layer_input(i, x, ws);
                let d = &ws.deltas[i];
                be.gemm(
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
                be.gemm(
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
                be.add_gram_hadamard(s2, one, &sc.aat, &sc.ddt, gram);
            }
        }
        if sc.materialised_params > 0 {
            let (g, pm) = (&sc.materialised, sc.materialised_params);
            be.gemm(false, true, b, b, pm, T::one(), g, g, T::one(), gram);
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
        let be = CpuBackend;
        let b = batch;
        let out = &mut out[..b];
        out.iter_mut().for_each(|o| *o = T::zero());
        let s = T::of_usize(b);
        for (i, l) in self.layers.iter().enumerate() {
            if let PerSample::OuterProduct {
                inputs,
                outputs,
                weight,
                bias,
            } = l.per_sample()
            {
                let a = self.layer_input(i, x, ws);
                let d = &ws.deltas[i];
                let vw = &v[self.layout.tensors[weight].range()];
                let vb = bias.then(|| &v[self.layout.tensors[weight + 1].range()]);
                // M = Δ V (B×in); outₙ += s·(Mₙ·aₙ + δₙ·v_b).
                let m = &mut sc.tmp[..b * inputs];
                be.gemm(
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
                let mut row_dots = std::mem::take(&mut sc.row_dots);
                row_dots.resize(b, T::zero());
                dots_of_rows(m, &a[..b * inputs], inputs, &mut row_dots);
                for n in 0..b {
                    let mw = row_dots[n];
                    let mb: T = vb.map_or(T::zero(), |vb| {
                        d[n * outputs..(n + 1) * outputs]
                            .iter()
                            .zip(vb)
                            .map(|(&p, &q)| p * q)
                            .sum()
                    });
                    out[n] += s * (mw + mb);
                }
                sc.row_dots = row_dots;
            }
        }
        if sc.materialised_params > 0 {
            for bl in &sc.blocks {
                sc.vec_c[bl.col..bl.col + bl.end - bl.start].copy_from_slice(&v[bl.start..bl.end]);
            }
            let (g, pm) = (&sc.materialised, sc.materialised_params);
            be.gemm(
                false,
                false,
                b,
                1,
                pm,
                T::one(),
                g,
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
        let be = CpuBackend;
        let b = batch;
        let s = T::of_usize(b);
        for (i, l) in self.layers.iter().enumerate() {
            if let PerSample::OuterProduct {
                inputs,
                outputs,
                weight,
                bias,
            } = l.per_sample()
            {
                let a = self.layer_input(i, x, ws);
                let d = &ws.deltas[i];
                // Δ′ = diag(s·c) Δ; weight block Δ′ᵀ A, bias block column sums of Δ′.
                let dc = &mut sc.tmp[..b * outputs];
                for n in 0..b {
                    let row = &mut dc[n * outputs..(n + 1) * outputs];
                    be.copy(&d[n * outputs..(n + 1) * outputs], row);
                    be.scale(s * c[n], row);
                }
                let wr = self.layout.tensors[weight].range();
                be.gemm(
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
                if bias {
                    let ob = &mut out[self.layout.tensors[weight + 1].range()];
                    be.fill(&mut ob[..], T::zero());
                    be.add_column_sums(T::one(), dc, ob);
                }
            }
        }
        if sc.materialised_params > 0 {
            let (g, pm) = (&sc.materialised, sc.materialised_params);
            be.gemm(
                true,
                false,
                pm,
                1,
                b,
                T::one(),
                g,
                c,
                T::zero(),
                &mut sc.vec_c,
            );
            for bl in &sc.blocks {
                out[bl.start..bl.end]
                    .copy_from_slice(&sc.vec_c[bl.col..bl.col + bl.end - bl.start]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::dots_of_rows;

    /// Four rows side by side give each row's `Iterator::sum` to the bit, for every tail length,
    /// including an empty width and rows of negative zeros (whose sum is −0).
    #[test]
    fn dots_of_rows_are_the_row_sums_to_the_bit() {
        for width in [0usize, 1, 7, 33] {
            for rows in 0..10 {
                let v = |i: usize, s: f64| ((i as f64 * s).sin() * 1e3).exp2().fract() - 0.5;
                let mut m: Vec<f64> = (0..rows * width).map(|i| v(i, 0.37)).collect();
                let mut a: Vec<f64> = (0..rows * width).map(|i| v(i, 0.91) * 1e-3).collect();
                if rows > 2 {
                    // −0 · positive is −0 in every term: the row's sum is −0.
                    m[2 * width..3 * width].fill(-0.0);
                    a[2 * width..3 * width]
                        .iter_mut()
                        .for_each(|x| *x = x.abs() + 1.0);
                }
                let mut got = vec![f64::NAN; rows];
                dots_of_rows(&m, &a, width, &mut got);
                for n in 0..rows {
                    let want: f64 = m[n * width..(n + 1) * width]
                        .iter()
                        .zip(&a[n * width..(n + 1) * width])
                        .map(|(&p, &q)| p * q)
                        .sum();
                    assert_eq!(
                        got[n].to_bits(),
                        want.to_bits(),
                        "width {width} row {n}/{rows}"
                    );
                }
            }
        }
    }
}
