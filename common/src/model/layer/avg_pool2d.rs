//! Average pooling (`nn.AvgPool2d(kernel, stride)`, no padding, floor mode): each output is the mean
//! of its `kernel × kernel` window, windows `stride` apart, so the output side is
//! ⌊(side − kernel)/stride⌋ + 1 (PyTorch's formula with padding 0).
//!
//! The layer is linear in its input with no parameters: y = P·x for a fixed averaging matrix P, so
//! ∂x = Pᵀ·δ (each window's δ spread over it, divided by kernel²), R{y} = P·R{x} and
//! R{∂x} = Pᵀ·R{δ}; there is no second-order term and it is piecewise linear (trivially).

use super::{LayerOps, Pass, PerSample, RPass, Scratch};
use crate::Real;
use std::ops::Range;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AvgPool2d {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub kernel: usize,
    pub stride: usize,
}

impl AvgPool2d {
    /// (ho, wo); the caller has checked kernel ≤ each side and stride ≥ 1.
    pub fn output_size(&self) -> (usize, usize) {
        let side = |s: usize| (s - self.kernel) / self.stride + 1;
        (side(self.height), side(self.width))
    }

    /// y ← P·x over `planes` planes.
    fn pool<T: Real>(&self, x: &[T], planes: usize, y: &mut [T]) {
        let (ho, wo) = self.output_size();
        let (k, s, w) = (self.kernel, self.stride, self.width);
        let scale = T::one() / T::of_usize(k * k);
        for p in 0..planes {
            let xp = &x[p * self.height * w..(p + 1) * self.height * w];
            for i in 0..ho {
                for j in 0..wo {
                    let mut sum = T::zero();
                    for di in 0..k {
                        let row = &xp[(i * s + di) * w + j * s..(i * s + di) * w + j * s + k];
                        sum += row.iter().copied().sum::<T>();
                    }
                    y[(p * ho + i) * wo + j] = sum * scale;
                }
            }
        }
    }

    /// dx ← Pᵀ·d over `planes` planes.
    fn spread<T: Real>(&self, d: &[T], planes: usize, dx: &mut [T]) {
        let (ho, wo) = self.output_size();
        let (k, s, w) = (self.kernel, self.stride, self.width);
        let scale = T::one() / T::of_usize(k * k);
        dx[..planes * self.height * w]
            .iter_mut()
            .for_each(|v| *v = T::zero());
        for p in 0..planes {
            let dxp = &mut dx[p * self.height * w..(p + 1) * self.height * w];
            for i in 0..ho {
                for j in 0..wo {
                    let g = d[(p * ho + i) * wo + j] * scale;
                    for di in 0..k {
                        let start = (i * s + di) * w + j * s;
                        dxp[start..start + k].iter_mut().for_each(|v| *v += g);
                    }
                }
            }
        }
    }
}

impl LayerOps for AvgPool2d {
    fn kind(&self) -> &'static str {
        "AvgPool2d"
    }
    fn in_features(&self) -> usize {
        self.channels * self.height * self.width
    }
    fn out_features(&self) -> usize {
        let (ho, wo) = self.output_size();
        self.channels * ho * wo
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
    fn sample_wise(&self) -> bool {
        true
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
        self.pool(x, batch * self.channels, y);
    }

    fn backward<T: Real>(
        &self,
        pass: &Pass<'_, T>,
        dy: &[T],
        _grad: Option<&mut [T]>,
        dx: Option<&mut [T]>,
        _sc: &mut Scratch<T>,
    ) {
        if let Some(dx) = dx {
            self.spread(dy, pass.batch * self.channels, dx);
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
        match rx {
            Some(rx) => self.pool(rx, pass.batch * self.channels, ry),
            None => ry[..pass.batch * self.out_features()]
                .iter_mut()
                .for_each(|r| *r = T::zero()),
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
        if let Some(rdx) = rdx {
            self.spread(r.rdy, pass.batch * self.channels, rdx);
        }
    }

    fn per_sample(&self) -> PerSample {
        PerSample::None
    }

    fn per_sample_gradients<T: Real>(
        &self,
        _params: &[T],
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
