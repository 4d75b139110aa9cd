//! `nn.LayerNorm(dim, eps, elementwise_affine)`: each row of the last `dim` features of a sample is
//! normalised (Ba, Kiros & Hinton 2016, "Layer normalization"; PyTorch's `F.layer_norm` over the
//! last dimension, biased variance):
//!
//! μ = mean(x), σ² = mean((x − μ)²), r = 1/√(σ² + ε), x̂ = r·(x − μ), y = γ ⊙ x̂ + β
//! (y = x̂ without the affine part), γ = `weight`, β = `bias`, both `[dim]`.
//!
//! Backward, with g = γ ⊙ δ and mean over the row: ∂x = r·(g − mean(g) − x̂·mean(g ⊙ x̂)),
//! ∂γ = Σ δ ⊙ x̂, ∂β = Σ δ (summed over the batch and the rows of a sample).
//!
//! R-forward: R{x̂} = r·(R{x} − mean(R{x}) − x̂·mean(x̂ ⊙ R{x})) (the Jacobian of x̂ is
//! r·(I − 11ᵀ/d − x̂x̂ᵀ/d), symmetric), R{y} = γ ⊙ R{x̂} + v_γ ⊙ x̂ + v_β.
//!
//! R-backward (Pearlmutter 1994): (H·v)_γ = Σ R{δ} ⊙ x̂ + δ ⊙ R{x̂}, (H·v)_β = Σ R{δ}, and with
//! m = mean(g ⊙ x̂), R{g} = γ ⊙ R{δ} + v_γ ⊙ δ, R{r}/r = −r·mean(x̂ ⊙ R{x}):
//! R{∂x} = (R{r}/r)·∂x + r·(R{g} − mean(R{g}) − R{x̂}·m − x̂·mean(R{g} ⊙ x̂ + g ⊙ R{x̂})).
//! The terms in δ (every one with g, v_γ ⊙ δ, δ ⊙ R{x̂}) are dropped for the Gauss–Newton product,
//! which leaves ∂x's linear map applied to γ ⊙ R{δ}. Not piecewise linear (x̂ is curved in x).
//!
//! Nothing is kept between passes: x̂ and R{x̂} are recomputed from x and R{x} (a few flops per
//! element against the matrix products around it).
//!
//! The passes are the backend's `layer_norm_*` operations (the layer is passed to them as its
//! definition, as an activation is); the CPU backend's kernels are the host functions of this file
//! (`cpu_*` below), called through `CpuBackend`, with the row buffers in the scratch's `stack`.

use super::{LayerOps, Pass, PerSample, RPass, Scope, Scratch};
use crate::device::Backend;
use crate::model::layout::Init;
use crate::Real;
use std::ops::Range;

/// ε as its bits, so that the layer compares (and hashes) exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Epsilon(u64);

impl Epsilon {
    pub fn new(eps: f64) -> Self {
        Epsilon(eps.to_bits())
    }
    pub fn get(self) -> f64 {
        f64::from_bits(self.0)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerNorm {
    /// Features per sample (a multiple of `dim`).
    pub features: usize,
    /// The normalised (last) dimension.
    pub dim: usize,
    pub eps: Epsilon,
    /// The weight's index in the layout (the bias is the next tensor); `None` without the affine
    /// part.
    pub weight: Option<usize>,
    gamma: Range<usize>,
    beta: Range<usize>,
}

/// Lanes of the row sums: lane j adds elements j, j + 8, j + 16, …; the lanes are then added
/// pairwise. An order that the compiler keeps in vector registers (a single running sum cannot
/// be vectorised without changing its order), and slightly more accurate than one running sum.
const LANES: usize = 8;

/// Σᵢ f(aᵢ, bᵢ) over equal-length rows in the lane order of [`LANES`].
#[inline(always)]
fn lane_sum<T: Real>(a: &[T], b: &[T], f: impl Fn(T, T) -> T) -> T {
    let mut acc = [T::zero(); LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for j in 0..LANES {
            acc[j] += f(x[j], y[j]);
        }
    }
    for (j, (&x, &y)) in ar.iter().zip(br).enumerate() {
        acc[j] += f(x, y);
    }
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))
}

/// Σ x over a row (lane order).
#[inline(always)]
fn sum<T: Real>(x: &[T]) -> T {
    lane_sum(x, x, |a, _| a)
}

/// Σ a ⊙ b over a row (lane order).
#[inline(always)]
fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    lane_sum(a, b, |x, y| x * y)
}

/// (μ, r) of one row: mean, and 1/√(biased variance + ε) (two passes).
#[inline(always)]
fn row_stats<T: Real>(x: &[T], eps: T) -> (T, T) {
    let d = T::of_usize(x.len());
    let mean = sum(x) / d;
    let var = lane_sum(x, x, |v, _| (v - mean) * (v - mean)) / d;
    (mean, T::one() / (var + eps).sqrt())
}

/// x̂ of one row into `xhat`; returns r.
#[inline(always)]
fn normalise<T: Real>(x: &[T], eps: T, xhat: &mut [T]) -> T {
    let (mean, r) = row_stats(x, eps);
    for (h, &v) in xhat.iter_mut().zip(x) {
        *h = (v - mean) * r;
    }
    r
}

/// out ← r·(u − mean(u) − x̂·mean(x̂ ⊙ u)) (the Jacobian of x̂, applied to u; symmetric, so also
/// its transpose) for one row.
#[inline(always)]
fn project<T: Real>(u: &[T], xhat: &[T], r: T, out: &mut [T]) {
    let d = T::of_usize(u.len());
    let mu = sum(u) / d;
    let mx = dot(u, xhat) / d;
    for ((o, &a), &h) in out.iter_mut().zip(u).zip(xhat) {
        *o = r * (a - mu - h * mx);
    }
}

impl LayerNorm {
    /// `nn.LayerNorm(dim, eps, elementwise_affine=affine)` over samples of `features` features
    /// (rows of `dim`); with the affine part, `weight` (ones) and `bias` (zeros) `[dim]` in `scope`.
    pub fn new(scope: &mut Scope<'_>, features: usize, dim: usize, eps: f64, affine: bool) -> Self {
        let (weight, gamma, beta) = if affine {
            let w = scope.tensor("weight", vec![dim], Init::Ones);
            let b = scope.tensor("bias", vec![dim], Init::Zeros);
            (Some(w), scope.range(w), scope.range(b))
        } else {
            (None, 0..0, 0..0)
        };
        LayerNorm {
            features,
            dim,
            eps: Epsilon::new(eps),
            weight,
            gamma,
            beta,
        }
    }

    fn affine(&self) -> bool {
        self.weight.is_some()
    }

    fn eps<T: Real>(&self) -> T {
        T::of_f64(self.eps.get())
    }

    /// γ (ones without the affine part) for `params`.
    fn gamma<'a, T: Real>(&self, params: &'a [T]) -> Option<&'a [T]> {
        self.affine().then(|| &params[self.gamma.clone()])
    }
}

/// `count` row buffers of the layer's dimension from the scratch's `stack` (grown once), with the
/// backend.
fn rows<T: Real, B: Backend>(
    sc: &mut Scratch<T, B>,
    dim: usize,
    count: usize,
) -> (&B, B::ViewMut<'_, T>) {
    let Scratch { backend, stack, .. } = sc;
    backend.ensure_len(stack, count * dim);
    (&*backend, B::slice_mut(B::view_mut(stack), 0..count * dim))
}

/// The CPU kernels of the backend's `layer_norm_*` operations: the layer's passes on host slices,
/// `work` holding the row buffers (2, 2, 5 and 1 rows of `dim`).
impl LayerNorm {

    #[inline(always)]
    pub(crate) fn cpu_forward<T: Real>(&self, params: &[T], x: &[T], batch: usize, y: &mut [T]) {
        let (d, n) = (self.dim, batch * self.features);
        let eps = self.eps();
        let gamma = self.gamma(params);
        for (xr, yr) in x[..n].chunks_exact(d).zip(y[..n].chunks_exact_mut(d)) {
            normalise(xr, eps, yr);
            if let Some(g) = gamma {
                let b = &params[self.beta.clone()];
                for ((v, &g), &b) in yr.iter_mut().zip(g).zip(b) {
                    *v = g * *v + b;
                }
            }
        }
    }

    #[inline(always)]
    pub(crate) fn cpu_backward<T: Real>(
        &self,
        pass: &Pass<'_, T>,
        dy: &[T],
        grad: Option<&mut [T]>,
        dx: Option<&mut [T]>,
        work: &mut [T],
    ) {
        let (d, n) = (self.dim, pass.batch * self.features);
        let eps = self.eps();
        let gamma = self.gamma(pass.params);
        let mut grad = grad.filter(|_| self.affine());
        if let Some(g) = grad.as_deref_mut() {
            g[self.gamma.clone()].iter_mut().for_each(|v| *v = T::zero());
            g[self.beta.clone()].iter_mut().for_each(|v| *v = T::zero());
        }
        let mut dx = dx;
        let buf = &mut work[..2 * d];
        let (xhat, g) = buf.split_at_mut(d);
        for (row, (xr, dr)) in pass.x[..n]
            .chunks_exact(d)
            .zip(dy[..n].chunks_exact(d))
            .enumerate()
        {
            let r = normalise(xr, eps, xhat);
            if let Some(grad) = grad.as_deref_mut() {
                for ((gg, &dv), &h) in grad[self.gamma.clone()].iter_mut().zip(dr).zip(&*xhat) {
                    *gg += dv * h;
                }
                for (gb, &dv) in grad[self.beta.clone()].iter_mut().zip(dr) {
                    *gb += dv;
                }
            }
            if let Some(dx) = dx.as_deref_mut() {
                match gamma {
                    Some(gm) => g.iter_mut().zip(dr).zip(gm).for_each(|((o, &a), &b)| *o = a * b),
                    None => g.copy_from_slice(dr),
                }
                project(g, xhat, r, &mut dx[row * d..(row + 1) * d]);
            }
        }
    }

    #[inline(always)]
    pub(crate) fn cpu_r_forward<T: Real>(
        &self,
        pass: &Pass<'_, T>,
        v: &[T],
        rx: Option<&[T]>,
        ry: &mut [T],
        work: &mut [T],
    ) {
        let (d, n) = (self.dim, pass.batch * self.features);
        let eps = self.eps();
        let gamma = self.gamma(pass.params);
        let buf = &mut work[..2 * d];
        let (xhat, rxhat) = buf.split_at_mut(d);
        for (row, (xr, out)) in pass.x[..n]
            .chunks_exact(d)
            .zip(ry[..n].chunks_exact_mut(d))
            .enumerate()
        {
            let r = normalise(xr, eps, xhat);
            match rx {
                Some(rx) => project(&rx[row * d..(row + 1) * d], xhat, r, rxhat),
                None => rxhat.iter_mut().for_each(|v| *v = T::zero()),
            }
            match gamma {
                Some(gm) => {
                    let (vg, vb) = (&v[self.gamma.clone()], &v[self.beta.clone()]);
                    let terms = gm.iter().zip(&*rxhat).zip(vg).zip(&*xhat).zip(vb);
                    for (o, ((((&g, &rh), &vg), &h), &vb)) in out.iter_mut().zip(terms) {
                        *o = g * rh + vg * h + vb;
                    }
                }
                None => out.copy_from_slice(rxhat),
            }
        }
    }

    #[inline(always)]
    pub(crate) fn cpu_r_backward<T: Real>(
        &self,
        pass: &Pass<'_, T>,
        r: &RPass<'_, T>,
        hv: &mut [T],
        rdx: Option<&mut [T]>,
        work: &mut [T],
    ) {
        let (d, n) = (self.dim, pass.batch * self.features);
        let eps = self.eps();
        let gamma = self.gamma(pass.params);
        let second_order = !r.gauss_newton;
        let dn = T::of_usize(d);
        let mut rdx = rdx;
        let buf = &mut work[..5 * d];
        let (xhat, rest) = buf.split_at_mut(d);
        let (rxhat, rest) = rest.split_at_mut(d);
        let (g, rest) = rest.split_at_mut(d);
        let (rg, out) = rest.split_at_mut(d);
        for row in 0..n / d {
            let span = row * d..(row + 1) * d;
            let (xr, dr, rdr) = (&pass.x[span.clone()], &r.dy[span.clone()], &r.rdy[span.clone()]);
            let rs = normalise(xr, eps, xhat);
            let rx = r.rx.filter(|_| second_order).map(|rx| &rx[span.clone()]);
            match rx {
                Some(rx) => project(rx, xhat, rs, rxhat),
                None => rxhat.iter_mut().for_each(|v| *v = T::zero()),
            }
            if let Some(gm) = gamma {
                let terms = rdr.iter().zip(&*xhat).zip(dr).zip(&*rxhat);
                for (h, (((&rd, &xh), &d), &rxh)) in hv[self.gamma.clone()].iter_mut().zip(terms) {
                    *h += r.alpha * (rd * xh + d * rxh);
                }
                for (h, &v) in hv[self.beta.clone()].iter_mut().zip(rdr) {
                    *h += r.alpha * v;
                }
                let vg = &r.v[self.gamma.clone()];
                let terms = gm.iter().zip(dr).zip(rdr).zip(vg);
                for ((gj, rgj), (((&gmj, &d), &rd), &vgj)) in g.iter_mut().zip(rg.iter_mut()).zip(terms) {
                    *gj = gmj * d;
                    *rgj = gmj * rd + if second_order { vgj * d } else { T::zero() };
                }
            } else {
                g.copy_from_slice(dr);
                rg.copy_from_slice(rdr);
            }
            let Some(rdx) = rdx.as_deref_mut() else {
                continue;
            };
            // The linear part: the Jacobian's transpose applied to R{g}.
            project(rg, xhat, rs, out);
            if let Some(rx) = rx {
                // R{r}/r·∂x − r·R{x̂}·m − r·x̂·mean(g ⊙ R{x̂}).
                let m = dot(g, xhat) / dn;
                let gr = dot(g, rxhat) / dn;
                let rr = -rs * dot(xhat, rx) / dn;
                let gm_mean = sum(g) / dn;
                for (o, ((&gj, &xh), &rxh)) in out.iter_mut().zip(g.iter().zip(&*xhat).zip(&*rxhat)) {
                    let dxj = rs * (gj - gm_mean - xh * m);
                    *o += rr * dxj - rs * (rxh * m + xh * gr);
                }
            }
            rdx[span].copy_from_slice(out);
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn cpu_per_sample_gradients<T: Real>(
        &self,
        x: &[T],
        dy: &[T],
        batch: usize,
        scale: T,
        rows_out: &mut [T],
        stride: usize,
        work: &mut [T],
    ) {
        if !self.affine() {
            return;
        }
        let (d, f) = (self.dim, self.features);
        let eps = self.eps();
        let xhat = &mut work[..d];
        for n in 0..batch {
            let row = &mut rows_out[n * stride..n * stride + 2 * d];
            row.iter_mut().for_each(|v| *v = T::zero());
            let (gg, gb) = row.split_at_mut(d);
            for (xr, dr) in x[n * f..(n + 1) * f]
                .chunks_exact(d)
                .zip(dy[n * f..(n + 1) * f].chunks_exact(d))
            {
                normalise(xr, eps, xhat);
                for j in 0..d {
                    gg[j] += scale * dr[j] * xhat[j];
                    gb[j] += scale * dr[j];
                }
            }
        }
    }
}

impl LayerOps for LayerNorm {
    fn kind(&self) -> &'static str {
        "LayerNorm"
    }
    fn in_features(&self) -> usize {
        self.features
    }
    fn out_features(&self) -> usize {
        self.features
    }
    fn tensors(&self) -> Range<usize> {
        match self.weight {
            Some(w) => w..w + 2,
            None => 0..0,
        }
    }
    fn piecewise_linear(&self) -> bool {
        false
    }
    fn scratch_len(&self, _batch: usize, _batched: bool) -> (usize, usize) {
        (0, 0)
    }
    fn index_len(&self, _batch: usize) -> usize {
        0
    }
    fn state_len(&self, _batch: usize) -> usize {
        0
    }
    fn saved_len(&self, _batch: usize) -> usize {
        0
    }
    fn forward_flops(&self, _batch: usize) -> f64 {
        0.0
    }
    fn sample_wise(&self) -> bool {
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
        sc.backend.layer_norm_forward(self, params, x, batch, y);
    }

    fn backward<B: Backend, T: Real>(
        &self,
        pass: &Pass<'_, T, B>,
        dy: B::View<'_, T>,
        grad: Option<B::ViewMut<'_, T>>,
        dx: Option<B::ViewMut<'_, T>>,
        sc: &mut Scratch<T, B>,
    ) {
        let (be, work) = rows(sc, self.dim, 2);
        be.layer_norm_backward(self, pass, dy, grad, dx, work);
    }

    fn r_forward<B: Backend, T: Real>(
        &self,
        pass: &Pass<'_, T, B>,
        v: B::View<'_, T>,
        rx: Option<B::View<'_, T>>,
        ry: B::ViewMut<'_, T>,
        _saved: &mut [B::Buffer<T>; 2],
        sc: &mut Scratch<T, B>,
    ) {
        let (be, work) = rows(sc, self.dim, 2);
        be.layer_norm_r_forward(self, pass, v, rx, ry, work);
    }

    fn r_backward<B: Backend, T: Real>(
        &self,
        pass: &Pass<'_, T, B>,
        r: &RPass<'_, T, B>,
        hv: B::ViewMut<'_, T>,
        rdx: Option<B::ViewMut<'_, T>>,
        _saved: &[B::Buffer<T>; 2],
        sc: &mut Scratch<T, B>,
    ) {
        let (be, work) = rows(sc, self.dim, 5);
        be.layer_norm_r_backward(self, pass, r, hv, rdx, work);
    }

    fn per_sample(&self) -> PerSample {
        if self.affine() {
            PerSample::Materialise
        } else {
            PerSample::None
        }
    }

    fn per_sample_gradients<B: Backend, T: Real>(
        &self,
        _params: B::View<'_, T>,
        x: B::View<'_, T>,
        dy: B::View<'_, T>,
        batch: usize,
        scale: T,
        rows_out: B::ViewMut<'_, T>,
        stride: usize,
        sc: &mut Scratch<T, B>,
    ) {
        if !self.affine() {
            return;
        }
        let (be, work) = rows(sc, self.dim, 1);
        be.layer_norm_per_sample_gradients(self, x, dy, batch, scale, rows_out, stride, work);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::layout::TensorSpec;

    /// The forward pass against PyTorch's (`F.layer_norm(x, (4,), weight, bias, 1e-5)` in float64
    /// with the weight and bias below; the second row has a variance of 1.9·10⁻⁹, below ε).
    #[test]
    fn forward_matches_pytorch() {
        let mut tensors: Vec<TensorSpec> = Vec::new();
        let ln = LayerNorm::new(&mut Scope::root(&mut tensors), 4, 4, 1e-5, true);
        let params = [1.5, -0.5, 2.0, 1.0, 0.1, 0.2, -0.3, 0.0];
        let x = [0.3, -1.2, 2.0, 0.5, 1.0, 1.0, 1.0, 1.0001];
        let want = [
            -0.032_323_812_539_722_99,
            0.905_727_000_211_855_8,
            2.522_908_000_847_423_6,
            0.088_215_875_026_481_95,
            0.088_142_570_356_322_35,
            0.203_952_476_547_892_56,
            -0.315_809_906_191_570_2,
            0.023_714_859_287_425_515,
        ];
        let mut y = [0.0f64; 8];
        let mut idx: [u32; 0] = [];
        ln.forward(
            &params[..],
            &x[..],
            2,
            &mut y[..],
            &mut idx[..],
            &mut [][..],
            &mut Scratch::default(),
        );
        for (g, w) in y.iter().zip(&want) {
            assert!((g - w).abs() < 1e-15, "{y:?}");
        }
        assert_eq!(
            tensors.iter().map(|t| (t.name.as_str(), t.init)).collect::<Vec<_>>(),
            [("weight", Init::Ones), ("bias", Init::Zeros)]
        );
    }
}
