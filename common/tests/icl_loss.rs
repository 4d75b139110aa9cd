//! In-context linear regression's loss at its y positions: sequences of `datagen icl-regression`
//! (2K interleaved tokens `[0, x_k]`, `[y_k, 0, …]` of width D + 1, targets y `[n, K]`) through a
//! model that ends in `positions` (start 0, step 2: the x-tokens) and a linear head of one output,
//! so its output is `[K, 1]` and the mean squared error is PyTorch's
//! `F.mse_loss(pred.squeeze(-1), y)`, the mean over the n·K predictions. In f64 against independent
//! computations: the loss written out, the prediction at x-token k against the same model without
//! `positions` read at position 2k, causality (prediction k does not see y_k), the gradient against
//! central differences, Hessian–vector and Gauss–Newton products against dense finite-difference
//! matrices, the exact trace of a piecewise-linear model against the finite-difference diagonal,
//! and per-sample gradients (the Gram matrix) against one backward pass per sample.
//!
//! Tolerances as in `sequence_loss.rs`: central differences with h = 1e-5 agree to 1e-7 relative
//! to a column's norm.

// The tests choose the BLAS provider, as the binaries do.
extern crate blas_openblas;

mod support;
use support::assert_column;

use common::data::synthetic::icl_regression;
use common::model::{Architecture, Loss, NetSpec, Network};
use serde_json::{json, Value};

/// Pairs per sequence and the x dimension.
const K: usize = 3;
const D: usize = 2;

/// A one-layer causal transformer on the 2K tokens, read at positions 0, 2, …, 2K − 2; with
/// `read: false` the same model read at every position (output `[2K, 1]`).
fn transformer(read: bool) -> Value {
    let mut layers = vec![
        json!({"type": "linear", "out": 4}),
        json!({"type": "positional"}),
        json!({"type": "residual", "layers": [{"type": "layernorm"},
                                              {"type": "attention", "heads": 2, "causal": true}]}),
        json!({"type": "residual", "layers": [{"type": "layernorm"}, {"type": "linear", "out": 6},
                                              {"type": "gelu"}, {"type": "linear", "out": 4}]}),
        json!({"type": "layernorm"}),
    ];
    if read {
        layers.push(json!({"type": "positions", "start": 0, "step": 2}));
    }
    layers.push(json!({"type": "linear", "out": 1}));
    json!({"input": [2 * K, D + 1], "layers": layers, "loss": "mse"})
}

/// Piecewise linear (the exact trace applies): linear, positional, ReLU, the x-tokens, linear.
fn piecewise() -> Value {
    json!({"input": [2 * K, D + 1],
        "layers": [{"type": "linear", "out": 5}, {"type": "positional"}, {"type": "relu"},
                   {"type": "positions", "start": 0, "step": 2},
                   {"type": "linear", "out": 1}],
        "loss": "mse"})
}

fn network(spec: &Value) -> Network {
    let spec = NetSpec::from_json("icl", spec).unwrap();
    let mut net = Network::try_new(Architecture::Spec(Box::new(spec))).unwrap();
    net.loss = Loss::MeanSquaredError;
    net
}

/// `x`: `n × 2K × (D + 1)` tokens; `y`: `n × K` targets.
type Problem = support::Problem<Vec<f64>>;

fn problem(spec: &Value, n: usize, seed: u64) -> Problem {
    let net = network(spec);
    assert_eq!(
        (net.positions(), net.loss_rows(), net.classes()),
        (K, (1, K), K)
    );
    let data = icl_regression(D, K, 0, 0.1, n, 0, seed).unwrap();
    let mut s = common::rng::stream(seed, common::rng::Purpose::Probe, 0);
    let params: Vec<f64> = (0..net.num_params())
        .map(|_| s.uniform_in(-0.8, 0.8))
        .collect();
    Problem {
        net,
        params,
        x: data.x.iter().map(|&v| v as f64).collect(),
        y: data.y.iter().map(|&v| v as f64).collect(),
        width: K,
    }
}

impl Problem {
    /// The predictions, `n × K`.
    fn predictions(&self, params: &[f64], x: &[f64]) -> Vec<f64> {
        let n = x.len() / self.net.input_features();
        let mut ws = self.net.workspace::<f64>(n);
        self.net.forward(params, x, n, &mut ws).to_vec()
    }
}

/// The prediction for y_k is the model's output at x-token k, position 2k: the same parameters
/// without `positions` give an output at all 2K positions whose even rows are the predictions.
/// The loss is the mean over all n·K squared errors (`F.mse_loss(pred.squeeze(-1), y)`).
#[test]
fn predictions_are_read_at_the_x_tokens_and_the_loss_is_their_mean_squared_error() {
    let p = problem(&transformer(true), 4, 1);
    let every = network(&transformer(false));
    assert_eq!(every.num_params(), p.net.num_params());
    assert_eq!(every.classes(), 2 * K);
    let mut ws = every.workspace::<f64>(p.n());
    let all = every.forward(&p.params, &p.x, p.n(), &mut ws).to_vec();
    let pred = p.predictions(&p.params, &p.x);
    for n in 0..p.n() {
        for k in 0..K {
            assert_eq!(
                pred[n * K + k].to_bits(),
                all[n * 2 * K + 2 * k].to_bits(),
                "sample {n}, pair {k}"
            );
        }
    }
    let by_hand: f64 = pred
        .iter()
        .zip(&p.y)
        .map(|(f, y)| (f - y).powi(2))
        .sum::<f64>()
        / (p.n() * K) as f64;
    let (l, _) = p.loss_and_gradient(&p.params);
    assert!((l - by_hand).abs() < 1e-14 * by_hand, "{l} vs {by_hand}");
}

/// Causal attention keeps y_k out of its own prediction: changing the y-token of pair k (position
/// 2k + 1) leaves predictions 0 … k as they were and moves those after it.
#[test]
fn the_prediction_of_y_k_does_not_see_y_k() {
    let p = problem(&transformer(true), 1, 2);
    let before = p.predictions(&p.params, &p.x);
    for k in 0..K {
        let mut x = p.x.clone();
        x[(2 * k + 1) * (D + 1)] += 1.0;
        let after = p.predictions(&p.params, &x);
        for j in 0..K {
            if j <= k {
                assert_eq!(before[j].to_bits(), after[j].to_bits(), "y_{k} moved {j}");
            } else {
                assert!(
                    (before[j] - after[j]).abs() > 1e-6,
                    "y_{k} did not move {j}"
                );
            }
        }
    }
}

#[test]
fn the_gradient_is_the_central_difference() {
    for (name, spec) in [
        ("transformer", transformer(true)),
        ("piecewise", piecewise()),
    ] {
        let p = problem(&spec, 3, 3);
        p.assert_gradient_is_the_central_difference(name);
    }
}

/// H·e_j against the finite-difference column for every j, in chunks of 2 samples; G·e_j against
/// (2/(n·K))·Jᵀ·J·e_j from a finite-difference Jacobian of the n·K predictions (the Hessian of the
/// mean squared error in them is (2/(n·K))·I).
#[test]
fn hessian_and_gauss_newton_products_against_dense_matrices() {
    for (name, spec) in [
        ("transformer", transformer(true)),
        ("piecewise", piecewise()),
    ] {
        let p = problem(&spec, 3, 4);
        let dim = p.params.len();
        let mut op = p.operator(2);
        let h = 1e-5;
        let jac = p.fd_jacobian(h, |q| p.predictions(q, &p.x));
        let rows = p.n() * K;
        assert_eq!(jac.len(), rows);
        for j in 0..dim {
            let e = p.assert_hessian_column(&mut op, j, h, name);
            let mut gv = vec![0.0; dim];
            op.gnvp(&e, &mut gv);
            let dense: Vec<f64> = (0..dim)
                .map(|i| jac.iter().map(|row| row[i] * row[j]).sum::<f64>() * 2.0 / rows as f64)
                .collect();
            assert_column(&gv, &dense, &format!("{name}: G column {j}"));
        }
    }
}

/// The exact trace through `positions` equals the finite-difference diagonal of H for the
/// piecewise-linear model; the transformer is refused.
#[test]
fn exact_trace_equals_the_finite_difference_diagonal() {
    let p = problem(&piecewise(), 3, 5);
    p.assert_exact_trace_is_the_fd_diagonal("piecewise");
    let t = problem(&transformer(true), 2, 5);
    assert!(t.operator(2).exact_trace().is_err());
}

/// The per-sample gradient gₙ is that of ℓₙ = (1/K)·Σₖ (fₙₖ − yₙₖ)²: the Gram matrix G·Gᵀ equals
/// the products of single-sample gradients.
#[test]
fn per_sample_gradients_are_of_each_sequence_mean_over_its_pairs() {
    for (name, spec) in [
        ("transformer", transformer(true)),
        ("piecewise", piecewise()),
    ] {
        let p = problem(&spec, 3, 6);
        let pred = p.predictions(&p.params, &p.x);
        let g: Vec<Vec<f64>> = (0..p.n())
            .map(|n| {
                let (l, g) = p.sample_loss_and_gradient(n);
                let by_hand: f64 = (0..K)
                    .map(|k| (pred[n * K + k] - p.y[n * K + k]).powi(2))
                    .sum::<f64>()
                    / K as f64;
                assert!((l - by_hand).abs() < 1e-13, "{name}: ℓ_{n}");
                g
            })
            .collect();
        p.assert_gram_is_of_the_sample_gradients(&g, name);
    }
}
