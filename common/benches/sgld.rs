//! SGLD / LLC benchmark on the MNIST MLP 1×128 with the paper's settings (2 chains × 1,000 draws,
//! minibatch 128, ε 1e-4, γ 100, nβ = 128/ln 128): seconds per LLC estimate and SGLD steps per second
//! on 1 and 2 threads, next to the compute floor (FLOPs of forward + backward / the machine's peak
//! sgemm rate, measured once in this run at 2048³ on 1 thread: [`common::bench`]), with the time split between gradient, noise and update; and
//! devinterp on the same checkpoint in the same run when it is importable
//! (`scripts/anchors/devinterp_llc.py`, torch limited to 1 thread). Set SGLD_BENCH_NO_ANCHOR=1 to skip
//! the anchor.
//!
//! Run with `cargo bench -p common --bench sgld` (or `make bench`).

extern crate blas_openblas;

use common::bench::report_peak_sgemm;
use common::data::{Dataset, DatasetKind, Split};
use common::device::cpu::set_blas_threads;
use common::io::Checkpoint;
use common::rng::NoiseSource;
use common::rng::{stream, Purpose};
use common::sample::sgld::{update, StepCoefficients};
use common::sample::{
    estimate_llc, run_chains, AnalyticPotential, InitLoss, LlcConfig, NBeta, NetworkPotential,
    Potential, SgldConfig,
};
use std::path::PathBuf;
use std::time::Instant;

/// User + system CPU seconds of this process so far (Linux `/proc/self/stat`, clock ticks of 1/100 s),
/// NaN elsewhere. CPU time / wall time says how many cores the chains kept busy.
fn cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1;
            let f: Vec<&str> = after.split_whitespace().collect();
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) / 100.0)
        })
        .unwrap_or(f64::NAN)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    common::device::cpu::register_blas_threads(blas_openblas::set_threads);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let ck_path = root.join("tests/fixtures/reference/mlp_1x128.safetensors");
    let ck = Checkpoint::load(&ck_path, None).expect("reference checkpoint");
    let (data, data_dir) = match Dataset::load(DatasetKind::Mnist, &root.join("data"), Split::Train)
    {
        Ok(d) => (d, root.join("data/mnist")),
        Err(_) => {
            eprintln!(
                "sgld bench: data/mnist missing (run `make data`); using the 1,280-image fixture"
            );
            let dir = root.join("tests/fixtures/mnist-small");
            (
                Dataset::load(DatasetKind::Mnist, &dir, Split::Train).expect("fixture"),
                dir,
            )
        }
    };
    let batch = 128;
    let pot = NetworkPotential::new(&ck.network, &data, batch).expect("potential");
    let p = pot.dim();
    let peak = report_peak_sgemm("sgld bench", 1);
    set_blas_threads(1);

    // Compute floor: forward X[128×784]·W1ᵀ (m=128, n=128, k=784) and the weight gradient
    // δ1ᵀ·X (m=128, n=784, k=128) dominate; the 128→10 layer adds 3 small products.
    let big = 2.0 * (batch * 784 * 128) as f64;
    let small = 2.0 * (batch * 128 * 10) as f64;
    let flops = 2.0 * big + 3.0 * small;
    let floor = flops / (peak * 1e9);
    println!(
        "sgld bench: MLP 784-128-10 ({p} parameters), n = {}, batch {batch}; {:.1} MFLOP per step",
        data.len(),
        flops / 1e6
    );
    println!(
        "  compute floor {:.3} ms per step (at the 1-thread peak sgemm rate)",
        floor * 1e3
    );

    // Components on one thread: the gradient (gather + forward + backward) and the noise.
    let mut state = pot.chain_state();
    let mut rng = stream(1, Purpose::Chain, 0);
    let mut grad = vec![0f32; p];
    let mut noise = vec![0f32; p];
    let grad_t = median(
        (0..300)
            .map(|_| {
                let t = Instant::now();
                pot.loss_and_gradient(&mut state, &mut rng, &ck.params, &mut grad)
                    .expect("in-memory data");
                t.elapsed().as_secs_f64()
            })
            .collect(),
    );
    // The minibatch gather alone (128 images, bytes → normalised f32 by table lookup).
    let table = data.normalisation_table::<f32>();
    let order = rng.permutation(data.len());
    let mut x = vec![0f32; batch * data.features()];
    let mut y = vec![0usize; batch];
    let gather_t = median(
        (0..300)
            .map(|k| {
                let start = (k * batch) % (data.len() - batch);
                let t = Instant::now();
                data.gather(&table, &order[start..start + batch], &mut x, &mut y);
                t.elapsed().as_secs_f64()
            })
            .collect(),
    );
    let mut source = NoiseSource::from_stream(&mut rng);
    let noise_t = median(
        (0..300)
            .map(|_| {
                let t = Instant::now();
                source.fill(&mut noise);
                t.elapsed().as_secs_f64()
            })
            .collect(),
    );
    // The fused update pass (noise drawn block by block, drift, step, MALA sums, shift of the
    // previous step).
    let mut w = ck.params.clone();
    let mut step = vec![0f32; p];
    let coef = StepCoefficients {
        half_eps: 5e-5,
        sqrt_eps: 1e-2,
        nbeta: 26.38,
        gamma: 100.0,
        decay: 0.0,
    };
    let rest_t = median(
        (0..300)
            .map(|_| {
                let t = Instant::now();
                let sums = update(
                    &mut w,
                    &mut step,
                    &ck.params,
                    &grad,
                    &mut source,
                    &coef,
                    None,
                );
                std::hint::black_box(sums.step_dot_drift);
                t.elapsed().as_secs_f64()
            })
            .collect(),
    );
    println!(
        "  per step: gradient {:.3} ms ({:.2}x floor; of which the minibatch gather {:.3} ms), noise {:.3} ms, update pass with its noise and MALA sums {:.3} ms",
        grad_t * 1e3,
        grad_t / floor,
        gather_t * 1e3,
        noise_t * 1e3,
        rest_t * 1e3
    );

    let cfg = |threads| LlcConfig {
        sgld: SgldConfig {
            step_size: 1e-4,
            nbeta: 0.0,
            localization: 100.0,
            weight_decay: 0.0,
            bounding_box: None,
            draws: 1000,
            burn_in: 0,
            thin: 1,
            chains: 2,
            threads,
            seed: 1,
        },
        nbeta: NBeta::Batch,
        init_loss: InitLoss::Minibatches { count: 2 },
    };
    let mut one_thread = f64::NAN;
    for threads in [1, 2] {
        let cpu0 = cpu_seconds();
        let runs: Vec<f64> = (0..3)
            .map(|_| {
                let est = estimate_llc(&pot, &ck.params, &cfg(threads)).expect("estimate");
                est.seconds
            })
            .collect();
        let cores_busy = (cpu_seconds() - cpu0) / runs.iter().sum::<f64>();
        let secs = median(runs);
        let steps = 2000.0;
        if threads == 1 {
            one_thread = secs;
        }
        println!(
            "  LLC estimate (2 chains x 1000 draws) on {threads} thread(s): {secs:.3} s (median of 3), {:.0} SGLD steps/s, {:.3} ms per step = {:.2}x the 1-thread floor, {cores_busy:.2} cores busy (CPU time / wall time), {:.3} CPU ms per step = {:.2}x the floor{}",
            steps / secs,
            secs / steps * 1e3,
            secs / steps / floor,
            secs * cores_busy / steps * 1e3,
            secs * cores_busy / steps / floor,
            if threads == 2 {
                format!(", speed-up {:.2}x over 1 thread", one_thread / secs)
            } else {
                String::new()
            }
        );
    }

    // The same chains without BLAS (a quadratic potential of the same dimension): if these scale
    // with threads and the network's do not, the BLAS library serialises concurrent calls.
    let quad = AnalyticPotential::Quadratic { dim: p };
    for threads in [1, 2] {
        let cfg = SgldConfig {
            step_size: 1e-4,
            nbeta: 26.38,
            localization: 100.0,
            weight_decay: 0.0,
            bounding_box: None,
            draws: 300,
            burn_in: 0,
            thin: 1,
            chains: 2,
            threads,
            seed: 1,
        };
        let cpu0 = cpu_seconds();
        let t = Instant::now();
        run_chains(&quad, &ck.params, &cfg).expect("chains");
        let wall = t.elapsed().as_secs_f64();
        println!(
            "  no-BLAS check (quadratic potential, P = {p}, 2 chains x 300 steps) on {threads} thread(s): {wall:.3} s, {:.2} cores busy",
            (cpu_seconds() - cpu0) / wall
        );
    }

    if std::env::var_os("SGLD_BENCH_NO_ANCHOR").is_some() {
        return;
    }
    let script = root.join("scripts/anchors/devinterp_llc.py");
    let out = std::process::Command::new(common::bench::python())
        .arg(&script)
        .args(["--checkpoint", ck_path.to_str().unwrap()])
        .args(["--data-dir", data_dir.to_str().unwrap()])
        .args([
            "--draws",
            "1000",
            "--chains",
            "2",
            "--threads",
            "1",
            "--seeds",
            "1",
        ])
        .env("TQDM_DISABLE", "1")
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            let line = text.lines().last().unwrap_or("");
            let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
            let secs = v["seconds"].as_f64().unwrap_or(f64::NAN);
            println!(
                "  devinterp (same checkpoint, data and settings, torch 1 thread): {secs:.3} s, {:.3} ms per step = {:.2}x the floor; ours on 1 thread is {:.2}x faster, on 2 threads see above",
                secs / 2000.0 * 1e3,
                secs / 2000.0 / floor,
                secs / one_thread
            );
            println!(
                "  devinterp λ̂ = {:.3} ± {:.3} (seed 1)",
                v["llc_mean"].as_f64().unwrap_or(f64::NAN),
                v["llc_std"].as_f64().unwrap_or(f64::NAN)
            );
        }
        Ok(o) => println!(
            "  devinterp anchor skipped: {}",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or("failed")
        ),
        Err(e) => println!("  devinterp anchor skipped: python3 not runnable ({e})"),
    }
}
