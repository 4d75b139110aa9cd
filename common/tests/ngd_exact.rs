//! Exact damped-Fisher NGD: the Woodbury solve on the B×B Gram matrix against a dense P×P Cholesky
//! oracle on tiny networks (an MLP and a small convolutional net), its λ → ∞ limit, and the PyTorch
//! float64 `gram_check` of the MLP and LeNet reference checkpoints (8 samples, λ = 1e-3).

mod support;

use common::data::Split;
use common::device::cpu::ConvGeometry;
use common::io::Checkpoint;
use common::model::{Activation, Architecture, Conv2d, Linear, MaxPool2d, NetSpec, Network, Tanh};
use common::optim::{
    dense_direction, woodbury_direction, woodbury_direction_after_forward, Damping, WoodburyScratch,
};
use common::rng::{stream, Purpose};
use support::{f64s, fixtures, mnist_small, reference, rel, rel_diff};

fn tiny_mlp() -> Network {
    Network::new(Architecture::Mlp {
        input: 12,
        hidden: vec![8, 6],
        classes: 4,
        activation: Activation::Tanh,
    })
}

/// conv 1→2 3×3 pad 1 (tanh) on 6×6, max-pool 2, Linear 18→3: 77 parameters.
fn tiny_conv() -> Network {
    let arch = Architecture::Mlp {
        input: 36,
        hidden: vec![],
        classes: 3,
        activation: Activation::Identity,
    };
    let geometry = ConvGeometry {
        channels: 1,
        height: 6,
        width: 6,
        kernel: 3,
        padding: 1,
        stride: 1,
    };
    let net = Network::from_definition(arch, |s| {
        s.named("c", |sc| Conv2d::new(sc, geometry, 2));
        s.functional(Tanh { features: 72 });
        s.functional(MaxPool2d::two_by_two(2, 6, 6));
        s.named("l", |sc| Linear::new(sc, 18, 3));
    });
    let offsets: Vec<usize> = net.layout.tensors.iter().map(|t| t.offset).collect();
    assert_eq!(offsets, [0, 18, 20, 74]);
    assert_eq!(
        net.layout.names(),
        ["c.weight", "c.bias", "l.weight", "l.bias"]
    );
    net
}

fn random_problem(net: &Network, b: usize, seed: u64) -> (Vec<f64>, Vec<f64>, Vec<usize>) {
    let mut r = stream(seed, Purpose::Probe, 0);
    let params: Vec<f64> = (0..net.num_params()).map(|_| 0.5 * r.normal()).collect();
    let x: Vec<f64> = (0..b * net.input_features()).map(|_| r.normal()).collect();
    let y: Vec<usize> = (0..b)
        .map(|_| r.below(net.classes() as u64) as usize)
        .collect();
    (params, x, y)
}

#[test]
fn woodbury_matches_dense_oracle_on_tiny_networks() {
    for (name, net) in [("mlp", tiny_mlp()), ("conv", tiny_conv())] {
        let b = 10;
        let (params, x, y) = random_problem(&net, b, 7);
        let p = net.num_params();
        let mut sc = WoodburyScratch::<f64>::new(&net, b);
        let mut d = vec![0.0; p];
        let mut r = stream(3, Purpose::Probe, 1);
        let other_g: Vec<f64> = (0..p).map(|_| r.normal()).collect();
        for damping in [
            Damping::Absolute(1e-3),
            Damping::Absolute(0.5),
            Damping::Relative(0.01),
        ] {
            for g in [None, Some(&other_g[..])] {
                woodbury_direction(&net, &params, &x, &y, g, damping, &mut sc, &mut d).unwrap();
                let dense = dense_direction(&net, &params, &x, &y, g, damping).unwrap();
                let e = rel_diff(&d, &dense);
                // Both are f64 solves of the same system; F + λI has condition ≲ ‖F‖/λ ~ 1e4 here,
                // so 1e-6 (the bar) is far above the expected ~1e-12.
                assert!(
                    e < 1e-6,
                    "{name} {damping:?} g={}: rel diff {e:e}",
                    g.is_some()
                );
                eprintln!(
                    "{name} {damping:?} explicit g={}: woodbury vs dense {e:e}",
                    g.is_some()
                );
            }
        }
    }
}

/// A residual block with LayerNorm and GELU (layers that keep forward state) before a Linear.
fn tiny_residual() -> Network {
    let spec = serde_json::json!({"input": [12], "layers": [
        {"type": "linear", "out": 8}, {"type": "gelu"},
        {"type": "residual", "layers": [{"type": "layernorm"}, {"type": "linear", "out": 8},
                                        {"type": "gelu"}]},
        {"type": "linear", "out": 4}], "loss": "cross_entropy"});
    let spec = NetSpec::from_json("tiny-residual", &spec).unwrap();
    Network::try_new(Architecture::Spec(Box::new(spec))).unwrap()
}

/// The sampled Fisher's solve reuses the forward pass that gave its logits: the direction after
/// `Network::forward` of the same parameters and inputs is the full pass's to the bit (both forms
/// of g); after the forward pass of other parameters it is not.
#[test]
fn woodbury_after_forward_is_the_full_pass_to_the_bit() {
    for (name, net) in [
        ("mlp", tiny_mlp()),
        ("conv", tiny_conv()),
        ("residual", tiny_residual()),
    ] {
        let b = 9;
        let (params, x, y) = random_problem(&net, b, 5);
        let p = net.num_params();
        let mut r = stream(4, Purpose::Probe, 1);
        let other_g: Vec<f64> = (0..p).map(|_| r.normal()).collect();
        let damping = Damping::Relative(0.1);
        for g in [None, Some(&other_g[..])] {
            let mut sc = WoodburyScratch::<f64>::new(&net, b);
            let mut full = vec![0.0; p];
            woodbury_direction(&net, &params, &x, &y, g, damping, &mut sc, &mut full).unwrap();
            let mut sc = WoodburyScratch::<f64>::new(&net, b);
            net.forward(&params, &x, b, &mut sc.ws);
            let mut after = vec![0.0; p];
            woodbury_direction_after_forward(
                &net, &params, &x, &y, g, damping, &mut sc, &mut after,
            )
            .unwrap();
            assert_eq!(after, full, "{name}, g given: {}", g.is_some());
            // A stale forward pass (other parameters) gives another direction: the reuse matters.
            let shifted: Vec<f64> = params.iter().map(|v| v * 1.5).collect();
            net.forward(&shifted, &x, b, &mut sc.ws);
            woodbury_direction_after_forward(
                &net, &params, &x, &y, g, damping, &mut sc, &mut after,
            )
            .unwrap();
            assert!(
                rel_diff(&after, &full) > 1e-6,
                "{name}: stale forward unnoticed"
            );
        }
    }
}

#[test]
fn huge_damping_gives_the_gradient_over_lambda() {
    let net = tiny_conv();
    let b = 6;
    let (params, x, y) = random_problem(&net, b, 11);
    let mut sc = WoodburyScratch::<f64>::new(&net, b);
    let mut d = vec![0.0; net.num_params()];
    let mut g = vec![0.0; net.num_params()];
    let mut ws = net.workspace::<f64>(b);
    net.loss_and_gradient(&params, &x, &y, &mut g, &mut ws);
    let lambda = 1e9;
    woodbury_direction(
        &net,
        &params,
        &x,
        &y,
        None,
        Damping::Absolute(lambda),
        &mut sc,
        &mut d,
    )
    .unwrap();
    let scaled: Vec<f64> = d.iter().map(|v| v * lambda).collect();
    // λd = g − O(‖F‖/λ)·g with ‖F‖ ~ 1 here: 1e-9 relative, checked at 1e-7.
    let e = rel_diff(&scaled, &g);
    assert!(e < 1e-7, "λ·d vs g: {e:e}");
}

fn gram_check(ck_name: &str, ref_name: &str) {
    let ck = Checkpoint::load(&fixtures().join("reference").join(ck_name), None).unwrap();
    let net = &ck.network;
    let r = reference(ref_name);
    let gc = &r["gram_check"];
    let data = mnist_small(Split::Train);
    let table = data.normalisation_table::<f64>();
    let b = 8;
    let mut x = vec![0.0; b * data.features()];
    let mut y = vec![0usize; b];
    data.gather_range(&table, 0, b, &mut x, &mut y);
    let params: Vec<f64> = ck.params.iter().map(|&v| v as f64).collect();
    let mut sc = WoodburyScratch::<f64>::new(net, b);
    let p = net.num_params();
    let mut d = vec![0.0; p];
    let lambda = gc["lambda"].as_f64().unwrap();
    woodbury_direction(
        net,
        &params,
        &x,
        &y,
        None,
        Damping::Absolute(lambda),
        &mut sc,
        &mut d,
    )
    .unwrap();

    // The Gram matrix itself, through the same per-sample products.
    let mut gram = vec![0.0; b * b];
    let mut ws = net.workspace::<f64>(b);
    let mut g = vec![0.0; p];
    net.loss_and_gradient(&params, &x, &y, &mut g, &mut ws);
    let mut ps = net.per_sample_scratch::<f64>(b);
    net.per_sample_prepare(&params, &x, b, &ws, &mut ps);
    net.per_sample_gram(&x, b, &ws, &mut ps, &mut gram);
    let want_gram: Vec<f64> = gc["GGt"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(f64s)
        .collect();
    // README: ~1e-10 relative for float64 implementations (GGt, d).
    let eg = rel_diff(&gram, &want_gram);
    assert!(eg < 1e-10, "{ck_name}: GGt rel diff {eg:e}");

    let norm: f64 = d.iter().map(|v| v * v).sum::<f64>().sqrt();
    let want_norm = gc["d_norm"].as_f64().unwrap();
    assert!(
        rel(norm, want_norm) < 1e-9,
        "{ck_name}: d_norm {norm} vs {want_norm}"
    );
    let sum: f64 = d.iter().sum();
    let abs_sum: f64 = d.iter().map(|v| v.abs()).sum();
    assert!(
        (sum - gc["d_sum"].as_f64().unwrap()).abs() < 1e-9 * abs_sum,
        "{ck_name}: d_sum {sum}"
    );
    assert!(
        rel(abs_sum, gc["d_abs_sum"].as_f64().unwrap()) < 1e-9,
        "{ck_name}: d_abs_sum"
    );
    let sin_norm = (0..p).map(|i| (i as f64).sin().powi(2)).sum::<f64>().sqrt();
    let dot_sin: f64 = d
        .iter()
        .enumerate()
        .map(|(i, v)| (i as f64).sin() * v)
        .sum();
    // A dot product with cancellation: compared on the scale ‖d‖·‖sin‖ (Cauchy–Schwarz bound).
    assert!(
        (dot_sin - gc["d_dot_sin"].as_f64().unwrap()).abs() < 1e-10 * norm * sin_norm,
        "{ck_name}: d_dot_sin {dot_sin}"
    );
    let mut worst: f64 = 0.0;
    let mut count = 0;
    for spec in &net.layout.tensors {
        let probe = &gc["d_probes"][&spec.name];
        let idx = probe["local_indices"].as_array().unwrap();
        let vals = f64s(&probe["values"]);
        for (i, want) in idx.iter().zip(vals) {
            let got = d[spec.offset + i.as_u64().unwrap() as usize];
            // Entries on the scale of the largest |d| (small entries carry absolute rounding).
            worst = worst.max((got - want).abs() / gc["d_max"].as_f64().unwrap().abs());
            count += 1;
        }
        let first = f64s(&gc["d_first10_per_tensor"][&spec.name]);
        for (k, want) in first.iter().enumerate() {
            worst =
                worst.max((d[spec.offset + k] - want).abs() / gc["d_max"].as_f64().unwrap().abs());
        }
    }
    assert!(count > 20);
    assert!(worst < 1e-10, "{ck_name}: probes worst {worst:e}");
    eprintln!(
        "{ck_name}: GGt {eg:e}, d_norm rel {:e}, probes {worst:e}",
        rel(norm, want_norm)
    );
}

#[test]
fn reproduces_reference_gram_check_mlp() {
    gram_check("mlp_1x128.safetensors", "mlp_1x128.ref.json");
}

#[test]
fn reproduces_reference_gram_check_lenet() {
    gram_check("lenet.safetensors", "lenet.ref.json");
}

/// The optimiser's fast path (empirical Fisher: f32 per-sample products, f64 Gram solve) against the
/// f64 Woodbury direction on the reference MLP's first 8 images with λ = 1e-3.
#[test]
fn optimiser_f32_path_matches_f64_direction() {
    use common::optim::{Batch, NgdExact, NgdExactConfig};
    let ck = Checkpoint::load(&fixtures().join("reference/mlp_1x128.safetensors"), None).unwrap();
    let net = &ck.network;
    let data = mnist_small(Split::Train);
    let b = 8;
    let mut x64 = vec![0.0; b * data.features()];
    let mut y = vec![0usize; b];
    data.gather_range(&data.normalisation_table::<f64>(), 0, b, &mut x64, &mut y);
    let mut x32 = vec![0f32; b * data.features()];
    data.gather_range(&data.normalisation_table::<f32>(), 0, b, &mut x32, &mut y);
    let params64: Vec<f64> = ck.params.iter().map(|&v| v as f64).collect();
    let p = net.num_params();
    let mut want = vec![0.0; p];
    let mut sc = WoodburyScratch::<f64>::new(net, b);
    woodbury_direction(
        net,
        &params64,
        &x64,
        &y,
        None,
        Damping::Absolute(1e-3),
        &mut sc,
        &mut want,
    )
    .unwrap();
    let mut opt = NgdExact::new(NgdExactConfig {
        fisher: common::optim::FisherKind::Empirical,
        damping: Damping::Absolute(1e-3),
        preserve_norm: false,
        ..Default::default()
    })
    .unwrap();
    let mut grad = vec![0f32; p];
    let solve = opt
        .precondition(
            &ck.params,
            &mut grad,
            &Batch {
                net,
                x: &x32[..],
                targets: common::model::Targets::Labels(&y),
            },
        )
        .unwrap();
    let got: Vec<f64> = grad.iter().map(|&v| v as f64).collect();
    let e = rel_diff(&got, &want);
    // f32 inputs and per-sample products (~1e-7 relative) through a solve whose condition number is
    // cond(GGᵀ + 8λI) ≈ 15.5 / 0.008 ~ 2e3 (GGt's largest entry over the damping): ≲ 2e-4 expected.
    eprintln!(
        "f32 path vs f64: {e:e}, gram condition estimate {:e}",
        solve.gram_condition
    );
    assert!(e < 1e-3, "f32 path vs f64 direction: {e:e}");
}
