//! Hessian–vector products, the Gauss–Newton product and the trace/eigenvalue estimators against
//! dense matrices of tiny networks built by central finite differences of the exact gradient (f64).
//!
//! Tolerances: the central difference of the gradient with step h has truncation error O(h²·‖∂³L‖)
//! and rounding error ≈ ε·‖g‖/h; for h = 1e-5, ε = 2.2e-16 and O(1) derivatives both are ≲ 1e-10, so a
//! column must agree to 1e-7 relative to its norm (plus 1e-9 absolute). A missing cross-layer term
//! is off by O(1) relative (checked: the Gauss–Newton column misses the finite difference by far
//! more). At h = 1e-5 no ReLU or max-pool winner changes state for these seeds (otherwise the
//! difference quotient, not the product, would be off by O(1) and the test would say so).

mod support;

use common::curvature::{
    eigen::symmetric_eigen, hutchinson, hutchpp, top_eigenvalues, Curvature, DenseOperator,
    HessianOperator, HutchinsonConfig, LinearOperator, ProbeKind,
};
use common::data::Split;
use common::model::{initialise, Activation, Architecture, Network};
use common::rng::{stream, Purpose};
use support::{diff, mnist_small, norm};

struct Problem {
    net: Network,
    params: Vec<f64>,
    x: Vec<f64>,
    y: Vec<usize>,
}

fn tiny_mlp(activation: Activation) -> Problem {
    let net = Network::new(Architecture::Mlp {
        input: 6,
        hidden: vec![5, 4],
        classes: 3,
        activation,
    });
    let mut params: Vec<f64> = initialise(&net, 5);
    let mut s = stream(21, Purpose::Probe, 0);
    for p in params.iter_mut() {
        *p += 0.3 * s.normal();
    }
    let n = 7;
    let x: Vec<f64> = (0..n * 6).map(|_| s.normal()).collect();
    let y: Vec<usize> = (0..n).map(|_| s.below(3) as usize).collect();
    Problem { net, params, x, y }
}

fn lenet(extra_layers: usize, n: usize) -> Problem {
    let net = Network::new(Architecture::lenet(extra_layers));
    let mut params: Vec<f64> = initialise(&net, 3);
    let mut s = stream(13, Purpose::Probe, 0);
    for p in params.iter_mut() {
        *p += 0.02 * s.normal();
    }
    let data = mnist_small(Split::Train);
    let table = data.normalisation_table::<f64>();
    let mut x = vec![0.0; n * data.features()];
    let mut y = vec![0; n];
    data.gather_range(&table, 0, n, &mut x, &mut y);
    Problem { net, params, x, y }
}

impl Problem {
    fn operator(&self, batch: usize) -> HessianOperator<f64> {
        HessianOperator::new(&self.net, &self.params, &self.x, &self.y, batch, 1 << 30).unwrap()
    }
    fn gradient(&self, params: &[f64]) -> Vec<f64> {
        let mut ws = self.net.workspace::<f64>(self.y.len());
        let mut g = vec![0.0; self.net.num_params()];
        self.net
            .loss_and_gradient(params, &self.x, &self.y, &mut g, &mut ws);
        g
    }
    /// Column j of H by central differences of the gradient.
    fn fd_column(&self, j: usize, h: f64) -> Vec<f64> {
        let mut p = self.params.clone();
        p[j] += h;
        let gp = self.gradient(&p);
        p[j] -= 2.0 * h;
        let gm = self.gradient(&p);
        gp.iter()
            .zip(&gm)
            .map(|(a, b)| (a - b) / (2.0 * h))
            .collect()
    }
    fn unit(&self, j: usize) -> Vec<f64> {
        let mut e = vec![0.0; self.net.num_params()];
        e[j] = 1.0;
        e
    }
}

/// Compares H·e_j with the finite-difference column for `columns`; returns the largest relative error
/// of the Gauss–Newton column against the same finite difference.
fn check_columns(p: &Problem, columns: &[usize], batch: usize) -> f64 {
    let mut op = p.operator(batch);
    let mut gn_gap: f64 = 0.0;
    for &j in columns {
        let fd = p.fd_column(j, 1e-5);
        let e = p.unit(j);
        let mut hv = vec![0.0; e.len()];
        op.hvp(&e, &mut hv);
        let err = diff(&hv, &fd);
        assert!(
            err <= 1e-7 * norm(&fd) + 1e-9,
            "{}: column {j}: |Hv − fd| = {err:e}, |fd| = {:e}",
            p.net.arch.name(),
            norm(&fd)
        );
        let mut gv = vec![0.0; e.len()];
        op.gnvp(&e, &mut gv);
        gn_gap = gn_gap.max(diff(&gv, &fd) / norm(&fd).max(1e-300));
    }
    gn_gap
}

fn spread_columns(net: &Network, per_tensor: usize) -> Vec<usize> {
    net.layout
        .tensors
        .iter()
        .flat_map(|t| {
            let k = per_tensor.min(t.numel);
            (0..k).map(move |i| t.offset + (i * t.numel) / k + (i * 7) % (t.numel / k).max(1))
        })
        .collect()
}

#[test]
fn hvp_matches_finite_differences_on_tiny_mlps() {
    for act in [Activation::Relu, Activation::Tanh, Activation::Identity] {
        let p = tiny_mlp(act);
        let all: Vec<usize> = (0..p.net.num_params()).collect();
        // Chunks of 3 samples (7 = 3 + 3 + 1) exercise the weighting of partial chunks.
        let gn_gap = check_columns(&p, &all, 3);
        // The Hessian is not the Gauss–Newton matrix: the cross-layer terms are there and matter.
        assert!(
            gn_gap > 1e-3,
            "{act:?}: Gauss–Newton column equals the Hessian column ({gn_gap:e})"
        );
    }
}

#[test]
fn hvp_matches_finite_differences_on_lenet_with_padding_and_max_pool() {
    // extra_layers = 1 puts a padded (padding 2) 6→6 convolution in; both max-pools are there.
    let p = lenet(1, 3);
    let cols = spread_columns(&p.net, 3);
    let gn_gap = check_columns(&p, &cols, 2);
    assert!(
        gn_gap > 1e-3,
        "Gauss–Newton column equals the Hessian column ({gn_gap:e})"
    );
    let p0 = lenet(0, 2);
    check_columns(&p0, &spread_columns(&p0.net, 2), 2);
}

/// The dense Hessian of a tiny problem, column by column from the operator.
fn dense(op: &mut HessianOperator<f64>) -> DenseOperator {
    let dim = op.dim();
    let mut m = vec![0.0; dim * dim];
    for j in 0..dim {
        let mut e = vec![0.0; dim];
        e[j] = 1.0;
        let mut col = vec![0.0; dim];
        op.apply(&e, &mut col);
        for i in 0..dim {
            m[i * dim + j] = col[i];
        }
    }
    DenseOperator { dim, matrix: m }
}

#[test]
fn hessian_is_symmetric() {
    for p in [
        tiny_mlp(Activation::Relu),
        tiny_mlp(Activation::Tanh),
        lenet(1, 2),
    ] {
        let mut op = p.operator(2);
        let dim = op.dim();
        let mut s = stream(4, Purpose::Probe, 9);
        let u: Vec<f64> = (0..dim).map(|_| s.normal()).collect();
        let v: Vec<f64> = (0..dim).map(|_| s.normal()).collect();
        let (mut hu, mut hv) = (vec![0.0; dim], vec![0.0; dim]);
        op.hvp(&u, &mut hu);
        op.hvp(&v, &mut hv);
        let a: f64 = u.iter().zip(&hv).map(|(x, y)| x * y).sum();
        let b: f64 = v.iter().zip(&hu).map(|(x, y)| x * y).sum();
        let scale = norm(&u) * norm(&hv);
        // Rounding only: P·ε·|u||Hv| ≈ 1e-11 relative for P ≤ 5e4.
        assert!(
            (a - b).abs() <= 1e-12 * scale * (dim as f64).sqrt(),
            "{}: {a} vs {b}",
            p.net.arch.name()
        );
    }
}

#[test]
fn gauss_newton_product_matches_jacobian_formula() {
    // G = (1/n)·Σᵢ Jᵢᵀ·Aᵢ·Jᵢ with Jᵢ from central differences of the logits.
    for act in [Activation::Relu, Activation::Tanh] {
        let p = tiny_mlp(act);
        let (n, c, dim) = (p.y.len(), 3, p.net.num_params());
        let mut ws = p.net.workspace::<f64>(n);
        let h = 1e-6;
        let mut jac = vec![0.0; n * c * dim]; // [i][k][j]
        for j in 0..dim {
            let mut q = p.params.clone();
            q[j] += h;
            let zp = p.net.forward(&q, &p.x, n, &mut ws).to_vec();
            q[j] -= 2.0 * h;
            let zm = p.net.forward(&q, &p.x, n, &mut ws).to_vec();
            for ik in 0..n * c {
                jac[ik * dim + j] = (zp[ik] - zm[ik]) / (2.0 * h);
            }
        }
        let z = p.net.forward(&p.params, &p.x, n, &mut ws).to_vec();
        let mut g = vec![0.0; dim * dim];
        for i in 0..n {
            let m = z[i * c..(i + 1) * c]
                .iter()
                .copied()
                .fold(f64::MIN, f64::max);
            let e: Vec<f64> = z[i * c..(i + 1) * c]
                .iter()
                .map(|v| (v - m).exp())
                .collect();
            let s: f64 = e.iter().sum();
            let pr: Vec<f64> = e.iter().map(|v| v / s).collect();
            for a in 0..c {
                for b in 0..c {
                    let aab = if a == b { pr[a] } else { 0.0 } - pr[a] * pr[b];
                    for r in 0..dim {
                        let jr = jac[(i * c + a) * dim + r];
                        if jr == 0.0 {
                            continue;
                        }
                        for col in 0..dim {
                            g[r * dim + col] += jr * aab * jac[(i * c + b) * dim + col] / n as f64;
                        }
                    }
                }
            }
        }
        let mut op = p.operator(4);
        for j in 0..dim {
            let e = p.unit(j);
            let mut gv = vec![0.0; dim];
            op.gnvp(&e, &mut gv);
            let want: Vec<f64> = (0..dim).map(|r| g[r * dim + j]).collect();
            // Logit differences at h = 1e-6: rounding ε·|z|/h ≈ 1e-10, squared terms ≈ 1e-9 relative.
            assert!(
                diff(&gv, &want) <= 1e-7 * norm(&want) + 1e-9,
                "{act:?} column {j}"
            );
        }
    }
}

#[test]
fn exact_trace_equals_dense_trace_for_piecewise_linear_nets() {
    for p in [tiny_mlp(Activation::Relu), tiny_mlp(Activation::Identity)] {
        let mut op = p.operator(3);
        let d = dense(&mut op);
        let tr: f64 = (0..d.dim).map(|i| d.matrix[i * d.dim + i]).sum();
        let ex = op.exact_trace().unwrap();
        assert!(
            (ex.trace - tr).abs() <= 1e-10 * tr.abs(),
            "{}: {} vs {tr}",
            p.net.arch.name(),
            ex.trace
        );
        for (t, (name, v)) in p.net.layout.tensors.iter().zip(&ex.per_tensor) {
            let block: f64 = t.range().map(|i| d.matrix[i * d.dim + i]).sum();
            assert!(
                (v - block).abs() <= 1e-10 * tr.abs(),
                "{name}: {v} vs {block}"
            );
        }
    }
    // LeNet (convolutions, padding, max-pool): per-tensor diagonal sums from H·e_j on a subset.
    let p = lenet(1, 2);
    let mut op = p.operator(2);
    let ex = op.exact_trace().unwrap();
    for (t, (name, v)) in p.net.layout.tensors.iter().zip(&ex.per_tensor) {
        if t.numel > 1000 {
            continue; // the large fully connected blocks are covered by the fixture test
        }
        let mut sum = 0.0;
        for j in t.range() {
            let e = p.unit(j);
            let mut hv = vec![0.0; e.len()];
            op.hvp(&e, &mut hv);
            sum += hv[j];
        }
        assert!(
            (v - sum).abs() <= 1e-10 * sum.abs().max(1e-12),
            "{name}: {v} vs {sum}"
        );
    }
}

#[test]
fn exact_trace_refuses_tanh() {
    let p = tiny_mlp(Activation::Tanh);
    let err = p.operator(3).exact_trace().unwrap_err().to_string();
    assert!(err.contains("tanh"), "{err}");
}

#[test]
fn hutchinson_is_within_three_standard_errors_of_the_exact_trace() {
    for act in [Activation::Relu, Activation::Tanh] {
        let p = tiny_mlp(act);
        let mut op = p.operator(3);
        let d = dense(&mut op);
        let tr: f64 = (0..d.dim).map(|i| d.matrix[i * d.dim + i]).sum();
        for kind in [ProbeKind::Rademacher, ProbeKind::Gaussian] {
            let cfg = HutchinsonConfig {
                kind,
                seed: 7,
                probes: 400,
                ..HutchinsonConfig::default()
            };
            let est = hutchinson(&mut op, &cfg, &[]).unwrap();
            assert_eq!(est.probes, 400);
            assert!(
                (est.trace - tr).abs() <= 3.0 * est.se,
                "{act:?} {kind:?}: {} ± {} vs {tr}",
                est.trace,
                est.se
            );
            // The operator and the dense matrix give the same per-probe values.
            let est_dense = hutchinson(&mut d.clone(), &cfg, &[]).unwrap();
            assert!((est_dense.trace - est.trace).abs() <= 1e-10 * tr.abs());
        }
        // Adaptive: stops once se ≤ rtol·|mean|, or reports that it did not within max_probes. The
        // ReLU net's trace is 1.28 with a per-probe sd of ≈ 3.8 (10% needs ≈ 900 probes); the tanh
        // net's is −0.68 with sd ≈ 4.4 (10% needs ≈ 4000, 2% ≈ 1e5).
        let cfg = HutchinsonConfig {
            probes: 10,
            rtol: Some(0.1),
            max_probes: 5000,
            ..HutchinsonConfig::default()
        };
        let est = hutchinson(&mut op, &cfg, &[]).unwrap();
        if act == Activation::Relu {
            assert!(
                est.converged
                    && est.se <= 0.1 * est.trace.abs()
                    && est.probes >= 10
                    && est.probes < 5000,
                "{act:?}: {} ± {} after {} probes (exact {tr})",
                est.trace,
                est.se,
                est.probes
            );
        } else {
            let cfg = HutchinsonConfig {
                rtol: Some(0.02),
                ..cfg
            };
            let est = hutchinson(&mut op, &cfg, &[]).unwrap();
            assert!(!est.converged && est.probes == 5000);
        }
        assert!((est.trace - tr).abs() <= 3.0 * est.se);
    }
}

#[test]
fn lanczos_top_eigenvalues_match_the_dense_spectrum() {
    for act in [Activation::Relu, Activation::Tanh] {
        let p = tiny_mlp(act);
        let mut op = p.operator(7);
        let d = dense(&mut op);
        let (w, _) = symmetric_eigen(&d.matrix, d.dim);
        let top = top_eigenvalues(&mut op, 3, 200, 1e-8, 1).unwrap();
        assert!(top.converged);
        for (j, pair) in top.pairs.iter().enumerate() {
            let want = w[d.dim - 1 - j];
            assert!(
                (pair.value - want).abs() <= 1e-8 * want.abs(),
                "{act:?} λ{j}: {} vs {want}",
                pair.value
            );
            assert!(pair.residual <= 1e-6 * want.abs());
        }
    }
}

#[test]
fn hutchpp_has_smaller_variance_than_hutchinson_for_a_decaying_spectrum() {
    // A = Q·diag(1/k²)·Qᵀ with a random orthogonal Q (P = 120); 30 products per estimate, 200 seeds.
    let dim = 120;
    let mut s = stream(3, Purpose::Probe, 77);
    let g: Vec<Vec<f64>> = (0..dim)
        .map(|_| (0..dim).map(|_| s.normal()).collect())
        .collect();
    let mut q: Vec<Vec<f64>> = Vec::new();
    for mut v in g {
        for u in &q {
            let c: f64 = u.iter().zip(&v).map(|(a, b)| a * b).sum();
            v.iter_mut().zip(u).for_each(|(x, y)| *x -= c * y);
        }
        let n = norm(&v);
        q.push(v.iter().map(|x| x / n).collect());
    }
    let mut m = vec![0.0; dim * dim];
    for (k, u) in q.iter().enumerate() {
        let lam = 1.0 / ((k + 1) as f64).powi(2);
        for i in 0..dim {
            for j in 0..dim {
                m[i * dim + j] += lam * u[i] * u[j];
            }
        }
    }
    let tr: f64 = (0..dim).map(|k| 1.0 / ((k + 1) as f64).powi(2)).sum();
    let mut op = DenseOperator { dim, matrix: m };
    let (mut e_h, mut e_pp) = (Vec::new(), Vec::new());
    for seed in 0..200 {
        let cfg = HutchinsonConfig {
            seed,
            probes: 30,
            ..HutchinsonConfig::default()
        };
        e_h.push(hutchinson(&mut op, &cfg, &[]).unwrap().trace);
        let pp = hutchpp(&mut op, 30, ProbeKind::Rademacher, seed).unwrap();
        assert_eq!(pp.matvecs, 30);
        e_pp.push(pp.trace);
    }
    let mse = |xs: &[f64]| xs.iter().map(|x| (x - tr).powi(2)).sum::<f64>() / xs.len() as f64;
    let (vh, vpp) = (mse(&e_h), mse(&e_pp));
    eprintln!(
        "decaying spectrum: Hutchinson MSE {vh:e}, Hutch++ MSE {vpp:e} (ratio {:.1})",
        vh / vpp
    );
    assert!(vpp < 0.1 * vh, "Hutch++ {vpp:e} vs Hutchinson {vh:e}");
    // Hutch++ stays unbiased: the mean is within 3 standard errors.
    let mean = e_pp.iter().sum::<f64>() / 200.0;
    assert!((mean - tr).abs() <= 3.0 * (vpp / 200.0).sqrt());
    let _ = Curvature::Hessian;
}
