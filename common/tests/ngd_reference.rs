//! The paper's online NGD (ngd.py) against its own outputs on fixed gradient sequences
//! (`tests/fixtures/reference/ngd_sequence.json`, produced by the repository's ngd.py under torch).
//!
//! Tolerances follow the fixture's `eigh_driver_sensitivity`, which re-ran the reference with other
//! LAPACK eigensolvers: the full-rank weight sequence agrees across drivers to ~1e-14 in f64, so it is
//! held to 1e-9 relative; the rank-2 weight and the bias have rounding-noise eigen-directions (the
//! factor's rank exceeds the gradient's), so they are held only to a multiple of the documented
//! driver spread, plus exact norm preservation.

mod support;

use common::model::ParamLayout;
use common::model::{Init, TensorSpec};
use common::optim::{Batch, Ngd, NgdConfig, NgdDtype, Optimizer, SgdConfig, TensorPreconditioner};
use serde_json::Value;
use support::{f64s, norm, reference, rel_diff};

fn flat(v: &Value) -> Vec<f64> {
    match v {
        Value::Array(a) if a.first().is_some_and(Value::is_array) => {
            a.iter().flat_map(flat).collect()
        }
        _ => f64s(v),
    }
}

fn config(alpha: f64, dtype: NgdDtype) -> NgdConfig {
    NgdConfig {
        alpha,
        dtype,
        ..NgdConfig::default()
    }
}

/// Runs one sequence of the fixture through a preconditioner in f64 and returns, per step, the
/// relative difference of the output and the worst relative difference of the per-axis state
/// (ρ, d and WᵀW, which is invariant to the sign of W's rows).
fn run_sequence(run: &Value, seq: &str, shape: &[usize]) -> Vec<(f64, f64)> {
    let alpha = run["alpha"].as_f64().unwrap();
    let mut pre = TensorPreconditioner::<f64>::new(shape, &config(alpha, NgdDtype::F64));
    let mut out = Vec::new();
    for step in run[seq].as_array().unwrap() {
        let input = flat(&step["input"]);
        let mut g = input.clone();
        pre.precondition(&mut g, |_, _| {});
        let want = flat(&step["output"]);
        // Norm preservation holds to rounding whatever the eigensolver.
        assert!(
            (norm(&g) - norm(&input)).abs() <= 1e-12 * norm(&input),
            "{seq}: norm not preserved"
        );
        let mut state_dev: f64 = 0.0;
        for (ai, (axis, p)) in pre.axes.iter().enumerate() {
            let key = if shape.len() == 1 {
                "axis0".to_string()
            } else {
                format!("axis{axis}")
            };
            let st = &step[&key]["state_after"];
            assert_eq!(p.t, st["t"].as_u64().unwrap(), "{seq} axis {ai}: t");
            assert_eq!(p.rank, step[&key]["rank"].as_u64().unwrap() as usize);
            let rho = st["rho"].as_f64().unwrap();
            state_dev = state_dev.max(((p.rho - rho) / rho).abs());
            state_dev = state_dev.max(rel_diff(&p.d, &f64s(&st["d"])));
            let (r, d) = (p.rank, p.dim);
            let wtw: Vec<f64> = (0..d * d)
                .map(|ij| {
                    (0..r)
                        .map(|k| p.w[k * d + ij / d] * p.w[k * d + ij % d])
                        .sum()
                })
                .collect();
            state_dev = state_dev.max(rel_diff(&wtw, &flat(&st["WtW"])));
        }
        out.push((rel_diff(&g, &want), state_dev));
    }
    out
}

fn sensitivity(fixture: &Value, run: &str, seq: &str) -> Vec<f64> {
    f64s(&fixture["eigh_driver_sensitivity"][run][seq]["output_max_rel_dev_per_step"])
}

#[test]
fn fullrank_weight_matches_ngd_py_tightly_in_f64() {
    let fx = reference("ngd_sequence.json");
    for run in ["alpha=0.01,float64", "alpha=0.1,float64"] {
        let devs = run_sequence(&fx["runs"][run], "weight_6x5_fullrank", &[6, 5]);
        assert_eq!(devs.len(), 25);
        for (t, (o, s)) in devs.iter().enumerate() {
            // Driver spread ~1e-14 (outputs) / ~4e-13 (state): 1e-9 leaves room only for
            // summation-order rounding, not for any algorithmic difference.
            assert!(*o < 1e-9, "{run} step {t}: output rel diff {o:e}");
            assert!(*s < 1e-9, "{run} step {t}: state rel diff {s:e}");
        }
        eprintln!(
            "{run} fullrank: worst output {:e}, state {:e}",
            devs.iter().map(|d| d.0).fold(0.0, f64::max),
            devs.iter().map(|d| d.1).fold(0.0, f64::max)
        );
    }
}

#[test]
fn rank2_weight_and_bias_agree_within_eigensolver_spread() {
    let fx = reference("ngd_sequence.json");
    for run in ["alpha=0.01,float64", "alpha=0.1,float64"] {
        for (seq, shape) in [("weight_6x5_rank2", &[6usize, 5][..]), ("bias_7", &[7][..])] {
            let devs = run_sequence(&fx["runs"][run], seq, shape);
            let spread = sensitivity(&fx, run, seq);
            let worst_spread = spread.iter().copied().fold(0.0, f64::max);
            for (t, (o, _)) in devs.iter().enumerate() {
                // The fixture measured how much swapping the eigensolver moves the outputs; any other
                // rounding difference (our matrix products sum in another order) is amplified the
                // same way, at any step. Allow 3x the sequence's largest driver spread; a real error
                // in the update is O(1).
                assert!(
                    *o < 3.0 * worst_spread,
                    "{run} {seq} step {t}: {o:e} vs spread {worst_spread:e}"
                );
            }
            if seq == "bias_7" {
                // README: the bias's first step is robust to ~1e-4 (3x that).
                assert!(devs[0].0 < 3e-4, "{run} bias step 0: {:e}", devs[0].0);
            }
            eprintln!(
                "{run} {seq}: worst output rel diff {:e} (driver spread {worst_spread:e})",
                devs.iter().map(|d| d.0).fold(0.0, f64::max)
            );
        }
    }
}
#[test]
fn fullrank_weight_f32_state_matches_float32_reference() {
    let fx = reference("ngd_sequence.json");
    for run in ["alpha=0.01,float32", "alpha=0.1,float32"] {
        let r = &fx["runs"][run];
        let alpha = r["alpha"].as_f64().unwrap();
        let mut pre = TensorPreconditioner::<f32>::new(&[6, 5], &config(alpha, NgdDtype::F32));
        let mut worst: f64 = 0.0;
        for step in r["weight_6x5_fullrank"].as_array().unwrap() {
            let mut g: Vec<f32> = flat(&step["input"]).iter().map(|&v| v as f32).collect();
            pre.precondition(&mut g, |_, _| {});
            let g: Vec<f64> = g.iter().map(|&v| v as f64).collect();
            worst = worst.max(rel_diff(&g, &flat(&step["output"])));
        }
        // f32 eigensolvers spread ~8e-6; our scalars (β, z, ρ) are kept in f64 where torch mixes f32
        // tensors with Python floats, another f32 rounding pattern of the same size: 3x the spread.
        let spread = fx["eigh_driver_sensitivity"][run]["weight_6x5_fullrank"]
            ["output_max_rel_dev"]
            .as_f64()
            .unwrap();
        eprintln!("{run} fullrank f32: worst output rel diff {worst:e} (driver spread {spread:e})");
        assert!(worst < 3.0 * spread, "{run}: {worst:e}");
    }
}

/// The optimiser end to end (preconditioning + momentum with Nesterov, lr 0.01) against
/// `optimizer_sequence`: NGD.step() on W[6,5] and b[7] for 25 steps.
#[test]
fn optimizer_sequence_matches_ngd_step() {
    let fx = reference("ngd_sequence.json");
    let layout = ParamLayout {
        tensors: vec![
            TensorSpec {
                name: "W".into(),
                shape: vec![6, 5],
                offset: 0,
                numel: 30,
                init: Init::torch_default(5),
            },
            TensorSpec {
                name: "b".into(),
                shape: vec![7],
                offset: 30,
                numel: 7,
                init: Init::torch_default(5),
            },
        ],
    };
    let grad_w = |t: usize| -> Vec<f64> {
        (0..30)
            .map(|k| {
                let (i, j) = ((k / 5) as f64, (k % 5) as f64);
                (0.37 * (t as f64 + 1.0) * (i + 1.0) * (j + 1.0) + 0.1 * j).sin()
            })
            .collect()
    };
    let grad_b = |t: usize| -> Vec<f64> {
        (0..7)
            .map(|i| (0.37 * (t as f64 + 1.0) * (i as f64 + 1.0)).sin())
            .collect()
    };
    for (run, dtype) in [
        ("alpha=0.01,float64", NgdDtype::F64),
        ("alpha=0.01,float32", NgdDtype::F32),
    ] {
        let steps = fx["optimizer_sequence"]["runs"][run]["params_after_each_step"]
            .as_array()
            .unwrap();
        let cfg = NgdConfig {
            alpha: 0.01,
            dtype,
            sgd: SgdConfig::default(),
            ..NgdConfig::default()
        };
        let mut opt = Ngd::new(cfg, &layout).unwrap();
        let mut params: Vec<f32> = (0..30)
            .map(|k| 0.1 * (((k / 5) + (k % 5)) as f64).cos())
            .chain((0..7).map(|i| 0.05 * i as f64))
            .map(|v| v as f32)
            .collect();
        let net = common::model::Network::new(common::model::Architecture::mlp(
            vec![1],
            common::model::Activation::Relu,
        ));
        let mut worst_w: f64 = 0.0;
        let mut worst_b: f64 = 0.0;
        for (t, want) in steps.iter().enumerate() {
            let mut g: Vec<f32> = grad_w(t)
                .into_iter()
                .chain(grad_b(t))
                .map(|v| v as f32)
                .collect();
            opt.step(
                &mut params,
                &mut g,
                &Batch {
                    net: &net,
                    x: &[][..],
                    targets: common::model::Targets::Labels(&[]),
                },
            )
            .unwrap();
            let p: Vec<f64> = params.iter().map(|&v| v as f64).collect();
            worst_w = worst_w.max(rel_diff(&p[..30], &flat(&want["W"])));
            worst_b = worst_b.max(rel_diff(&p[30..], &flat(&want["b"])));
        }
        eprintln!("{run}: parameters after 25 steps, worst rel diff W {worst_w:e}, b {worst_b:e}");
        // Parameters are stored in f32 (as the paper's models): 25 updates of size ~1e-2 on
        // entries ~0.1 accumulate ~25 f32 roundings, ~1e-6 relative.
        assert!(worst_w < 1e-5, "{run}: W {worst_w:e}");
        // The bias inherits the ill-conditioned directions: each of its update directions is only
        // defined to the bias's eigensolver spread for this dtype (5.6e-2 relative in f64, O(1) in
        // f32, at α = 0.01), and the parameter change is a momentum average of such directions, so
        // that spread bounds its error too (in f32 this only says the bias stays on the same scale).
        let spread = fx["eigh_driver_sensitivity"][run]["bias_7"]["output_max_rel_dev"]
            .as_f64()
            .unwrap();
        assert!(
            worst_b < spread,
            "{run}: b {worst_b:e} vs spread {spread:e}"
        );
    }
}
