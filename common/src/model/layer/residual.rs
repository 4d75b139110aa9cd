//! A residual block (`Residual(nn.Sequential)` whose forward is `x + super().forward(x)`): y = x + f(x),
//! f its inner layers in order (He et al. 2016, "Deep residual learning"). The skip is linear and
//! has no parameters, so every pass is the inner chain's pass plus the identity:
//!
//! backward ∂x = δ + J_fᵀ·δ; R-forward R{y} = R{x} + R{f(x)}; R-backward R{∂x} = R{δ} + R{J_fᵀ·δ},
//! the inner layers adding their blocks of H·v (or G·v) as they would in a chain; per-sample
//! gradients are the inner layers' for the cotangent δ that reaches f's output.
//!
//! The block keeps nothing between passes: each pass that needs the inner activations (backward,
//! the R-passes, per-sample gradients) recomputes the inner forward from x (the same arithmetic, so
//! the same bits), and the R-backward recomputes the inner backward and R-forward too. The buffers
//! live in the scratch ([`Nested`]), grown on first use and reused afterwards.

use super::{Layer, LayerOps, Pass, PerSample, RPass, Scratch};
use crate::Real;
use std::ops::Range;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Residual {
    /// Features per sample in and out (f keeps the shape).
    pub features: usize,
    /// f's layers in forward order.
    pub layers: Vec<Layer>,
    /// The block of the flat parameter vector each inner layer's tensors occupy (empty without
    /// parameters), for the per-sample gradients.
    spans: Vec<Range<usize>>,
}

/// The inner chain's buffers for one nesting level: every inner layer's output, its cotangent, its
/// kept indices, R{y}, R{δ}, the R-forward's saved buffers, and the scratch for the level below.
#[derive(Clone, Debug, Default)]
pub struct Nested<T> {
    acts: Vec<Vec<T>>,
    deltas: Vec<Vec<T>>,
    indices: Vec<Vec<u32>>,
    ry: Vec<Vec<T>>,
    rdelta: Vec<Vec<T>>,
    saved: Vec<[Vec<T>; 2]>,
    sc: Scratch<T>,
}

fn grow<T: Clone>(v: &mut Vec<T>, len: usize, zero: T) {
    if v.len() < len {
        v.resize(len, zero);
    }
}

impl<T: Real> Nested<T> {
    /// Sizes the buffers for `layers` at `batch` samples (grow only).
    fn ensure(&mut self, layers: &[Layer], batch: usize) {
        let k = layers.len();
        for list in [
            &mut self.acts,
            &mut self.deltas,
            &mut self.ry,
            &mut self.rdelta,
        ] {
            if list.len() < k {
                list.resize(k, Vec::new());
            }
            for (b, l) in list.iter_mut().zip(layers) {
                grow(b, batch * l.out_features(), T::zero());
            }
        }
        if self.indices.len() < k {
            self.indices.resize(k, Vec::new());
        }
        if self.saved.len() < k {
            self.saved.resize(k, [Vec::new(), Vec::new()]);
        }
        for ((ix, sv), l) in self.indices.iter_mut().zip(&mut self.saved).zip(layers) {
            grow(ix, l.index_len(batch), 0);
            let n = l.saved_len(batch);
            grow(&mut sv[0], n, T::zero());
            grow(&mut sv[1], n, T::zero());
        }
        for l in layers {
            for batched in [false, true] {
                let (cols, conv) = l.scratch_len(batch, batched);
                grow(&mut self.sc.cols, cols, T::zero());
                grow(&mut self.sc.conv, conv, T::zero());
            }
        }
    }

    /// The inner forward pass from x.
    fn forward(&mut self, layers: &[Layer], params: &[T], x: &[T], batch: usize) {
        for (j, layer) in layers.iter().enumerate() {
            let (before, rest) = self.acts.split_at_mut(j);
            let input: &[T] = if j == 0 { x } else { &before[j - 1] };
            layer.forward(
                params,
                input,
                batch,
                &mut rest[0][..batch * layer.out_features()],
                &mut self.indices[j][..layer.index_len(batch)],
                &mut self.sc,
            );
        }
    }

    /// The inner backward pass of the cotangent `dy` at f's output into every inner delta buffer
    /// (and the parameter gradients when `grad` is given); ∂L/∂x of the first inner layer into
    /// `dx` when given.
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &mut self,
        layers: &[Layer],
        params: &[T],
        x: &[T],
        batch: usize,
        dy: &[T],
        mut grad: Option<&mut [T]>,
        mut dx: Option<&mut [T]>,
    ) {
        let k = layers.len();
        let n = batch * layers[k - 1].out_features();
        self.deltas[k - 1][..n].copy_from_slice(&dy[..n]);
        for j in (0..k).rev() {
            let (before, rest) = self.deltas.split_at_mut(j);
            let pass = Pass {
                params,
                x: if j == 0 { x } else { &self.acts[j - 1] },
                y: &self.acts[j],
                batch,
                indices: &self.indices[j],
            };
            let down = match before.last_mut() {
                Some(d) => Some(&mut d[..]),
                None => dx.as_deref_mut(),
            };
            layers[j].backward(&pass, &rest[0], grad.as_deref_mut(), down, &mut self.sc);
        }
    }

    /// The inner R-forward from R{x} (`None`: x does not depend on θ).
    fn r_forward(
        &mut self,
        layers: &[Layer],
        params: &[T],
        x: &[T],
        batch: usize,
        v: &[T],
        rx: Option<&[T]>,
    ) {
        for (j, layer) in layers.iter().enumerate() {
            let (before, rest) = self.ry.split_at_mut(j);
            let pass = Pass {
                params,
                x: if j == 0 { x } else { &self.acts[j - 1] },
                y: &self.acts[j],
                batch,
                indices: &self.indices[j],
            };
            let rin = if j == 0 {
                rx
            } else {
                Some(&before[j - 1][..])
            };
            layer.r_forward(&pass, v, rin, &mut rest[0], &mut self.saved[j], &mut self.sc);
        }
    }
}

impl Residual {
    /// The block y = x + f(x) over `features` features, f = `layers` (each taking and giving what
    /// the next one does, the first `features` in and the last `features` out), `spans` the flat
    /// ranges of their tensors.
    ///
    /// **Panics** without inner layers or when the shapes do not chain (a definition error).
    pub fn new(features: usize, layers: Vec<Layer>, spans: Vec<Range<usize>>) -> Self {
        assert!(!layers.is_empty(), "a residual block needs inner layers");
        assert_eq!(layers.len(), spans.len());
        let mut width = features;
        for l in &layers {
            assert_eq!(l.in_features(), width, "residual block: {} input", l.kind());
            width = l.out_features();
        }
        assert_eq!(width, features, "residual block: f changes the width");
        Residual {
            features,
            layers,
            spans,
        }
    }

    /// The flat block of all inner parameters (empty without any).
    fn param_span(&self) -> Range<usize> {
        let mut it = self.spans.iter().filter(|s| !s.is_empty());
        match (it.next(), self.spans.iter().rev().find(|s| !s.is_empty())) {
            (Some(a), Some(b)) => a.start..b.end,
            _ => 0..0,
        }
    }

    /// The first inner layer, depth first, that is not piecewise linear (for messages).
    pub fn first_not_piecewise_linear(&self) -> Option<(usize, &'static str)> {
        self.layers.iter().enumerate().find_map(|(j, l)| match l {
            Layer::Residual(r) => r.first_not_piecewise_linear().map(|(_, k)| (j, k)),
            l if !l.piecewise_linear() => Some((j, l.kind())),
            _ => None,
        })
    }

    fn nested<'s, T: Real>(&self, sc: &'s mut Scratch<T>, batch: usize) -> &'s mut Nested<T> {
        let n = sc.nested.get_or_insert_with(Default::default);
        n.ensure(&self.layers, batch);
        n
    }
}

impl LayerOps for Residual {
    fn kind(&self) -> &'static str {
        "Residual"
    }
    fn in_features(&self) -> usize {
        self.features
    }
    fn out_features(&self) -> usize {
        self.features
    }
    fn tensors(&self) -> Range<usize> {
        let mut with = self.layers.iter().map(|l| l.tensors()).filter(|t| !t.is_empty());
        match with.next() {
            Some(first) => first.start..with.next_back().map_or(first.end, |t| t.end),
            None => 0..0,
        }
    }
    fn piecewise_linear(&self) -> bool {
        self.layers.iter().all(|l| l.piecewise_linear())
    }
    fn scratch_len(&self, _batch: usize, _batched: bool) -> (usize, usize) {
        // The inner layers use the nested scratch.
        (0, 0)
    }
    fn index_len(&self, _batch: usize) -> usize {
        0
    }
    fn saved_len(&self, _batch: usize) -> usize {
        0
    }
    fn forward_flops(&self, batch: usize) -> f64 {
        self.layers.iter().map(|l| l.forward_flops(batch)).sum()
    }
    fn sample_wise(&self) -> bool {
        false
    }

    fn forward<T: Real>(
        &self,
        params: &[T],
        x: &[T],
        batch: usize,
        y: &mut [T],
        _indices: &mut [u32],
        sc: &mut Scratch<T>,
    ) {
        let n = batch * self.features;
        let nest = self.nested(sc, batch);
        nest.forward(&self.layers, params, x, batch);
        let f = &nest.acts[self.layers.len() - 1];
        for ((o, &a), &b) in y[..n].iter_mut().zip(&x[..n]).zip(&f[..n]) {
            *o = a + b;
        }
    }

    fn backward<T: Real>(
        &self,
        pass: &Pass<'_, T>,
        dy: &[T],
        grad: Option<&mut [T]>,
        dx: Option<&mut [T]>,
        sc: &mut Scratch<T>,
    ) {
        let (batch, n) = (pass.batch, pass.batch * self.features);
        let nest = self.nested(sc, batch);
        nest.forward(&self.layers, pass.params, pass.x, batch);
        let mut dx = dx.map(|d| &mut d[..n]);
        nest.backward(
            &self.layers,
            pass.params,
            pass.x,
            batch,
            dy,
            grad,
            dx.as_deref_mut(),
        );
        if let Some(dx) = dx {
            for (d, &g) in dx.iter_mut().zip(&dy[..n]) {
                *d += g;
            }
        }
    }

    fn r_forward<T: Real>(
        &self,
        pass: &Pass<'_, T>,
        v: &[T],
        rx: Option<&[T]>,
        ry: &mut [T],
        _saved: &mut [Vec<T>; 2],
        sc: &mut Scratch<T>,
    ) {
        let (batch, n) = (pass.batch, pass.batch * self.features);
        let nest = self.nested(sc, batch);
        nest.forward(&self.layers, pass.params, pass.x, batch);
        nest.r_forward(&self.layers, pass.params, pass.x, batch, v, rx);
        let rf = &nest.ry[self.layers.len() - 1][..n];
        match rx {
            Some(rx) => {
                for ((o, &a), &b) in ry[..n].iter_mut().zip(&rx[..n]).zip(rf) {
                    *o = a + b;
                }
            }
            None => ry[..n].copy_from_slice(rf),
        }
    }

    fn r_backward<T: Real>(
        &self,
        pass: &Pass<'_, T>,
        r: &RPass<'_, T>,
        hv: &mut [T],
        rdx: Option<&mut [T]>,
        _saved: &[Vec<T>; 2],
        sc: &mut Scratch<T>,
    ) {
        let (batch, n, k) = (pass.batch, pass.batch * self.features, self.layers.len());
        let (params, x) = (pass.params, pass.x);
        let nest = self.nested(sc, batch);
        nest.forward(&self.layers, params, x, batch);
        nest.backward(&self.layers, params, x, batch, r.dy, None, None);
        nest.r_forward(&self.layers, params, x, batch, r.v, r.rx);
        nest.rdelta[k - 1][..n].copy_from_slice(&r.rdy[..n]);
        let mut rdx = rdx.map(|d| &mut d[..n]);
        for j in (0..k).rev() {
            let (before, rest) = nest.rdelta.split_at_mut(j);
            let inner = RPass {
                v: r.v,
                rx: if j == 0 {
                    r.rx
                } else {
                    Some(&nest.ry[j - 1][..])
                },
                dy: &nest.deltas[j],
                rdy: &rest[0],
                alpha: r.alpha,
                gauss_newton: r.gauss_newton,
            };
            let pass_j = Pass {
                params,
                x: if j == 0 { x } else { &nest.acts[j - 1] },
                y: &nest.acts[j],
                batch,
                indices: &nest.indices[j],
            };
            let down = match before.last_mut() {
                Some(d) => Some(&mut d[..]),
                None => rdx.as_deref_mut(),
            };
            self.layers[j].r_backward(&pass_j, &inner, hv, down, &nest.saved[j], &mut nest.sc);
        }
        if let Some(rdx) = rdx {
            for (d, &g) in rdx.iter_mut().zip(&r.rdy[..n]) {
                *d += g;
            }
        }
    }

    fn per_sample(&self) -> PerSample {
        if self.tensors().is_empty() {
            PerSample::None
        } else {
            PerSample::Materialise
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn per_sample_gradients<T: Real>(
        &self,
        params: &[T],
        x: &[T],
        dy: &[T],
        batch: usize,
        scale: T,
        rows: &mut [T],
        stride: usize,
        sc: &mut Scratch<T>,
    ) {
        let base = self.param_span().start;
        let nest = self.nested(sc, batch);
        nest.forward(&self.layers, params, x, batch);
        nest.backward(&self.layers, params, x, batch, dy, None, None);
        for (j, (layer, span)) in self.layers.iter().zip(&self.spans).enumerate() {
            if span.is_empty() {
                continue;
            }
            let input: &[T] = if j == 0 { x } else { &nest.acts[j - 1] };
            layer.per_sample_gradients(
                params,
                input,
                &nest.deltas[j],
                batch,
                scale,
                &mut rows[span.start - base..],
                stride,
                &mut nest.sc,
            );
        }
    }
}
