//! Shared helpers of the numerical tests: fixture paths and reference values.
#![allow(dead_code)]

extern crate blas_openblas;

use common::data::{Dataset, DatasetKind, Split};
use serde_json::Value;
use std::path::PathBuf;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// The committed subset: the first 1,280 MNIST training images and the first 200 test images.
pub fn mnist_small(split: Split) -> Dataset {
    Dataset::load(DatasetKind::Mnist, &fixtures().join("mnist-small"), split).expect("fixture data")
}

pub fn reference(name: &str) -> Value {
    let p = fixtures().join("reference").join(name);
    serde_json::from_slice(&std::fs::read(&p).expect("reference file")).expect("reference JSON")
}

pub fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

/// Relative difference |a − b| / max(|b|, tiny).
pub fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-300)
}

/// The targets of a small test problem, `width` entries per sample: float values (MSE) or labels
/// (cross-entropy at every position).
pub trait TargetRows {
    fn rows(&self, width: usize) -> common::model::Targets<'_, f64>;
    fn len(&self) -> usize;
}

impl TargetRows for Vec<f64> {
    fn rows(&self, width: usize) -> common::model::Targets<'_, f64> {
        common::model::Targets::Values {
            values: self,
            width,
        }
    }
    fn len(&self) -> usize {
        self.len()
    }
}

impl TargetRows for Vec<usize> {
    fn rows(&self, width: usize) -> common::model::Targets<'_, f64> {
        common::model::Targets::Tokens {
            labels: self,
            positions: width,
        }
    }
    fn len(&self) -> usize {
        self.len()
    }
}

/// ‖v‖₂.
pub fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// ‖a − b‖₂.
pub fn diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt()
}

/// ‖a − b‖₂ / ‖b‖₂ (‖b‖ floored at 1e-300); the lengths must agree.
pub fn rel_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "rel_diff: lengths");
    diff(a, b) / norm(b).max(1e-300)
}

/// Asserts ‖got − want‖ ≤ 1e-7·‖want‖ + 1e-9: a column of a Hessian-type matrix against its
/// dense or finite-difference reference; `what` labels a failure.
pub fn assert_column(got: &[f64], want: &[f64], what: &str) {
    let err = diff(got, want);
    assert!(
        err <= 1e-7 * norm(want) + 1e-9,
        "{what}: {err:e} of {:e}",
        norm(want)
    );
}

/// A network in f64 at fixed parameters on a handful of samples, with what the loss tests take
/// of it: the loss and gradient anywhere, central-difference Hessian columns and the exact Hessian
/// operator at `params`.
pub struct Problem<Y> {
    pub net: common::model::Network,
    pub params: Vec<f64>,
    pub x: Vec<f64>,
    /// `n × width` targets.
    pub y: Y,
    pub width: usize,
}

impl<Y: TargetRows> Problem<Y> {
    pub fn n(&self) -> usize {
        self.y.len() / self.width
    }
    pub fn targets(&self) -> common::model::Targets<'_, f64> {
        self.y.rows(self.width)
    }
    pub fn loss_and_gradient(&self, params: &[f64]) -> (f64, Vec<f64>) {
        let mut ws = self.net.workspace::<f64>(self.n());
        let mut g = vec![0.0; self.net.num_params()];
        let l = self
            .net
            .loss_and_gradient(params, &self.x, self.targets(), &mut g, &mut ws);
        (l, g)
    }
    /// Column j of the Hessian at `params` by central differences of the gradient, step h.
    pub fn fd_column(&self, j: usize, h: f64) -> Vec<f64> {
        let mut p = self.params.clone();
        p[j] += h;
        let gp = self.loss_and_gradient(&p).1;
        p[j] -= 2.0 * h;
        let gm = self.loss_and_gradient(&p).1;
        gp.iter()
            .zip(&gm)
            .map(|(a, b)| (a - b) / (2.0 * h))
            .collect()
    }
    /// The Jacobian of `outputs` (any function of the parameters) at `params` by central
    /// differences, step h: one row per output, one column per parameter.
    pub fn fd_jacobian(&self, h: f64, outputs: impl Fn(&[f64]) -> Vec<f64>) -> Vec<Vec<f64>> {
        let dim = self.params.len();
        let mut jac = Vec::new();
        for j in 0..dim {
            let mut q = self.params.clone();
            q[j] += h;
            let up = outputs(&q);
            q[j] -= 2.0 * h;
            let down = outputs(&q);
            jac.resize(up.len(), vec![0.0; dim]);
            for (r, row) in jac.iter_mut().enumerate() {
                row[j] = (up[r] - down[r]) / (2.0 * h);
            }
        }
        jac
    }
    /// Asserts that `op`'s H·e_j is the central-difference column j (step h), as
    /// [`assert_column`]; returns e_j for the caller's other products.
    pub fn assert_hessian_column(
        &self,
        op: &mut common::curvature::HessianOperator<f64>,
        j: usize,
        h: f64,
        name: &str,
    ) -> Vec<f64> {
        let dim = self.params.len();
        let mut e = vec![0.0; dim];
        e[j] = 1.0;
        let mut hv = vec![0.0; dim];
        op.hvp(&e, &mut hv);
        assert_column(&hv, &self.fd_column(j, h), &format!("{name}: H column {j}"));
        e
    }
    /// Asserts that the exact trace (chunks of 2 samples) is the sum of the central-difference
    /// Hessian diagonal (step 1e-5) to 1e-7 relative; `name` labels a failure.
    pub fn assert_exact_trace_is_the_fd_diagonal(&self, name: &str) {
        let ex = self.operator(2).exact_trace().unwrap();
        let fd: f64 = (0..self.params.len())
            .map(|j| self.fd_column(j, 1e-5)[j])
            .sum();
        assert!(
            (ex.trace - fd).abs() <= 1e-7 * fd.abs(),
            "{name}: exact {} vs finite differences {fd}",
            ex.trace
        );
    }
    /// Asserts the gradient at `params` equals the central difference of the loss (step 1e-6) in
    /// every coordinate, to 1e-7·(1 + |fd|); `name` labels a failure.
    pub fn assert_gradient_is_the_central_difference(&self, name: &str) {
        let (_, g) = self.loss_and_gradient(&self.params);
        let h = 1e-6;
        for j in 0..self.params.len() {
            let mut q = self.params.clone();
            q[j] += h;
            let up = self.loss_and_gradient(&q).0;
            q[j] -= 2.0 * h;
            let down = self.loss_and_gradient(&q).0;
            let fd = (up - down) / (2.0 * h);
            assert!(
                (fd - g[j]).abs() <= 1e-7 * (1.0 + fd.abs()),
                "{name} param {j}: {} vs {fd}",
                g[j]
            );
        }
    }
    /// The loss and gradient of sample `n` alone (a batch of one): ℓₙ and gₙ.
    pub fn sample_loss_and_gradient(&self, n: usize) -> (f64, Vec<f64>) {
        let f = self.net.input_features();
        let mut ws = self.net.workspace::<f64>(1);
        let mut g = vec![0.0; self.net.num_params()];
        let l = self.net.loss_and_gradient(
            &self.params,
            &self.x[n * f..(n + 1) * f],
            self.targets().range(n, n + 1),
            &mut g,
            &mut ws,
        );
        (l, g)
    }
    /// Asserts that the network's per-sample Gram matrix G·Gᵀ at `params` is the products of the
    /// single-sample gradients `g` (one per sample), to 1e-12·(1 + |gᵢ·gⱼ|); `name` labels a
    /// failure.
    pub fn assert_gram_is_of_the_sample_gradients(&self, g: &[Vec<f64>], name: &str) {
        let b = self.n();
        assert_eq!(g.len(), b, "{name}: one gradient per sample");
        let mut ws = self.net.workspace(b);
        self.net
            .per_sample_pass(&self.params, &self.x, self.targets(), &mut ws);
        let mut sc = self.net.per_sample_scratch(b);
        self.net
            .per_sample_prepare(&self.params, &self.x, b, &ws, &mut sc);
        let mut gram = vec![0.0; b * b];
        self.net
            .per_sample_gram(&self.x, b, &ws, &mut sc, &mut gram);
        for i in 0..b {
            for j in 0..b {
                let want: f64 = g[i].iter().zip(&g[j]).map(|(a, b)| a * b).sum();
                let got = gram[i * b + j];
                assert!(
                    (got - want).abs() <= 1e-12 * (1.0 + want.abs()),
                    "{name}: Gram[{i},{j}] {got} vs {want}"
                );
            }
        }
    }
    pub fn operator(&self, batch: usize) -> common::curvature::HessianOperator<f64> {
        common::curvature::HessianOperator::new(
            &self.net,
            &self.params,
            &self.x,
            self.targets(),
            batch,
            1 << 30,
        )
        .unwrap()
    }
}
