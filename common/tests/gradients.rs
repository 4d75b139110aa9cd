//! Every layer's gradient against central finite differences of the loss, in f64.
//!
//! With step h the central difference has truncation error O(h²·L‴) and rounding error about
//! ε·|L|/h. For h = 1e-6, ε = 2.2e-16 and |L| ≈ 2.3 that is ≈ 5e-10, so entries must agree to 1e-8
//! absolute plus 1e-6 relative; a wrong term in a backward pass is off by orders of magnitude more.

mod support;

use common::data::Split;
use common::model::{initialise, Activation, Architecture, Network};
use common::rng::{stream, Purpose};
use support::mnist_small;

fn check_gradient(arch: Architecture, batch: usize, per_tensor: usize) {
    let net = Network::new(arch.clone());
    let data = mnist_small(Split::Train);
    let table = data.normalisation_table::<f64>();
    let mut params: Vec<f64> = initialise(&net, 3);
    // Move away from the initialisation so every layer carries signal (biases nonzero).
    let mut s = stream(11, Purpose::Probe, 0);
    for p in params.iter_mut() {
        *p += 0.02 * s.normal();
    }
    let idx: Vec<usize> = (0..batch).collect();
    let mut x = vec![0.0; batch * data.features()];
    let mut y = vec![0; batch];
    data.gather(&table, &idx, &mut x, &mut y);
    let mut ws = net.workspace::<f64>(batch);
    let mut grad = vec![0.0; net.num_params()];
    let loss = net.loss_and_gradient(&params, &x, &y, &mut grad, &mut ws);
    assert!(loss.is_finite());

    let h = 1e-6;
    let mut worst = 0.0f64;
    for t in &net.layout.tensors {
        let picks: Vec<usize> = (0..per_tensor.min(t.numel))
            .map(|k| {
                t.offset
                    + (k * t.numel) / per_tensor.min(t.numel)
                    + (k * 7919) % (t.numel / per_tensor.min(t.numel)).max(1)
            })
            .collect();
        for i in picks {
            let orig = params[i];
            params[i] = orig + h;
            let (lp, _) = net.loss_sum(&params, &x, &y, &mut ws);
            params[i] = orig - h;
            let (lm, _) = net.loss_sum(&params, &x, &y, &mut ws);
            params[i] = orig;
            let fd = (lp - lm) / (2.0 * h * batch as f64);
            let err = (fd - grad[i]).abs();
            let tol = 1e-8 + 1e-6 * grad[i].abs();
            worst = worst.max(err / tol);
            assert!(
                err <= tol,
                "{} {}: index {} analytic {} vs finite difference {fd} (|diff| {err:e})",
                arch.name(),
                t.name,
                i - t.offset,
                grad[i]
            );
        }
    }
    eprintln!("{}: worst error / tolerance = {worst:.3}", arch.name());
}

#[test]
fn mlp_relu_gradient() {
    check_gradient(Architecture::mlp(vec![16, 12], Activation::Relu), 8, 12);
}

#[test]
fn mlp_tanh_gradient() {
    check_gradient(Architecture::mlp(vec![16, 12], Activation::Tanh), 8, 12);
}

#[test]
fn deep_linear_gradient() {
    check_gradient(
        Architecture::mlp(vec![10, 10, 10], Activation::Identity),
        8,
        12,
    );
}

#[test]
fn lenet_gradient_covers_conv_padding_and_max_pool() {
    check_gradient(Architecture::lenet(2), 4, 10);
}

#[test]
fn lenet_without_extra_layers_gradient() {
    check_gradient(Architecture::lenet(0), 3, 8);
}
