//! Spec models (issue #15): a 2-hidden-layer residual MLP with LayerNorm and GELU on 784-pixel inputs
//! (cross-entropy, 10 classes) and a deep linear network 100 → 100 → 100 → 100 without biases (the mean
//! squared error), on synthetic data (`common::data::synthetic`). For each: the gradient of a
//! minibatch of 128 (the training step's and the SGLD step's work), one whole SGLD step of a chain
//! (gradient + the fused update), and a Hessian–vector product over 1,280 samples, each next to its
//! compute floor: the FLOPs of its matrix products ÷ the machine's peak sgemm rate, measured in the
//! same run at 2048³ ([`common::bench`]). Element-wise work (LayerNorm, GELU, the residual adds) has
//! no floor of its own, so its cost shows as the ratio above 1. Medians of repeated runs, 1 thread.
//!
//! Run with `cargo bench -p common --bench spec_models` (or `make bench`).

extern crate blas_openblas;

use common::bench::report_peak_sgemm;
use common::curvature::HessianOperator;
use common::data::synthetic::{teacher, InputDistribution};
use common::data::{data_from_bytes, Split};
use common::device::cpu::set_blas_threads;
use common::model::{initialise, Architecture, LayerOps, NetSpec, Network, Targets};
use common::sample::{run_chains, NetworkPotential, SgldConfig};
use serde_json::json;
use std::path::Path;
use std::time::Instant;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

/// FLOPs of a gradient and of an HVP on cached passes over `n` samples (matrix products only), as
/// the hessian bench counts them: gradient 2 products per layer for the first, 3 after; HVP 2, 6.
fn flops(net: &Network, n: usize) -> (f64, f64) {
    let (mut grad, mut hvp) = (0.0, 0.0);
    let mut first = true;
    for l in &net.layers {
        let one = l.forward_flops(n);
        if one == 0.0 {
            continue;
        }
        grad += one * if first { 2.0 } else { 3.0 };
        hvp += one * if first { 2.0 } else { 6.0 };
        first = false;
    }
    (grad, hvp)
}

fn bench(name: &str, spec: serde_json::Value, peak: f64) {
    let net = Network::new(Architecture::Spec(Box::new(
        NetSpec::from_json(name, &spec).expect("spec"),
    )));
    let params: Vec<f32> = initialise(&net, 1);
    // A teacher on its own inputs: the student is the same network at another seed.
    let teacher_params: Vec<f32> = initialise(&net, 2);
    let (n, batch) = (1280, 128);
    let data = teacher(
        &net,
        &teacher_params,
        json!(name),
        InputDistribution::Gaussian { sd: 1.0 },
        0.1,
        n,
        0,
        3,
    )
    .expect("data");
    let path = Path::new("<synthetic>");
    let mut ds = data_from_bytes(path, &data.to_bytes(), Split::Train, None)
        .expect("data file")
        .expect("train split");
    let mut net = net;
    if spec["loss"] == "cross_entropy" {
        // Labels: the teacher's arg-max (the file holds its outputs as floats).
        let k = net.classes();
        let labels: Vec<usize> = data
            .y
            .chunks_exact(k)
            .map(|r| {
                r.iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map(|(i, _)| i)
                    .unwrap_or(0)
            })
            .collect();
        ds.targets = common::data::TargetData::Labels(labels.iter().map(|&l| l as u32).collect());
        ds.classes = k;
    } else {
        net.loss = common::model::Loss::MeanSquaredError;
    }
    let x: Vec<f32> = ds.normalized();
    let (p, f) = (net.num_params(), net.input_features());
    let labels: Vec<usize>;
    let values: Vec<f32>;
    let targets: Targets<'_, f32> = match &ds.targets {
        common::data::TargetData::Labels(l) => {
            labels = l.iter().map(|&v| v as usize).collect();
            Targets::Labels(&labels)
        }
        common::data::TargetData::Tokens {
            labels: l,
            positions,
        } => {
            labels = l.iter().map(|&v| v as usize).collect();
            Targets::Tokens {
                labels: &labels,
                positions: *positions,
            }
        }
        common::data::TargetData::Values { values: v, width } => {
            values = v.iter().map(|&a| a as f32).collect();
            Targets::Values {
                values: &values,
                width: *width,
            }
        }
    };

    // The gradient of one minibatch of 128.
    let mut ws = net.workspace::<f32>(batch);
    let mut g = vec![0f32; p];
    let xb = &x[..batch * f];
    let tb = targets.range(0, batch);
    net.loss_and_gradient(&params, xb, tb, &mut g, &mut ws);
    let grad_s = median(
        (0..30)
            .map(|_| {
                let t = Instant::now();
                net.loss_and_gradient(&params, xb, tb, &mut g, &mut ws);
                t.elapsed().as_secs_f64()
            })
            .collect(),
    );
    let (grad_flops, _) = flops(&net, batch);
    let grad_floor = grad_flops / (peak * 1e9);

    // Whole SGLD steps: one chain of 400 draws on minibatches of 128 (devinterp's step).
    let pot = NetworkPotential::new(&net, &ds, batch).expect("potential");
    let cfg = SgldConfig {
        step_size: 1e-5,
        nbeta: 26.38,
        localization: 100.0,
        weight_decay: 0.0,
        bounding_box: None,
        draws: 400,
        burn_in: 0,
        thin: 1,
        chains: 1,
        threads: 1,
        seed: 1,
    };
    let sgld_s = median(
        (0..3)
            .map(|_| {
                let t = Instant::now();
                run_chains(&pot, &params, &cfg).expect("chain");
                t.elapsed().as_secs_f64() / cfg.draws as f64
            })
            .collect(),
    );

    // One HVP over the 1,280 samples (cached forward and backward passes).
    let mut op =
        HessianOperator::<f32>::new(&net, &params, &x, targets, batch, 1 << 30).expect("operator");
    let v: Vec<f32> = (0..p).map(|i| (i as f32).sin()).collect();
    let mut hv = vec![0f32; p];
    op.hvp(&v, &mut hv);
    let hvp_s = median(
        (0..9)
            .map(|_| {
                let t = Instant::now();
                op.hvp(&v, &mut hv);
                t.elapsed().as_secs_f64()
            })
            .collect(),
    );
    let (_, hvp_flops) = flops(&net, n);
    let hvp_floor = hvp_flops / (peak * 1e9);
    println!(
        "spec bench: {name} ({p} parameters, loss {})",
        net.loss.name()
    );
    println!(
        "  gradient, 128 samples:   {:8.3} ms  floor {:8.3} ms  ({:.2}× the floor)",
        grad_s * 1e3,
        grad_floor * 1e3,
        grad_s / grad_floor
    );
    println!(
        "  SGLD step, 128 samples:  {:8.3} ms  floor {:8.3} ms  ({:.2}× the floor)",
        sgld_s * 1e3,
        grad_floor * 1e3,
        sgld_s / grad_floor
    );
    println!(
        "  HVP, 1,280 samples:      {:8.3} ms  floor {:8.3} ms  ({:.2}× the floor)",
        hvp_s * 1e3,
        hvp_floor * 1e3,
        hvp_s / hvp_floor
    );
}

fn main() {
    common::device::cpu::register_blas_threads(blas_openblas::set_threads);
    let peak = report_peak_sgemm("spec bench", 1);
    set_blas_threads(1);
    let residual = |w: usize| {
        json!({"type": "residual", "layers": [
            {"type": "layernorm"}, {"type": "linear", "out": w}, {"type": "gelu"}]})
    };
    bench(
        "residual-mlp",
        json!({"input": [784], "layers": [
            {"type": "linear", "out": 256}, {"type": "gelu"},
            residual(256), residual(256),
            {"type": "layernorm"}, {"type": "linear", "out": 10}],
            "loss": "cross_entropy"}),
        peak,
    );
    let lin = |w: usize| json!({"type": "linear", "out": w, "bias": false});
    bench(
        "dln-100x4",
        json!({"input": [100], "layers": [lin(100), lin(100), lin(100)], "loss": "mse"}),
        peak,
    );
}
