//! Max-pooling (`nn.MaxPool2d(kernel, stride)`, no padding, floor mode; the LeNet's is
//! `F.max_pool2d(x, 2)`): each output is the largest of its `kernel × kernel` window, windows
//! `stride` apart, so the output side is ⌊(side − kernel)/stride⌋ + 1 (the first maximum in scan
//! order wins ties, as PyTorch's CPU kernel; a NaN wins). Linear where the winners do not change:
//! ∂x scatters δ to the winners (adding where overlapping windows share one), R{y} gathers R{x}
//! from them, and R{∂x} scatters R{δ}.

use super::{LayerOps, Pass, PerSample, RPass, Scratch};
use crate::device::Backend;
use crate::Real;
use std::ops::Range;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaxPool2d {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub kernel: usize,
    pub stride: usize,
}

impl MaxPool2d {
    /// `F.max_pool2d(x, 2)`: 2×2 windows with stride 2.
    pub fn two_by_two(channels: usize, height: usize, width: usize) -> Self {
        MaxPool2d {
            channels,
            height,
            width,
            kernel: 2,
            stride: 2,
        }
    }

    /// (ho, wo); the caller has checked kernel ≤ each side and stride ≥ 1.
    pub fn output_size(&self) -> (usize, usize) {
        let side = |s: usize| (s - self.kernel) / self.stride + 1;
        (side(self.height), side(self.width))
    }
}

impl LayerOps for MaxPool2d {
    fn kind(&self) -> &'static str {
        "MaxPool2d"
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
    fn index_len(&self, batch: usize) -> usize {
        batch * self.out_features()
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
        indices: B::ViewMut<'_, u32>,
        _state: B::ViewMut<'_, T>,
        sc: &mut Scratch<T, B>,
    ) {
        // The winners are kept as indices into their sample's input.
        sc.backend.max_pool2d(self, x, batch, y, indices);
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
            let (i, b) = (&pass.indices, pass.batch);
            sc.backend.max_pool2d_adjoint(self, dy, *i, None, b, dx);
        }
    }

    /// ∂x scattered with each term gated by the pool's output (see
    /// [`Backend::max_pool2d_adjoint`]): a ReLU in front is fused in.
    fn backward_gated<B: Backend, T: Real>(
        &self,
        pass: &Pass<'_, T, B>,
        dy: B::View<'_, T>,
        _grad: Option<B::ViewMut<'_, T>>,
        dx: B::ViewMut<'_, T>,
        sc: &mut Scratch<T, B>,
    ) -> bool {
        let (i, b) = (&pass.indices, pass.batch);
        sc.backend
            .max_pool2d_adjoint(self, dy, *i, Some(pass.y), b, dx);
        true
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
        let (inputs, outputs) = (self.in_features(), self.out_features());
        let out = pass.batch * outputs;
        let ry = B::slice_mut(ry, 0..out);
        match rx {
            Some(rx) => sc.backend.gather(
                rx,
                B::slice(pass.indices, 0..out),
                inputs,
                outputs,
                ry,
            ),
            None => sc.backend.fill(ry, T::zero()),
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
            let (i, b) = (&pass.indices, pass.batch);
            sc.backend.max_pool2d_adjoint(self, r.rdy, *i, None, b, rdx);
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
