//! The Hessian (and Gauss–Newton matrix) of the mean cross-entropy over a fixed sample set, as a
//! matrix-free linear operator: v ↦ H·v by the R-operator of [`super::rop`].
//!
//! Both the operator and the estimators over it are generic over the [`Backend`]: the samples, the
//! cached passes, the parameters and every vector the estimators keep (probes, Krylov bases, Ritz
//! vectors) live in the backend's memory, and the estimators' vector arithmetic is the backend's
//! `dot` / `axpy` / `divide`. What stays on the host: drawing the probes (the counter-based
//! [`crate::rng::stream`], uploaded once per probe), the small tridiagonal eigenproblems of
//! Lanczos, the per-probe scalars, and the exact trace (its per-sample norms read host slices).

use super::rop::{prepare, r_pass, ChunkPass, RBuffers};
use crate::data::Dataset;
use crate::device::{Backend, CpuBackend};
use crate::model::{LayerOps, Network, TargetBuf, Targets, Workspace};
use crate::{Error, Real, Result};

/// A symmetric linear operator on ℝᴾ in f64 on backend `B`, as the trace and eigenvalue
/// estimators see it: its vectors are `B`'s buffers (host `Vec<f64>`s on the CPU).
pub trait LinearOperator<B: Backend = CpuBackend> {
    /// The backend its vectors live on (the estimators do their vector arithmetic there).
    fn backend(&self) -> &B;
    /// P, the dimension.
    fn dim(&self) -> usize;
    /// out ← A·v.
    fn apply(&mut self, v: B::View<'_, f64>, out: B::ViewMut<'_, f64>);
    /// A·vⱼ for several vectors; implementations may share work between them (one pass through the
    /// data for all of them).
    fn apply_many(&mut self, vs: &[B::Buffer<f64>]) -> Vec<B::Buffer<f64>> {
        vs.iter()
            .map(|v| {
                let mut out = self.backend().zeros(B::buffer_len(v));
                self.apply(B::view(v), B::view_mut(&mut out));
                out
            })
            .collect()
    }
}

/// A dense symmetric matrix (row-major P×P) as a [`LinearOperator`]; used to verify the estimators.
#[derive(Clone, Debug)]
pub struct DenseOperator {
    pub dim: usize,
    pub matrix: Vec<f64>,
}

impl LinearOperator for DenseOperator {
    fn backend(&self) -> &CpuBackend {
        &CpuBackend
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn apply(&mut self, v: &[f64], out: &mut [f64]) {
        for (i, o) in out.iter_mut().enumerate() {
            *o = self.matrix[i * self.dim..(i + 1) * self.dim]
                .iter()
                .zip(v)
                .map(|(a, b)| a * b)
                .sum();
        }
    }
}

/// Which curvature matrix the operator applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Curvature {
    /// The Hessian H = ∂²L/∂θ² (exact, all cross-layer terms).
    Hessian,
    /// The Gauss–Newton matrix G = (1/n)·Σᵢ Jᵢᵀ·Aᵢ·Jᵢ (positive semi-definite; for cross-entropy it is
    /// the Fisher information of the model's predictive distribution).
    GaussNewton,
}

/// The forward outputs, backward cotangents, kept indices and kept values of one chunk of samples,
/// and what each layer prepares for its R-backward ([`LayerOps::r_prepare`]: a residual block's
/// inner cotangents, GELU's φ″), so that a product runs only the R-passes.
#[derive(Clone, Debug)]
struct ChunkState<T: Real, B: Backend> {
    acts: Vec<B::Buffer<T>>,
    deltas: Vec<B::Buffer<T>>,
    indices: Vec<B::Buffer<u32>>,
    states: Vec<B::Buffer<T>>,
    prepared: Vec<Option<B::Buffer<T>>>,
}

/// One chunk's samples (in the backend's memory) and targets (on the host, as the loss takes them).
#[derive(Clone, Debug)]
struct Chunk<T: Real, B: Backend> {
    x: B::Buffer<T>,
    targets: TargetBuf<T>,
    state: Option<ChunkState<T, B>>,
}

/// A copy of the first `len` elements of `buf` in a buffer of its own.
fn prefix_copy<B: Backend, E: crate::device::Element>(
    be: &B,
    buf: &B::Buffer<E>,
    len: usize,
) -> B::Buffer<E> {
    let mut out = be.zeros(len);
    be.copy(B::slice(B::view(buf), 0..len), B::view_mut(&mut out));
    out
}

/// Bytes the operator's cache takes for `n` samples: the passes (outputs and cotangents,
/// indices counted generously as one per output, kept values), and beside them the values the
/// layers prepare for their R-backward. The second is kept only where both fit; without it each
/// product recomputes those values, as it does without a cache.
pub(crate) fn cache_needs<T: Real>(net: &Network, n: usize) -> (usize, usize) {
    let per_sample: usize = net.layers.iter().map(|l| l.out_features()).sum();
    let kept: usize = net.layers.iter().map(|l| l.state_len(1)).sum();
    let prepared: usize = net.layers.iter().map(|l| l.prepared_len(1)).sum();
    let size = std::mem::size_of::<T>();
    (
        n * (per_sample * (2 * size + 4) + kept * size),
        n * prepared * size,
    )
}

/// Memory the operator may spend on caching every chunk's forward and backward pass (so that each
/// product costs only its R-passes); above it, each product recomputes them.
pub const DEFAULT_CACHE_BYTES: usize = 1 << 30;

/// The mean cross-entropy L(θ) = (1/n)·Σᵢ CE(f(xᵢ; θ), yᵢ) over n fixed samples, at fixed θ, with its
/// Hessian–vector and Gauss–Newton–vector products.
///
/// The samples are processed in chunks of `batch_size` (the result does not depend on it beyond
/// rounding): chunk c of bᶜ samples contributes (bᶜ/n)·H_c·v. Products run in `T` (f32 as PyTorch, or
/// f64); the [`LinearOperator`] interface converts to and from f64. Everything it holds (θ, the
/// samples, the cached passes, the R-pass buffers) lives on backend `B`.
#[derive(Clone, Debug)]
pub struct HessianOperator<T: Real, B: Backend = CpuBackend> {
    be: B,
    net: Network,
    params: B::Buffer<T>,
    chunks: Vec<Chunk<T, B>>,
    samples: usize,
    ws: Workspace<T, B>,
    pub(crate) bufs: RBuffers<T, B>,
    loss: f64,
    grad: B::Buffer<T>,
    mode: Curvature,
    matvecs: usize,
    cached: bool,
}

impl<T: Real> HessianOperator<T> {
    /// Builds the operator on the CPU on samples `x` (`n × input_features`, normalised, row-major)
    /// with labels, running one forward and backward pass (the loss and gradient are kept):
    /// [`HessianOperator::new_on`] with [`CpuBackend`].
    ///
    /// # Errors
    /// [`Error::Invalid`] for no samples, a zero batch size, mismatched lengths, non-finite parameters
    /// or a non-finite loss.
    pub fn new<'a>(
        net: &Network,
        params: &[T],
        x: &[T],
        targets: impl Into<Targets<'a, T>>,
        batch_size: usize,
        cache_bytes: usize,
    ) -> Result<Self> {
        Self::new_on(CpuBackend, net, params, x, targets, batch_size, cache_bytes)
    }

    /// [`HessianOperator::new`] on the first `samples` samples of `data` in file order (normalised
    /// as the data set prescribes, in `T`).
    ///
    /// # Errors
    /// As [`HessianOperator::new`], and [`Error::Data`] when the images do not fit the model.
    pub fn from_dataset(
        net: &Network,
        params: &[T],
        data: &Dataset,
        samples: usize,
        batch_size: usize,
        cache_bytes: usize,
    ) -> Result<Self> {
        Self::from_dataset_on(
            CpuBackend,
            net,
            params,
            data,
            samples,
            batch_size,
            cache_bytes,
        )
    }
}

impl<T: Real, B: Backend> HessianOperator<T, B> {
    /// [`HessianOperator::new`] on backend `be`: the host parameters, samples and targets are
    /// checked on the host, then θ and the samples are uploaded.
    ///
    /// # Errors
    /// As [`HessianOperator::new`].
    #[allow(clippy::too_many_arguments)]
    pub fn new_on<'a>(
        be: B,
        net: &Network,
        params: &[T],
        x: &[T],
        targets: impl Into<Targets<'a, T>>,
        batch_size: usize,
        cache_bytes: usize,
    ) -> Result<Self> {
        let targets = targets.into();
        let n = targets.len();
        let f = net.input_features();
        if n == 0 {
            return Err(Error::invalid(
                "the sample set is empty (no samples to take the Hessian over)",
            ));
        }
        if batch_size == 0 {
            return Err(Error::invalid("batch size must be at least 1"));
        }
        if x.len() != n * f || params.len() != net.num_params() {
            return Err(Error::invalid(format!(
                "inputs do not fit the model: {} values for {n} samples of {f} features, {} parameters for {}",
                x.len(),
                params.len(),
                net.num_params()
            )));
        }
        if let Some(t) = net
            .layout
            .tensors
            .iter()
            .find(|t| params[t.range()].iter().any(|v| !v.is_finite()))
        {
            return Err(Error::invalid(format!(
                "parameter tensor {} holds NaN or Inf",
                t.name
            )));
        }
        match (net.loss.takes_float_targets(), targets) {
            (false, Targets::Labels(labels)) if net.positions() == 1 => {
                if let Some(l) = labels.iter().find(|&&l| l >= net.classes()) {
                    return Err(Error::invalid(format!(
                        "label {l} out of range 0..{}",
                        net.classes()
                    )));
                }
            }
            (false, Targets::Labels(_)) => {
                let (t, c) = net.loss_rows();
                return Err(Error::invalid(format!(
                    "one label per sample for a model whose output is per position [{t}, {c}] (it takes labels [n, {t}])"
                )));
            }
            (false, Targets::Tokens { labels, positions }) => {
                let (t, c) = net.loss_rows();
                if positions != t || labels.len() != n * t {
                    return Err(Error::invalid(format!(
                        "labels at {positions} position(s) per sample for a model whose output is [{t}, {c}]"
                    )));
                }
                if let Some(i) = labels.iter().position(|&l| l >= c) {
                    return Err(Error::invalid(format!(
                        "label {} at sample {} position {} out of range 0..{c}",
                        labels[i],
                        i / t,
                        i % t
                    )));
                }
            }
            (true, Targets::Values { values, width }) => {
                if width != net.classes() || values.len() != n * width {
                    return Err(Error::invalid(format!(
                        "targets of width {width} for a model of {} outputs",
                        net.classes()
                    )));
                }
                if values.iter().any(|v| !v.is_finite()) {
                    return Err(Error::invalid("the targets hold NaN or Inf"));
                }
            }
            (float, _) => {
                return Err(Error::invalid(format!(
                    "the loss {} takes {} targets",
                    net.loss.name(),
                    if float { "float" } else { "integer" }
                )))
            }
        }
        let batch = batch_size.min(n);
        let (passes, prepared) = cache_needs::<T>(net, n);
        let cached = passes <= cache_bytes;
        let prepares = passes + prepared <= cache_bytes;
        let chunks = (0..n)
            .step_by(batch)
            .map(|s| {
                let e = (s + batch).min(n);
                Chunk {
                    x: be.upload(&x[s * f..e * f]),
                    targets: TargetBuf::copy_of(targets.range(s, e)),
                    state: None,
                }
            })
            .collect();
        let bufs = RBuffers::on(be.clone(), &net.layers, batch);
        let mut op = HessianOperator {
            be: be.clone(),
            net: net.clone(),
            params: be.upload(params),
            chunks,
            samples: n,
            ws: net.workspace_on(be.clone(), batch),
            bufs,
            loss: 0.0,
            grad: be.zeros(net.num_params()),
            mode: Curvature::Hessian,
            matvecs: 0,
            cached,
        };
        let mut g = be.zeros::<T>(net.num_params());
        let mut loss = 0.0;
        for c in 0..op.chunks.len() {
            let chunk = &mut op.chunks[c];
            let b = chunk.targets.len();
            loss += op.net.loss_and_gradient_on(
                B::view(&op.params),
                B::view(&chunk.x),
                chunk.targets.view(),
                B::view_mut(&mut g),
                &mut op.ws,
            ) * b as f64;
            let w = T::of_f64(b as f64 / n as f64);
            be.axpy(w, B::view(&g), B::view_mut(&mut op.grad));
            if cached {
                let layers = &op.net.layers;
                let prepared = if prepares {
                    prepare(
                        &op.net,
                        B::view(&op.params),
                        B::view(&chunk.x),
                        b,
                        &mut op.ws,
                    )
                } else {
                    layers.iter().map(|_| None).collect()
                };
                chunk.state = Some(ChunkState {
                    acts: (op.ws.acts.iter().zip(layers))
                        .map(|(a, l)| prefix_copy(&be, a, b * l.out_features()))
                        .collect(),
                    deltas: (op.ws.deltas.iter().zip(layers))
                        .map(|(a, l)| prefix_copy(&be, a, b * l.out_features()))
                        .collect(),
                    indices: (op.ws.indices.iter().zip(layers))
                        .map(|(a, l)| prefix_copy(&be, a, l.index_len(b)))
                        .collect(),
                    states: (op.ws.states.iter().zip(layers))
                        .map(|(a, l)| prefix_copy(&be, a, l.state_len(b)))
                        .collect(),
                    prepared,
                });
            }
        }
        op.loss = loss / n as f64;
        if !op.loss.is_finite() {
            return Err(Error::invalid(format!(
                "the loss is not finite ({})",
                op.loss
            )));
        }
        Ok(op)
    }

    /// [`HessianOperator::from_dataset`] on backend `be` (the samples are gathered on the host and
    /// uploaded).
    ///
    /// # Errors
    /// As [`HessianOperator::from_dataset`].
    #[allow(clippy::too_many_arguments)]
    pub fn from_dataset_on(
        be: B,
        net: &Network,
        params: &[T],
        data: &Dataset,
        samples: usize,
        batch_size: usize,
        cache_bytes: usize,
    ) -> Result<Self> {
        net.check_input(data)?;
        let n = samples.min(data.len());
        let norm = data.normaliser::<T>();
        let mut x = vec![T::zero(); n * data.features()];
        let mut y = data.target_buffer::<T>(n);
        data.gather_range_batch(&norm, 0, n, &mut x, &mut y)?;
        Self::new_on(be, net, params, &x, y.view(), batch_size, cache_bytes)
    }

    /// The backend it runs on.
    pub fn backend(&self) -> &B {
        &self.be
    }
    pub fn network(&self) -> &Network {
        &self.net
    }
    /// θ, in the backend's memory.
    pub fn params(&self) -> B::View<'_, T> {
        B::view(&self.params)
    }
    /// n, the number of samples.
    pub fn samples(&self) -> usize {
        self.samples
    }
    /// The mean loss at θ.
    pub fn loss(&self) -> f64 {
        self.loss
    }
    /// ∂L/∂θ at θ, in the backend's memory.
    pub fn gradient(&self) -> B::View<'_, T> {
        B::view(&self.grad)
    }
    /// Products computed so far (each vector of a batch counts once).
    pub fn matvecs(&self) -> usize {
        self.matvecs
    }
    /// Whether the forward/backward passes are cached (else each product recomputes them).
    pub fn is_cached(&self) -> bool {
        self.cached
    }
    /// Chooses the matrix applied through [`LinearOperator`].
    pub fn set_curvature(&mut self, mode: Curvature) {
        self.mode = mode;
    }
    pub fn curvature(&self) -> Curvature {
        self.mode
    }

    /// `out` ← H·v with H = ∂²L/∂θ², exact (Pearlmutter 1994: forward-mode differentiation of the
    /// forward and backward pass, see [`super::rop`]); v and out have length P. Cost: the R-passes
    /// only (about one gradient) when the forward/backward passes are cached.
    pub fn hvp(&mut self, v: B::View<'_, T>, out: B::ViewMut<'_, T>) {
        self.products(&[v], &mut [out], Curvature::Hessian);
    }

    /// `out` ← G·v with G = (1/n)·Σᵢ Jᵢᵀ·Aᵢ·Jᵢ, Aᵢ = diag(pᵢ) − pᵢ·pᵢᵀ (Schraudolph 2002): the R-forward
    /// gives J·v, the loss R-operator A·J·v, and an ordinary backward pass Jᵀ·(A·J·v).
    pub fn gnvp(&mut self, v: B::View<'_, T>, out: B::ViewMut<'_, T>) {
        self.products(&[v], &mut [out], Curvature::GaussNewton);
    }

    /// outⱼ ← M·vⱼ for k vectors (M = H or G) in one pass through the data: each chunk's forward
    /// and backward pass is made (or loaded) once for all k.
    pub fn products(
        &mut self,
        vs: &[B::View<'_, T>],
        outs: &mut [B::ViewMut<'_, T>],
        mode: Curvature,
    ) {
        let p = self.net.num_params();
        assert_eq!(vs.len(), outs.len());
        for o in outs.iter_mut() {
            assert_eq!(B::len(B::freeze(o)), p);
            self.be.fill(B::reborrow(o), T::zero());
        }
        let n = self.samples;
        let mut gscratch = self.be.zeros::<T>(if self.cached { 0 } else { p });
        for c in 0..self.chunks.len() {
            let chunk = &self.chunks[c];
            let b = chunk.targets.len();
            if chunk.state.is_none() {
                self.net.loss_and_gradient_on(
                    B::view(&self.params),
                    B::view(&chunk.x),
                    chunk.targets.view(),
                    B::view_mut(&mut gscratch),
                    &mut self.ws,
                );
            }
            let (acts, deltas, indices, states) = match &chunk.state {
                Some(s) => (&s.acts, &s.deltas, &s.indices, &s.states),
                None => (
                    &self.ws.acts,
                    &self.ws.deltas,
                    &self.ws.indices,
                    &self.ws.states,
                ),
            };
            let pass = ChunkPass::<T, B> {
                x: B::view(&chunk.x),
                acts,
                deltas,
                indices,
                states,
                prepared: chunk.state.as_ref().map(|s| &s.prepared[..]),
                batch: b,
            };
            let alpha = T::of_f64(b as f64 / n as f64);
            for (v, out) in vs.iter().zip(outs.iter_mut()) {
                r_pass::<B, T>(
                    &self.net,
                    B::view(&self.params),
                    *v,
                    &pass,
                    alpha,
                    B::reborrow(out),
                    mode == Curvature::GaussNewton,
                    &mut self.bufs,
                );
            }
        }
        self.matvecs += vs.len();
    }

    /// Calls `f(net, params, chunk, bufs)` for each chunk with its forward pass in place (the
    /// cotangents in `chunk.deltas` are those of the loss only when the passes are cached; used
    /// by the exact trace, which reads the outputs and indices).
    pub(crate) fn for_each_chunk(
        &mut self,
        mut f: impl FnMut(&Network, B::View<'_, T>, &ChunkPass<'_, T, B>, &mut RBuffers<T, B>),
    ) {
        for c in 0..self.chunks.len() {
            let chunk = &self.chunks[c];
            let b = chunk.targets.len();
            if chunk.state.is_none() {
                self.net
                    .forward_on(B::view(&self.params), B::view(&chunk.x), b, &mut self.ws);
            }
            let (acts, deltas, indices, states) = match &chunk.state {
                Some(s) => (&s.acts, &s.deltas, &s.indices, &s.states),
                None => (
                    &self.ws.acts,
                    &self.ws.deltas,
                    &self.ws.indices,
                    &self.ws.states,
                ),
            };
            let pass = ChunkPass::<T, B> {
                x: B::view(&chunk.x),
                acts,
                deltas,
                indices,
                states,
                prepared: None,
                batch: b,
            };
            f(&self.net, B::view(&self.params), &pass, &mut self.bufs);
        }
    }
}

impl<T: Real, B: Backend> LinearOperator<B> for HessianOperator<T, B> {
    fn backend(&self) -> &B {
        &self.be
    }
    fn dim(&self) -> usize {
        self.net.num_params()
    }
    fn apply(&mut self, v: B::View<'_, f64>, out: B::ViewMut<'_, f64>) {
        let p = self.net.num_params();
        let (mut vt, mut ot) = (self.be.zeros::<T>(p), self.be.zeros::<T>(p));
        self.be.convert(v, B::view_mut(&mut vt));
        let mode = self.mode;
        self.products(&[B::view(&vt)], &mut [B::view_mut(&mut ot)], mode);
        self.be.convert(B::view(&ot), out);
    }
    fn apply_many(&mut self, vs: &[B::Buffer<f64>]) -> Vec<B::Buffer<f64>> {
        let p = self.net.num_params();
        let be = self.be.clone();
        let vt: Vec<B::Buffer<T>> = vs
            .iter()
            .map(|v| {
                let mut t = be.zeros::<T>(p);
                be.convert(B::view(v), B::view_mut(&mut t));
                t
            })
            .collect();
        let mut outs: Vec<B::Buffer<T>> = vs.iter().map(|_| be.zeros(p)).collect();
        {
            let vrefs: Vec<B::View<'_, T>> = vt.iter().map(|v| B::view(v)).collect();
            let mut orefs: Vec<B::ViewMut<'_, T>> =
                outs.iter_mut().map(|o| B::view_mut(o)).collect();
            let mode = self.mode;
            self.products(&vrefs, &mut orefs, mode);
        }
        outs.iter()
            .map(|o| {
                let mut r = be.zeros::<f64>(p);
                be.convert(B::view(o), B::view_mut(&mut r));
                r
            })
            .collect()
    }
}
