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
//! live in the scratch ([`Nested`]), on the scratch's backend, grown on first use and reused
//! afterwards. Everything is the inner layers' passes and the backend's `copy` / `axpy` (the skip
//! x + f(x) is y ← x, then y ← y + 1·f(x): the same sum to the bit).

use super::{Layer, LayerOps, Pass, PerSample, RPass, Scratch};
use crate::device::{Backend, CpuBackend};
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

/// The inner chain's buffers for one nesting level, in backend `B`'s memory: every inner layer's
/// output, its cotangent, its kept indices, R{y}, R{δ}, the R-forward's saved buffers, and the
/// scratch for the level below.
#[derive(Clone, Debug)]
pub struct Nested<T: Real, B: Backend = CpuBackend> {
    acts: Vec<B::Buffer<T>>,
    deltas: Vec<B::Buffer<T>>,
    indices: Vec<B::Buffer<u32>>,
    ry: Vec<B::Buffer<T>>,
    rdelta: Vec<B::Buffer<T>>,
    saved: Vec<[B::Buffer<T>; 2]>,
    sc: Scratch<T, B>,
}

impl<T: Real, B: Backend> Nested<T, B> {
    /// Empty buffers on `backend`.
    fn new(backend: B) -> Self {
        Nested {
            acts: Vec::new(),
            deltas: Vec::new(),
            indices: Vec::new(),
            ry: Vec::new(),
            rdelta: Vec::new(),
            saved: Vec::new(),
            sc: Scratch::on(backend, &[], 0, false),
        }
    }

    /// Sizes the buffers for `layers` at `batch` samples (grow only).
    fn ensure(&mut self, layers: &[Layer], batch: usize) {
        let k = layers.len();
        let be = self.sc.backend.clone();
        for list in [
            &mut self.acts,
            &mut self.deltas,
            &mut self.ry,
            &mut self.rdelta,
        ] {
            while list.len() < k {
                list.push(be.zeros(0));
            }
            for (b, l) in list.iter_mut().zip(layers) {
                be.ensure_len(b, batch * l.out_features());
            }
        }
        while self.indices.len() < k {
            self.indices.push(be.zeros(0));
        }
        while self.saved.len() < k {
            self.saved.push([be.zeros(0), be.zeros(0)]);
        }
        for ((ix, sv), l) in self.indices.iter_mut().zip(&mut self.saved).zip(layers) {
            be.ensure_len(ix, l.index_len(batch));
            let n = l.saved_len(batch);
            be.ensure_len(&mut sv[0], n);
            be.ensure_len(&mut sv[1], n);
        }
        for l in layers {
            for batched in [false, true] {
                let (cols, conv) = l.scratch_len(batch, batched);
                be.ensure_len(&mut self.sc.cols, cols);
                be.ensure_len(&mut self.sc.conv, conv);
            }
        }
    }

    /// The inner forward pass from x.
    fn forward(&mut self, layers: &[Layer], params: B::View<'_, T>, x: B::View<'_, T>, batch: usize) {
        for (j, layer) in layers.iter().enumerate() {
            let (before, rest) = self.acts.split_at_mut(j);
            let input = if j == 0 {
                B::shorten(x)
            } else {
                B::view(&before[j - 1])
            };
            layer.forward(
                params,
                input,
                batch,
                B::slice_mut(B::view_mut(&mut rest[0]), 0..batch * layer.out_features()),
                B::slice_mut(
                    B::view_mut(&mut self.indices[j]),
                    0..layer.index_len(batch),
                ),
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
        params: B::View<'_, T>,
        x: B::View<'_, T>,
        batch: usize,
        dy: B::View<'_, T>,
        mut grad: Option<B::ViewMut<'_, T>>,
        mut dx: Option<B::ViewMut<'_, T>>,
    ) {
        let k = layers.len();
        let n = batch * layers[k - 1].out_features();
        let be = self.sc.backend.clone();
        be.copy(
            B::slice(dy, 0..n),
            B::slice_mut(B::view_mut(&mut self.deltas[k - 1]), 0..n),
        );
        for j in (0..k).rev() {
            let (before, rest) = self.deltas.split_at_mut(j);
            let pass = Pass::<T, B> {
                params: B::shorten(params),
                x: if j == 0 {
                    B::shorten(x)
                } else {
                    B::view(&self.acts[j - 1])
                },
                y: B::view(&self.acts[j]),
                batch,
                indices: B::view(&self.indices[j]),
            };
            let down = match before.last_mut() {
                Some(d) => Some(B::view_mut(d)),
                None => dx.as_mut().map(|d| B::reborrow(d)),
            };
            layers[j].backward(
                &pass,
                B::view(&rest[0]),
                grad.as_mut().map(|g| B::reborrow(g)),
                down,
                &mut self.sc,
            );
        }
    }

    /// The inner R-forward from R{x} (`None`: x does not depend on θ).
    fn r_forward(
        &mut self,
        layers: &[Layer],
        params: B::View<'_, T>,
        x: B::View<'_, T>,
        batch: usize,
        v: B::View<'_, T>,
        rx: Option<B::View<'_, T>>,
    ) {
        for (j, layer) in layers.iter().enumerate() {
            let (before, rest) = self.ry.split_at_mut(j);
            let pass = Pass::<T, B> {
                params: B::shorten(params),
                x: if j == 0 {
                    B::shorten(x)
                } else {
                    B::view(&self.acts[j - 1])
                },
                y: B::view(&self.acts[j]),
                batch,
                indices: B::view(&self.indices[j]),
            };
            let rin = if j == 0 {
                rx.map(|r| B::shorten(r))
            } else {
                Some(B::view(&before[j - 1]))
            };
            layer.r_forward(
                &pass,
                B::shorten(v),
                rin,
                B::view_mut(&mut rest[0]),
                &mut self.saved[j],
                &mut self.sc,
            );
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

    fn nested<'s, T: Real, B: Backend>(
        &self,
        sc: &'s mut Scratch<T, B>,
        batch: usize,
    ) -> &'s mut Nested<T, B> {
        let backend = &sc.backend;
        let n = sc
            .nested
            .get_or_insert_with(|| Box::new(Nested::new(backend.clone())));
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

    fn forward<B: Backend, T: Real>(
        &self,
        params: B::View<'_, T>,
        x: B::View<'_, T>,
        batch: usize,
        y: B::ViewMut<'_, T>,
        _indices: B::ViewMut<'_, u32>,
        sc: &mut Scratch<T, B>,
    ) {
        let n = batch * self.features;
        let be = sc.backend.clone();
        let nest = self.nested(sc, batch);
        nest.forward(&self.layers, params, x, batch);
        let f = B::slice(B::view(&nest.acts[self.layers.len() - 1]), 0..n);
        let mut y = B::slice_mut(y, 0..n);
        be.copy(B::slice(x, 0..n), B::reborrow(&mut y));
        be.axpy(T::one(), f, y);
    }

    fn backward<B: Backend, T: Real>(
        &self,
        pass: &Pass<'_, T, B>,
        dy: B::View<'_, T>,
        grad: Option<B::ViewMut<'_, T>>,
        dx: Option<B::ViewMut<'_, T>>,
        sc: &mut Scratch<T, B>,
    ) {
        let (batch, n) = (pass.batch, pass.batch * self.features);
        let be = sc.backend.clone();
        let nest = self.nested(sc, batch);
        nest.forward(&self.layers, pass.params, pass.x, batch);
        let mut dx = dx.map(|d| B::slice_mut(d, 0..n));
        nest.backward(
            &self.layers,
            pass.params,
            pass.x,
            batch,
            dy,
            grad,
            dx.as_mut().map(|d| B::reborrow(d)),
        );
        if let Some(dx) = dx {
            be.axpy(T::one(), B::slice(dy, 0..n), dx);
        }
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
        let (batch, n) = (pass.batch, pass.batch * self.features);
        let be = sc.backend.clone();
        let nest = self.nested(sc, batch);
        nest.forward(&self.layers, pass.params, pass.x, batch);
        nest.r_forward(&self.layers, pass.params, pass.x, batch, v, rx);
        let rf = B::slice(B::view(&nest.ry[self.layers.len() - 1]), 0..n);
        let mut ry = B::slice_mut(ry, 0..n);
        match rx {
            Some(rx) => {
                be.copy(B::slice(rx, 0..n), B::reborrow(&mut ry));
                be.axpy(T::one(), rf, ry);
            }
            None => be.copy(rf, ry),
        }
    }

    fn r_backward<B: Backend, T: Real>(
        &self,
        pass: &Pass<'_, T, B>,
        r: &RPass<'_, T, B>,
        mut hv: B::ViewMut<'_, T>,
        rdx: Option<B::ViewMut<'_, T>>,
        _saved: &[B::Buffer<T>; 2],
        sc: &mut Scratch<T, B>,
    ) {
        let (batch, n, k) = (pass.batch, pass.batch * self.features, self.layers.len());
        let (params, x) = (pass.params, pass.x);
        let be = sc.backend.clone();
        let nest = self.nested(sc, batch);
        nest.forward(&self.layers, params, x, batch);
        nest.backward(&self.layers, params, x, batch, r.dy, None, None);
        nest.r_forward(&self.layers, params, x, batch, r.v, r.rx);
        be.copy(
            B::slice(r.rdy, 0..n),
            B::slice_mut(B::view_mut(&mut nest.rdelta[k - 1]), 0..n),
        );
        let mut rdx = rdx.map(|d| B::slice_mut(d, 0..n));
        for j in (0..k).rev() {
            let (before, rest) = nest.rdelta.split_at_mut(j);
            let inner = RPass::<T, B> {
                v: B::shorten(r.v),
                rx: if j == 0 {
                    r.rx.map(|v| B::shorten(v))
                } else {
                    Some(B::view(&nest.ry[j - 1]))
                },
                dy: B::view(&nest.deltas[j]),
                rdy: B::view(&rest[0]),
                alpha: r.alpha,
                gauss_newton: r.gauss_newton,
            };
            let pass_j = Pass::<T, B> {
                params: B::shorten(params),
                x: if j == 0 {
                    B::shorten(x)
                } else {
                    B::view(&nest.acts[j - 1])
                },
                y: B::view(&nest.acts[j]),
                batch,
                indices: B::view(&nest.indices[j]),
            };
            let down = match before.last_mut() {
                Some(d) => Some(B::view_mut(d)),
                None => rdx.as_mut().map(|d| B::reborrow(d)),
            };
            self.layers[j].r_backward(
                &pass_j,
                &inner,
                B::reborrow(&mut hv),
                down,
                &nest.saved[j],
                &mut nest.sc,
            );
        }
        if let Some(rdx) = rdx {
            be.axpy(T::one(), B::slice(r.rdy, 0..n), rdx);
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
    fn per_sample_gradients<B: Backend, T: Real>(
        &self,
        params: B::View<'_, T>,
        x: B::View<'_, T>,
        dy: B::View<'_, T>,
        batch: usize,
        scale: T,
        mut rows: B::ViewMut<'_, T>,
        stride: usize,
        sc: &mut Scratch<T, B>,
    ) {
        let base = self.param_span().start;
        let nest = self.nested(sc, batch);
        nest.forward(&self.layers, params, x, batch);
        nest.backward(&self.layers, params, x, batch, dy, None, None);
        for (j, (layer, span)) in self.layers.iter().zip(&self.spans).enumerate() {
            if span.is_empty() {
                continue;
            }
            let input = if j == 0 {
                B::shorten(x)
            } else {
                B::view(&nest.acts[j - 1])
            };
            let len = B::len(B::freeze(&rows));
            layer.per_sample_gradients(
                params,
                input,
                B::view(&nest.deltas[j]),
                batch,
                scale,
                B::slice_mut(B::reborrow(&mut rows), span.start - base..len),
                stride,
                &mut nest.sc,
            );
        }
    }
}
