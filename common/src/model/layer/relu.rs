//! `nn.ReLU`: y = max(x, 0). Its derivative is read from the output, φ′ = 1[y > 0] (PyTorch's
//! `threshold_backward`), so no input is kept; φ″ = 0 almost everywhere, so the R-backward is
//! R{∂x} = φ′ ⊙ R{δ} and the layer is piecewise linear.

use super::{zero_unless_positive, LayerOps, Pass, PerSample, RPass, Scratch};
use crate::Real;
use std::ops::Range;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relu {
    pub features: usize,
}

/// φ′ through the output: 1 where y > 0, else 0.
#[inline]
fn derivative<T: Real>(y: T) -> T {
    zero_unless_positive(y, T::one())
}

impl LayerOps for Relu {
    fn kind(&self) -> &'static str {
        "ReLU"
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
        true
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
            *v = zero_unless_positive(s, s);
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
            *d = zero_unless_positive(v, g);
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
        for ((d, &g), &v) in rdx[..n].iter_mut().zip(&r.rdy[..n]).zip(&pass.y[..n]) {
            *d = g * derivative(v);
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
