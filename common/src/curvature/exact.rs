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
use super::rop::softmax_rows;
use crate::device::cpu::{gemm, im2col};
use crate::model::{Activation, Layer};
use crate::{Error, Real, Result};

/// tr(H) and its per-tensor parts tr(H_tt) (tensors in layout order).
#[derive(Clone, Debug, PartialEq)]
pub struct ExactTrace {
    pub trace: f64,
    pub per_tensor: Vec<(String, f64)>,
}

/// Why the exact trace does not apply to a network, if it does not.
pub fn exact_trace_unavailable(net: &crate::model::Network) -> Option<String> {
    net.layers
        .iter()
        .any(|l| l.activation() == Activation::Tanh)
        .then(|| {
            "the exact trace needs piecewise-linear activations (ReLU, identity, max-pool); this network uses tanh, whose second derivative puts a non-zero term on the Hessian's diagonal, so tr(H) ≠ tr(Gauss-Newton): use Hutchinson (--probes or --rtol)".to_string()
        })
}

impl<T: Real> HessianOperator<T> {
    /// The exact tr(H) (= tr(G) here) and per-tensor traces; see the module documentation.
    /// Cost: one backward pass of the activations per class, plus per-sample products for
    /// convolutions (about C gradients).
    ///
    /// # Errors
    /// [`Error::Invalid`] when the network has tanh activations.
    pub fn exact_trace(&mut self) -> Result<ExactTrace> {
        if let Some(why) = exact_trace_unavailable(self.network()) {
            return Err(Error::invalid(why));
        }
        let ntensors = self.network().layout.tensors.len();
        let mut sums = vec![0.0f64; ntensors];
        let n = self.samples();
        self.for_each_chunk(|net, params, x, acts, argmax, bufs| {
            let layers = &net.layers;
            let last = layers.len() - 1;
            let classes = net.classes();
            let b = x.len() / net.input_features();
            let mut p = vec![T::zero(); b * classes];
            softmax_rows(&acts[last][..b * classes], classes, &mut p);
            let s: Vec<T> = p.iter().map(|v| v.sqrt()).collect();
            for c in 0..classes {
                // Seed: Mᵢ[k, c] = sₖ·(δₖc − sₖ·s_c).
                let seed = &mut bufs.rdelta[last][..b * classes];
                for (row, sr) in seed.chunks_exact_mut(classes).zip(s.chunks_exact(classes)) {
                    for (k, r) in row.iter_mut().enumerate() {
                        let delta = if k == c { T::one() } else { T::zero() };
                        *r = sr[k] * (delta - sr[k] * sr[c]);
                    }
                }
                for i in (0..layers.len()).rev() {
                    let (before, rest) = bufs.rdelta.split_at_mut(i);
                    let dx = if i == 0 {
                        None
                    } else {
                        Some(&mut before[i - 1][..])
                    };
                    layers[i].backprop_input(
                        &net.layout,
                        params,
                        &acts[i],
                        &mut rest[0],
                        b,
                        &argmax[i],
                        dx,
                        &mut bufs.sc,
                    );
                }
                for (i, layer) in layers.iter().enumerate() {
                    let input: &[T] = if i == 0 { x } else { &acts[i - 1] };
                    if let Some(t) = layer.tensor() {
                        let (w, bias) = per_sample_sq_norms(
                            layer,
                            input,
                            &bufs.rdelta[i],
                            b,
                            &mut bufs.sc.cols,
                        );
                        sums[t] += w;
                        sums[t + 1] += bias;
                    }
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

/// Σᵢ ‖∂/∂W of sample i‖² and Σᵢ ‖∂/∂b of sample i‖² for a layer whose per-sample ∂/∂s is `ds`
/// (`b × out_features`) and input `x`. `cols` is scratch (at least C_in·k²·ho·wo long).
fn per_sample_sq_norms<T: Real>(
    layer: &Layer,
    x: &[T],
    ds: &[T],
    b: usize,
    cols: &mut Vec<T>,
) -> (f64, f64) {
    let (mut w_sum, mut b_sum) = (0.0f64, 0.0f64);
    match *layer {
        Layer::Linear {
            inputs, outputs, ..
        } => {
            for i in 0..b {
                let d2: f64 = ds[i * outputs..(i + 1) * outputs]
                    .iter()
                    .map(|v| v.as_f64().powi(2))
                    .sum();
                let x2: f64 = x[i * inputs..(i + 1) * inputs]
                    .iter()
                    .map(|v| v.as_f64().powi(2))
                    .sum();
                w_sum += d2 * x2;
                b_sum += d2;
            }
        }
        Layer::Conv2d {
            in_channels,
            out_channels,
            kernel,
            padding,
            height,
            width,
            ..
        } => {
            let (ho, wo) = layer.conv_output_size();
            let plane = ho * wo;
            let r = in_channels * kernel * kernel;
            if cols.len() < r * plane {
                cols.resize(r * plane, T::zero());
            }
            let mut g = vec![T::zero(); out_channels * r];
            let in_len = in_channels * height * width;
            for i in 0..b {
                let dsi = &ds[i * out_channels * plane..(i + 1) * out_channels * plane];
                im2col(
                    &x[i * in_len..(i + 1) * in_len],
                    1,
                    in_channels,
                    height,
                    width,
                    kernel,
                    padding,
                    &mut cols[..r * plane],
                );
                gemm(
                    false,
                    true,
                    out_channels,
                    r,
                    plane,
                    T::one(),
                    dsi,
                    &cols[..r * plane],
                    T::zero(),
                    &mut g,
                );
                w_sum += g.iter().map(|v| v.as_f64().powi(2)).sum::<f64>();
                for o in 0..out_channels {
                    let s: f64 = dsi[o * plane..(o + 1) * plane]
                        .iter()
                        .map(|v| v.as_f64())
                        .sum();
                    b_sum += s * s;
                }
            }
        }
        Layer::MaxPool2 { .. } => {}
    }
    (w_sum, b_sum)
}
