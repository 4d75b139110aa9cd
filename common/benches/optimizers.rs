//! `make bench`: epoch time of the three optimisers on the MNIST MLP 1×128 at batch 128 (the paper's
//! setting), in the same run, with their ratios to SGD.
//!
//! An epoch is 469 steps of gather + forward + backward + optimiser step, on 1 BLAS thread (test
//! evaluation and checkpoints excluded). Targets (issue 3): ngd ≤ 1.5× SGD, ngd-exact ≤ 4× SGD.
//! ngd-exact runs at its defaults (the sampled Fisher, whose products are f64), with the empirical
//! Fisher, and at the former defaults earlier runs timed (`OPTIMIZERS_BENCH_FLUSH_SUBNORMALS=1`
//! flushes subnormal floats on the bench's thread, which that run is slowed by on Intel processors).
//! Next to each time: its compute floor, the FLOPs of the step's matrix products divided by the
//! machine's peak sgemm rate, measured once in the same run at 2048³ ([`common::bench`]). When `torch` is importable the
//! PyTorch online-NGD reference epoch (`scripts/anchors/torch_ngd_epoch.py`, the paper's algorithm,
//! 1 thread) runs too, with the ratio.

extern crate blas_openblas;

use common::bench::report_peak_sgemm;
use common::data::{Dataset, DatasetKind, Split};
use common::device::cpu::set_blas_threads;
use common::model::{initialise, Activation, Architecture, Network};
use common::optim::{build, Batch, NgdDtype, OptimizerSettings};
use common::rng::{stream, Purpose};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

fn data_dir() -> PathBuf {
    std::env::var_os("DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data"))
}

/// One training epoch with the optimiser `settings` describe; returns seconds.
fn epoch(net: &Network, data: &Dataset, settings: &OptimizerSettings, seed: u64) -> f64 {
    let batch = 128;
    let mut params: Vec<f32> = initialise(net, seed);
    let mut opt = build(settings, net).expect("optimiser");
    let table = data.normalized::<f32>().expect("in memory");
    let f = data.features();
    let mut ws = net.workspace::<f32>(batch);
    let mut x = vec![0f32; batch * f];
    let mut y = vec![0usize; batch];
    let mut grad = vec![0f32; net.num_params()];
    let order = stream(seed, Purpose::Shuffle, 1).permutation(data.len());
    let t = Instant::now();
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
    let secs = t.elapsed().as_secs_f64();
    assert!(
        params.iter().all(|v| v.is_finite()),
        "{} diverged",
        settings.name
    );
    secs
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    v[v.len() / 2]
}

/// Matrix-product FLOPs of one online-NGD step on the MLP's tensors (per axis of size D with N rows
/// and rank r: H = XWᵀ and X̂ = X − HW always, 2·2NDr; on refresh steps (t < 10 or every 4th) also
/// J = HᵀX, K = JJᵀ and L, 2NDr + 2r²D + 2r²·min(N, D), averaged with weight 1/4).
fn ngd_step_flops(shapes: &[Vec<usize>]) -> f64 {
    let mut total = 0.0;
    for shape in shapes {
        let numel: usize = shape.iter().product();
        for &d in shape.iter().filter(|&&d| d > 1) {
            let n = (numel / d) as f64;
            let r = common::optim::default_rank(d) as f64;
            let d = d as f64;
            total += 4.0 * n * d * r
                + 0.25 * (2.0 * n * d * r + 2.0 * r * r * d + 2.0 * r * r * n.min(d));
        }
    }
    total
}

/// `OPTIMIZERS_BENCH_FLUSH_SUBNORMALS=1`: subnormal results flushed to zero and subnormal inputs
/// read as zero on this thread (x86-64 MXCSR bits FTZ and DAZ), to show what subnormal arithmetic
/// costs. The tools never do this: PyTorch's CPU default keeps subnormals
/// (`torch.set_flush_denormal(False)`), and so do they.
fn flush_subnormals_if_asked() {
    if std::env::var("OPTIMIZERS_BENCH_FLUSH_SUBNORMALS").as_deref() != Ok("1") {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let mut csr: u32 = 0;
        // SAFETY: stmxcsr/ldmxcsr read and write the 4 bytes of `csr`; only the FTZ (bit 15) and
        // DAZ (bit 6) bits change, on this thread.
        unsafe {
            std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack));
            csr |= 0x8040;
            std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack));
        }
        println!("subnormal floats flushed to zero on this thread (MXCSR FTZ + DAZ)");
    }
    #[cfg(not(target_arch = "x86_64"))]
    println!("OPTIMIZERS_BENCH_FLUSH_SUBNORMALS: x86-64 only, ignored");
}

fn main() {
    common::device::cpu::register_blas_threads(blas_openblas::set_threads);
    let dir = data_dir();
    let data = match Dataset::load(DatasetKind::Mnist, &dir, Split::Train) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("bench optimizers: {e}");
            std::process::exit(1);
        }
    };
    let sgemm = report_peak_sgemm("optimizers bench", 1);
    flush_subnormals_if_asked();
    set_blas_threads(1);
    let net = Network::new(Architecture::mlp(vec![128], Activation::Relu));
    let steps = data.len().div_ceil(128);
    let reps = 3;
    // Forward + backward of 784-128-10 (no input gradient of the first layer).
    let fb_flops = 128.0 * (2.0 * 784.0 * 128.0 * 2.0 + 2.0 * 128.0 * 10.0 * 3.0);
    let shapes: Vec<Vec<usize>> = net.layout.tensors.iter().map(|t| t.shape.clone()).collect();
    let ngd_flops = ngd_step_flops(&shapes);
    // ngd-exact (empirical, f32): its own forward pass and the input-gradient products of its
    // backward pass (no weight gradients: 2B·in·out per layer but the first), the Gram matrix
    // ((AAᵀ + 1)⊙(ΔΔᵀ) per Linear layer: 2B²·(in + out)) and d = Gᵀα (one product per layer).
    let linear_macs = 784.0 * 128.0 + 128.0 * 10.0;
    let exact_flops = 2.0 * 128.0 * linear_macs
        + 2.0 * 128.0 * 128.0 * 10.0
        + 2.0 * 128.0 * linear_macs
        + 2.0 * 128.0 * 128.0 * (784.0 + 128.0 + 128.0 + 10.0);
    println!(
        "== optimisers: MNIST MLP 784-128-10, batch 128, one epoch = {steps} steps, 1 BLAS thread"
    );

    // The settings of one optimiser at its defaults, changed by `edit`.
    let named = |name: &str, edit: &dyn Fn(&mut OptimizerSettings)| {
        let mut s = OptimizerSettings {
            name: name.into(),
            ..Default::default()
        };
        edit(&mut s);
        s
    };
    use common::optim::{Damping, FisherKind};
    let variants: Vec<(&str, OptimizerSettings, f64)> = vec![
        ("sgd", OptimizerSettings::default(), fb_flops),
        (
            "ngd (f32 state)",
            named("ngd", &|_| {}),
            fb_flops + ngd_flops,
        ),
        (
            "ngd (f64 state)",
            named("ngd", &|s| s.ngd.dtype = NgdDtype::F64),
            fb_flops + ngd_flops,
        ),
        // The sampled Fisher's per-sample products run in f64 (about half the sgemm rate).
        (
            "ngd-exact (defaults: sampled Fisher)",
            named("ngd-exact", &|_| {}),
            fb_flops + exact_flops,
        ),
        (
            "ngd-exact (empirical Fisher)",
            named("ngd-exact", &|s| s.exact.fisher = FisherKind::Empirical),
            fb_flops + exact_flops,
        ),
        // The empirical Fisher at the former defaults (α = 0.01, no rescaling), as earlier runs
        // timed it. Its steps explode: the network saturates and its cotangents underflow to
        // subnormal floats, whose arithmetic is many times slower on Intel processors
        // (OPTIMIZERS_BENCH_FLUSH_SUBNORMALS=1 shows how much).
        (
            "ngd-exact (empirical, α 0.01, unscaled)",
            named("ngd-exact", &|s| {
                s.exact.fisher = FisherKind::Empirical;
                s.exact.damping = Damping::Relative(0.01);
                s.exact.preserve_norm = false;
            }),
            fb_flops + exact_flops,
        ),
    ];
    let mut sgd_secs = 0.0;
    let mut ngd_secs = 0.0;
    for (label, settings, flops) in &variants {
        epoch(&net, &data, settings, 1); // warm-up
        let secs = median(
            (0..reps)
                .map(|r| epoch(&net, &data, settings, r as u64 + 1))
                .collect(),
        );
        if settings.name == "sgd" {
            sgd_secs = secs;
        }
        if *label == "ngd (f32 state)" {
            ngd_secs = secs;
        }
        let floor = flops * steps as f64 / (sgemm * 1e9);
        println!(
            "{label:<40} epoch {secs:.3} s (median of {reps}) = {:.2}x sgd; floor {floor:.3} s ({:.1} GFLOP), {:.2}x the floor",
            secs / sgd_secs,
            flops * steps as f64 / 1e9,
            secs / floor
        );
    }
    println!("targets: ngd <= 1.5x sgd, ngd-exact <= 4x sgd");

    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/anchors/torch_ngd_epoch.py");
    let has_torch = Command::new(common::bench::python())
        .args(["-c", "import torch"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !has_torch {
        println!("pytorch: not importable, online-NGD anchor skipped");
        return;
    }
    let out = Command::new(common::bench::python())
        .arg(&script)
        .arg(&dir)
        .arg(reps.to_string())
        .output()
        .expect("run the PyTorch anchor");
    if !out.status.success() {
        println!(
            "pytorch: anchor failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let get = |key: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
            .expect("anchor output")
    };
    let (t_ngd, t_sgd) = (get("ngd_epoch_seconds "), get("sgd_epoch_seconds "));
    println!(
        "pytorch (1 thread, same epoch): online NGD {t_ngd:.3} s, SGD {t_sgd:.3} s; ours ngd is {:.2}x faster than PyTorch's NGD (target >= 2x)",
        t_ngd / ngd_secs
    );
}
