//! `make bench`: the training step of the MNIST MLP 1×128 and of the paper's LeNet (two extra
//! convolutions) at batch 128 (the paper's setting).
//!
//! Prints the epoch time (469 steps of forward + backward + Nesterov SGD, data gathering included,
//! test evaluation and checkpoint writing excluded) on 1 and 2 BLAS threads for the MLP and on 1 for
//! the LeNet, next to the compute floor = FLOPs of the epoch's forward and backward passes / the
//! machine's peak sgemm rate (measured once in the same run at 2048³ on 1 thread:
//! [`common::bench`]; on 2 threads the floor is one core's), and, when `torch` is importable by
//! [`common::bench::python`] (`PYTHON=…/bin/python`), PyTorch doing the same epoch on 1 thread in the
//! same run. `TRAIN_STEP_LENET_SAMPLES=N` shortens the LeNet epoch to its first N samples (both sides).

extern crate blas_openblas;

use common::bench::report_peak_sgemm;
use common::data::{Dataset, DatasetKind, Split};
use common::device::cpu::set_blas_threads;
use common::model::{initialise, Activation, Architecture, LayerOps, Network};
use common::optim::{Batch, Optimizer, Sgd, SgdConfig};
use common::rng::{stream, Purpose};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

fn data_dir() -> PathBuf {
    std::env::var_os("DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data"))
}

/// One epoch of training; returns seconds.
fn epoch(net: &Network, data: &Dataset, batch: usize, seed: u64) -> f64 {
    let mut params: Vec<f32> = initialise(net, seed);
    let mut opt = Sgd::new(SgdConfig::default()).expect("sgd");
    let table = data.normalized::<f32>().expect("in memory");
    let f = data.features();
    let mut ws = net.workspace::<f32>(batch);
    let mut x = vec![0f32; batch * f];
    let mut y = vec![0usize; batch];
    let mut grad = vec![0f32; net.num_params()];
    let t = Instant::now();
    let order = stream(seed, Purpose::Shuffle, 1).permutation(data.len());
    for idx in order.chunks(batch) {
        let b = idx.len();
        data.gather_normalized(&table, idx, &mut x[..b * f], &mut y[..b]);
        net.loss_and_gradient(&params, &x[..b * f], &y[..b], &mut grad, &mut ws);
        let bt = Batch {
            net,
            x: &x[..b * f],
            targets: common::model::Targets::Labels(&y[..b]),
        };
        opt.step(&mut params, &mut grad, &bt).expect("step");
    }
    t.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    v[v.len() / 2]
}

/// FLOPs of forward + backward of an MLP epoch (the first layer's input gradient is not computed).
fn mlp_epoch_flops(sizes: &[usize], n: usize) -> f64 {
    let mut per_sample = 0.0;
    for (l, w) in sizes.windows(2).enumerate() {
        let mk = (w[0] * w[1]) as f64;
        per_sample += 2.0 * mk; // forward
        per_sample += 2.0 * mk; // weight gradient
        if l > 0 {
            per_sample += 2.0 * mk; // input gradient
        }
    }
    per_sample * n as f64
}

/// FLOPs of forward + backward over `n` samples from the layers' own counts: the forward's products,
/// the weight gradient's (the same count) and, after the first layer, the input gradient's.
fn epoch_flops(net: &Network, n: usize) -> f64 {
    net.layers
        .iter()
        .filter(|l| l.forward_flops(1) > 0.0)
        .enumerate()
        .map(|(i, l)| l.forward_flops(n) * if i == 0 { 2.0 } else { 3.0 })
        .sum()
}

/// PyTorch's epoch (median of `reps`) for `model` (`mlp` or `lenet`) on the first `samples`
/// training samples; `None` (with the reason printed) when the anchor cannot run.
fn torch_epoch(dir: &std::path::Path, reps: usize, model: &str, samples: usize) -> Option<f64> {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/anchors/torch_train_epoch.py");
    let has_torch = Command::new(common::bench::python())
        .args(["-c", "import torch"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !has_torch {
        println!("pytorch: not importable, anchor skipped");
        return None;
    }
    let out = Command::new(common::bench::python())
        .arg(&script)
        .arg(dir)
        .arg(reps.to_string())
        .arg(model)
        .arg(samples.to_string())
        .output()
        .expect("run the PyTorch anchor");
    if !out.status.success() {
        println!(
            "pytorch: anchor failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("epoch_seconds "))
        .and_then(|v| v.trim().parse().ok())
}

fn main() {
    common::device::cpu::register_blas_threads(blas_openblas::set_threads);
    let dir = data_dir();
    let data = match Dataset::load(DatasetKind::Mnist, &dir, Split::Train) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("bench train_step: {e}");
            std::process::exit(1);
        }
    };
    let net = Network::new(Architecture::mlp(vec![128], Activation::Relu));
    let batch = 128;
    let reps = 5;
    let flops = mlp_epoch_flops(&[784, 128, 10], data.len());

    println!(
        "== training step: MNIST MLP 784-128-10, batch {batch}, one epoch = {} steps",
        data.len().div_ceil(batch)
    );
    let peak = report_peak_sgemm("train_step bench", 1);
    let mut results = Vec::new();
    for threads in [1, 2] {
        set_blas_threads(threads);
        epoch(&net, &data, batch, 1); // warm-up
        let secs = median(
            (0..reps)
                .map(|r| epoch(&net, &data, batch, r as u64 + 1))
                .collect(),
        );
        let floor = flops / (peak * 1e9);
        println!(
            "threads {threads}: epoch {secs:.3} s ({:.0} samples/s, median of {reps}); floor {floor:.3} s at the 1-thread peak (ratio {:.2}); {:.1} GFLOP per epoch",
            data.len() as f64 / secs,
            secs / floor,
            flops / 1e9
        );
        results.push((threads, secs, floor));
    }

    let (_, ours, floor) = results[0];
    if let Some(torch_secs) = torch_epoch(&dir, reps, "mlp", data.len()) {
        println!(
            "pytorch (1 thread, same epoch): {torch_secs:.3} s = {:.2}x the floor; ours/pytorch = {:.2} (ours is {:.2}x faster)",
            torch_secs / floor,
            ours / torch_secs,
            torch_secs / ours
        );
    }

    // The LeNet epoch: issue #14's targets are ≤ 1.6× this floor and ≥ 3× faster than PyTorch.
    let samples = std::env::var("TRAIN_STEP_LENET_SAMPLES")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(data.len(), |n| n.clamp(batch, data.len()));
    let mut data = data;
    data.truncate(samples);
    let net = Network::new(Architecture::lenet(2));
    let reps = 3;
    let flops = epoch_flops(&net, data.len());
    let floor = flops / (peak * 1e9);
    set_blas_threads(1);
    epoch(&net, &data, batch, 1); // warm-up
    let ours = median(
        (0..reps)
            .map(|r| epoch(&net, &data, batch, r as u64 + 1))
            .collect(),
    );
    println!(
        "lenet (2 extra convolutions), {} samples, threads 1: epoch {ours:.3} s ({:.0} samples/s, median of {reps}); floor {floor:.3} s at the peak (ratio {:.2}); {:.1} GFLOP per epoch",
        data.len(),
        data.len() as f64 / ours,
        ours / floor,
        flops / 1e9
    );
    if let Some(torch_secs) = torch_epoch(&dir, reps, "lenet", data.len()) {
        println!(
            "lenet pytorch (1 thread, same epoch): {torch_secs:.3} s = {:.2}x the floor; ours is {:.2}x faster",
            torch_secs / floor,
            torch_secs / ours
        );
    }
}
