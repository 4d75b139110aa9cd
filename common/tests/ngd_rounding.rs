//! The rounding amplification of the paper's online NGD on real MNIST gradients (the finding written
//! up in the README's NGD section; `cargo run --release -p common --example ngd_rounding` prints the full table).
//!
//! At the reference MLP checkpoint, the gradients of the first ten minibatches of 128 are fed to the
//! per-tensor preconditioners with f64 and f32 state. With the default rank (r = min((D+1)/2, 80),
//! above what the gradients can fill: the output weight's gradient has rank ≤ 9, a bias rank 1) the
//! f32 and f64 directions are unrelated at the first step; with rank 1 (≤ every gradient's rank)
//! they agree to f32 precision.

mod support;

use common::data::Split;
use common::io::Checkpoint;
use common::optim::{NgdConfig, NgdDtype, TensorPreconditioner};
use support::{fixtures, mnist_small};

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    d / (a.iter().map(|x| x * x).sum::<f64>() * b.iter().map(|x| x * x).sum::<f64>()).sqrt()
}

/// Per step and tensor: cos(f64 direction, f32 direction).
fn f32_vs_f64(rank: Option<usize>, steps: usize) -> Vec<Vec<f64>> {
    let ck = Checkpoint::load(&fixtures().join("reference/mlp_1x128.safetensors"), None).unwrap();
    let net = &ck.network;
    let data = mnist_small(Split::Train);
    let params: Vec<f64> = ck.params.iter().map(|&v| v as f64).collect();
    let table = data.normalisation_table::<f64>();
    let b = 128;
    let mut ws = net.workspace::<f64>(b);
    let mut x = vec![0.0; b * data.features()];
    let mut y = vec![0; b];
    let cfg = NgdConfig {
        rank,
        ..NgdConfig::default()
    };
    let mut p64: Vec<_> = net
        .layout
        .tensors
        .iter()
        .map(|t| {
            TensorPreconditioner::<f64>::new(
                &t.shape,
                &NgdConfig {
                    dtype: NgdDtype::F64,
                    ..cfg
                },
            )
        })
        .collect();
    let mut p32: Vec<_> = net
        .layout
        .tensors
        .iter()
        .map(|t| TensorPreconditioner::<f32>::new(&t.shape, &cfg))
        .collect();
    let mut out = Vec::new();
    for k in 0..steps {
        data.gather_range(&table, k * b, b, &mut x, &mut y);
        let mut g = vec![0.0; net.num_params()];
        net.loss_and_gradient(&params, &x, &y, &mut g, &mut ws);
        let mut row = Vec::new();
        for (i, spec) in net.layout.tensors.iter().enumerate() {
            let mut a = g[spec.range()].to_vec();
            let mut c: Vec<f32> = a.iter().map(|&v| v as f32).collect();
            p64[i].precondition(&mut a, |_, _| {});
            p32[i].precondition(&mut c, |_, _| {});
            row.push(cosine(&a, &c.iter().map(|&v| v as f64).collect::<Vec<_>>()));
        }
        out.push(row);
    }
    out
}

#[test]
fn rank_within_the_gradients_rank_makes_f32_and_f64_agree() {
    for (k, row) in f32_vs_f64(Some(1), 10).iter().enumerate() {
        for (i, c) in row.iter().enumerate() {
            // f32 rounding of a well-conditioned computation: 1 − cos ~ 1e-12; allow 1e-6.
            assert!(1.0 - c < 1e-6, "step {k} tensor {i}: cos {c}");
        }
    }
}

#[test]
fn default_rank_f32_and_f64_directions_are_unrelated_at_the_first_step() {
    let rows = f32_vs_f64(None, 1);
    // Measured: cos = -0.04 (1.weight), 0.83 (1.bias), -0.01 (3.weight), 0.88 (3.bias). Both weights
    // far from 1 is the finding the README's NGD section reports; if this ever fails, update the write-up.
    assert!(rows[0][0] < 0.5 && rows[0][2] < 0.5, "{:?}", rows[0]);
}
