//! Cross-entropy averaged over positions, for a model whose output is per position `[T, C]` (a
//! transformer without `last`), through whole networks in f64 against independent computations:
//! the loss against `F.cross_entropy(z.reshape(-1, C), y.reshape(-1))` written out, the gradient
//! against central differences, Hessian–vector and Gauss–Newton products against dense
//! finite-difference matrices, the exact trace of a piecewise-linear per-position network against
//! the finite-difference diagonal, per-sample gradients (the Gram matrix, the exact natural
//! gradient) against one backward pass per sample, and the sampled Fisher's one label per position,
//! whose expectation (enumerated exactly) is the Gauss–Newton matrix over T.
//!
//! Tolerances as in `mse.rs`: central differences with h = 1e-5 agree to 1e-7 relative to a
//! column's norm.

// The tests choose the BLAS provider, as the binaries do.
extern crate blas_openblas;

mod support;
use support::{assert_column, diff, norm};

use common::model::{Architecture, Loss, NetSpec, Network, Targets};
use common::optim::{
    dense_direction, sample_labels, woodbury_direction, Batch, Damping, FisherKind, NgdExact,
    NgdExactConfig, WoodburyScratch,
};
use common::rng::{stream, Purpose};
use serde_json::json;

const T: usize = 4;
const C: usize = 3;
const VOCAB: usize = 5;

/// A one-layer causal transformer read out at every position: `[4]` token ids → `[4, 3]`.
fn transformer() -> Network {
    spec_network(json!({"input": [T],
        "layers": [{"type": "embedding", "num": VOCAB, "dim": 4},
                   {"type": "positional"},
                   {"type": "residual", "layers": [{"type": "layernorm"},
                                                   {"type": "attention", "heads": 2, "causal": true}]},
                   {"type": "layernorm"},
                   {"type": "linear", "out": C}],
        "loss": "cross_entropy"}))
}

/// A piecewise-linear per-position network (embedding, positional, linear, ReLU, linear).
fn piecewise() -> Network {
    spec_network(json!({"input": [T],
        "layers": [{"type": "embedding", "num": VOCAB, "dim": 3},
                   {"type": "positional"},
                   {"type": "linear", "out": 5}, {"type": "relu"},
                   {"type": "linear", "out": C}],
        "loss": "cross_entropy"}))
}

fn spec_network(spec: serde_json::Value) -> Network {
    let spec = NetSpec::from_json("seq", &spec).unwrap();
    let net = Network::try_new(Architecture::Spec(Box::new(spec))).unwrap();
    assert_eq!(net.loss, Loss::SoftmaxCrossEntropy);
    assert_eq!(
        (net.positions(), net.loss_rows(), net.classes()),
        (T, (T, C), T * C)
    );
    net
}

/// `x`: `n × T` token ids; `y`: `n × T` labels.
type Problem = support::Problem<Vec<usize>>;

fn problem(net: Network, n: usize, seed: u64) -> Problem {
    let mut s = stream(seed, Purpose::Probe, 0);
    let params: Vec<f64> = (0..net.num_params())
        .map(|_| s.uniform_in(-0.8, 0.8))
        .collect();
    let x: Vec<f64> = (0..n * T).map(|_| s.below(VOCAB as u64) as f64).collect();
    let y: Vec<usize> = (0..n * T).map(|_| s.below(C as u64) as usize).collect();
    Problem {
        net,
        params,
        x,
        y,
        width: T,
    }
}

impl Problem {
    /// The logits, `n × T × C`.
    fn logits(&self, params: &[f64]) -> Vec<f64> {
        let mut ws = self.net.workspace::<f64>(self.n());
        self.net
            .forward(params, &self.x, self.n(), &mut ws)
            .to_vec()
    }
}

fn softmax(z: &[f64]) -> Vec<f64> {
    let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// The loss is the mean over all n·T tokens of −log softmax(z)[y], as
/// `F.cross_entropy(z.reshape(-1, C), y.reshape(-1))`; the count is of tokens.
#[test]
fn the_loss_is_the_mean_over_every_token() {
    let p = problem(transformer(), 3, 1);
    let z = p.logits(&p.params);
    let by_hand: f64 = z
        .chunks_exact(C)
        .zip(&p.y)
        .map(|(zt, &y)| -softmax(zt)[y].ln())
        .sum::<f64>()
        / (p.n() * T) as f64;
    let (l, _) = p.loss_and_gradient(&p.params);
    assert!((l - by_hand).abs() < 1e-14 * by_hand, "{l} vs {by_hand}");
    let argmax = |zt: &[f64]| (0..C).fold(0, |a, c| if zt[c] > zt[a] { c } else { a });
    let correct = z
        .chunks_exact(C)
        .zip(&p.y)
        .filter(|(zt, &y)| argmax(zt) == y)
        .count();
    let mut ws = p.net.workspace::<f64>(p.n());
    let (sum, count) = p.net.loss_sum(&p.params, &p.x, p.targets(), &mut ws);
    assert!((sum / p.n() as f64 - by_hand).abs() < 1e-14 * by_hand);
    assert_eq!(count, correct);
}

#[test]
fn the_gradient_is_the_central_difference() {
    for (name, net) in [("transformer", transformer()), ("piecewise", piecewise())] {
        let p = problem(net, 3, 2);
        p.assert_gradient_is_the_central_difference(name);
    }
}

/// H·e_j against the finite-difference column for every j, in chunks of 2 samples; G·e_j against
/// (1/(n·T))·Σₙₜ Jₙₜᵀ·Aₙₜ·Jₙₜ from a finite-difference Jacobian of the logits, with
/// Aₙₜ = diag(p) − p·pᵀ of position t's softmax.
#[test]
fn hessian_and_gauss_newton_products_against_dense_matrices() {
    for (name, net) in [("transformer", transformer()), ("piecewise", piecewise())] {
        let p = problem(net, 3, 3);
        let dim = p.params.len();
        let mut op = p.operator(2);
        let h = 1e-5;
        let jac = p.fd_jacobian(h, |q| p.logits(q));
        assert_eq!(jac.len(), p.n() * T * C);
        let z = p.logits(&p.params);
        let tokens = p.n() * T;
        for j in 0..dim {
            let e = p.assert_hessian_column(&mut op, j, h, name);
            let mut gv = vec![0.0; dim];
            op.gnvp(&e, &mut gv);
            let mut dense = vec![0.0; dim];
            for tok in 0..tokens {
                let pr = softmax(&z[tok * C..(tok + 1) * C]);
                let jv: Vec<f64> = (0..C).map(|k| jac[tok * C + k][j]).collect();
                let pjv: f64 = pr.iter().zip(&jv).map(|(a, b)| a * b).sum();
                let ajv: Vec<f64> = (0..C).map(|k| pr[k] * (jv[k] - pjv)).collect();
                for (i, d) in dense.iter_mut().enumerate() {
                    *d += (0..C).map(|k| jac[tok * C + k][i] * ajv[k]).sum::<f64>() / tokens as f64;
                }
            }
            assert_column(&gv, &dense, &format!("{name}: G column {j}"));
        }
    }
}

/// The exact trace (per-sample norms through the factor (1/√T)·blockdiag(Mₜ), T·C columns) equals
/// the finite-difference diagonal of H for the piecewise-linear network; the transformer is refused.
#[test]
fn exact_trace_equals_the_finite_difference_diagonal() {
    let p = problem(piecewise(), 3, 4);
    p.assert_exact_trace_is_the_fd_diagonal("piecewise");
    let t = problem(transformer(), 2, 4);
    assert!(t.operator(2).exact_trace().is_err());
}

/// The per-sample gradient gₙ is that of the sample's mean over its own T positions: the Gram
/// matrix G·Gᵀ equals the products of single-sample gradients, and the Woodbury direction the
/// dense solve with G from one backward pass per sample.
#[test]
fn per_sample_gradients_are_of_each_sample_mean_over_its_positions() {
    for (name, net) in [("transformer", transformer()), ("piecewise", piecewise())] {
        let p = problem(net, 3, 5);
        let b = p.n();
        let g: Vec<Vec<f64>> = (0..b)
            .map(|n| {
                let (l, g) = p.sample_loss_and_gradient(n);
                // ℓₙ: the mean over the sample's positions.
                let z = p.logits(&p.params);
                let by_hand: f64 = (0..T)
                    .map(|t| {
                        let tok = n * T + t;
                        -softmax(&z[tok * C..(tok + 1) * C])[p.y[tok]].ln()
                    })
                    .sum::<f64>()
                    / T as f64;
                assert!((l - by_hand).abs() < 1e-13, "{name}: ℓ_{n}");
                g
            })
            .collect();
        p.assert_gram_is_of_the_sample_gradients(&g, name);
        let damping = Damping::Relative(0.5);
        let mut wsc = WoodburyScratch::<f64>::new(&p.net, b);
        let mut d = vec![0.0; p.params.len()];
        woodbury_direction(
            &p.net,
            &p.params,
            &p.x,
            p.targets(),
            None,
            damping,
            &mut wsc,
            &mut d,
        )
        .unwrap();
        let dense = dense_direction(&p.net, &p.params, &p.x, p.targets(), None, damping).unwrap();
        assert!(diff(&d, &dense) <= 1e-9 * norm(&dense), "{name}: empirical");
    }
}

/// `ngd-exact --fisher sampled` draws one label per position from that position's softmax, by its
/// stream (seed, `Labels`, step): its step is the dense solve with those labels.
#[test]
fn sampled_fisher_draws_one_label_per_position() {
    let p = problem(piecewise(), 3, 6);
    let b = p.n();
    let params32: Vec<f32> = p.params.iter().map(|&v| v as f32).collect();
    let x32: Vec<f32> = p.x.iter().map(|&v| v as f32).collect();
    let targets = Targets::Tokens {
        labels: &p.y,
        positions: T,
    };
    let mut ws = p.net.workspace::<f32>(b);
    let mut grad = vec![0f32; p.params.len()];
    p.net
        .loss_and_gradient(&params32, &x32, targets, &mut grad, &mut ws);
    let g64: Vec<f64> = grad.iter().map(|&v| v as f64).collect();
    let damping = Damping::Absolute(0.1);
    let mut opt = NgdExact::new(NgdExactConfig {
        fisher: FisherKind::Sampled,
        damping,
        preserve_norm: false,
        seed: 9,
        ..Default::default()
    })
    .unwrap();
    let batch = Batch {
        net: &p.net,
        x: &x32[..],
        targets,
    };
    opt.precondition(&params32, &mut grad, &batch).unwrap();
    let p64: Vec<f64> = params32.iter().map(|&v| v as f64).collect();
    let mut wsd = p.net.workspace::<f64>(b);
    let z = p.net.forward(&p64, &p.x, b, &mut wsd).to_vec();
    let mut drawn = vec![0usize; b * T];
    sample_labels(&z, C, &mut stream(9, Purpose::Labels, 0), &mut drawn);
    assert_ne!(drawn, p.y);
    let dense = dense_direction(
        &p.net,
        &p64,
        &p.x,
        Targets::Tokens {
            labels: &drawn,
            positions: T,
        },
        Some(&g64),
        damping,
    )
    .unwrap();
    let got: Vec<f64> = grad.iter().map(|&v| v as f64).collect();
    assert!(
        diff(&got, &dense) <= 1e-5 * norm(&dense),
        "{:e} of {:e}",
        diff(&got, &dense),
        norm(&dense)
    );
}

/// With independent labels yₜ ~ softmax(zₜ) at each position, E[gₙgₙᵀ] = Gₙ/T, Gₙ the
/// Gauss–Newton matrix of the per-sample loss (the expectation enumerated over all C^T label
/// sequences of one sample, G·v from the operator).
#[test]
fn the_sampled_fisher_is_the_gauss_newton_matrix_over_t() {
    let p = problem(transformer(), 1, 7);
    let dim = p.params.len();
    let z = p.logits(&p.params);
    let probs: Vec<Vec<f64>> = (0..T).map(|t| softmax(&z[t * C..(t + 1) * C])).collect();
    let mut fisher = vec![0.0; dim * dim];
    let mut labels = vec![0usize; T];
    let mut ws = p.net.workspace::<f64>(1);
    let mut g = vec![0.0; dim];
    for code in 0..C.pow(T as u32) {
        let mut c = code;
        let mut weight = 1.0;
        for (t, l) in labels.iter_mut().enumerate() {
            *l = c % C;
            c /= C;
            weight *= probs[t][*l];
        }
        p.net.loss_and_gradient(
            &p.params,
            &p.x,
            Targets::Tokens {
                labels: &labels,
                positions: T,
            },
            &mut g,
            &mut ws,
        );
        for i in 0..dim {
            for j in 0..dim {
                fisher[i * dim + j] += weight * g[i] * g[j];
            }
        }
    }
    let mut op = p.operator(1);
    for j in 0..dim {
        let mut e = vec![0.0; dim];
        e[j] = 1.0;
        let mut gv = vec![0.0; dim];
        op.gnvp(&e, &mut gv);
        let col: Vec<f64> = (0..dim).map(|i| fisher[i * dim + j] * T as f64).collect();
        assert!(
            diff(&col, &gv) <= 1e-12 * (1.0 + norm(&gv)),
            "column {j}: {:e} of {:e}",
            diff(&col, &gv),
            norm(&gv)
        );
    }
}

/// `Network::evaluate` over a data set of labels `[n, T]` (what `train` records as test_acc and
/// train_acc): the loss is the mean over every token and the accuracy the fraction of the n·T
/// tokens whose arg-max is the label, in batches that split the set unevenly.
#[test]
fn evaluation_is_per_token() {
    use common::data::{DataFile, Dataset, Inputs, Source, Split, TargetData};
    let p = problem(transformer(), 5, 8);
    let data = Dataset {
        source: Source::File(DataFile {
            path: "tokens.safetensors".into(),
            fingerprint: "0".repeat(16),
            normalize: None,
            token_ids: true,
        }),
        split: Split::Test,
        folder: "tokens.safetensors".into(),
        inputs: Inputs::Floats(p.x.clone()),
        targets: TargetData::Tokens {
            labels: p.y.iter().map(|&l| l as u32).collect(),
            positions: T,
        },
        shape: [1, 1, T],
        classes: C,
        normalisation: vec![(0.0, 1.0)],
    };
    let z = p.logits(&p.params);
    let argmax = |zt: &[f64]| (0..C).fold(0, |a, c| if zt[c] > zt[a] { c } else { a });
    let correct = z
        .chunks_exact(C)
        .zip(&p.y)
        .filter(|(zt, &y)| argmax(zt) == y)
        .count();
    let loss: f64 = z
        .chunks_exact(C)
        .zip(&p.y)
        .map(|(zt, &y)| -softmax(zt)[y].ln())
        .sum::<f64>()
        / (5 * T) as f64;
    let e = p.net.evaluate(&p.params, &data, 2).unwrap();
    assert_eq!(e.samples, 5);
    assert!((e.loss - loss).abs() < 1e-14, "{} vs {loss}", e.loss);
    assert_eq!(e.accuracy, Some(correct as f64 / (5 * T) as f64));
    assert!(
        correct > 0 && correct < 5 * T,
        "{correct}: a test that can tell"
    );
}
