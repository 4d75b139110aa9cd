//! The exact Hessian trace of piecewise-linear networks, from per-sample gradient norms.
//!
//! L = (1/n)·Σᵢ ℓ(zᵢ), zᵢ = f(xᵢ; θ). Its Hessian is H = (1/n)·Σᵢ [Jᵢᵀ·Aᵢ·Jᵢ + Σₖ (∂ℓ/∂zᵢₖ)·∂²zᵢₖ/∂θ²]
//! with Jᵢ = ∂zᵢ/∂θ (C×P) and Aᵢ = diag(pᵢ) − pᵢ·pᵢᵀ. When every activation is ReLU or the identity
//! and pooling is max-pooling, each logit is affine in every single parameter (a parameter appears in
//! one layer, and the layers are linear where no unit changes state), so ∂²zᵢₖ/∂θⱼ² = 0 almost
//! everywhere: the second term has a zero diagonal and
//!
//!   tr(H) = tr(G) = (1/n)·Σᵢ tr(Jᵢᵀ·Aᵢ·Jᵢ) = (1/n)·Σᵢ Σ_c ‖Jᵢᵀ·Mᵢ[:, c]‖²,
//!
//! with the factor Aᵢ = Mᵢ·Mᵢᵀ, Mᵢ = diag(sᵢ)·(I − sᵢ·sᵢᵀ), sᵢ = √pᵢ (I − s·sᵀ is a projector since
//! ‖s‖ = 1). Jᵢᵀ·Mᵢ[:, c] is the per-sample gradient for the seed Mᵢ[:, c] at the logits: one
//! backward pass of the activations per class, and per-sample squared norms per parameter tensor
//! (Linear: ‖dsᵢ‖²·‖xᵢ‖² and ‖dsᵢ‖²; Conv2d: ‖dsᵢ·colsᵢᵀ‖² by a per-sample product). The diagonal
//! blocks restricted to one tensor give the per-tensor traces. This is the method of the reference
//! fixtures (`tests/fixtures/reference/README.txt`, "trace").

use super::operator::HessianOperator;
use crate::device::Backend;
use crate::model::{Layer, LayerOps, Network, Pass, PerSample, Scratch};
use crate::{Error, Real, Result};

/// tr(H) and its per-tensor parts tr(H_tt) (tensors in layout order).
#[derive(Clone, Debug, PartialEq)]
pub struct ExactTrace {
    pub trace: f64,
    pub per_tensor: Vec<(String, f64)>,
}

/// Why the exact trace does not apply to a network, if it does not.
/// A spec model's layer is named by its dotted `state_dict` name (`layer 3.0`), a preset's by its
/// position.
pub fn exact_trace_unavailable(net: &Network) -> Option<String> {
    net.not_piecewise_linear().map(|(i, kind)| {
        let (layer, kind) = match &net.arch {
            crate::model::Architecture::Spec(spec) => spec
                .first_curved_layer()
                .unwrap_or_else(|| ((i + 1).to_string(), kind)),
            _ => ((i + 1).to_string(), kind),
        };
        format!(
            "the exact trace needs a piecewise-linear network (ReLU, identity, max-pool); this one uses {} (layer {layer}, nn.{kind}), whose second derivative puts a non-zero term on the Hessian's diagonal, so tr(H) ≠ tr(Gauss-Newton): use Hutchinson (--probes or --rtol)",
            kind.to_lowercase(),
        )
    })
}

impl<T: Real, B: Backend> HessianOperator<T, B> {
    /// The exact tr(H) (= tr(G) here) and per-tensor traces; see the module documentation.
    /// Cost: one backward pass of the activations per class, plus per-sample products for
    /// layers without a closed form (about C gradients).
    ///
    /// Runs on the operator's backend: the backward passes, the per-sample gradients and their
    /// squared norms are backend operations. The factor Mᵢ of the loss Hessian is formed on the
    /// host from the chunk's logits (b × C values come down once per chunk) and each of its C
    /// columns goes up into the backward pass's seed (small dense work the issue leaves on the
    /// host).
    ///
    /// # Errors
    /// [`Error::Invalid`] when the network is not piecewise linear.
    pub fn exact_trace(&mut self) -> Result<ExactTrace> {
        if let Some(why) = exact_trace_unavailable(self.network()) {
            return Err(Error::invalid(why));
        }
        let ntensors = self.network().layout.tensors.len();
        let mut sums = vec![0.0f64; ntensors];
        let n = self.samples();
        let be = self.backend().clone();
        let mut lowering = Scratch::on(be.clone(), &self.network().layers, 1, false);
        let mut logits = Vec::new();
        let mut column = Vec::new();
        self.for_each_chunk(|net, params, chunk, bufs| {
            let layers = &net.layers;
            let last = layers.len() - 1;
            let classes = net.classes();
            let b = chunk.batch;
            logits.resize(b * classes, T::zero());
            column.resize(b * classes, T::zero());
            be.download(
                B::slice(B::view(&chunk.acts[last]), 0..b * classes),
                &mut logits,
            );
            // Per position for cross-entropy over a per-position output [T, C]: the per-sample
            // Hessian (1/T)·blockdiag(A₁ … A_T) has the factor (1/√T)·blockdiag(M₁ … M_T), whose
            // T·C columns are column c of every row's M at position t only (T = 1: as before).
            let (rows, width) = net.loss_rows();
            let factor = net.loss.hessian_factor(&logits, width);
            let root = (rows as f64).sqrt().recip();
            for col in 0..rows * width {
                let (t, c) = (col / width, col % width);
                factor.column(c, &mut column);
                if rows > 1 {
                    for (r, row) in column.chunks_exact_mut(width).enumerate() {
                        if r % rows == t {
                            row.iter_mut().for_each(|v| *v *= T::of_f64(root));
                        } else {
                            row.iter_mut().for_each(|v| *v = T::zero());
                        }
                    }
                }
                be.write(
                    &column,
                    B::slice_mut(B::view_mut(&mut bufs.rdelta[last]), 0..b * classes),
                );
                for i in (0..layers.len()).rev() {
                    let (before, rest) = bufs.rdelta.split_at_mut(i);
                    let dx = before.last_mut().map(|d| B::view_mut(d));
                    let pass = chunk.layer(B::shorten(params), i);
                    layers[i].backward(&pass, B::view(&rest[0]), None, dx, &mut bufs.sc);
                }
                for (i, layer) in layers.iter().enumerate() {
                    let pass = chunk.layer(B::shorten(params), i);
                    per_sample_sq_norms(
                        net,
                        layer,
                        &pass,
                        B::view(&bufs.rdelta[i]),
                        &mut lowering,
                        &mut sums,
                    );
                }
            }
        });
        let per_tensor: Vec<(String, f64)> = self
            .network()
            .layout
            .tensors
            .iter()
            .zip(&sums)
            .map(|(t, &s)| (t.name.clone(), s / n as f64))
            .collect();
        Ok(ExactTrace {
            trace: per_tensor.iter().map(|(_, v)| v).sum(),
            per_tensor,
        })
    }
}

/// Adds Σᵢ ‖∂/∂t of sample i‖² for each of the layer's tensors t into `sums[t]`, for per-sample
/// output cotangents `dy` (`b × out_features`): Linear by its closed form ‖δᵢ‖²·‖xᵢ‖² and ‖δᵢ‖²,
/// other layers from their materialised per-sample gradients.
fn per_sample_sq_norms<T: Real, B: Backend>(
    net: &Network,
    layer: &Layer,
    pass: &Pass<'_, T, B>,
    dy: B::View<'_, T>,
    lowering: &mut Scratch<T, B>,
    sums: &mut [f64],
) {
    let (x, b) = (pass.x, pass.batch);
    let be = lowering.backend.clone();
    match layer.per_sample() {
        PerSample::None => {}
        PerSample::OuterProduct {
            inputs,
            outputs,
            weight,
            bias,
        } => {
            let (mut w_sum, mut b_sum) = (0.0f64, 0.0f64);
            for i in 0..b {
                let dyi = B::slice(dy, i * outputs..(i + 1) * outputs);
                let xi = B::slice(x, i * inputs..(i + 1) * inputs);
                let (d2, x2) = (be.dot(dyi, dyi), be.dot(xi, xi));
                w_sum += d2 * x2;
                b_sum += d2;
            }
            sums[weight] += w_sum;
            if bias {
                sums[weight + 1] += b_sum;
            }
        }
        PerSample::Materialise => {
            let tensors = &net.layout.tensors[layer.tensors()];
            let len: usize = tensors.iter().map(|t| t.numel).sum();
            let (fin, fout) = (layer.in_features(), layer.out_features());
            let mut row = be.zeros::<T>(len);
            let mut acc = vec![0.0f64; tensors.len()];
            for i in 0..b {
                layer.per_sample_gradients(
                    pass.params,
                    B::slice(x, i * fin..(i + 1) * fin),
                    B::slice(dy, i * fout..(i + 1) * fout),
                    1,
                    T::one(),
                    B::view_mut(&mut row),
                    len,
                    lowering,
                );
                let mut at = 0;
                for (k, t) in tensors.iter().enumerate() {
                    let part = B::slice(B::view(&row), at..at + t.numel);
                    let s = be.dot(part, part);
                    acc[k] += s;
                    at += t.numel;
                }
            }
            for (k, a) in acc.into_iter().enumerate() {
                sums[layer.tensors().start + k] += a;
            }
        }
    }
}
