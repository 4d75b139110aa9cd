//! The online NGD against ngd.py's numbers and its own invariants.

use super::super::ngd_axis::AxisPreconditioner;
use super::*;

/// The MLP 9 → 7 → 4 whose layout the optimiser tests precondition.
fn tiny_mlp() -> crate::model::Network {
    use crate::model::{Activation, Architecture, Network};
    Network::new(Architecture::Mlp {
        input: 9,
        hidden: vec![7],
        classes: 4,
        activation: Activation::Relu,
    })
}

/// An empty batch: online NGD's step reads only the gradient.
fn no_batch(net: &crate::model::Network) -> Batch<'_> {
    Batch {
        net,
        x: &[][..],
        targets: crate::model::Targets::Labels(&[]),
    }
}

#[test]
fn f64_state_survives_f32_sidecar_encoding() {
    let v = [0.1, -3.5e-300, f64::MAX, 1.0 / 3.0];
    assert_eq!(decode_f64(&encode_f64(&v)), v);
}

#[test]
fn orthonormal_start_pattern() {
    // W₀ = √E₀·O with O's rows orthonormal: W₀W₀ᵀ = E₀·I.
    for (dim, rank) in [(7, 4), (6, 3), (784, 80), (10, 5), (5, 3)] {
        let mut p = AxisPreconditioner::<f64>::new(
            3,
            dim,
            rank,
            false,
            NgdConfig::default().axis_settings(),
        );
        p.init_default();
        let e0 = 1.0 / (2.0 + (dim + rank) as f64 * 0.01 / dim as f64);
        for i in 0..rank {
            for j in 0..rank {
                let dot: f64 = (0..dim).map(|c| p.w[i * dim + c] * p.w[j * dim + c]).sum();
                let want = if i == j { e0 } else { 0.0 };
                assert!((dot - want).abs() < 1e-14, "{dim} {rank} {i} {j} {dot}");
            }
        }
    }
}

/// Saving the state after a few steps and loading it into a fresh optimiser continues bit for
/// bit (the sidecar is how `train --resume` is exact).
#[test]
fn state_round_trip_continues_exactly() {
    let net = tiny_mlp();
    for dtype in [NgdDtype::F32, NgdDtype::F64] {
        let cfg = NgdConfig {
            dtype,
            ..Default::default()
        };
        let mut a = Ngd::new(cfg, &net.layout).unwrap();
        let p = net.num_params();
        let grad = |k: usize| -> Vec<f32> {
            (0..p)
                .map(|i| ((i * 7 + k * 13) as f32 * 0.37).sin())
                .collect()
        };
        let batch = no_batch(&net);
        let mut pa = vec![0.1f32; p];
        for k in 0..13 {
            a.step(&mut pa, &mut grad(k), &batch).unwrap();
        }
        let mut b = Ngd::new(cfg, &net.layout).unwrap();
        b.load_state(&a.state()).unwrap();
        let mut pb = pa.clone();
        for k in 13..30 {
            a.step(&mut pa, &mut grad(k), &batch).unwrap();
            b.step(&mut pb, &mut grad(k), &batch).unwrap();
        }
        assert_eq!(pa, pb, "{dtype:?}");
    }
}

/// The step ratio ‖d‖/‖g‖ in the epoch record is the ratio of the two norms summed left to right
/// over the whole vectors (g before weight decay, d as handed to the momentum stage), to the bit,
/// with and without weight decay (which takes ‖g‖ from a pass of its own), in both state types.
#[test]
fn step_ratio_is_the_ratio_of_the_whole_vectors_norms() {
    let net = tiny_mlp();
    let p = net.num_params();
    let batch = no_batch(&net);
    let norm = |v: &[f32]| v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    for dtype in [NgdDtype::F32, NgdDtype::F64] {
        for weight_decay in [0.0, 0.05] {
            let mut cfg = NgdConfig {
                dtype,
                ..Default::default()
            };
            cfg.sgd.weight_decay = weight_decay;
            let mut opt = Ngd::new(cfg, &net.layout).unwrap();
            let mut params = vec![0.1f32; p];
            for k in 0..12 {
                let g: Vec<f32> = (0..p)
                    .map(|i| ((i * 5 + k * 11) as f32 * 0.29).cos() * (1.0 + k as f32))
                    .collect();
                let mut d = g.clone();
                opt.clone().precondition(&params, &mut d);
                assert_ne!(d, g);
                let _ = opt.take_epoch_stats();
                opt.step(&mut params, &mut g.clone(), &batch).unwrap();
                let stats = opt.take_epoch_stats();
                let got = stats["ngd_step_ratio_mean"].as_f64().unwrap();
                assert_eq!(
                    got,
                    norm(&d) / norm(&g),
                    "{dtype:?}, weight decay {weight_decay}, step {k}"
                );
            }
        }
    }
}

/// The shadow leaves the f32 run's directions untouched and reports the distance to an
/// independent f64-state run on the same gradients; its state resumes exactly.
#[test]
fn shadow_measures_the_f64_run_and_leaves_the_f32_run_alone() {
    let net = tiny_mlp();
    let layout = &net.layout;
    let p = net.num_params();
    let shadowed_cfg = NgdConfig {
        shadow_f64: true,
        ..Default::default()
    };
    let mut plain = Ngd::new(NgdConfig::default(), layout).unwrap();
    let mut shadowed = Ngd::new(shadowed_cfg, layout).unwrap();
    let mut f64_run = Ngd::new(
        NgdConfig {
            dtype: NgdDtype::F64,
            ..Default::default()
        },
        layout,
    )
    .unwrap();
    let grad = |k: usize| -> Vec<f32> {
        (0..p)
            .map(|i| ((i * 7 + k * 13) as f32 * 0.37).sin() * (1.0 + (k % 3) as f32))
            .collect()
    };
    let params = vec![0.1f32; p];
    let steps = 13;
    let (mut overall, mut per) = (0.0, vec![0.0; layout.tensors.len()]);
    for k in 0..steps {
        let g = grad(k);
        let (mut a, mut b, mut c) = (g.clone(), g.clone(), g.clone());
        plain.precondition(&params, &mut a);
        shadowed.precondition(&params, &mut b);
        f64_run.precondition(&params, &mut c);
        assert_eq!(a, b, "step {k}: the shadow changed the f32 direction");
        let dist = |r: std::ops::Range<usize>| -> f64 {
            let d: f64 = a[r.clone()]
                .iter()
                .zip(&c[r.clone()])
                .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
                .sum();
            let n: f64 = g[r].iter().map(|&x| (x as f64).powi(2)).sum();
            (d / n).sqrt()
        };
        overall += dist(0..p);
        for (t, spec) in layout.tensors.iter().enumerate() {
            per[t] += dist(spec.range());
        }
    }
    let (sp, ss) = (plain.take_epoch_stats(), shadowed.take_epoch_stats());
    let got = ss["ngd_shadow_difference"].as_f64().unwrap();
    assert!(
        got > 0.0 && (got - overall / steps as f64).abs() < 1e-12,
        "{got}"
    );
    for (t, spec) in layout.tensors.iter().enumerate() {
        let e = &ss["ngd_tensors"][&spec.name];
        let d = e["shadow_difference"].as_f64().unwrap();
        assert!((d - per[t] / steps as f64).abs() < 1e-12, "{}", spec.name);
        assert!(e["shadow_cosine"].as_f64().unwrap().abs() <= 1.0 + 1e-12);
        assert_eq!(e["cosine"], sp["ngd_tensors"][&spec.name]["cosine"]);
    }
    assert_eq!(ss["ngd_nan_fallbacks"], sp["ngd_nan_fallbacks"]);
    // The sidecar holds the f32 state as without the shadow, plus the shadow's; both resume.
    let (st_plain, st_shadow) = (plain.state(), shadowed.state());
    for (k, v) in &st_plain {
        assert_eq!(st_shadow.get(k), Some(v), "{k}");
    }
    assert!(st_shadow.keys().any(|k| k.starts_with("ngd_shadow.")));
    let mut resumed = Ngd::new(shadowed_cfg, layout).unwrap();
    resumed.load_state(&st_shadow).unwrap();
    for k in steps..steps + 5 {
        let (mut a, mut b) = (grad(k), grad(k));
        shadowed.precondition(&params, &mut a);
        resumed.precondition(&params, &mut b);
        assert_eq!(a, b);
    }
    assert_eq!(
        shadowed.take_epoch_stats()["ngd_shadow_difference"],
        resumed.take_epoch_stats()["ngd_shadow_difference"]
    );
    let e = Ngd::new(shadowed_cfg, layout)
        .unwrap()
        .load_state(&st_plain)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--ngd-shadow-f64"), "{e}");
}

/// The transposed storage (a tensor's first axis, read in place) gives the same result as the
/// row-major N×D view.
#[test]
fn transposed_storage_matches_row_major() {
    let (n, dim, rank) = (11, 7, 3);
    let set = NgdConfig::default().axis_settings();
    let mut plain = AxisPreconditioner::<f64>::new(n, dim, rank, false, set);
    let mut trans = AxisPreconditioner::<f64>::new(n, dim, rank, true, set);
    let mut rng = crate::rng::stream(5, crate::rng::Purpose::Probe, 0);
    for t in 0..15 {
        // Full-rank gradients (rank 7 > r): well-conditioned, so only rounding differs.
        let x: Vec<f64> = (0..n * dim).map(|_| rng.normal()).collect();
        let mut xt = vec![0.0; n * dim];
        for i in 0..n {
            for d in 0..dim {
                xt[d * n + i] = x[i * dim + d];
            }
        }
        let mut x1 = x.clone();
        plain.precondition(&mut x1);
        trans.precondition(&mut xt);
        for i in 0..n {
            for d in 0..dim {
                let (a, b) = (x1[i * dim + d], xt[d * n + i]);
                assert!((a - b).abs() < 1e-12, "step {t} ({i},{d}) {a} {b}");
            }
        }
    }
}

#[test]
fn rejects_bad_settings() {
    let bad = [
        NgdConfig {
            eta: 0.0,
            ..Default::default()
        },
        NgdConfig {
            eta: 1.5,
            ..Default::default()
        },
        NgdConfig {
            alpha: -0.1,
            ..Default::default()
        },
        NgdConfig {
            rank: Some(0),
            ..Default::default()
        },
        NgdConfig {
            update_period: 0,
            ..Default::default()
        },
        NgdConfig {
            epsilon: 0.0,
            ..Default::default()
        },
    ];
    for c in bad {
        assert!(c.validate().is_err(), "{c:?}");
    }
    assert!(NgdConfig {
        eta: 1.0,
        ..Default::default()
    }
    .validate()
    .is_ok());
}
