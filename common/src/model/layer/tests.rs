//! Every layer type through the same checks, in f64 on tiny networks that contain it: its gradient
//! against central differences of the loss, its R-operator (H·v and G·v) against dense
//! finite-difference matrices, its per-sample gradients (the closed form and the materialised
//! route) against single-sample passes, and the exact trace against the dense Hessian's diagonal
//! for the piecewise-linear ones. A new layer type gets a tiny network in `networks()`.
//!
//! The passes under test run on a [`Backend`]: the bodies that take `be: &B` are written once over
//! the trait and instantiated by `layer_suite!` for each backend compiled in (the CPU here; the GPU
//! backend of issue #17 adds one line). Their references (central differences, the dense Jacobian,
//! single-sample gradients) are computed on the host, independently of the backend under test.

use super::*;
use crate::curvature::operator::cache_needs;
use crate::curvature::rop::{prepare, r_pass, ChunkPass, RBuffers};
use crate::curvature::HessianOperator;
use crate::device::{ConvGeometry, CpuBackend, Element};
use crate::model::{Activation, Architecture, Loss, Network};
use crate::rng::{stream, Purpose};

/// A network of the given layers (the architecture is only a label here).
fn network(define: impl FnOnce(&mut Sequential<'_>)) -> Network {
    let (layers, layout) = build(define);
    Network {
        arch: Architecture::mlp(vec![], Activation::Identity),
        layers,
        layout,
        loss: Loss::SoftmaxCrossEntropy,
    }
}

fn geometry(channels: usize, side: usize, kernel: usize, padding: usize) -> ConvGeometry {
    geometry2(channels, side, side, kernel, padding)
}

/// `g` with windows `stride` pixels apart.
fn strided(g: ConvGeometry, stride: usize) -> ConvGeometry {
    ConvGeometry { stride, ..g }
}

fn geometry2(
    channels: usize,
    height: usize,
    width: usize,
    kernel: usize,
    padding: usize,
) -> ConvGeometry {
    ConvGeometry {
        channels,
        height,
        width,
        kernel,
        padding,
        stride: 1,
    }
}

/// One tiny network per layer type, each with the type in a position where its input depends on
/// θ (so the cross-layer terms of the R-operator are exercised).
fn networks() -> Vec<(&'static str, Network)> {
    vec![
        (
            "Linear",
            network(|s| {
                s.push(|sc| Linear::new(sc, 5, 4));
                s.push(|sc| Linear::new(sc, 4, 3));
            }),
        ),
        (
            "Tanh",
            network(|s| {
                s.push(|sc| Linear::new(sc, 5, 4));
                s.push(|_| Tanh { features: 4 });
                s.push(|sc| Linear::new(sc, 4, 3));
            }),
        ),
        (
            "GELU",
            network(|s| {
                s.push(|sc| Linear::new(sc, 5, 4));
                s.push(|_| Gelu { features: 4 });
                s.push(|sc| Linear::new(sc, 4, 3));
            }),
        ),
        (
            "GELU (tanh)",
            network(|s| {
                s.push(|sc| Linear::new(sc, 5, 4));
                s.push(|_| GeluTanh { features: 4 });
                s.push(|sc| Linear::new(sc, 4, 3));
            }),
        ),
        (
            "Sigmoid",
            network(|s| {
                s.push(|sc| Linear::new(sc, 5, 4));
                s.push(|_| Sigmoid { features: 4 });
                s.push(|sc| Linear::new(sc, 4, 3));
            }),
        ),
        (
            "SiLU",
            network(|s| {
                s.push(|sc| Linear::new(sc, 5, 4));
                s.push(|_| Silu { features: 4 });
                s.push(|sc| Linear::new(sc, 4, 3));
            }),
        ),
        (
            // Without biases, below and above a ReLU (the closed-form per-sample products without
            // the bias column; the exact trace).
            "Linear (bias=False)",
            network(|s| {
                s.push(|sc| Linear::with_bias(sc, 5, 6, false));
                s.push(|_| Relu { features: 6 });
                s.push(|sc| Linear::with_bias(sc, 6, 3, false));
            }),
        ),
        (
            "LayerNorm",
            network(|s| {
                s.push(|sc| Linear::new(sc, 5, 6));
                s.push(|sc| LayerNorm::new(sc, 6, 6, 1e-5, true));
                s.push(|sc| Linear::new(sc, 6, 3));
            }),
        ),
        (
            // Two rows of 3 per sample (the last dimension of a [2, 3] sample), no affine part,
            // then an affine one over all 6 features.
            "LayerNorm (rows, affine=False)",
            network(|s| {
                s.push(|sc| Linear::new(sc, 5, 6));
                s.push(|sc| LayerNorm::new(sc, 6, 3, 1e-5, false));
                s.push(|sc| LayerNorm::new(sc, 6, 6, 0.1, true));
                s.push(|sc| Linear::new(sc, 6, 3));
            }),
        ),
        (
            // y = x + f(x) with a LayerNorm and a GELU inside, between two Linear layers; then a
            // residual block nested in another (the inner scratch of the level below), with a GELU
            // inside it too (values prepared for the R-backward at two levels).
            "Residual",
            network(|s| {
                s.push(|sc| Linear::new(sc, 5, 4));
                s.residual("1", 4, |r| {
                    r.push(|sc| LayerNorm::new(sc, 4, 4, 1e-5, true));
                    r.push(|sc| Linear::new(sc, 4, 4));
                    r.push(|_| Gelu { features: 4 });
                });
                s.residual("2", 4, |r| {
                    r.push(|sc| Linear::with_bias(sc, 4, 4, false));
                    r.push(|_| Tanh { features: 4 });
                    r.residual("2", 4, |q| {
                        q.push(|sc| Linear::new(sc, 4, 4));
                        q.push(|_| Gelu { features: 4 });
                    });
                });
                s.push(|sc| Linear::new(sc, 4, 3));
            }),
        ),
        (
            // Piecewise linear (the exact trace applies), first in the network (R{x} = None), a
            // convolution inside (the nested im2col scratch), a max-pool after it.
            "Residual (ReLU, first)",
            network(|s| {
                s.residual("0", 8, |r| {
                    r.push(|sc| Linear::new(sc, 8, 8));
                    r.push(|_| Relu { features: 8 });
                    r.push(|sc| Conv2d::new(sc, geometry(2, 2, 3, 1), 2));
                });
                s.push(|sc| Conv2d::new(sc, geometry(2, 2, 1, 0), 2));
                s.functional(MaxPool2d::two_by_two(2, 2, 2));
                s.push(|sc| Linear::new(sc, 2, 3));
            }),
        ),
        (
            // Overlapping windows (kernel 3, stride 2) on a 7×6 plane: the floor drops the last
            // column; then non-overlapping 2×2 after a tanh.
            "AvgPool2d",
            network(|s| {
                s.push(|sc| Conv2d::new(sc, geometry2(1, 7, 6, 3, 1), 2));
                s.functional(AvgPool2d {
                    channels: 2,
                    height: 7,
                    width: 6,
                    kernel: 3,
                    stride: 2,
                });
                s.push(|_| Tanh { features: 12 });
                s.functional(AvgPool2d {
                    channels: 2,
                    height: 3,
                    width: 2,
                    kernel: 2,
                    stride: 2,
                });
                s.push(|sc| Linear::new(sc, 2, 3));
            }),
        ),
        (
            // Token ids in (the problem draws integers for an Embedding first), a learned position
            // added, piecewise linear throughout (the exact trace applies).
            "Embedding, Positional",
            network(|s| {
                s.push(|sc| Embedding::new(sc, 5, 3, 2));
                s.push(|sc| Positional::new(sc, 2, 3));
                s.push(|_| Relu { features: 6 });
                s.push(|sc| Linear::new(sc, 6, 3));
            }),
        ),
        (
            // A Linear on each of 2 positions of a [2, 3] sample (materialised per-sample
            // gradients), then the last position read out.
            "Linear (per position), the last position",
            network(|s| {
                s.push(|sc| Linear::new(sc, 5, 6));
                s.push(|sc| Linear::per_position(sc, 2, 3, 4, true));
                s.push(|_| Gelu { features: 8 });
                s.push(|sc| Linear::per_position(sc, 2, 4, 4, false));
                s.push(|_| Positions::last(2, 4));
                s.push(|sc| Linear::new(sc, 4, 3));
            }),
        ),
        (
            // Positions 0 and 2 of a [3, 4] sample whose input depends on θ, a curved layer after.
            "Positions",
            network(|s| {
                s.push(|sc| Linear::new(sc, 5, 12));
                s.functional(Positions {
                    seq: 3,
                    dim: 4,
                    start: 0,
                    step: 2,
                    count: 2,
                });
                s.push(|_| Gelu { features: 8 });
                s.push(|sc| Linear::new(sc, 8, 3));
            }),
        ),
        (
            // Piecewise linear (the exact trace applies): first in the network (R{x} = None, every
            // other position of [5, 1]), then position 1 of a [2, 2] output after a ReLU.
            "Positions (first), piecewise linear",
            network(|s| {
                s.functional(Positions {
                    seq: 5,
                    dim: 1,
                    start: 0,
                    step: 2,
                    count: 3,
                });
                s.push(|sc| Linear::new(sc, 3, 4));
                s.push(|_| Relu { features: 4 });
                s.functional(Positions {
                    seq: 2,
                    dim: 2,
                    start: 1,
                    step: 1,
                    count: 1,
                });
                s.push(|sc| Linear::new(sc, 2, 3));
            }),
        ),
        (
            // devinterp's Polynomial between two Linear layers (R{x} given), then first in a
            // network (R{x} = None) with a zero power.
            "Monomial",
            network(|s| {
                s.push(|sc| Linear::new(sc, 5, 4));
                s.push(|sc| Monomial::new(sc, 4, vec![1, 2]));
                s.push(|sc| Linear::new(sc, 4, 3));
            }),
        ),
        (
            // Two heads of 2 over 3 positions, not causal, its input depending on θ.
            "MultiheadAttention",
            network(|s| {
                s.push(|sc| Linear::new(sc, 5, 12));
                s.push(|sc| Attention::new(sc, 3, 4, 2, false, true));
                s.push(|sc| Attention::new(sc, 3, 4, 1, true, true));
                s.push(|_| Positions::last(3, 4));
                s.push(|sc| Linear::new(sc, 4, 3));
            }),
        ),
        (
            // A one-layer pre-LayerNorm transformer: causal attention without biases in a residual
            // block, an MLP block, the last position's read-out.
            "Transformer (causal, bias=False)",
            network(|s| {
                s.push(|sc| Embedding::new(sc, 7, 4, 3));
                s.push(|sc| Positional::new(sc, 3, 4));
                s.residual("2", 12, |r| {
                    r.push(|sc| LayerNorm::new(sc, 12, 4, 1e-5, true));
                    r.push(|sc| Attention::new(sc, 3, 4, 2, true, false));
                });
                s.residual("3", 12, |r| {
                    r.push(|sc| LayerNorm::new(sc, 12, 4, 1e-5, true));
                    r.push(|sc| Linear::per_position(sc, 3, 4, 6, true));
                    r.push(|_| Gelu { features: 18 });
                    r.push(|sc| Linear::per_position(sc, 3, 6, 4, true));
                });
                s.push(|sc| LayerNorm::new(sc, 12, 4, 1e-5, true));
                s.push(|_| Positions::last(3, 4));
                s.push(|sc| Linear::new(sc, 4, 3));
            }),
        ),
        (
            "Monomial (first)",
            network(|s| {
                s.push(|sc| Monomial::new(sc, 5, vec![2, 0, 3]));
                s.push(|sc| Linear::new(sc, 5, 3));
            }),
        ),
        (
            "ReLU",
            network(|s| {
                s.push(|sc| Linear::new(sc, 5, 6));
                s.push(|_| Relu { features: 6 });
                s.push(|sc| Linear::new(sc, 6, 3));
            }),
        ),
        (
            "Conv2d",
            network(|s| {
                s.push(|sc| Conv2d::new(sc, geometry(2, 5, 3, 1), 2));
                s.push(|_| Tanh { features: 50 });
                s.push(|sc| Conv2d::new(sc, geometry(2, 5, 3, 0), 2));
                s.push(|sc| Linear::new(sc, 18, 3));
            }),
        ),
        (
            // Stride 2 (the lowered route) on a 7×6 plane, whose width the floor cuts (5/2), first
            // in the network (R{x} = None); then a strided 2×2 convolution without a bias whose
            // input depends on θ.
            "Conv2d (stride 2, no bias)",
            network(|s| {
                s.push(|sc| Conv2d::new(sc, strided(geometry2(2, 7, 6, 3, 1), 2), 3));
                s.push(|_| Tanh { features: 36 });
                s.push(|sc| Conv2d::with_bias(sc, strided(geometry2(3, 4, 3, 2, 0), 2), 2, false));
                s.push(|sc| Linear::new(sc, 4, 3));
            }),
        ),
        (
            // The direct kernels without a bias, after a layer (R{x} given).
            "Conv2d (no bias)",
            network(|s| {
                s.push(|sc| Linear::new(sc, 4, 18));
                s.push(|_| Tanh { features: 18 });
                s.push(|sc| Conv2d::with_bias(sc, geometry(2, 3, 3, 1), 2, false));
                s.push(|sc| Linear::new(sc, 18, 3));
            }),
        ),
        (
            // Overlapping windows (kernel 3, stride 2): a pixel may win two windows and gets both
            // gradients.
            "MaxPool2d (kernel 3, stride 2)",
            network(|s| {
                s.push(|sc| Conv2d::new(sc, geometry(1, 7, 3, 1), 2));
                s.functional(MaxPool2d {
                    channels: 2,
                    height: 7,
                    width: 7,
                    kernel: 3,
                    stride: 2,
                });
                s.push(|sc| Linear::new(sc, 18, 3));
            }),
        ),
        (
            // Both geometries in a piecewise-linear network (the exact trace applies): a strided
            // convolution without a bias, ReLU, then overlapping 3×3 windows with stride 2 on 5×5.
            "Conv2d (stride 2) and MaxPool2d (kernel 3, stride 2), piecewise linear",
            network(|s| {
                s.push(|sc| Conv2d::with_bias(sc, strided(geometry(1, 9, 3, 1), 2), 2, false));
                s.push(|_| Relu { features: 50 });
                s.functional(MaxPool2d {
                    channels: 2,
                    height: 5,
                    width: 5,
                    kernel: 3,
                    stride: 2,
                });
                s.push(|sc| Linear::new(sc, 8, 3));
            }),
        ),
        (
            // ReLUs whose backward the next layer takes into its input gradient (a direct
            // convolution, a 2×2 max-pool on an odd side; see Network::backward).
            "ReLU into Conv2d and MaxPool2d (fused backward)",
            network(|s| {
                s.push(|sc| Conv2d::new(sc, geometry(1, 7, 3, 1), 2));
                s.push(|_| Relu { features: 98 });
                s.push(|sc| Conv2d::new(sc, geometry(2, 7, 3, 1), 2));
                s.push(|_| Relu { features: 98 });
                s.functional(MaxPool2d::two_by_two(2, 7, 7));
                s.push(|sc| Linear::new(sc, 18, 3));
            }),
        ),
        (
            // ReLUs that stay layers of their own: the first layer (no input gradient), one in
            // front of a strided convolution (the lowered route has no gated pass) and one in
            // front of a Linear.
            "ReLU first and into a strided Conv2d and a Linear (not fused)",
            network(|s| {
                s.push(|_| Relu { features: 49 });
                s.push(|sc| Conv2d::new(sc, geometry(1, 7, 3, 1), 2));
                s.push(|_| Relu { features: 98 });
                s.push(|sc| Conv2d::new(sc, strided(geometry(2, 7, 3, 1), 2), 2));
                s.push(|_| Relu { features: 32 });
                s.push(|sc| Linear::new(sc, 32, 3));
            }),
        ),
        (
            // An odd side: the pooling floors (F.max_pool2d), so the last row and column are
            // dropped and get no gradient.
            "MaxPool2d",
            network(|s| {
                s.push(|sc| Conv2d::new(sc, geometry(1, 7, 3, 1), 2));
                s.functional(MaxPool2d::two_by_two(2, 7, 7));
                s.push(|sc| Linear::new(sc, 18, 3));
            }),
        ),
    ]
}

struct Problem {
    net: Network,
    params: Vec<f64>,
    x: Vec<f64>,
    labels: Vec<usize>,
}

fn problem(net: Network, seed: u64) -> Problem {
    let mut rng = stream(seed, Purpose::Init, 1);
    let params: Vec<f64> = (0..net.num_params())
        .map(|_| rng.uniform_in(-0.8, 0.8))
        .collect();
    let batch = 3;
    // Token ids for an embedding, else uniform inputs.
    let vocabulary = match net.layers.first() {
        Some(Layer::Embedding(e)) => Some(e.num as u64),
        _ => None,
    };
    let x: Vec<f64> = (0..batch * net.input_features())
        .map(|_| match vocabulary {
            Some(num) => rng.below(num) as f64,
            None => rng.uniform_in(-1.0, 1.0),
        })
        .collect();
    let labels = (0..batch).map(|n| n % net.classes()).collect();
    Problem {
        net,
        params,
        x,
        labels,
    }
}

impl Problem {
    fn loss(&self, params: &[f64]) -> f64 {
        let mut ws = self.net.workspace(self.labels.len());
        let mut g = vec![0.0; params.len()];
        self.net
            .loss_and_gradient(params, &self.x, &self.labels, &mut g, &mut ws)
    }
    fn gradient(&self, params: &[f64], x: &[f64], labels: &[usize]) -> Vec<f64> {
        let mut ws = self.net.workspace(labels.len());
        let mut g = vec![0.0; params.len()];
        self.net
            .loss_and_gradient(params, x, labels, &mut g, &mut ws);
        g
    }
    fn logits(&self, params: &[f64]) -> Vec<f64> {
        let mut ws = self.net.workspace(self.labels.len());
        self.net
            .forward(params, &self.x, self.labels.len(), &mut ws)
            .to_vec()
    }
    fn operator(&self) -> HessianOperator<f64> {
        HessianOperator::new(&self.net, &self.params, &self.x, &self.labels, 2, 1 << 20).unwrap()
    }

    /// The gradient of the mean loss on `be`.
    fn gradient_on<B: Backend>(&self, be: &B, params: &[f64]) -> Vec<f64> {
        let (pb, xb) = (be.upload(params), be.upload(&self.x));
        let mut ws = self.net.workspace_on(be.clone(), self.labels.len());
        let mut g = be.zeros::<f64>(params.len());
        self.net.loss_and_gradient_on(
            B::view(&pb),
            B::view(&xb),
            &self.labels,
            B::view_mut(&mut g),
            &mut ws,
        );
        down(be, &g)
    }

    /// H·v (or G·v) on `be`: the forward and backward passes, then one R-pass over the batch.
    fn product_on<B: Backend>(&self, be: &B, v: &[f64], gauss_newton: bool) -> Vec<f64> {
        self.product_prepared_on(be, v, gauss_newton, false)
    }

    /// [`Problem::product_on`], with the layers' R-backward values prepared from the passes
    /// first ([`LayerOps::r_prepare`], as the Hessian operator keeps them) when `prepared`.
    fn product_prepared_on<B: Backend>(
        &self,
        be: &B,
        v: &[f64],
        gauss_newton: bool,
        prepared: bool,
    ) -> Vec<f64> {
        let (b, np) = (self.labels.len(), self.params.len());
        let (pb, xb, vb) = (be.upload(&self.params), be.upload(&self.x), be.upload(v));
        let mut ws = self.net.workspace_on(be.clone(), b);
        let mut g = be.zeros::<f64>(np);
        self.net.loss_and_gradient_on(
            B::view(&pb),
            B::view(&xb),
            &self.labels,
            B::view_mut(&mut g),
            &mut ws,
        );
        let mut bufs = RBuffers::on(be.clone(), &self.net.layers, b);
        let kept = prepared.then(|| prepare(&self.net, B::view(&pb), B::view(&xb), b, &mut ws));
        let chunk = ChunkPass::<f64, B> {
            x: B::view(&xb),
            acts: &ws.acts,
            deltas: &ws.deltas,
            indices: &ws.indices,
            states: &ws.states,
            prepared: kept.as_deref(),
            batch: b,
        };
        let mut out = be.zeros::<f64>(np);
        r_pass(
            &self.net,
            B::view(&pb),
            B::view(&vb),
            &chunk,
            1.0,
            B::view_mut(&mut out),
            gauss_newton,
            &mut bufs,
        );
        down(be, &out)
    }
}

fn down<B: Backend, E: Element>(be: &B, buf: &B::Buffer<E>) -> Vec<E> {
    let mut host = vec![E::default(); B::buffer_len(buf)];
    be.download(B::view(buf), &mut host);
    host
}

fn max_rel_err(a: &[f64], b: &[f64]) -> f64 {
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-12);
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// Column j of the dense Hessian by central differences of the exact gradient.
fn hessian_fd(p: &Problem) -> Vec<Vec<f64>> {
    let h = 1e-5;
    (0..p.params.len())
        .map(|j| {
            let mut plus = p.params.clone();
            let mut minus = p.params.clone();
            plus[j] += h;
            minus[j] -= h;
            let (gp, gm) = (
                p.gradient(&plus, &p.x, &p.labels),
                p.gradient(&minus, &p.x, &p.labels),
            );
            gp.iter()
                .zip(&gm)
                .map(|(a, b)| (a - b) / (2.0 * h))
                .collect()
        })
        .collect()
}

#[test]
fn every_layer_type_has_a_network_here() {
    let types: Vec<&str> = networks()
        .iter()
        .flat_map(|(_, n)| n.layers.iter().map(|l| l.type_name()).collect::<Vec<_>>())
        .collect();
    for ty in LAYER_TYPES {
        assert!(
            types.contains(ty),
            "no test network contains a {ty}: add one to networks()"
        );
    }
}

fn gradients_match_central_differences<B: Backend>(be: &B) {
    for (name, net) in networks() {
        let p = problem(net, 1);
        let g = p.gradient_on(be, &p.params);
        let h = 1e-6;
        let fd: Vec<f64> = (0..p.params.len())
            .map(|j| {
                let mut plus = p.params.clone();
                let mut minus = p.params.clone();
                plus[j] += h;
                minus[j] -= h;
                (p.loss(&plus) - p.loss(&minus)) / (2.0 * h)
            })
            .collect();
        let err = max_rel_err(&g, &fd);
        assert!(
            err < 1e-6,
            "{name}: gradient vs central differences: {err:e}"
        );
    }
}

/// H·v through the R-pass on the backend and through the (chunked, CPU) Hessian operator.
fn hessian_vector_products_match_the_finite_difference_hessian<B: Backend>(be: &B) {
    for (name, net) in networks() {
        let p = problem(net, 2);
        let dense = hessian_fd(&p);
        let mut op = p.operator();
        let np = p.params.len();
        let mut rng = stream(9, Purpose::Init, 2);
        for _ in 0..3 {
            let v: Vec<f64> = (0..np).map(|_| rng.uniform_in(-1.0, 1.0)).collect();
            let want: Vec<f64> = (0..np)
                .map(|i| (0..np).map(|j| dense[j][i] * v[j]).sum())
                .collect();
            let got = p.product_on(be, &v, false);
            let err = max_rel_err(&got, &want);
            assert!(err < 1e-6, "{name}: H·v vs finite differences: {err:e}");
            let mut got = vec![0.0; np];
            op.hvp(&v, &mut got);
            let err = max_rel_err(&got, &want);
            assert!(
                err < 1e-6,
                "{name}: operator H·v vs finite differences: {err:e}"
            );
        }
    }
}

/// The R-backward on prepared values ([`LayerOps::r_prepare`]: a residual block's inner
/// cotangents, nested blocks' and GELU's φ″, as the Hessian operator keeps them) is, to the bit,
/// the R-backward that recomputes them, for H·v and G·v, on every network here; and some network
/// here prepares something (a residual block, a GELU), so the comparison is not empty.
fn prepared_products_are_the_recomputed_ones<B: Backend>(be: &B) {
    let mut prepared_any = 0;
    for (name, net) in networks() {
        prepared_any += net.layers.iter().filter(|l| l.prepared_len(2) > 0).count();
        let p = problem(net, 4);
        let mut rng = stream(11, Purpose::Init, 4);
        let v: Vec<f64> = (0..p.params.len())
            .map(|_| rng.uniform_in(-1.0, 1.0))
            .collect();
        for gauss_newton in [false, true] {
            let want = p.product_prepared_on(be, &v, gauss_newton, false);
            let got = p.product_prepared_on(be, &v, gauss_newton, true);
            let same = want
                .iter()
                .zip(&got)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same,
                "{name} (Gauss–Newton {gauss_newton}): prepared {got:?} vs {want:?}"
            );
        }
    }
    assert!(
        prepared_any >= 2,
        "no network here prepares R-backward values"
    );
}

/// The Hessian operator's products do not depend on what it caches: nothing (every product
/// recomputes the passes), the passes without the prepared values, or both; to the bit.
#[test]
fn operator_products_do_not_depend_on_the_cache() {
    for (name, net) in networks() {
        let p = problem(net, 5);
        let (passes, prepared) = cache_needs::<f64>(&p.net, p.labels.len());
        let mut rng = stream(12, Purpose::Init, 5);
        let v: Vec<f64> = (0..p.params.len())
            .map(|_| rng.uniform_in(-1.0, 1.0))
            .collect();
        let mut outs = Vec::new();
        for bytes in [0, passes, passes + prepared] {
            let mut op =
                HessianOperator::new(&p.net, &p.params, &p.x, &p.labels, 2, bytes).unwrap();
            assert_eq!(op.is_cached(), bytes > 0 || passes == 0, "{name}");
            let mut out = vec![0.0; p.params.len()];
            op.hvp(&v, &mut out);
            outs.push(out);
        }
        for out in &outs[1..] {
            let same = out
                .iter()
                .zip(&outs[0])
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{name}: {out:?} vs {:?}", outs[0]);
        }
    }
}

fn gauss_newton_products_match_the_dense_jacobian<B: Backend>(be: &B) {
    for (name, net) in networks() {
        let p = problem(net, 3);
        let (b, c, np) = (p.labels.len(), p.net.classes(), p.params.len());
        // J[(n, k), j] by central differences of the logits.
        let h = 1e-6;
        let jac: Vec<Vec<f64>> = (0..np)
            .map(|j| {
                let mut plus = p.params.clone();
                let mut minus = p.params.clone();
                plus[j] += h;
                minus[j] -= h;
                let (zp, zm) = (p.logits(&plus), p.logits(&minus));
                zp.iter()
                    .zip(&zm)
                    .map(|(a, b)| (a - b) / (2.0 * h))
                    .collect()
            })
            .collect();
        let z = p.logits(&p.params);
        let mut rng = stream(11, Purpose::Init, 3);
        let v: Vec<f64> = (0..np).map(|_| rng.uniform_in(-1.0, 1.0)).collect();
        // G·v = (1/B) Σₙ Jₙᵀ·Aₙ·Jₙ·v, Aₙ = diag(p) − p·pᵀ.
        let mut want = vec![0.0; np];
        for n in 0..b {
            let zn = &z[n * c..(n + 1) * c];
            let m = zn.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = zn.iter().map(|v| (v - m).exp()).collect();
            let s: f64 = e.iter().sum();
            let pr: Vec<f64> = e.iter().map(|v| v / s).collect();
            let jv: Vec<f64> = (0..c)
                .map(|k| (0..np).map(|j| jac[j][n * c + k] * v[j]).sum())
                .collect();
            let pjv: f64 = pr.iter().zip(&jv).map(|(a, b)| a * b).sum();
            let ajv: Vec<f64> = (0..c).map(|k| pr[k] * (jv[k] - pjv)).collect();
            for (j, w) in want.iter_mut().enumerate() {
                *w += (0..c).map(|k| jac[j][n * c + k] * ajv[k]).sum::<f64>() / b as f64;
            }
        }
        let got = p.product_on(be, &v, true);
        let err = max_rel_err(&got, &want);
        assert!(err < 1e-6, "{name}: G·v vs the dense Jacobian: {err:e}");
        let mut got = vec![0.0; np];
        p.operator().gnvp(&v, &mut got);
        let err = max_rel_err(&got, &want);
        assert!(
            err < 1e-6,
            "{name}: operator G·v vs the dense Jacobian: {err:e}"
        );
    }
}

#[test]
fn per_sample_products_match_single_sample_passes() {
    for (name, net) in networks() {
        let p = problem(net, 4);
        let (b, np, f) = (p.labels.len(), p.params.len(), p.net.input_features());
        // gₙ = ∂ℓₙ/∂θ: the gradient of a batch of one.
        let g: Vec<Vec<f64>> = (0..b)
            .map(|n| p.gradient(&p.params, &p.x[n * f..(n + 1) * f], &p.labels[n..n + 1]))
            .collect();
        let mut ws = p.net.workspace(b);
        p.net.per_sample_pass(&p.params, &p.x, &p.labels, &mut ws);
        let mut sc = p.net.per_sample_scratch(b);
        p.net.per_sample_prepare(&p.params, &p.x, b, &ws, &mut sc);
        let mut gram = vec![0.0; b * b];
        p.net.per_sample_gram(&p.x, b, &ws, &mut sc, &mut gram);
        let want: Vec<f64> = (0..b * b)
            .map(|i| g[i / b].iter().zip(&g[i % b]).map(|(x, y)| x * y).sum())
            .collect();
        assert!(max_rel_err(&gram, &want) < 1e-12, "{name}: G·Gᵀ");
        let v: Vec<f64> = (0..np).map(|i| (i as f64 * 0.7).sin()).collect();
        let mut dots = vec![0.0; b];
        p.net.per_sample_dots(&p.x, b, &ws, &mut sc, &v, &mut dots);
        let want: Vec<f64> = g
            .iter()
            .map(|gn| gn.iter().zip(&v).map(|(x, y)| x * y).sum())
            .collect();
        assert!(max_rel_err(&dots, &want) < 1e-12, "{name}: G·v");
        let c = [0.3, -1.1, 0.6];
        let mut comb = vec![0.0; np];
        p.net
            .per_sample_combine(&p.x, b, &ws, &mut sc, &c, &mut comb);
        let want: Vec<f64> = (0..np)
            .map(|j| (0..b).map(|n| c[n] * g[n][j]).sum())
            .collect();
        assert!(max_rel_err(&comb, &want) < 1e-12, "{name}: Gᵀ·c");
    }
}

/// The materialised route of every layer with parameters, closed form or not, on the backend.
fn per_sample_gradients_match_single_sample_passes<B: Backend>(be: &B) {
    for (name, net) in networks() {
        let p = problem(net, 4);
        let (b, np, f) = (p.labels.len(), p.params.len(), p.net.input_features());
        let g: Vec<Vec<f64>> = (0..b)
            .map(|n| p.gradient(&p.params, &p.x[n * f..(n + 1) * f], &p.labels[n..n + 1]))
            .collect();
        let (pb, xb) = (be.upload(&p.params), be.upload(&p.x));
        let mut ws = p.net.workspace_on(be.clone(), b);
        let mut grad = be.zeros::<f64>(np);
        p.net.loss_and_gradient_on(
            B::view(&pb),
            B::view(&xb),
            &p.labels,
            B::view_mut(&mut grad),
            &mut ws,
        );
        let mut lowering = Scratch::on(be.clone(), &p.net.layers, 1, false);
        for (i, layer) in p.net.layers.iter().enumerate() {
            let t = layer.tensors();
            if t.is_empty() {
                assert_eq!(layer.per_sample(), PerSample::None, "{name}: layer {i}");
                continue;
            }
            let start = p.net.layout.tensors[t.start].offset;
            let end = p.net.layout.tensors[t.end - 1].range().end;
            let input = if i == 0 {
                B::view(&xb)
            } else {
                B::view(&ws.acts[i - 1])
            };
            let mut rows = be.zeros::<f64>(b * (end - start));
            layer.per_sample_gradients(
                B::view(&pb),
                input,
                B::view(&ws.deltas[i]),
                b,
                b as f64,
                B::view_mut(&mut rows),
                end - start,
                &mut lowering,
            );
            let rows = down(be, &rows);
            for n in 0..b {
                let row = &rows[n * (end - start)..(n + 1) * (end - start)];
                let err = max_rel_err(row, &g[n][start..end]);
                assert!(
                    err < 1e-12,
                    "{name}: layer {i} per-sample gradients: {err:e}"
                );
            }
        }
    }
}

/// A layer that says it is sample-wise gives, bit for bit, on a batch what it gives on each sample
/// alone (the network runs runs of such layers sample by sample); and the network's forward pass
/// equals the layer-by-layer pass over the whole batch.
fn sample_wise_layers_forward_each_sample_as_the_batch<B: Backend>(be: &B) {
    for (name, net) in networks() {
        let p = problem(net, 11);
        let batch = p.labels.len();
        let params: Vec<f32> = p.params.iter().map(|&v| v as f32).collect();
        let mut input: Vec<f32> = p.x.iter().map(|&v| v as f32).collect();
        let mut sc = Scratch::on(be.clone(), &p.net.layers, batch, false);
        let pb = be.upload(&params);
        for (i, layer) in p.net.layers.iter().enumerate() {
            let (fin, fout, nidx) = (
                layer.in_features(),
                layer.out_features(),
                layer.index_len(1),
            );
            let (mut y, mut idx) = (be.zeros::<f32>(batch * fout), be.zeros::<u32>(batch * nidx));
            let mut state = be.zeros::<f32>(layer.state_len(batch));
            let xb = be.upload(&input);
            layer.forward(
                B::view(&pb),
                B::view(&xb),
                batch,
                B::view_mut(&mut y),
                B::view_mut(&mut idx),
                B::view_mut(&mut state),
                &mut sc,
            );
            let (y, idx) = (down(be, &y), down(be, &idx));
            if layer.sample_wise() {
                for n in 0..batch {
                    let (mut yn, mut idxn) = (be.zeros::<f32>(fout), be.zeros::<u32>(nidx));
                    let mut staten = be.zeros::<f32>(layer.state_len(1));
                    let xn = B::slice(B::view(&xb), n * fin..(n + 1) * fin);
                    layer.forward(
                        B::view(&pb),
                        xn,
                        1,
                        B::view_mut(&mut yn),
                        B::view_mut(&mut idxn),
                        B::view_mut(&mut staten),
                        &mut sc,
                    );
                    let (yn, idxn) = (down(be, &yn), down(be, &idxn));
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&yn),
                        bits(&y[n * fout..(n + 1) * fout]),
                        "{name}: layer {i} ({}) sample {n}",
                        layer.kind()
                    );
                    assert_eq!(idxn, idx[n * nidx..(n + 1) * nidx], "{name}: layer {i}");
                }
            }
            input = y;
        }
        let mut ws = p.net.workspace_on(be.clone(), batch);
        let xb = be.upload(&p.x.iter().map(|&v| v as f32).collect::<Vec<_>>());
        let mut logits = vec![0f32; batch * p.net.classes()];
        be.download(
            p.net.forward_on(B::view(&pb), B::view(&xb), batch, &mut ws),
            &mut logits,
        );
        assert_eq!(
            logits.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            input.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "{name}: the network's forward pass"
        );
    }
}

#[test]
fn exact_trace_is_the_finite_difference_hessian_trace_where_offered() {
    for (name, net) in networks() {
        let piecewise = net.layers.iter().all(|l| l.piecewise_linear());
        let p = problem(net, 5);
        let result = p.operator().exact_trace();
        if !piecewise {
            assert!(result.is_err(), "{name}: the exact trace must be refused");
            continue;
        }
        let dense = hessian_fd(&p);
        let want: f64 = (0..p.params.len()).map(|j| dense[j][j]).sum();
        let got = result.unwrap().trace;
        assert!(
            (got - want).abs() < 1e-6 * want.abs().max(1e-3),
            "{name}: exact trace {got} vs the dense Hessian's {want}"
        );
    }
}

#[test]
fn tensor_names_follow_the_module_structure() {
    let net = network(|s| {
        s.skip();
        s.push(|sc| Linear::new(sc, 3, 2));
        s.sequential("block", |b| {
            b.push(|sc| Linear::new(sc, 2, 2));
            b.push(|_| Relu { features: 2 });
            b.sequential("inner", |i| i.push(|sc| Linear::new(sc, 2, 2)));
        });
        s.named("head", |sc| Linear::new(sc, 2, 2));
    });
    assert_eq!(
        net.layout.names(),
        [
            "1.weight",
            "1.bias",
            "block.0.weight",
            "block.0.bias",
            "block.inner.0.weight",
            "block.inner.0.bias",
            "head.weight",
            "head.bias"
        ]
    );
    let offsets: Vec<usize> = net.layout.tensors.iter().map(|t| t.offset).collect();
    assert_eq!(offsets, [0, 6, 8, 12, 14, 18, 20, 24]);
}

/// The activations' values against PyTorch's (torch 2.x, float64): `F.gelu(x, approximate="tanh")`,
/// `torch.sigmoid`, `F.silu` at x = −3, −0.5, 0, 1, 4 (an independent check of φ; φ′ and φ″ are
/// checked by the finite differences above).
#[test]
fn activation_values_match_pytorch() {
    let xs = [-3.0, -0.5, 0.0, 1.0, 4.0];
    type Case = (&'static str, [f64; 5], fn(f64) -> f64);
    let cases: [Case; 3] = [
        (
            "gelu tanh",
            [
                -0.003_637_392_081_772_994_3,
                -0.154_285_990_174_856_06,
                0.0,
                0.841_191_990_608_276_8,
                3.999_929_754_051_807_5,
            ],
            |x| GeluTanh { features: 1 }.value(x),
        ),
        (
            "sigmoid",
            [
                0.047_425_873_177_566_78,
                0.377_540_668_798_145_4,
                0.5,
                0.731_058_578_630_004_9,
                0.982_013_790_037_908_5,
            ],
            |x| Sigmoid { features: 1 }.value(x),
        ),
        (
            "silu",
            [
                -0.142_277_619_532_700_35,
                -0.188_770_334_399_072_7,
                0.0,
                0.731_058_578_630_004_9,
                3.928_055_160_151_634,
            ],
            |x| Silu { features: 1 }.value(x),
        ),
    ];
    for (name, want, f) in cases {
        for (&x, &w) in xs.iter().zip(&want) {
            let got = f(x);
            assert!(
                (got - w).abs() <= 4e-16 * w.abs().max(1.0),
                "{name}({x}) = {got}, PyTorch {w}"
            );
        }
    }
}

/// Causal attention: the output at position i does not depend on the inputs after i, and without
/// the mask it does (an independent check of the mask; the finite-difference tests above hold for
/// any differentiable map, masked or not).
#[test]
fn causal_attention_does_not_look_ahead() {
    let (seq, dim) = (4, 4);
    for causal in [true, false] {
        let net = network(|s| s.push(|sc| Attention::new(sc, seq, dim, 2, causal, true)));
        let p = problem(net, 13);
        let x: Vec<f64> = p.x[..seq * dim].to_vec();
        let out = |x: &[f64]| {
            let mut ws = p.net.workspace(1);
            p.net.forward(&p.params, x, 1, &mut ws).to_vec()
        };
        let y = out(&x);
        for t in 0..seq {
            let mut moved = x.clone();
            moved[t * dim..(t + 1) * dim]
                .iter_mut()
                .for_each(|v| *v += 0.5);
            let ym = out(&moved);
            for i in 0..seq {
                let same = (0..dim).all(|j| ym[i * dim + j] == y[i * dim + j]);
                // Position i reads key t when t ≤ i (or always without the mask).
                let reads = !causal || t <= i;
                assert_eq!(
                    !same, reads,
                    "causal {causal}: output {i} after moving input {t}"
                );
            }
        }
    }
}

/// Average pooling against a hand computation: a 1×3×4 plane, kernel 2, stride 2 (the last row is
/// dropped) and kernel 2, stride 1 (overlapping).
#[test]
fn average_pooling_matches_a_hand_computation() {
    let x: Vec<f64> = (0..12).map(|v| v as f64).collect();
    let pool = |kernel, stride| {
        let l = AvgPool2d {
            channels: 1,
            height: 3,
            width: 4,
            kernel,
            stride,
        };
        let mut y = vec![0.0; l.out_features()];
        let mut idx: [u32; 0] = [];
        l.forward(
            &[][..],
            &x[..],
            1,
            &mut y[..],
            &mut idx[..],
            &mut [][..],
            &mut Scratch::default(),
        );
        y
    };
    // Rows 0..4, 4..8, 8..12: windows (0,1,4,5), (2,3,6,7).
    assert_eq!(pool(2, 2), [2.5, 4.5]);
    assert_eq!(pool(2, 1), [2.5, 3.5, 4.5, 6.5, 7.5, 8.5]);
}

/// The backward pass with each ReLU taken into the layer after it ([`LayerOps::backward_gated`])
/// is, bit for bit, the layer-by-layer pass: the gradient, every cotangent it writes, and the
/// products H·v and G·v of the R-passes that read them. The cotangent of an absorbed ReLU is not
/// written (it was poisoned with NaN beforehand and stays so), and no R-pass reads it (their
/// products are equal). Over every test network and a LeNet with two extra convolutions on odd
/// sides, in f64 and f32, at 3 samples (flat kernels) and 19 (sample-minor chunks of 16 with
/// their 16 × 16 write-back, then 3 flat), under both layouts.
#[test]
fn fused_backward_is_the_layer_by_layer_backward() {
    fn check<T: Real>(name: &str, net: &Network, batch: usize) -> usize {
        let be = CpuBackend;
        let mut rng = stream(12, Purpose::Init, 2);
        let params: Vec<T> = (0..net.num_params())
            .map(|_| T::of_f64(rng.uniform_in(-0.5, 0.5)))
            .collect();
        // Token ids for an embedding, else uniform inputs.
        let vocabulary = match net.layers.first() {
            Some(Layer::Embedding(e)) => Some(e.num as u64),
            _ => None,
        };
        let x: Vec<T> = (0..batch * net.input_features())
            .map(|_| match vocabulary {
                Some(num) => T::of_f64(rng.below(num) as f64),
                None => T::of_f64(rng.uniform_in(-1.0, 1.0)),
            })
            .collect();
        let v: Vec<T> = (0..params.len())
            .map(|_| T::of_f64(rng.uniform_in(-1.0, 1.0)))
            .collect();
        let labels: Vec<usize> = (0..batch).map(|n| n % net.classes()).collect();
        let bits = |a: &[T]| a.iter().map(|v| v.as_f64().to_bits()).collect::<Vec<_>>();
        let run = |fuse: bool, with_grad: bool| {
            let mut ws = net.workspace::<T>(batch);
            net.forward_loss_cotangent::<CpuBackend, T>(&params, &x, &labels[..], &mut ws);
            let last = net.layers.len() - 1;
            for d in &mut ws.deltas[..last] {
                d.iter_mut().for_each(|v| *v = T::of_f64(f64::NAN));
            }
            let mut grad = vec![T::of_f64(f64::NAN); params.len()];
            let g = with_grad.then_some(&mut grad[..]);
            net.backward_fused::<CpuBackend, T>(&params, &x, batch, g, &mut ws, fuse);
            let products = [false, true].map(|gauss_newton| {
                let mut bufs = RBuffers::on(be, &net.layers, batch);
                let chunk = ChunkPass::<T, CpuBackend> {
                    x: &x,
                    acts: &ws.acts,
                    deltas: &ws.deltas,
                    indices: &ws.indices,
                    states: &ws.states,
                    prepared: None,
                    batch,
                };
                let mut out = vec![T::zero(); params.len()];
                let one = T::one();
                r_pass(
                    net,
                    &params[..],
                    &v[..],
                    &chunk,
                    one,
                    &mut out[..],
                    gauss_newton,
                    &mut bufs,
                );
                out
            });
            (grad, ws.deltas.clone(), products)
        };
        let mut absorbed = 0;
        for with_grad in [true, false] {
            let (ga, da, pa) = run(false, with_grad);
            let (gb, db, pb) = run(true, with_grad);
            let what = format!("{name}, {}, batch {batch}, gradient {with_grad}", T::NAME);
            if with_grad {
                assert_eq!(bits(&ga), bits(&gb), "{what}: the gradient");
                assert!(
                    ga.iter().all(|v| v.is_finite()),
                    "{what}: gradient not finite"
                );
            }
            for (i, (a, b)) in da.iter().zip(&db).enumerate() {
                if i > 0 && b.iter().all(|v| v.is_nan()) && a.iter().all(|v| !v.is_nan()) {
                    assert!(net.layers[i].output_gate(), "{what}: layer {i} skipped");
                    absorbed += 1;
                    continue;
                }
                assert_eq!(bits(a), bits(b), "{what}: the cotangent of layer {i}");
            }
            for (k, (a, b)) in pa.iter().zip(&pb).enumerate() {
                assert_eq!(bits(a), bits(b), "{what}: R-pass (Gauss–Newton {})", k == 1);
            }
        }
        absorbed
    }
    use crate::device::cpu_conv::{with_layout, Layout};
    let lenet = Network::new(Architecture::lenet(2).for_data([1, 17, 19], 3));
    for layout in [Layout::Auto, Layout::Flat] {
        with_layout(layout, || {
            for (name, net) in networks() {
                let fusable = (2..net.layers.len())
                    .filter(|&i| net.layers[i - 1].output_gate())
                    .filter(|&i| match &net.layers[i] {
                        Layer::Conv2d(c) => c.geometry.stride == 1,
                        l => matches!(l, Layer::MaxPool2d(_)),
                    })
                    .count();
                assert_eq!(check::<f64>(name, &net, 3), 2 * fusable, "{name}");
                assert_eq!(check::<f32>(name, &net, 3), 2 * fusable, "{name}");
            }
            // conv1, the two extra convolutions and conv2: their ReLUs are absorbed; fc_1's and
            // fc_2's are not.
            for batch in [3, 19] {
                assert_eq!(check::<f32>("LeNet", &lenet, batch), 8);
                assert_eq!(check::<f64>("LeNet", &lenet, batch), 8);
            }
        });
    }
}

/// Instantiates the bodies written over the backend for one backend; with `$around`, each body
/// runs inside it (`fn(fn())`).
macro_rules! layer_suite {
    ($name:ident, $make:expr) => {
        layer_suite!($name, $make, |body: fn()| body());
    };
    ($name:ident, $make:expr, $around:expr) => {
        mod $name {
            use super::*;
            #[test]
            fn gradients_match_central_differences() {
                ($around)(|| super::gradients_match_central_differences(&$make));
            }
            #[test]
            fn hessian_vector_products_match_the_finite_difference_hessian() {
                ($around)(|| {
                    super::hessian_vector_products_match_the_finite_difference_hessian(&$make)
                });
            }
            #[test]
            fn prepared_products_are_the_recomputed_ones() {
                ($around)(|| super::prepared_products_are_the_recomputed_ones(&$make));
            }
            #[test]
            fn gauss_newton_products_match_the_dense_jacobian() {
                ($around)(|| super::gauss_newton_products_match_the_dense_jacobian(&$make));
            }
            #[test]
            fn per_sample_gradients_match_single_sample_passes() {
                ($around)(|| super::per_sample_gradients_match_single_sample_passes(&$make));
            }
            #[test]
            fn sample_wise_layers_forward_each_sample_as_the_batch() {
                ($around)(|| super::sample_wise_layers_forward_each_sample_as_the_batch(&$make));
            }
        }
    };
}

layer_suite!(cpu, CpuBackend);
// The CPU convolutions once more with every batch, of any size, through their sample-minor kernels
// (which `Layout::Auto` keeps for batches of 8 or more and 64 taps or more).
layer_suite!(cpu_sample_minor, CpuBackend, |body: fn()| {
    use crate::device::cpu_conv::{with_layout, Layout};
    with_layout(Layout::Minor, body)
});
