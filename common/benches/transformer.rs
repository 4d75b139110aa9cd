//! The `transformer_1l` preset (issue #16: one pre-LayerNorm block pair, width 128, 4 causal heads,
//! MLP 512, vocabulary 114, 113 classes) on modular-addition sequences `[a, b, =]` at batch 512: the
//! gradient of a minibatch (a training step's and an SGLD step's work) and a Hessian–vector product
//! on it, each next to its compute floor, the FLOPs of its matrix products ÷ the machine's peak
//! sgemm rate measured in the same run at 2048³ ([`common::bench`]). The gradient's products are 3×
//! the forward's (forward, the input and the weight gradient of each), the HVP's 6× (as the hessian
//! bench counts them). The attention recomputes its forward state in each pass (no activations kept
//! besides each layer's output), and the softmax, LayerNorm, GELU and permutes have no floor of their
//! own: both show as the ratio above 1. Medians of repeated runs, 1 thread.
//!
//! Run with `cargo bench -p common --bench transformer` (or `make bench`).

extern crate blas_openblas;

use common::bench::report_peak_sgemm;
use common::curvature::HessianOperator;
use common::device::cpu::set_blas_threads;
use common::model::{initialise, transformer_preset, Architecture, LayerOps, NetSpec, Network};
use std::time::Instant;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

fn main() {
    common::device::cpu::register_blas_threads(blas_openblas::set_threads);
    let peak = report_peak_sgemm("transformer bench", 1);
    set_blas_threads(1);
    let preset = transformer_preset("transformer_1l").expect("preset");
    bench("transformer_1l", preset.clone(), peak);
    // The same without its attention block, to tell the attention's share from the rest's.
    let mut v = preset.source().clone();
    v["layers"].as_array_mut().expect("layers").remove(2);
    let ablated = NetSpec::from_json("transformer_1l without attention", &v).expect("spec");
    bench("transformer_1l without its attention block", ablated, peak);
}

fn bench(name: &str, spec: NetSpec, peak: f64) {
    let net = Network::try_new(Architecture::Spec(Box::new(spec))).expect("network");
    let params: Vec<f32> = initialise(&net, 1);
    let (p, batch, vocabulary) = (net.num_params(), 512, 113);
    // Pairs (a, b) in a fixed pseudo-random order, `=` = 113, label (a + b) mod 113.
    let (mut x, mut labels) = (Vec::new(), Vec::new());
    for n in 0..batch {
        let (a, b) = ((n * 37) % vocabulary, (n * 91 + 5) % vocabulary);
        x.extend([a as f32, b as f32, vocabulary as f32]);
        labels.push((a + b) % vocabulary);
    }
    let forward: f64 = net.layers.iter().map(|l| l.forward_flops(batch)).sum();

    let mut ws = net.workspace::<f32>(batch);
    let mut g = vec![0f32; p];
    net.loss_and_gradient(&params, &x, &labels, &mut g, &mut ws);
    let grad_s = median(
        (0..15)
            .map(|_| {
                let t = Instant::now();
                net.loss_and_gradient(&params, &x, &labels, &mut g, &mut ws);
                t.elapsed().as_secs_f64()
            })
            .collect(),
    );
    let grad_floor = 3.0 * forward / (peak * 1e9);

    let mut op =
        HessianOperator::<f32>::new(&net, &params, &x, &labels[..], batch, 1 << 30).expect("op");
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
    let hvp_floor = 6.0 * forward / (peak * 1e9);
    println!("transformer bench: {name} ({p} parameters), batch {batch}");
    println!(
        "  gradient: {:8.3} ms  floor {:8.3} ms  ({:.2}× the floor)",
        grad_s * 1e3,
        grad_floor * 1e3,
        grad_s / grad_floor
    );
    println!(
        "  HVP:      {:8.3} ms  floor {:8.3} ms  ({:.2}× the floor)",
        hvp_s * 1e3,
        hvp_floor * 1e3,
        hvp_s / hvp_floor
    );
}
