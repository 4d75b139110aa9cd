//! A regular selection of positions of a sequence: for x `[seq, dim]`, y `[count, dim]` with
//! y[j, :] = x[start + j·step, :], j = 0 … count − 1 (`x[:, start::step][:, :count]` in PyTorch;
//! the `Positions` module that [`crate::model::NetSpec::torch_source`] prints). The read-out of
//! in-context linear regression, whose y_k is predicted at the x-tokens, positions 0, 2, 4, …
//! (`start` 0, `step` 2). [`Positions::last`] is the spec's `last` (`x[:, -1]`, the read-out of
//! modular addition, whose answer is predicted at the `=` token): the one position `seq − 1`, whose
//! PyTorch output drops the position axis, the same values in the same order.
//!
//! A selection, linear in x with no parameters: y = S·x for the 0/1 row selector S, so
//! ∂x = Sᵀ·δ (δ's rows scattered back to the selected positions, 0 at the others), R{y} = S·R{x},
//! R{∂x} = Sᵀ·R{δ}, and no block of H·v; piecewise linear (linear), so the exact trace holds
//! through it (Pearlmutter 1994: the R-operator of a linear map is the map).

use super::{LayerOps, Pass, PerSample, RPass, Scratch};
use crate::device::Backend;
use crate::Real;
use std::ops::Range;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Positions {
    /// Positions of the input.
    pub seq: usize,
    /// Features per position.
    pub dim: usize,
    /// The first selected position (below `seq`).
    pub start: usize,
    /// The distance between selected positions (at least 1).
    pub step: usize,
    /// How many are selected: at least 1, and the last, start + (count − 1)·step, below `seq`.
    pub count: usize,
}

impl Positions {
    /// The last position of a sequence of `seq` positions with `dim` features each.
    pub fn last(seq: usize, dim: usize) -> Self {
        Positions {
            seq,
            dim,
            start: seq - 1,
            step: 1,
            count: 1,
        }
    }

    /// The positions `start`, `start + step`, … below `seq` (PyTorch's `x[:, start::step]`): their
    /// number, ⌈(seq − start)/step⌉, or 0 when `start` is not below `seq` or `step` is 0.
    pub fn available(seq: usize, start: usize, step: usize) -> usize {
        if step == 0 || start >= seq {
            0
        } else {
            (seq - start - 1) / step + 1
        }
    }

    /// Input row of output row `j`.
    fn source(&self, j: usize) -> usize {
        self.start + j * self.step
    }

    /// y ← the selected rows of each sample of `x`.
    fn select<B: Backend, T: Real>(
        &self,
        be: &B,
        x: B::View<'_, T>,
        batch: usize,
        mut y: B::ViewMut<'_, T>,
    ) {
        let (s, c, d) = (self.seq, self.count, self.dim);
        for n in 0..batch {
            for j in 0..c {
                let from = (n * s + self.source(j)) * d;
                let to = (n * c + j) * d;
                be.copy(
                    B::slice(x, from..from + d),
                    B::slice_mut(B::reborrow(&mut y), to..to + d),
                );
            }
        }
    }

    /// dx ← δ's rows at the selected positions, 0 elsewhere (the adjoint of `select`; the
    /// positions are distinct, so each receives at most one row).
    fn spread<B: Backend, T: Real>(
        &self,
        be: &B,
        dy: B::View<'_, T>,
        batch: usize,
        dx: B::ViewMut<'_, T>,
    ) {
        let (s, c, d) = (self.seq, self.count, self.dim);
        let mut dx = B::slice_mut(dx, 0..batch * s * d);
        be.fill(B::reborrow(&mut dx), T::zero());
        for n in 0..batch {
            for j in 0..c {
                let from = (n * c + j) * d;
                let to = (n * s + self.source(j)) * d;
                be.copy(
                    B::slice(dy, from..from + d),
                    B::slice_mut(B::reborrow(&mut dx), to..to + d),
                );
            }
        }
    }
}

impl LayerOps for Positions {
    fn kind(&self) -> &'static str {
        "Positions"
    }
    fn in_features(&self) -> usize {
        self.seq * self.dim
    }
    fn out_features(&self) -> usize {
        self.count * self.dim
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
        self.select(&sc.backend, x, batch, y);
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
            self.spread(&sc.backend, dy, pass.batch, dx);
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
        match rx {
            Some(rx) => self.select(&sc.backend, rx, pass.batch, ry),
            None => sc.backend.fill(
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
            self.spread(&sc.backend, r.rdy, pass.batch, rdx);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::CpuBackend;

    /// `x[:, 1::2]` of a [5, 2] sample by hand: positions 1 and 3, and the adjoint puts the rows
    /// back there with zeros at 0, 2 and 4; the count of `x[:, S::k]` is Python's.
    #[test]
    fn selects_and_scatters_the_rows_of_a_strided_slice() {
        let p = Positions {
            seq: 5,
            dim: 2,
            start: 1,
            step: 2,
            count: 2,
        };
        let x: Vec<f64> = (0..20).map(f64::from).collect();
        let mut y = vec![0.0; 8];
        p.select(&CpuBackend, &x, 2, &mut y);
        assert_eq!(y, [2.0, 3.0, 6.0, 7.0, 12.0, 13.0, 16.0, 17.0]);
        let mut dx = vec![9.0; 20];
        p.spread(&CpuBackend, &y, 2, &mut dx);
        let want: Vec<f64> = (0..20)
            .map(|i| if [1, 3].contains(&(i / 2 % 5)) { i as f64 } else { 0.0 })
            .collect();
        assert_eq!(dx, want);
        for (seq, start, step, want) in [
            (5, 1, 2, 2),
            (5, 0, 2, 3),
            (6, 0, 2, 3),
            (16, 0, 2, 8),
            (3, 2, 1, 1),
            (3, 3, 1, 0),
            (3, 0, 0, 0),
        ] {
            let python = if step == 0 {
                0
            } else {
                (start..seq).step_by(step).count()
            };
            assert_eq!(python, want);
            assert_eq!(Positions::available(seq, start, step), want);
        }
    }
}
