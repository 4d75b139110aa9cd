//! Pearlmutter's R-operator over a network: forward-mode differentiation, along a parameter
//! direction v, of the forward pass and of the backward pass (Pearlmutter 1994, "Fast exact
//! multiplication by the Hessian"). Each layer's part is its [`LayerOps::r_forward`] and
//! [`LayerOps::r_backward`] (the formulas are in each layer's file); the loss's is
//! [`crate::model::Loss::r_gradient`].
//!
//! R-forward: R{x₀} = 0, R{yᵢ} from R{xᵢ} = R{yᵢ₋₁}, up to R{z} of the logits. At the loss:
//! R{∂L/∂z} = A·R{z}, A the loss's Hessian in the logits. R-backward: each layer adds its block of
//! H·v and passes R{∂L/∂x} down. The terms in the ordinary backward's cotangents δ couple the
//! parameters of different layers and make the product the exact Hessian; dropping them
//! (`gauss_newton = true`) leaves the Gauss–Newton product Jᵀ·A·J·v (Schraudolph 2002).

use crate::device::{Backend, CpuBackend};
use crate::model::{Layer, LayerOps, Network, Pass, RPass, Scratch, Workspace};
use crate::Real;

/// Per-layer buffers of the R-passes in backend `B`'s memory: R{y} and R{δ} of every layer's
/// output, what each layer's R-forward saves for its R-backward, and the shared (whole-batch)
/// scratch, which carries the backend.
#[derive(Clone, Debug)]
pub(crate) struct RBuffers<T: Real, B: Backend = CpuBackend> {
    pub ry: Vec<B::Buffer<T>>,
    pub rdelta: Vec<B::Buffer<T>>,
    pub saved: Vec<[B::Buffer<T>; 2]>,
    pub sc: Scratch<T, B>,
}

impl<T: Real, B: Backend> RBuffers<T, B> {
    /// Buffers on `be` for chunks of up to `batch` samples.
    pub fn on(be: B, layers: &[Layer], batch: usize) -> Self {
        let per_layer = || -> Vec<B::Buffer<T>> {
            layers
                .iter()
                .map(|l| be.zeros(batch * l.out_features()))
                .collect()
        };
        RBuffers {
            ry: per_layer(),
            rdelta: per_layer(),
            saved: layers
                .iter()
                .map(|l| {
                    let n = l.saved_len(batch);
                    [be.zeros(n), be.zeros(n)]
                })
                .collect(),
            sc: Scratch::on(be.clone(), layers, batch, true),
        }
    }
}

/// A chunk's forward state: every layer's output, the backward's cotangents, the kept indices, the
/// kept values and the R-backward's prepared values.
pub(crate) struct ChunkPass<'a, T: Real, B: Backend = CpuBackend> {
    pub x: B::View<'a, T>,
    pub acts: &'a [B::Buffer<T>],
    pub deltas: &'a [B::Buffer<T>],
    pub indices: &'a [B::Buffer<u32>],
    pub states: &'a [B::Buffer<T>],
    /// Each layer's [`LayerOps::r_prepare`] values where the caller keeps them (`None` for a
    /// layer that prepares nothing; no list: every layer recomputes what it needs).
    pub prepared: Option<&'a [Option<B::Buffer<T>>]>,
    pub batch: usize,
}

impl<'a, T: Real, B: Backend> ChunkPass<'a, T, B> {
    /// What layer `i` sees of it.
    pub fn layer<'p>(&self, params: B::View<'p, T>, i: usize) -> Pass<'p, T, B>
    where
        'a: 'p,
    {
        let (acts, indices, states) = (self.acts, self.indices, self.states);
        Pass {
            params,
            x: B::shorten(if i == 0 {
                self.x
            } else {
                B::view(&acts[i - 1])
            }),
            y: B::shorten(B::view(&acts[i])),
            batch: self.batch,
            indices: B::shorten(B::view(&indices[i])),
            state: B::shorten(B::view(&states[i])),
        }
    }
}

/// Every layer's [`LayerOps::r_prepare`] values (`None` where it prepares nothing) for the chunk
/// of `batch` samples `x` whose forward and backward pass are in `ws`.
pub(crate) fn prepare<T: Real, B: Backend>(
    net: &Network,
    params: B::View<'_, T>,
    x: B::View<'_, T>,
    batch: usize,
    ws: &mut Workspace<T, B>,
) -> Vec<Option<B::Buffer<T>>> {
    let Workspace {
        acts,
        deltas,
        indices,
        states,
        scratch,
        ..
    } = ws;
    let pass = ChunkPass::<T, B> {
        x: B::shorten(x),
        acts,
        deltas,
        indices,
        states,
        prepared: None,
        batch,
    };
    net.layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let len = l.prepared_len(batch);
            (len > 0).then(|| {
                let mut out = scratch.backend.zeros(len);
                let dy = B::slice(B::view(&deltas[i]), 0..batch * l.out_features());
                l.r_prepare(
                    &pass.layer(B::shorten(params), i),
                    dy,
                    B::view_mut(&mut out),
                    scratch,
                );
                out
            })
        })
        .collect()
}

/// One R-forward, loss R-operator and R-backward over a chunk: out += alpha·M_chunk·v.
#[allow(clippy::too_many_arguments)]
pub(crate) fn r_pass<B: Backend, T: Real>(
    net: &Network,
    params: B::View<'_, T>,
    v: B::View<'_, T>,
    chunk: &ChunkPass<'_, T, B>,
    alpha: T,
    mut out: B::ViewMut<'_, T>,
    gauss_newton: bool,
    bufs: &mut RBuffers<T, B>,
) {
    let layers = &net.layers;
    let last = layers.len() - 1;
    let (b, classes) = (chunk.batch, net.classes());
    for (i, layer) in layers.iter().enumerate() {
        let (ry_before, ry_rest) = bufs.ry.split_at_mut(i);
        let rx = ry_before.last().map(|r| B::view(r));
        let pass = chunk.layer(B::shorten(params), i);
        layer.r_forward(
            &pass,
            v,
            rx,
            B::view_mut(&mut ry_rest[0]),
            &mut bufs.saved[i],
            &mut bufs.sc,
        );
    }
    // Row by row as the loss takes the outputs: per position for cross-entropy over a
    // per-position output, with scale 1/(B·T) (the per-sample loss is the mean over positions).
    let (rows, width) = net.loss_rows();
    let scale = T::one() / T::of_usize(b) / T::of_usize(rows);
    net.loss.r_gradient_on(
        &bufs.sc.backend,
        B::slice(B::view(&chunk.acts[last]), 0..b * classes),
        B::slice(B::view(&bufs.ry[last]), 0..b * classes),
        width,
        scale,
        B::slice_mut(B::view_mut(&mut bufs.rdelta[last]), 0..b * classes),
    );
    for i in (0..layers.len()).rev() {
        let (rd_before, rd_rest) = bufs.rdelta.split_at_mut(i);
        let r = RPass::<T, B> {
            v: B::shorten(v),
            rx: if i == 0 {
                None
            } else {
                Some(B::view(&bufs.ry[i - 1]))
            },
            dy: B::view(&chunk.deltas[i]),
            rdy: B::view(&rd_rest[0]),
            alpha,
            gauss_newton,
            prepared: chunk
                .prepared
                .and_then(|p| p[i].as_ref())
                .map(|p| B::view(p)),
        };
        let rdx = rd_before.last_mut().map(|d| B::view_mut(d));
        let pass = chunk.layer(B::shorten(params), i);
        layers[i].r_backward(
            &pass,
            &r,
            B::reborrow(&mut out),
            rdx,
            &bufs.saved[i],
            &mut bufs.sc,
        );
    }
}
