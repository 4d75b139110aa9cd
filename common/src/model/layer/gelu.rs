//! `nn.GELU()` (exact, `approximate='none'`): y = x·Φ(x), Φ the standard normal CDF
//! (Hendrycks & Gimpel 2016, "Gaussian Error Linear Units").
//!
//! φ′(x) = Φ(x) + x·ϕ(x) and φ″(x) = ϕ(x)·(2 − x²), ϕ the standard normal density. Unlike ReLU and
//! tanh its derivative is not a function of its output, so the passes read the input x.
//! R-forward R{y} = φ′(x) ⊙ R{x}; R-backward (Pearlmutter 1994) R{∂x} = φ′(x) ⊙ R{δ} + φ″(x) ⊙ R{x} ⊙ δ,
//! the φ″ term dropped for the Gauss–Newton product. Not piecewise linear.

use super::{LayerOps, Pass, PerSample, RPass, Scratch};
use crate::Real;
use statrs::function::erf::erf;
use std::f64::consts::{FRAC_1_SQRT_2, PI};
use std::ops::Range;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gelu {
    pub features: usize,
}

/// (Φ(x), ϕ(x)) in f64.
#[inline]
fn cdf_pdf(x: f64) -> (f64, f64) {
    (
        0.5 * (1.0 + erf(x * FRAC_1_SQRT_2)),
        (-0.5 * x * x).exp() / (2.0 * PI).sqrt(),
    )
}

#[inline]
fn first<T: Real>(x: T) -> T {
    let x = x.as_f64();
    let (cdf, pdf) = cdf_pdf(x);
    T::of_f64(cdf + x * pdf)
}

#[inline]
fn second<T: Real>(x: T) -> T {
    let x = x.as_f64();
    T::of_f64(cdf_pdf(x).1 * (2.0 - x * x))
}

impl LayerOps for Gelu {
    fn kind(&self) -> &'static str {
        "GELU"
    }
    fn in_features(&self) -> usize {
        self.features
    }
    fn out_features(&self) -> usize {
        self.features
    }
    fn tensors(&self) -> Range<usize> {
        0..0
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
    fn saved_len(&self, _batch: usize) -> usize {
        0
    }
    fn forward_flops(&self, _batch: usize) -> f64 {
        0.0
    }

    fn forward<T: Real>(
        &self,
        _params: &[T],
        x: &[T],
        batch: usize,
        y: &mut [T],
        _indices: &mut [u32],
        _sc: &mut Scratch<T>,
    ) {
        let n = batch * self.features;
        for (v, &s) in y[..n].iter_mut().zip(&x[..n]) {
            let s64 = s.as_f64();
            *v = T::of_f64(s64 * cdf_pdf(s64).0);
        }
    }

    fn backward<T: Real>(
        &self,
        pass: &Pass<'_, T>,
        dy: &[T],
        _grad: Option<&mut [T]>,
        dx: Option<&mut [T]>,
        _sc: &mut Scratch<T>,
    ) {
        let Some(dx) = dx else { return };
        let n = pass.batch * self.features;
        for ((d, &g), &x) in dx[..n].iter_mut().zip(&dy[..n]).zip(&pass.x[..n]) {
            *d = g * first(x);
        }
    }

    fn r_forward<T: Real>(
        &self,
        pass: &Pass<'_, T>,
        _v: &[T],
        rx: Option<&[T]>,
        ry: &mut [T],
        _saved: &mut [Vec<T>; 2],
        _sc: &mut Scratch<T>,
    ) {
        let n = pass.batch * self.features;
        match rx {
            Some(rx) => {
                for ((r, &s), &x) in ry[..n].iter_mut().zip(&rx[..n]).zip(&pass.x[..n]) {
                    *r = first(x) * s;
                }
            }
            None => ry[..n].iter_mut().for_each(|r| *r = T::zero()),
        }
    }

    fn r_backward<T: Real>(
        &self,
        pass: &Pass<'_, T>,
        r: &RPass<'_, T>,
        _hv: &mut [T],
        rdx: Option<&mut [T]>,
        _saved: &[Vec<T>; 2],
        _sc: &mut Scratch<T>,
    ) {
        let Some(rdx) = rdx else { return };
        let n = pass.batch * self.features;
        let x = &pass.x[..n];
        for ((d, &g), &xi) in rdx[..n].iter_mut().zip(&r.rdy[..n]).zip(x) {
            *d = g * first(xi);
        }
        if let (false, Some(rx)) = (r.gauss_newton, r.rx) {
            for (((d, &xi), &s), &g) in rdx[..n].iter_mut().zip(x).zip(&rx[..n]).zip(&r.dy[..n]) {
                *d += second(xi) * s * g;
            }
        }
    }

    fn per_sample(&self) -> PerSample {
        PerSample::None
    }

    fn per_sample_gradients<T: Real>(
        &self,
        _x: &[T],
        _dy: &[T],
        _batch: usize,
        _scale: T,
        _rows: &mut [T],
        _stride: usize,
        _sc: &mut Scratch<T>,
    ) {
    }
}
