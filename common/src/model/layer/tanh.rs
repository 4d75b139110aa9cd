//! `nn.Tanh`: y = tanh(x), with φ′ = 1 − y² and φ″ = −2y·(1 − y²), both from the output.
//!
//! R-forward R{y} = φ′ ⊙ R{x}; R-backward (Pearlmutter 1994) R{∂x} = φ′ ⊙ R{δ} + φ″ ⊙ R{x} ⊙ δ, where
//! φ″ ⊙ δ = −2y ⊙ ∂x with ∂x = φ′ ⊙ δ. The φ″ term is the Hessian's second-derivative part, dropped
//! for the Gauss–Newton product; it is why tanh networks are not piecewise linear and their exact
//! trace is not tr(G).

use super::{LayerOps, Pass, PerSample, RPass, Scratch};
use crate::Real;
use std::ops::Range;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tanh {
    pub features: usize,
}

#[inline]
fn derivative<T: Real>(y: T) -> T {
    T::one() - y * y
}

impl LayerOps for Tanh {
    fn kind(&self) -> &'static str {
        "Tanh"
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
            *v = s.tanh();
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
        for ((d, &g), &v) in dx[..n].iter_mut().zip(&dy[..n]).zip(&pass.y[..n]) {
            *d = g * derivative(v);
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
                for ((r, &s), &v) in ry[..n].iter_mut().zip(&rx[..n]).zip(&pass.y[..n]) {
                    *r = derivative(v) * s;
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
        let y = &pass.y[..n];
        for ((d, &g), &v) in rdx[..n].iter_mut().zip(&r.rdy[..n]).zip(y) {
            *d = g * derivative(v);
        }
        if let (false, Some(rx)) = (r.gauss_newton, r.rx) {
            // φ″(x)·δ = −2·y·(1 − y²)·δ = −2·y·∂x.
            let two = T::of_f64(2.0);
            for (((d, &v), &s), &g) in rdx[..n].iter_mut().zip(y).zip(&rx[..n]).zip(&r.dy[..n]) {
                let dx = g * derivative(v);
                *d -= two * v * s * dx;
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
