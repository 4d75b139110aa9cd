//! The mean squared error through whole networks, in f64 against independent computations: the
//! loss against `F.mse_loss` written out, the gradient against central differences, Hessian–vector
//! and Gauss–Newton products against dense finite-difference matrices, the exact trace of a
//! piecewise-linear network against the finite-difference diagonal, and the exact natural gradient
//! (Woodbury on per-sample gradients) against a dense solve, with the targets it samples.
//!
//! Tolerances as in `curvature_dense.rs`: a central difference with h = 1e-5 has truncation and
//! rounding error ≲ 1e-10 for O(1) derivatives, so columns agree to 1e-7 relative to their norm.
//! At h = 1e-5 no ReLU changes state for these seeds (otherwise a column would be off by O(1)).

// The tests choose the BLAS provider, as the binaries do.
extern crate blas_openblas;

mod support;
use support::{assert_column, diff, norm};

use common::curvature::Curvature;
use common::model::{
    initialise, mse_fisher_variance, Activation, Architecture, Loss, Network, Targets,
};
use common::optim::{
    dense_direction, sample_gaussian_targets, woodbury_direction, Batch, Damping, FisherKind,
    NgdExact, NgdExactConfig, WoodburyScratch,
};
use common::rng::{stream, Purpose};

/// `y`: `n × k` float targets, k = `width`.
type Problem = support::Problem<Vec<f64>>;

fn problem(activation: Activation, k: usize) -> Problem {
    let mut net = Network::new(Architecture::Mlp {
        input: 5,
        hidden: vec![6, 4],
        classes: k,
        activation,
    });
    net.loss = Loss::MeanSquaredError;
    let mut params: Vec<f64> = initialise(&net, 8);
    let mut s = stream(31, Purpose::Probe, 0);
    for p in params.iter_mut() {
        *p += 0.3 * s.normal();
    }
    let n = 7;
    let x: Vec<f64> = (0..n * 5).map(|_| s.normal()).collect();
    let y: Vec<f64> = (0..n * k).map(|_| s.normal()).collect();
    Problem {
        net,
        params,
        x,
        y,
        width: k,
    }
}

impl Problem {
    fn loss(&self, params: &[f64]) -> f64 {
        self.loss_and_gradient(params).0
    }
    /// The network's outputs, `n × k`.
    fn outputs(&self, params: &[f64]) -> Vec<f64> {
        let mut ws = self.net.workspace::<f64>(self.n());
        self.net
            .forward(params, &self.x, self.n(), &mut ws)
            .to_vec()
    }
}

/// The network's loss is `F.mse_loss(f(x), y)`: the mean over all n·k squared residuals.
#[test]
fn the_loss_is_the_mean_over_all_elements() {
    let p = problem(Activation::Tanh, 3);
    let f = p.outputs(&p.params);
    let by_hand = f
        .iter()
        .zip(&p.y)
        .map(|(a, b)| (a - b) * (a - b))
        .sum::<f64>()
        / (p.n() * p.width) as f64;
    assert!((p.loss(&p.params) - by_hand).abs() < 1e-14 * by_hand);
}

#[test]
fn the_gradient_is_the_central_difference() {
    for act in [Activation::Tanh, Activation::Relu] {
        for k in [1, 3] {
            let p = problem(act, k);
            p.assert_gradient_is_the_central_difference(&format!("{act:?} k={k}"));
        }
    }
}

/// H·e_j against the finite-difference column for every j, in chunks of 3 samples; the
/// Gauss–Newton product against Jᵀ(2/k)J/n from a finite-difference Jacobian of the outputs.
#[test]
fn hessian_and_gauss_newton_products_against_dense_matrices() {
    for act in [Activation::Tanh, Activation::Relu] {
        let p = problem(act, 2);
        let dim = p.params.len();
        let mut op = p.operator(3);
        // Jacobian of the outputs (n·k × P) by central differences.
        let h = 1e-5;
        let jac = p.fd_jacobian(h, |q| p.outputs(q));
        assert_eq!(jac.len(), p.n() * p.width);
        let scale = 2.0 / (p.width * p.n()) as f64;
        for j in 0..dim {
            let e = p.assert_hessian_column(&mut op, j, h, &format!("{act:?}"));
            let mut gv = vec![0.0; dim];
            op.gnvp(&e, &mut gv);
            let dense: Vec<f64> = (0..dim)
                .map(|i| scale * jac.iter().map(|row| row[i] * row[j]).sum::<f64>())
                .collect();
            assert_column(&gv, &dense, &format!("{act:?}: G column {j}"));
        }
        // A piecewise-linear net is linear in each single parameter, so ∂²f/∂θⱼ² = 0 and the
        // Hessian's diagonal is the Gauss–Newton matrix's (the off-diagonal differ: products of
        // weights of two layers); a tanh net's diagonal differs.
        let mut largest_gap: f64 = 0.0;
        for j in 0..dim {
            let mut e = vec![0.0; dim];
            e[j] = 1.0;
            let (mut hv, mut gv) = (vec![0.0; dim], vec![0.0; dim]);
            op.products(&[&e], &mut [&mut hv], Curvature::Hessian);
            op.products(&[&e], &mut [&mut gv], Curvature::GaussNewton);
            largest_gap = largest_gap.max((hv[j] - gv[j]).abs() / (1e-12 + hv[j].abs()));
        }
        match act {
            Activation::Relu => assert!(largest_gap <= 1e-12, "{largest_gap:e}"),
            _ => assert!(largest_gap > 1e-3, "{largest_gap:e}"),
        }
    }
}

/// The exact trace (per-sample gradient norms through the factor √(2/k)·I) equals the sum of the
/// finite-difference diagonal of H for a ReLU network, for one and several outputs.
#[test]
fn exact_trace_equals_the_finite_difference_diagonal() {
    for k in [1, 3] {
        let p = problem(Activation::Relu, k);
        p.assert_exact_trace_is_the_fd_diagonal(&format!("k={k}"));
    }
}

/// Per-sample gradients of the mean squared error: the Woodbury direction equals the dense
/// (GᵀG/B + λI)⁻¹g solve with G from one backward pass per sample, for the empirical Fisher (true
/// targets) and for any g.
#[test]
fn exact_natural_gradient_matches_the_dense_solve() {
    let p = problem(Activation::Relu, 2);
    let b = p.n();
    let damping = Damping::Relative(0.5);
    let mut sc = WoodburyScratch::<f64>::new(&p.net, b);
    let mut d = vec![0.0; p.params.len()];
    woodbury_direction(
        &p.net,
        &p.params,
        &p.x,
        p.targets(),
        None,
        damping,
        &mut sc,
        &mut d,
    )
    .unwrap();
    let dense = dense_direction(&p.net, &p.params, &p.x, p.targets(), None, damping).unwrap();
    assert!(diff(&d, &dense) <= 1e-9 * norm(&dense), "empirical");
    let g: Vec<f64> = (0..p.params.len())
        .map(|i| (i as f64 * 0.3).cos())
        .collect();
    woodbury_direction(
        &p.net,
        &p.params,
        &p.x,
        p.targets(),
        Some(&g),
        damping,
        &mut sc,
        &mut d,
    )
    .unwrap();
    let dense = dense_direction(&p.net, &p.params, &p.x, p.targets(), Some(&g), damping).unwrap();
    assert!(diff(&d, &dense) <= 1e-9 * norm(&dense), "any g");
}

/// `ngd-exact` with the sampled Fisher on a regression batch: the step it takes is the dense solve
/// with targets drawn from N(f(x), (k/2)·I) by its own stream (seed, `Labels`, step index).
#[test]
fn sampled_fisher_draws_gaussian_targets() {
    let p = problem(Activation::Relu, 2);
    let b = p.n();
    let params32: Vec<f32> = p.params.iter().map(|&v| v as f32).collect();
    let x32: Vec<f32> = p.x.iter().map(|&v| v as f32).collect();
    let y32: Vec<f32> = p.y.iter().map(|&v| v as f32).collect();
    let targets = Targets::Values {
        values: &y32,
        width: 2,
    };
    let mut ws = p.net.workspace::<f32>(b);
    let mut grad = vec![0f32; p.params.len()];
    p.net
        .loss_and_gradient(&params32, &x32, targets, &mut grad, &mut ws);
    let g64: Vec<f64> = grad.iter().map(|&v| v as f64).collect();
    let damping = Damping::Absolute(0.1);
    let mut opt = NgdExact::new(NgdExactConfig {
        fisher: FisherKind::Sampled,
        damping,
        preserve_norm: false,
        seed: 9,
        ..Default::default()
    })
    .unwrap();
    let batch = Batch {
        net: &p.net,
        x: &x32[..],
        targets,
    };
    opt.precondition(&params32, &mut grad, &batch).unwrap();
    // The same draw by hand, from the f64 copies the optimiser makes.
    let p64: Vec<f64> = params32.iter().map(|&v| v as f64).collect();
    let x64: Vec<f64> = x32.iter().map(|&v| v as f64).collect();
    let mut wsd = p.net.workspace::<f64>(b);
    let f = p.net.forward(&p64, &x64, b, &mut wsd).to_vec();
    let mut drawn = vec![0.0; f.len()];
    sample_gaussian_targets(&f, 2, &mut stream(9, Purpose::Labels, 0), &mut drawn);
    let residual: Vec<f64> = drawn.iter().zip(&f).map(|(a, b)| a - b).collect();
    // The draw has the stated spread (σ² = k/2 = 1 here) and is not the true targets.
    assert_eq!(mse_fisher_variance(2), 1.0);
    assert!(norm(&residual) > 0.5 && diff(&drawn, &p.y) > 0.5);
    let dense = dense_direction(
        &p.net,
        &p64,
        &x64,
        Targets::Values {
            values: &drawn,
            width: 2,
        },
        Some(&g64),
        damping,
    )
    .unwrap();
    let got: Vec<f64> = grad.iter().map(|&v| v as f64).collect();
    assert!(
        diff(&got, &dense) <= 1e-5 * norm(&dense),
        "{:e} of {:e}",
        diff(&got, &dense),
        norm(&dense)
    );
}
