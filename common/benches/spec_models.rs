//! Spec models (issue #15): a 2-hidden-layer residual MLP with LayerNorm and GELU on 784-pixel inputs
//! (cross-entropy, 10 classes) and a deep linear network 100 → 100 → 100 → 100 without biases (the mean
//! squared error), on synthetic data (`common::data::synthetic`). For each: the gradient of a
//! minibatch of 128 (the training step's and the SGLD step's work), one whole SGLD step of a chain
//! (gradient + the fused update), and a Hessian–vector product over 1,280 samples, each next to its
//! compute floor: the FLOPs of its matrix products ÷ the machine's peak sgemm rate, measured in the
//! same run at 2048³ ([`common::bench`]). Element-wise work (LayerNorm, GELU, the residual adds) has
//! no floor of its own, so its cost shows as the ratio above 1. Beside them, the SGLD step's parts
//! (the minibatch gather, the fused update and the normals alone) and the gradient's matrix products
//! alone (the same sgemm calls on zeros), so that what each part costs can be read off one run.
//! Medians of repeated runs, 1 thread.
//!
//! Run with `cargo bench -p common --bench spec_models` (or `make bench`).

extern crate blas_openblas;

use common::bench::report_peak_sgemm;
use common::curvature::HessianOperator;
use common::data::synthetic::{teacher, InputDistribution};
use common::data::{data_from_bytes, Split};
use common::device::cpu::set_blas_threads;
use common::device::{Backend, CpuBackend};
use common::model::{initialise, Architecture, Layer, LayerOps, NetSpec, Network, Targets};
use common::rng::{stream, NoiseSource, Purpose};
use common::sample::sgld::{update, StepCoefficients};
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

/// The `(m, n, k)` of every linear layer's forward product `[m, k]·[k, n]` for `batch` samples, in
/// network order (residual blocks' inner layers included), and whether it is the first layer (whose
/// backward forms no ∂x).
fn linear_shapes(layers: &[Layer], batch: usize, out: &mut Vec<(usize, usize, usize)>) {
    for l in layers {
        match l {
            Layer::Linear(lin) => out.push((batch * lin.positions, lin.outputs, lin.inputs)),
            Layer::Residual(r) => linear_shapes(&r.layers, batch, out),
            _ => {}
        }
    }
}

/// The gradient's matrix products alone, as the layers call them (forward `x·Wᵀ`, then `δᵀ·x`
/// and, after the first layer, `δ·W`), on zeros: the time the sgemm takes at these shapes, to
/// set against the floor (the peak rate at 2048³) and against the whole gradient.
fn products_alone(net: &Network, batch: usize) -> f64 {
    let mut shapes = Vec::new();
    linear_shapes(&net.layers, batch, &mut shapes);
    let be = CpuBackend;
    let big = shapes
        .iter()
        .map(|&(m, n, k)| m * n + n * k + m * k)
        .max()
        .unwrap_or(0);
    let (a, b, mut c) = (vec![0f32; big], vec![0f32; big], vec![0f32; big]);
    let mut once = || {
        for &(m, n, k) in &shapes {
            be.gemm(
                false,
                true,
                m,
                n,
                k,
                1.0,
                &a[..m * k],
                &b[..n * k],
                0.0,
                &mut c[..m * n],
            );
        }
        for (i, &(m, n, k)) in shapes.iter().enumerate().rev() {
            be.gemm(
                true,
                false,
                n,
                k,
                m,
                1.0,
                &a[..m * n],
                &b[..m * k],
                0.0,
                &mut c[..n * k],
            );
            if i > 0 {
                be.gemm(
                    false,
                    false,
                    m,
                    k,
                    n,
                    1.0,
                    &a[..m * n],
                    &b[..n * k],
                    0.0,
                    &mut c[..m * k],
                );
            }
        }
    };
    once();
    median(
        (0..30)
            .map(|_| {
                let t = Instant::now();
                once();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
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
    let x: Vec<f32> = ds.normalized().expect("in memory");
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
    let products_s = products_alone(&net, batch);
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

    // The SGLD step's parts besides the gradient: the minibatch gather (as the chain gathers it),
    // the N(0, 1) noise alone, and the fused update with its noise.
    let order = stream(1, Purpose::Chain, 0).permutation(ds.len());
    let mut xg = vec![0f32; batch * f];
    let mut yg = ds.target_buffer::<f32>(batch);
    let mut at = 0;
    let gather_s = median(
        (0..200)
            .map(|_| {
                at = (at + batch) % (ds.len() / batch * batch);
                let t = Instant::now();
                pot.gather(&order[at..at + batch], &mut xg, &mut yg)
                    .expect("in memory");
                t.elapsed().as_secs_f64()
            })
            .collect(),
    );
    let mut noise = NoiseSource::from_stream(&mut stream(1, Purpose::Chain, 0));
    let mut xi = vec![0f32; p];
    let noise_s = median(
        (0..200)
            .map(|_| {
                let t = Instant::now();
                noise.fill(&mut xi);
                t.elapsed().as_secs_f64()
            })
            .collect(),
    );
    let coef = StepCoefficients {
        half_eps: 0.5 * cfg.step_size as f32,
        sqrt_eps: cfg.step_size.sqrt() as f32,
        nbeta: cfg.nbeta as f32,
        gamma: cfg.localization as f32,
        decay: 0.0,
    };
    let (mut w, mut step) = (params.clone(), vec![0f32; p]);
    let update_s = median(
        (0..200)
            .map(|_| {
                let t = Instant::now();
                update(&mut w, &mut step, &params, &g, &mut noise, &coef, None);
                t.elapsed().as_secs_f64()
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
        "    its parts: gradient {:.3} ms (its products alone {:.3} ms), minibatch gather {:.3} ms, \
         update {:.3} ms (of which the {p} normals {:.3} ms), the rest {:.3} ms",
        grad_s * 1e3,
        products_s * 1e3,
        gather_s * 1e3,
        update_s * 1e3,
        noise_s * 1e3,
        (sgld_s - grad_s - gather_s - update_s) * 1e3
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
