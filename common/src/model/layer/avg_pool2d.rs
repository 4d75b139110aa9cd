//! Average pooling (`nn.AvgPool2d(kernel, stride)`, no padding, floor mode): each output is the mean
//! of its `kernel × kernel` window, windows `stride` apart, so the output side is
//! ⌊(side − kernel)/stride⌋ + 1 (PyTorch's formula with padding 0).
//!
//! The layer is linear in its input with no parameters: y = P·x for a fixed averaging matrix P, so
//! ∂x = Pᵀ·δ (each window's δ spread over it, divided by kernel²), R{y} = P·R{x} and
//! R{∂x} = Pᵀ·R{δ}; there is no second-order term and it is piecewise linear (trivially).

use super::{LayerOps, Pass, PerSample, RPass, Scratch};
use crate::device::Backend;
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

    /// y ← P·x over `planes` planes: the CPU kernel of the backend's `avg_pool2d`.
    pub(crate) fn cpu_pool<T: Real>(&self, x: &[T], planes: usize, y: &mut [T]) {
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

    /// dx ← Pᵀ·d over `planes` planes: the CPU kernel of the backend's `avg_pool2d_adjoint`.
    pub(crate) fn cpu_spread<T: Real>(&self, d: &[T], planes: usize, dx: &mut [T]) {
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
        _params: B::View<'_, T>,
        x: B::View<'_, T>,
        batch: usize,
        y: B::ViewMut<'_, T>,
        _indices: B::ViewMut<'_, u32>,
        _state: B::ViewMut<'_, T>,
        sc: &mut Scratch<T, B>,
    ) {
        sc.backend.avg_pool2d(self, x, batch * self.channels, y);
    }

    fn backward<B: Backend, T: Real>(
        &self,
        pass: &Pass<'_, T, B>,
        dy: B::View<'_, T>,
        _grad: Option<B::ViewMut<'_, T>>,
        dx: Option<B::ViewMut<'_, T>>,
        sc: &mut Scratch<T, B>,
    ) {
        if let Some(dx) = dx {
            sc.backend
                .avg_pool2d_adjoint(self, dy, pass.batch * self.channels, dx);
        }
    }

    fn r_forward<B: Backend, T: Real>(
        &self,
        pass: &Pass<'_, T, B>,
        _v: B::View<'_, T>,
        rx: Option<B::View<'_, T>>,
        ry: B::ViewMut<'_, T>,
        _saved: &mut [B::Buffer<T>; 2],
        sc: &mut Scratch<T, B>,
    ) {
        let be = &sc.backend;
        match rx {
            Some(rx) => be.avg_pool2d(self, rx, pass.batch * self.channels, ry),
            None => be.fill(
                B::slice_mut(ry, 0..pass.batch * self.out_features()),
                T::zero(),
            ),
        }
    }

    fn r_backward<B: Backend, T: Real>(
        &self,
        pass: &Pass<'_, T, B>,
        r: &RPass<'_, T, B>,
        _hv: B::ViewMut<'_, T>,
        rdx: Option<B::ViewMut<'_, T>>,
        _saved: &[B::Buffer<T>; 2],
        sc: &mut Scratch<T, B>,
    ) {
        if let Some(rdx) = rdx {
            sc.backend
                .avg_pool2d_adjoint(self, r.rdy, pass.batch * self.channels, rdx);
        }
    }

    fn per_sample(&self) -> PerSample {
        PerSample::None
    }

    fn per_sample_gradients<B: Backend, T: Real>(
        &self,
        _params: B::View<'_, T>,
        _x: B::View<'_, T>,
        _dy: B::View<'_, T>,
        _batch: usize,
        _scale: T,
        _rows: B::ViewMut<'_, T>,
        _stride: usize,
        _sc: &mut Scratch<T, B>,
    ) {
    }
}
