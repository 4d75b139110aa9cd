//! Benchmark of the curvature hot paths on the paper's MNIST MLP 784-128-10 and LeNet at the paper's
//! 1,280 samples (the fixture checkpoints, float32, 1 BLAS thread): time per Hessian–vector product
//! next to its compute floor (FLOPs / the machine's peak sgemm rate, measured once in this run at
//! 2048³: [`common::bench`]), its cost relative to a
//! gradient, a 100-probe Hutchinson trace, the exact trace, the time to a trace with ≤ 1% relative
//! standard error, Hutch++ against Hutchinson at equal products, and — when `torch` and `pyhessian`
//! import — PyHessian doing the same work in the same run (scripts/anchors/pyhessian_trace.py).
//!
//! `HESSIAN_BENCH_QUICK=1` shortens the repetitions (10-probe traces instead of 100).

extern crate blas_openblas;

use common::bench::report_peak_sgemm;
use common::curvature::{
    hutchinson, hutchpp, HessianOperator, HutchinsonConfig, LinearOperator, ProbeKind,
};
use common::data::{Dataset, DatasetKind, Split};
use common::device::cpu::set_blas_threads;
use common::io::Checkpoint;
use common::model::{LayerOps, Network};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

/// FLOPs of one gradient and one Hessian–vector product over n samples (matrix products only:
/// 2·m·n·k each). Gradient: forward 1 product per layer, backward 1 (+1 for ∂/∂x after the first
/// layer). HVP (R-passes on the cached forward/backward): R-forward V·a (+ W·R{a}), R-backward
/// R{ds}ᵀ·a (+ dsᵀ·R{a}) and, after the first layer, R{ds}·W + ds·V.
fn flops(net: &Network, n: usize) -> (f64, f64) {
    let (mut grad, mut hvp) = (0.0, 0.0);
    for (i, l) in net.layers.iter().enumerate() {
        let one = l.forward_flops(n);
        if one == 0.0 {
            continue;
        }
        let first = i == 0;
        grad += one * if first { 2.0 } else { 3.0 };
        hvp += one * if first { 2.0 } else { 6.0 };
    }
    (grad, hvp)
}

struct Figures {
    name: String,
    hvp_s: f64,
    grad_s: f64,
    floor_s: f64,
    trace100_s: f64,
    probes: usize,
    exact_s: f64,
    exact: f64,
    sd_per_probe: f64,
}

fn bench_model(name: &str, ck_path: &Path, data: &Dataset, gflops: f64, quick: bool) -> Figures {
    let ck = Checkpoint::load(ck_path, None).expect("checkpoint");
    let net = ck.network.clone();
    let n = 1280;
    let batch = 128;
    // Gradient over the 1,280 samples in batches of 128 (what one pass of a trainer costs).
    let table = data.normalisation_table::<f32>();
    let mut x = vec![0f32; n * data.features()];
    let mut y = vec![0usize; n];
    data.gather_range(&table, 0, n, &mut x, &mut y);
    let mut ws = net.workspace::<f32>(batch);
    let mut g = vec![0f32; net.num_params()];
    let f = data.features();
    let reps = if quick { 3 } else { 7 };
    let grad_s = median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                for c in 0..n / batch {
                    net.loss_and_gradient(
                        &ck.params,
                        &x[c * batch * f..(c + 1) * batch * f],
                        &y[c * batch..(c + 1) * batch],
                        &mut g,
                        &mut ws,
                    );
                }
                t.elapsed().as_secs_f64()
            })
            .collect(),
    );
    let t = Instant::now();
    let mut op = HessianOperator::<f32>::from_dataset(&net, &ck.params, data, n, batch, 1 << 30)
        .expect("operator");
    let setup_s = t.elapsed().as_secs_f64();
    let dim = op.dim();
    let v: Vec<f32> = (0..dim).map(|i| (i as f32).sin()).collect();
    let mut hv = vec![0f32; dim];
    op.hvp(&v, &mut hv);
    let hvp_s = median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                op.hvp(&v, &mut hv);
                t.elapsed().as_secs_f64()
            })
            .collect(),
    );
    let (gflop_grad, gflop_hvp) = flops(&net, n);
    let floor_s = gflop_hvp / (gflops * 1e9);
    eprintln!(
        "{name}: P = {dim}, n = {n}: gradient {:.1} ms (floor {:.1} ms); setup (forward+backward, cached) {:.1} ms",
        grad_s * 1e3,
        gflop_grad / gflops / 1e6,
        setup_s * 1e3
    );
    eprintln!(
        "{name}: HVP {:.1} ms, floor {:.1} ms ({:.2} GFLOP at {gflops:.1} GFLOP/s) = {:.2}x floor; HVP / gradient = {:.2}",
        hvp_s * 1e3,
        floor_s * 1e3,
        gflop_hvp / 1e9,
        hvp_s / floor_s,
        hvp_s / grad_s
    );
    let probes = if quick { 10 } else { 100 };
    let t = Instant::now();
    let est = hutchinson(
        &mut op,
        &HutchinsonConfig {
            probes,
            seed: 1,
            ..HutchinsonConfig::default()
        },
        &[],
    )
    .expect("hutchinson");
    let trace100_s = t.elapsed().as_secs_f64();
    let sd = est.se * (probes as f64).sqrt();
    eprintln!(
        "{name}: Hutchinson {probes} probes {:.2} s (setup included: {:.2} s): trace {:.3} ± {:.3}, per-probe sd {:.1}",
        trace100_s,
        trace100_s + setup_s,
        est.trace,
        est.se,
        sd
    );
    let t = Instant::now();
    let mut op2 = HessianOperator::<f32>::from_dataset(&net, &ck.params, data, n, batch, 1 << 30)
        .expect("operator");
    let ex = op2.exact_trace().expect("exact");
    let exact_s = t.elapsed().as_secs_f64();
    let need = (sd / (0.01 * ex.trace)).powi(2).ceil();
    eprintln!(
        "{name}: exact trace {:.6} in {:.2} s (setup included, no estimator variance); Hutchinson needs ≈ {need} probes ≈ {:.1} s for 1% relative SE",
        ex.trace,
        exact_s,
        need * trace100_s / probes as f64
    );
    Figures {
        name: name.to_string(),
        hvp_s,
        grad_s,
        floor_s,
        trace100_s: trace100_s + setup_s,
        probes,
        exact_s,
        exact: ex.trace,
        sd_per_probe: sd,
    }
}

/// Hutch++ against Hutchinson with the same number of products, over independent seeds.
fn variance_comparison(ck_path: &Path, data: &Dataset, matvecs: usize, trials: u64) {
    let ck = Checkpoint::load(ck_path, None).expect("checkpoint");
    let mut op =
        HessianOperator::<f32>::from_dataset(&ck.network, &ck.params, data, 1280, 128, 1 << 30)
            .expect("op");
    let exact = op.exact_trace().expect("exact").trace;
    let (mut h, mut pp) = (Vec::new(), Vec::new());
    for seed in 0..trials {
        let cfg = HutchinsonConfig {
            probes: matvecs,
            seed: 100 + seed,
            ..HutchinsonConfig::default()
        };
        h.push(hutchinson(&mut op, &cfg, &[]).expect("h").trace);
        pp.push(
            hutchpp(&mut op, matvecs, ProbeKind::Rademacher, 100 + seed)
                .expect("pp")
                .trace,
        );
    }
    let mse =
        |xs: &[f64]| (xs.iter().map(|x| (x - exact).powi(2)).sum::<f64>() / xs.len() as f64).sqrt();
    eprintln!(
        "MLP, {matvecs} products, {trials} seeds: RMS error Hutchinson {:.3}, Hutch++ {:.3} (variance ratio {:.2}) around the exact {exact:.4}",
        mse(&h),
        mse(&pp),
        (mse(&h) / mse(&pp)).powi(2)
    );
}

fn pyhessian(ck: &Path, model: &str, data_dir: &Path, probes: usize) -> Option<serde_json::Value> {
    let script = root().join("scripts/anchors/pyhessian_trace.py");
    let out = Command::new(common::bench::python())
        .arg(&script)
        .args(["--checkpoint".as_ref(), ck.as_os_str()])
        .args(["--model", model])
        .args(["--data-dir".as_ref(), data_dir.as_os_str()])
        .args(["--probes", &probes.to_string()])
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "PyHessian anchor skipped: {}",
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .lines()
                .last()
                .unwrap_or("")
        );
        return None;
    }
    serde_json::from_slice(
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .lines()
            .last()?
            .as_bytes(),
    )
    .ok()
}

fn main() {
    common::device::cpu::register_blas_threads(blas_openblas::set_threads);
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let quick = std::env::var("HESSIAN_BENCH_QUICK").is_ok();
    let peak = report_peak_sgemm("hessian bench", 1);
    set_blas_threads(1);
    let data_dir = root().join("tests/fixtures/mnist-small");
    let data = Dataset::load(DatasetKind::Mnist, &data_dir, Split::Train).expect("fixture data");
    let refdir = root().join("tests/fixtures/reference");
    let mut figs = vec![bench_model(
        "mlp_1x128",
        &refdir.join("mlp_1x128.safetensors"),
        &data,
        peak,
        quick,
    )];
    figs.push(bench_model(
        "lenet",
        &refdir.join("lenet.safetensors"),
        &data,
        peak,
        quick,
    ));
    variance_comparison(
        &refdir.join("mlp_1x128.safetensors"),
        &data,
        if quick { 30 } else { 99 },
        if quick { 5 } else { 20 },
    );
    for f in &figs {
        let model = if f.name == "lenet" { "lenet" } else { "mlp" };
        let ck = refdir.join(format!("{}.safetensors", f.name));
        // PyHessian on the LeNet costs seconds per product: 20 probes there, and its trace time is
        // scaled per probe to the probe count of our run.
        let ph_probes = match (quick, model) {
            (true, _) => 10,
            (false, "lenet") => 20,
            (false, _) => 100,
        };
        match pyhessian(&ck, model, &data_dir, ph_probes) {
            Some(p) => {
                let get = |k: &str| p[k].as_f64().unwrap_or(f64::NAN);
                let (ph_hvp, ph_sd) = (get("hvp_seconds"), get("sd_per_probe"));
                let ph_trace = get("trace_seconds") / get("probes") * f.probes as f64;
                let ph_probes_1pc = (ph_sd / (0.01 * f.exact)).powi(2).ceil();
                let ph_1pc = ph_probes_1pc * ph_hvp;
                eprintln!(
                    "{}: PyHessian (torch, 1 thread, dataloader of 10 x 128) HVP {:.1} ms (one batch of 1280: {:.1} ms) vs ours {:.1} ms (ratio {:.2}); {}-probe trace {:.2} s (timed on {} probes) vs ours {:.2} s (ratio {:.2})",
                    f.name,
                    ph_hvp * 1e3,
                    get("hvp_single_batch_seconds") * 1e3,
                    f.hvp_s * 1e3,
                    ph_hvp / f.hvp_s,
                    f.probes,
                    ph_trace,
                    p["probes"],
                    f.trace100_s,
                    ph_trace / f.trace100_s
                );
                eprintln!(
                    "{}: time to a 1% relative SE: PyHessian (per-probe sd {ph_sd:.1}) ≈ {ph_probes_1pc} probes ≈ {ph_1pc:.1} s; ours (exact trace) {:.2} s: {:.0}x faster",
                    f.name,
                    f.exact_s,
                    ph_1pc / f.exact_s
                );
            }
            None => eprintln!(
                "{}: PyHessian anchor not run (python3 with torch and pyhessian needed)",
                f.name
            ),
        }
        let _ = (f.grad_s, f.floor_s, f.sd_per_probe);
    }
}
