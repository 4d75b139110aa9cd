//! The `transformer_1l` preset (issue #16: one pre-LayerNorm block pair, width 128, 4 causal heads,
//! MLP 512, vocabulary 114, 113 classes) on modular-addition sequences `[a, b, =]` at batch 512,
//! each next to its compute floor, the FLOPs of its matrix products ÷ the machine's peak sgemm rate
//! measured in the same run at 2048³ ([`common::bench`]):
//!
//! - the gradient of a minibatch, and a training step (the gradient and an AdamW update);
//! - a whole SGLD step of a chain through [`NetworkPotential`] and [`run_chains`] (the minibatch
//!   drawn and gathered, the gradient, the fused update), as `llc` runs it, on the training split of
//!   `datagen modular --p 113 --op add --train-fraction 0.3`: chains of 20 draws, each on the
//!   buffers the previous chain gave back to the potential ([`common::sample::Potential::recycle`]),
//!   as an `llc` run's chains after the first on a thread are;
//! - a Hessian–vector product on the gradient's minibatch;
//! - when `torch` is importable by [`common::bench::python`] (`PYTHON=/work/venv-torch/bin/python`),
//!   PyTorch's training step of the same model on 1 thread (`scripts/anchors/torch_transformer_step.py`:
//!   forward, backward, `torch.optim.AdamW`), skipped with a message otherwise.
//!
//! The gradient's products are 3× the forward's (forward, the input and the weight gradient of
//! each), and so are a training step's and an SGLD step's; the HVP's 6× (as the hessian bench counts
//! them). The softmax, LayerNorm, GELU and the optimiser's update have no floor of their own: they
//! show as the ratio above 1. Medians of repeated runs, 1 thread.
//!
//! Run with `cargo bench -p common --bench transformer` (or `make bench`).

extern crate blas_openblas;

use common::bench::report_peak_sgemm;
use common::curvature::HessianOperator;
use common::data::modular::{modular, ModularOp};
use common::data::{data_from_bytes, Split};
use common::device::cpu::set_blas_threads;
use common::model::{initialise, transformer_preset, Architecture, LayerOps, NetSpec, Network};
use common::optim::{adamw_step, AdamWConfig};
use common::sample::{run_chains, NetworkPotential, SgldConfig};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

fn main() {
    common::device::cpu::register_blas_threads(blas_openblas::set_threads);
    let peak = report_peak_sgemm("transformer bench", 1);
    set_blas_threads(1);
    let preset = transformer_preset("transformer_1l").expect("preset");
    let floor = bench("transformer_1l", preset.clone(), peak, true);
    match torch_step(15, 512) {
        Ok(s) => println!(
            "  pytorch training step (1 thread, AdamW): {:8.3} ms  ({:.2}× the floor)",
            s * 1e3,
            s / floor
        ),
        Err(why) => println!("  pytorch training step: skipped ({why})"),
    }
    // The same without its attention block, to tell the attention's share from the rest's.
    let mut v = preset.source().clone();
    v["layers"].as_array_mut().expect("layers").remove(2);
    let ablated = NetSpec::from_json("transformer_1l without attention", &v).expect("spec");
    bench(
        "transformer_1l without its attention block",
        ablated,
        peak,
        false,
    );
}

/// Times the passes of `spec` at batch 512 and prints them; returns the gradient's floor in seconds.
fn bench(name: &str, spec: NetSpec, peak: f64, steps: bool) -> f64 {
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
    let grad_floor = 3.0 * forward / (peak * 1e9);
    let hvp_floor = 6.0 * forward / (peak * 1e9);
    let line = |what: &str, s: f64, floor: f64| {
        println!(
            "  {what:<15} {:8.3} ms  floor {:8.3} ms  ({:.2}× the floor)",
            s * 1e3,
            floor * 1e3,
            s / floor
        )
    };
    println!("transformer bench: {name} ({p} parameters), batch {batch}");

    let mut ws = net.workspace::<f32>(batch);
    let mut g = vec![0f32; p];
    let grad_s = time(15, || {
        net.loss_and_gradient(&params, &x, &labels, &mut g, &mut ws);
    });
    line("gradient:", grad_s, grad_floor);

    if steps {
        // A training step: the gradient and AdamW's update (weight decay 1, as grokking runs use).
        let cfg = AdamWConfig {
            weight_decay: 1.0,
            ..AdamWConfig::default()
        };
        let (mut theta, mut m, mut v) = (params.clone(), vec![0f32; p], vec![0f32; p]);
        let mut step = 0;
        let train_s = time(15, || {
            net.loss_and_gradient(&theta, &x, &labels, &mut g, &mut ws);
            step += 1;
            adamw_step(&cfg, step, &mut theta, &g, &mut m, &mut v);
        });
        line("training step:", train_s, grad_floor);

        // Whole SGLD steps of one chain on minibatches of 512 of the modular training split.
        let data = modular(113, ModularOp::Add, 0.3, 0).expect("modular data");
        let bytes = data.to_bytes().expect("modular file");
        let ds = data_from_bytes(Path::new("<modular>"), &bytes, Split::Train, None)
            .expect("data file")
            .expect("train split");
        let pot = NetworkPotential::new(&net, &ds, batch).expect("potential");
        let cfg = SgldConfig {
            step_size: 1e-5,
            nbeta: 10.0,
            localization: 100.0,
            weight_decay: 0.0,
            bounding_box: None,
            draws: 20,
            burn_in: 0,
            thin: 1,
            chains: 1,
            threads: 1,
            seed: 1,
        };
        let sgld_s = time(3, || {
            run_chains(&pot, &params, &cfg).expect("chain");
        }) / cfg.draws as f64;
        line("SGLD step:", sgld_s, grad_floor);
    }

    let mut op =
        HessianOperator::<f32>::new(&net, &params, &x, &labels[..], batch, 1 << 30).expect("op");
    let v: Vec<f32> = (0..p).map(|i| (i as f32).sin()).collect();
    let mut hv = vec![0f32; p];
    let hvp_s = time(9, || op.hvp(&v, &mut hv));
    line("HVP:", hvp_s, hvp_floor);
    grad_floor
}

/// PyTorch's training step of `transformer_1l` (median of `reps`) at `batch`, or why it cannot run.
fn torch_step(reps: usize, batch: usize) -> Result<f64, String> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts/anchors/torch_transformer_step.py");
    let has_torch = Command::new(common::bench::python())
        .args(["-c", "import torch"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !has_torch {
        return Err(format!(
            "torch is not importable by {:?}; set PYTHON to a Python with torch",
            common::bench::python()
        ));
    }
    let out = Command::new(common::bench::python())
        .arg(&script)
        .arg(reps.to_string())
        .arg(batch.to_string())
        .output()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "the anchor failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("step_seconds "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| "the anchor printed no step_seconds".to_string())
}
