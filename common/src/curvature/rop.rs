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

use crate::model::{Layer, LayerOps, Network, Pass, RPass, Scratch};
use crate::Real;

/// Per-layer buffers of the R-passes: R{y} and R{δ} of every layer's output, what each layer's
/// R-forward saves for its R-backward, and the shared (whole-batch) scratch.
#[derive(Clone, Debug)]
pub(crate) struct RBuffers<T: Real> {
    pub ry: Vec<Vec<T>>,
    pub rdelta: Vec<Vec<T>>,
    pub saved: Vec<[Vec<T>; 2]>,
    pub sc: Scratch<T>,
}

impl<T: Real> RBuffers<T> {
    /// Buffers for chunks of up to `batch` samples.
    pub fn new(layers: &[Layer], batch: usize) -> Self {
        let per_layer = || -> Vec<Vec<T>> {
            layers
                .iter()
                .map(|l| vec![T::zero(); batch * l.out_features()])
                .collect()
        };
        RBuffers {
            ry: per_layer(),
            rdelta: per_layer(),
            saved: layers
                .iter()
                .map(|l| {
                    let n = l.saved_len(batch);
                    [vec![T::zero(); n], vec![T::zero(); n]]
                })
                .collect(),
            sc: Scratch::for_layers(layers, batch, true),
        }
    }
}

/// A chunk's forward state: every layer's output, the backward's cotangents and the kept indices.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ChunkPass<'a, T: Real> {
    pub x: &'a [T],
    pub acts: &'a [Vec<T>],
    pub deltas: &'a [Vec<T>],
    pub indices: &'a [Vec<u32>],
    pub batch: usize,
}

impl<'a, T: Real> ChunkPass<'a, T> {
    /// What layer `i` sees of it.
    pub fn layer(&self, params: &'a [T], i: usize) -> Pass<'a, T> {
        Pass {
            params,
            x: if i == 0 { self.x } else { &self.acts[i - 1] },
            y: &self.acts[i],
            batch: self.batch,
            indices: &self.indices[i],
        }
    }
}

/// One R-forward, loss R-operator and R-backward over a chunk: out += alpha·M_chunk·v.
#[allow(clippy::too_many_arguments)]
pub(crate) fn r_pass<T: Real>(
    net: &Network,
    params: &[T],
    v: &[T],
    chunk: &ChunkPass<'_, T>,
    alpha: T,
    out: &mut [T],
    gauss_newton: bool,
    bufs: &mut RBuffers<T>,
) {
    let layers = &net.layers;
    let last = layers.len() - 1;
    let (b, classes) = (chunk.batch, net.classes());
    for (i, layer) in layers.iter().enumerate() {
        let (ry_before, ry_rest) = bufs.ry.split_at_mut(i);
        let rx = ry_before.last().map(|r| &r[..]);
        let pass = chunk.layer(params, i);
        layer.r_forward(
            &pass,
            v,
            rx,
            &mut ry_rest[0],
            &mut bufs.saved[i],
            &mut bufs.sc,
        );
    }
    let scale = T::one() / T::of_usize(b);
    net.loss.r_gradient(
        &chunk.acts[last][..b * classes],
        &bufs.ry[last][..b * classes],
        classes,
        scale,
        &mut bufs.rdelta[last][..b * classes],
    );
    for i in (0..layers.len()).rev() {
        let (rd_before, rd_rest) = bufs.rdelta.split_at_mut(i);
        let r = RPass {
            v,
            rx: if i == 0 {
                None
            } else {
                Some(&bufs.ry[i - 1][..])
            },
            dy: &chunk.deltas[i][..],
            rdy: &rd_rest[0][..],
            alpha,
            gauss_newton,
        };
        let rdx = rd_before.last_mut().map(|d| &mut d[..]);
        let pass = chunk.layer(params, i);
        layers[i].r_backward(&pass, &r, out, rdx, &bufs.saved[i], &mut bufs.sc);
    }
}
