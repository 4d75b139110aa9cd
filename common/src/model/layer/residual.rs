//! A residual block (`Residual(nn.Sequential)` whose forward is `x + super().forward(x)`): y = x + f(x),
//! f its inner layers in order (He et al. 2016, "Deep residual learning"). The skip is linear and
//! has no parameters, so every pass is the inner chain's pass plus the identity:
//!
//! backward ∂x = δ + J_fᵀ·δ; R-forward R{y} = R{x} + R{f(x)}; R-backward R{∂x} = R{δ} + R{J_fᵀ·δ},
//! the inner layers adding their blocks of H·v (or G·v) as they would in a chain; per-sample
//! gradients are the inner layers' for the cotangent δ that reaches f's output.
//!
//! The forward pass keeps every inner layer's output (and what the inner layer keeps itself) in
//! the block's state ([`LayerOps::state_len`]), and its inner indices in the block's indices, so the
//! backward and R-passes read them instead of recomputing the inner forward. The R-forward keeps
//! the inner R{y} in the block's saved buffer, for the R-backward, unless an inner layer has saved
//! buffers of its own (a convolution); then the R-backward recomputes the inner R-forward. The
//! R-backward reads the inner cotangents δ (the ordinary backward keeps none) from its prepared
//! values ([`LayerOps::r_prepare`]: the δ, then what the inner layers prepare) where the caller
//! keeps them, as the Hessian operator does per chunk, and recomputes them otherwise. The inner
//! passes' temporary buffers live in the scratch ([`Nested`]), on the scratch's backend, grown on
//! first use and reused afterwards; per-sample gradients, which get no state, recompute the inner
//! forward there. Everything is the inner layers' passes and the backend's `copy` / `axpy` (the
//! skip x + f(x) is y ← x, then y ← y + 1·f(x): the same sum to the bit).

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

/// The inner chain's temporary buffers for one nesting level, in backend `B`'s memory: every inner
/// layer's cotangent, R{y} and R{δ}, the R-forward's saved buffers, a state and indices for the
/// passes that get none (per-sample gradients), and the scratch for the level below.
#[derive(Clone, Debug)]
pub struct Nested<T: Real, B: Backend = CpuBackend> {
    deltas: Vec<B::Buffer<T>>,
    ry: Vec<B::Buffer<T>>,
    rdelta: Vec<B::Buffer<T>>,
    saved: Vec<[B::Buffer<T>; 2]>,
    state: B::Buffer<T>,
    indices: B::Buffer<u32>,
    sc: Scratch<T, B>,
}

impl<T: Real, B: Backend> Nested<T, B> {
    /// Empty buffers on `backend`.
    fn new(backend: B) -> Self {
        Nested {
            deltas: Vec::new(),
            ry: Vec::new(),
            rdelta: Vec::new(),
            saved: Vec::new(),
            state: backend.zeros(0),
            indices: backend.zeros(0),
            sc: Scratch::on(backend, &[], 0, false),
        }
    }

    /// Sizes the buffers that `uses` names for `block` at `batch` samples (grow only). Each kind is
    /// grown when a pass that reads it first runs, so a workspace that only runs the forward and
    /// backward passes (training, SGLD) never holds (nor zero-fills) the R-passes' buffers or the
    /// per-sample pass's state: about 40 of the 70 MB that a chain of `transformer_1l` at batch 512
    /// first-touched.
    fn ensure(&mut self, block: &Residual, batch: usize, uses: Uses) {
        let layers = &block.layers;
        let k = layers.len();
        let be = self.sc.backend.clone();
        for (list, used) in [
            (&mut self.deltas, uses.deltas),
            (&mut self.ry, uses.r),
            (&mut self.rdelta, uses.r),
        ] {
            while list.len() < k {
                list.push(be.zeros(0));
            }
            if used {
                for (b, l) in list.iter_mut().zip(layers) {
                    be.ensure_len(b, batch * l.out_features());
                }
            }
        }
        while self.saved.len() < k {
            self.saved.push([be.zeros(0), be.zeros(0)]);
        }
        if uses.r {
            for (sv, l) in self.saved.iter_mut().zip(layers) {
                let n = l.saved_len(batch);
                be.ensure_len(&mut sv[0], n);
                be.ensure_len(&mut sv[1], n);
            }
        }
        if uses.state {
            be.ensure_len(&mut self.state, block.state_len(batch));
            be.ensure_len(&mut self.indices, block.index_len(batch));
        }
        if uses.r || uses.state {
            // Sized up front for the R- and per-sample passes; the forward and backward passes'
            // layers grow the scratch they use themselves (`Backend::ensure_len`).
            for l in layers {
                for batched in [false, true] {
                    let (cols, conv) = l.scratch_len(batch, batched);
                    be.ensure_len(&mut self.sc.cols, cols);
                    be.ensure_len(&mut self.sc.conv, conv);
                }
            }
        }
    }
}

/// Which of a nesting level's buffers a pass reads ([`Nested::ensure`]).
#[derive(Clone, Copy, Debug)]
struct Uses {
    /// The inner cotangents (backward, R-backward, per-sample gradients).
    deltas: bool,
    /// R{y}, R{δ} and the saved buffers (the R-passes).
    r: bool,
    /// A forward state and indices of the level's own (per-sample gradients, which get none).
    state: bool,
}

impl Uses {
    const FORWARD: Uses = Uses {
        deltas: false,
        r: false,
        state: false,
    };
    const BACKWARD: Uses = Uses {
        deltas: true,
        r: false,
        state: false,
    };
    const R_FORWARD: Uses = Uses {
        deltas: false,
        r: true,
        state: false,
    };
    const R_BACKWARD: Uses = Uses {
        deltas: true,
        r: true,
        state: false,
    };
    const PER_SAMPLE: Uses = Uses {
        deltas: true,
        r: false,
        state: true,
    };
}

/// Where inner layer j's forward state lies in the block's: its output, its own state, its indices.
struct InnerSpan {
    act: Range<usize>,
    state: Range<usize>,
    indices: Range<usize>,
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
        uses: Uses,
    ) -> &'s mut Nested<T, B> {
        let backend = &sc.backend;
        let n = sc
            .nested
            .get_or_insert_with(|| Box::new(Nested::new(backend.clone())));
        n.ensure(self, batch, uses);
        n
    }

    /// Inner layer j's spans in the block's state and indices for `batch` samples: the outputs
    /// and own states of the inner layers in order, `[y₀, s₀, y₁, s₁, …]`, and their indices.
    fn inner_span(&self, j: usize, batch: usize) -> InnerSpan {
        let (mut at, mut ix) = (0, 0);
        for l in &self.layers[..j] {
            at += batch * l.out_features() + l.state_len(batch);
            ix += l.index_len(batch);
        }
        let l = &self.layers[j];
        let out = batch * l.out_features();
        InnerSpan {
            act: at..at + out,
            state: at + out..at + out + l.state_len(batch),
            indices: ix..ix + l.index_len(batch),
        }
    }

    /// Where the R-backward's prepared values ([`LayerOps::prepared_len`]) lie: the cotangents of
    /// the inner outputs but the last (whose cotangent is the block's δ), `[δ₀, …, δₖ₋₂]`, then
    /// what each inner layer prepares itself, `[p₀, …, pₖ₋₁]`. Returns the span of δⱼ (empty for
    /// the last) and of pⱼ.
    fn prepared_span(&self, j: usize, batch: usize) -> (Range<usize>, Range<usize>) {
        let k = self.layers.len();
        let deltas: usize = self.layers[..k - 1]
            .iter()
            .map(|l| batch * l.out_features())
            .sum();
        let before: usize = self.layers[..j]
            .iter()
            .map(|l| batch * l.out_features())
            .sum();
        let delta = if j + 1 == k {
            0..0
        } else {
            before..before + batch * self.layers[j].out_features()
        };
        let at = deltas
            + self.layers[..j]
                .iter()
                .map(|l| l.prepared_len(batch))
                .sum::<usize>();
        (delta, at..at + self.layers[j].prepared_len(batch))
    }

    /// What inner layer j sees of the block's forward state (`state`, `indices`) on input `x`.
    fn inner_pass<'a, T: Real, B: Backend>(
        &self,
        j: usize,
        outer: &Pass<'a, T, B>,
        state: B::View<'a, T>,
        indices: B::View<'a, u32>,
    ) -> Pass<'a, T, B> {
        let batch = outer.batch;
        let span = self.inner_span(j, batch);
        Pass {
            params: outer.params,
            x: if j == 0 {
                outer.x
            } else {
                B::slice(state, self.inner_span(j - 1, batch).act)
            },
            y: B::slice(state, span.act),
            batch,
            indices: B::slice(indices, span.indices),
            state: B::slice(state, span.state),
        }
    }

    /// Whether the R-forward keeps the inner R{y} in the block's saved buffer (no inner layer has
    /// saved buffers of its own).
    fn keeps_r_outputs(&self, batch: usize) -> bool {
        self.layers.iter().all(|l| l.saved_len(batch) == 0)
    }

    /// The inner forward pass from x, every inner output and state into `state`, the indices into
    /// `indices`.
    #[allow(clippy::too_many_arguments)]
    fn inner_forward<T: Real, B: Backend>(
        &self,
        params: B::View<'_, T>,
        x: B::View<'_, T>,
        batch: usize,
        indices: B::ViewMut<'_, u32>,
        state: B::ViewMut<'_, T>,
        sc: &mut Scratch<T, B>,
    ) {
        let (mut state, mut indices) = (state, indices);
        let mut previous: Option<B::ViewMut<'_, T>> = None;
        for layer in &self.layers {
            let (mut out, rest) = B::split_at_mut(state, batch * layer.out_features());
            let (own, rest) = B::split_at_mut(rest, layer.state_len(batch));
            state = rest;
            let (idx, rest) = B::split_at_mut(indices, layer.index_len(batch));
            indices = rest;
            let input = match &previous {
                None => B::shorten(x),
                Some(p) => B::freeze(p),
            };
            layer.forward(params, input, batch, B::reborrow(&mut out), idx, own, sc);
            previous = Some(out);
        }
    }

    /// The inner backward pass of the cotangent `dy` at f's output, reading the forward state of
    /// `outer` (`state`, `indices`), into every inner delta buffer but the last (the last inner
    /// layer's cotangent is `dy`) and the parameter gradients when `grad` is given; ∂L/∂x of the
    /// first inner layer into `dx` when given (without `grad` and `dx` the first inner layer's
    /// backward is not run: it would write nothing).
    #[allow(clippy::too_many_arguments)]
    fn inner_backward<'a, T: Real, B: Backend>(
        &self,
        outer: &Pass<'a, T, B>,
        state: B::View<'a, T>,
        indices: B::View<'a, u32>,
        dy: B::View<'_, T>,
        mut grad: Option<B::ViewMut<'_, T>>,
        mut dx: Option<B::ViewMut<'_, T>>,
        deltas: &mut [B::Buffer<T>],
        sc: &mut Scratch<T, B>,
    ) {
        let k = self.layers.len();
        for j in (0..k).rev() {
            if j == 0 && grad.is_none() && dx.is_none() {
                // The first inner layer's backward would write nothing (the R-backward and the
                // per-sample gradients want only the cotangents above it).
                break;
            }
            let (before, rest) = deltas.split_at_mut(j);
            let pass = self.inner_pass(j, outer, state, indices);
            let down = match before.last_mut() {
                Some(d) => Some(B::view_mut(d)),
                None => dx.as_mut().map(|d| B::reborrow(d)),
            };
            let dj = if j + 1 == k {
                B::shorten(dy)
            } else {
                B::view(&rest[0])
            };
            self.layers[j].backward(&pass, dj, grad.as_mut().map(|g| B::reborrow(g)), down, sc);
        }
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
    fn index_len(&self, batch: usize) -> usize {
        self.layers.iter().map(|l| l.index_len(batch)).sum()
    }
    fn state_len(&self, batch: usize) -> usize {
        self.layers
            .iter()
            .map(|l| batch * l.out_features() + l.state_len(batch))
            .sum()
    }
    fn saved_len(&self, batch: usize) -> usize {
        if self.keeps_r_outputs(batch) {
            self.layers.iter().map(|l| batch * l.out_features()).sum()
        } else {
            0
        }
    }
    fn forward_flops(&self, batch: usize) -> f64 {
        self.layers.iter().map(|l| l.forward_flops(batch)).sum()
    }
    fn sample_wise(&self) -> bool {
        false
    }

    #[allow(clippy::too_many_arguments)]
    fn forward<B: Backend, T: Real>(
        &self,
        params: B::View<'_, T>,
        x: B::View<'_, T>,
        batch: usize,
        y: B::ViewMut<'_, T>,
        indices: B::ViewMut<'_, u32>,
        state: B::ViewMut<'_, T>,
        sc: &mut Scratch<T, B>,
    ) {
        let n = batch * self.features;
        let be = sc.backend.clone();
        let mut state = B::slice_mut(state, 0..self.state_len(batch));
        self.inner_forward(
            params,
            x,
            batch,
            B::slice_mut(indices, 0..self.index_len(batch)),
            B::reborrow(&mut state),
            &mut self.nested(sc, batch, Uses::FORWARD).sc,
        );
        let f = B::slice(B::freeze(&state), self.inner_span(self.layers.len() - 1, batch).act);
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
        let nest = self.nested(sc, batch, Uses::BACKWARD);
        let mut dx = dx.map(|d| B::slice_mut(d, 0..n));
        self.inner_backward(
            pass,
            pass.state,
            pass.indices,
            B::slice(dy, 0..n),
            grad,
            dx.as_mut().map(|d| B::reborrow(d)),
            &mut nest.deltas,
            &mut nest.sc,
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
        saved: &mut [B::Buffer<T>; 2],
        sc: &mut Scratch<T, B>,
    ) {
        let (batch, n) = (pass.batch, pass.batch * self.features);
        let be = sc.backend.clone();
        let nest = self.nested(sc, batch, Uses::R_FORWARD);
        let Nested {
            ry: inner_ry,
            saved: inner_saved,
            sc: inner_sc,
            ..
        } = nest;
        let mut ry = B::slice_mut(ry, 0..n);
        // Inner R{y}: in the block's saved buffer when it keeps them, else in the scratch.
        let mut kept = self
            .keeps_r_outputs(batch)
            .then(|| B::slice_mut(B::view_mut(&mut saved[0]), 0..self.saved_len(batch)));
        let mut previous: Option<B::ViewMut<'_, T>> = None;
        let mut slots = inner_ry.iter_mut();
        for (j, layer) in self.layers.iter().enumerate() {
            let inner = self.inner_pass(j, pass, pass.state, pass.indices);
            let slot = slots.next().expect("a buffer per inner layer");
            let mut out = match kept.take() {
                Some(rest) => {
                    let (out, rest) = B::split_at_mut(rest, batch * layer.out_features());
                    kept = Some(rest);
                    out
                }
                None => B::slice_mut(B::view_mut(slot), 0..batch * layer.out_features()),
            };
            let rin = match &previous {
                None => rx.map(|r| B::shorten(r)),
                Some(p) => Some(B::freeze(p)),
            };
            layer.r_forward(
                &inner,
                B::shorten(v),
                rin,
                B::reborrow(&mut out),
                &mut inner_saved[j],
                inner_sc,
            );
            previous = Some(out);
        }
        let rf = B::freeze(previous.as_ref().expect("a residual block has inner layers"));
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
        saved: &[B::Buffer<T>; 2],
        sc: &mut Scratch<T, B>,
    ) {
        let (batch, n, k) = (pass.batch, pass.batch * self.features, self.layers.len());
        let be = sc.backend.clone();
        let keeps = self.keeps_r_outputs(batch);
        let nest = self.nested(sc, batch, Uses::R_BACKWARD);
        // The inner cotangents (the ordinary backward keeps none) unless they were prepared, and
        // the inner R{y} when the R-forward could not keep them.
        let prepared = r.prepared.map(|p| B::slice(p, 0..self.prepared_len(batch)));
        if prepared.is_none() {
            self.inner_backward(
                pass,
                pass.state,
                pass.indices,
                B::slice(r.dy, 0..n),
                None,
                None,
                &mut nest.deltas,
                &mut nest.sc,
            );
        }
        if !keeps {
            let mut scratch_saved = [be.zeros(0), be.zeros(0)];
            let mut ry = be.zeros(n);
            self.r_forward(
                pass,
                r.v,
                r.rx,
                B::view_mut(&mut ry),
                &mut scratch_saved,
                sc,
            );
        }
        let nest = self.nested(sc, batch, Uses::R_BACKWARD);
        let Nested {
            deltas,
            ry: inner_ry,
            rdelta,
            saved: inner_saved,
            sc: inner_sc,
            ..
        } = nest;
        let ry_of = |j: usize| -> B::View<'_, T> {
            let len = batch * self.layers[j].out_features();
            if keeps {
                let at: usize = self.layers[..j]
                    .iter()
                    .map(|l| batch * l.out_features())
                    .sum();
                B::slice(B::view(&saved[0]), at..at + len)
            } else {
                B::slice(B::view(&inner_ry[j]), 0..len)
            }
        };
        let mut rdx = rdx.map(|d| B::slice_mut(d, 0..n));
        for j in (0..k).rev() {
            let (before, rest) = rdelta.split_at_mut(j);
            let last = j + 1 == k;
            let (delta, own) = self.prepared_span(j, batch);
            let inner = RPass::<T, B> {
                v: B::shorten(r.v),
                rx: if j == 0 {
                    r.rx.map(|v| B::shorten(v))
                } else {
                    Some(B::shorten(ry_of(j - 1)))
                },
                dy: match (last, prepared) {
                    (true, _) => B::shorten(B::slice(r.dy, 0..n)),
                    (false, Some(p)) => B::shorten(B::slice(p, delta)),
                    (false, None) => B::view(&deltas[j]),
                },
                rdy: if last {
                    B::shorten(B::slice(r.rdy, 0..n))
                } else {
                    B::view(&rest[0])
                },
                alpha: r.alpha,
                gauss_newton: r.gauss_newton,
                prepared: prepared
                    .filter(|_| !own.is_empty())
                    .map(|p| B::shorten(B::slice(p, own))),
            };
            let pass_j = self.inner_pass(j, pass, pass.state, pass.indices);
            let down = match before.last_mut() {
                Some(d) => Some(B::view_mut(d)),
                None => rdx.as_mut().map(|d| B::reborrow(d)),
            };
            self.layers[j].r_backward(
                &pass_j,
                &inner,
                B::reborrow(&mut hv),
                down,
                &inner_saved[j],
                inner_sc,
            );
        }
        if let Some(rdx) = rdx {
            be.axpy(T::one(), B::slice(r.rdy, 0..n), rdx);
        }
    }

    fn prepared_len(&self, batch: usize) -> usize {
        let k = self.layers.len();
        self.layers[..k - 1]
            .iter()
            .map(|l| batch * l.out_features())
            .sum::<usize>()
            + self
                .layers
                .iter()
                .map(|l| l.prepared_len(batch))
                .sum::<usize>()
    }

    fn r_prepare<B: Backend, T: Real>(
        &self,
        pass: &Pass<'_, T, B>,
        dy: B::View<'_, T>,
        out: B::ViewMut<'_, T>,
        sc: &mut Scratch<T, B>,
    ) {
        let (batch, n, k) = (pass.batch, pass.batch * self.features, self.layers.len());
        let be = sc.backend.clone();
        let Nested {
            deltas, sc: inner_sc, ..
        } = self.nested(sc, batch, Uses::BACKWARD);
        self.inner_backward(
            pass,
            pass.state,
            pass.indices,
            B::slice(dy, 0..n),
            None,
            None,
            deltas,
            inner_sc,
        );
        let mut out = B::slice_mut(out, 0..self.prepared_len(batch));
        for (j, layer) in self.layers.iter().enumerate() {
            let (delta, prepared) = self.prepared_span(j, batch);
            let dj = if j + 1 == k {
                B::shorten(B::slice(dy, 0..n))
            } else {
                let d = B::slice(B::view(&deltas[j]), 0..delta.len());
                be.copy(d, B::slice_mut(B::reborrow(&mut out), delta));
                d
            };
            if !prepared.is_empty() {
                let inner = self.inner_pass(j, pass, pass.state, pass.indices);
                let slot = B::slice_mut(B::reborrow(&mut out), prepared);
                layer.r_prepare(&inner, dj, slot, inner_sc);
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
        let nest = self.nested(sc, batch, Uses::PER_SAMPLE);
        let Nested {
            deltas,
            state,
            indices,
            sc: inner_sc,
            ..
        } = nest;
        // No forward state comes with this pass: recompute it into the scratch's.
        self.inner_forward(
            params,
            x,
            batch,
            B::slice_mut(B::view_mut(indices), 0..self.index_len(batch)),
            B::slice_mut(B::view_mut(state), 0..self.state_len(batch)),
            inner_sc,
        );
        let (state, indices) = (B::view(state), B::view(indices));
        let outer = Pass::<T, B> {
            params: B::shorten(params),
            x: B::shorten(x),
            y: B::shorten(x),
            batch,
            indices,
            state,
        };
        self.inner_backward(&outer, state, indices, dy, None, None, deltas, inner_sc);
        let k = self.layers.len();
        for (j, (layer, span)) in self.layers.iter().zip(&self.spans).enumerate() {
            if span.is_empty() {
                continue;
            }
            let input = if j == 0 {
                B::shorten(x)
            } else {
                B::slice(state, self.inner_span(j - 1, batch).act)
            };
            let dj = if j + 1 == k {
                B::shorten(dy)
            } else {
                B::view(&deltas[j])
            };
            let len = B::len(B::freeze(&rows));
            layer.per_sample_gradients(
                params,
                input,
                dj,
                batch,
                scale,
                B::slice_mut(B::reborrow(&mut rows), span.start - base..len),
                stride,
                inner_sc,
            );
        }
    }
}
