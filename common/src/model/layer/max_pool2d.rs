//! 2×2 max-pooling with stride 2 (`F.max_pool2d(x, 2)`): each output is the largest of its window
//! (the first maximum in scan order wins ties, as PyTorch's CPU kernel; a NaN wins). Linear where
//! the winners do not change: ∂x scatters δ to the winners, R{y} gathers R{x} from them, and
//! R{∂x} scatters R{δ}.

use super::{LayerOps, Pass, PerSample, RPass, Scratch};
use crate::Real;
use std::ops::Range;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaxPool2d {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

/// dx ← 0, then dx[winner] += d for every output; `winners` index into their own sample's input
/// (`inputs` features), `d` holds `outputs` per sample.
fn scatter<T: Real>(d: &[T], winners: &[u32], inputs: usize, outputs: usize, dx: &mut [T]) {
    dx.iter_mut().for_each(|v| *v = T::zero());
    for ((dxn, dn), wn) in dx
        .chunks_exact_mut(inputs)
        .zip(d.chunks_exact(outputs))
        .zip(winners.chunks_exact(outputs))
    {
        for (g, &i) in dn.iter().zip(wn) {
            dxn[i as usize] += *g;
        }
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
        self.channels * (self.height / 2) * (self.width / 2)
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
        indices: &mut [u32],
        _sc: &mut Scratch<T>,
    ) {
        // The winners are kept as indices into their sample's input.
        let (height, width) = (self.height, self.width);
        let (ho, wo) = (height / 2, width / 2);
        let plane = height * width;
        for nc in 0..batch * self.channels {
            let base = nc * plane;
            let sample = (nc / self.channels) * self.channels * plane;
            for i in 0..ho {
                let top = &x[base + 2 * i * width..][..2 * wo];
                let bottom = &x[base + (2 * i + 1) * width..][..2 * wo];
                let o = (nc * ho + i) * wo;
                let (y, indices) = (&mut y[o..o + wo], &mut indices[o..o + wo]);
                for (j, (y, index)) in y.iter_mut().zip(indices.iter_mut()).enumerate() {
                    // Selects, not branches: which of the four wins is unpredictable.
                    let first = (2 * i * width + 2 * j) as u32;
                    let (mut m, mut best) = (top[2 * j], first);
                    for (v, at) in [
                        (top[2 * j + 1], first + 1),
                        (bottom[2 * j], first + width as u32),
                        (bottom[2 * j + 1], first + width as u32 + 1),
                    ] {
                        let take = v > m || v.is_nan();
                        m = if take { v } else { m };
                        best = if take { at } else { best };
                    }
                    *y = m;
                    *index = best + (base - sample) as u32;
                }
            }
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
        if let Some(dx) = dx {
            let (inputs, outputs) = (self.in_features(), self.out_features());
            let out = pass.batch * outputs;
            let dx = &mut dx[..pass.batch * inputs];
            scatter(&dy[..out], &pass.indices[..out], inputs, outputs, dx);
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
        let (inputs, outputs) = (self.in_features(), self.out_features());
        let out = pass.batch * outputs;
        match rx {
            Some(rx) => {
                for ((rn, rxn), wn) in ry[..out]
                    .chunks_exact_mut(outputs)
                    .zip(rx.chunks_exact(inputs))
                    .zip(pass.indices[..out].chunks_exact(outputs))
                {
                    for (r, &i) in rn.iter_mut().zip(wn) {
                        *r = rxn[i as usize];
                    }
                }
            }
            None => ry[..out].iter_mut().for_each(|r| *r = T::zero()),
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
            let (inputs, outputs) = (self.in_features(), self.out_features());
            let out = pass.batch * outputs;
            let rdx = &mut rdx[..pass.batch * inputs];
            scatter(&r.rdy[..out], &pass.indices[..out], inputs, outputs, rdx);
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
