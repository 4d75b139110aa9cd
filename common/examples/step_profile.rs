extern crate openblas_src;
use common::data::{Dataset, DatasetKind, Split};
use common::model::{initialise, Activation, Architecture, Network};
use common::optim::{Sgd, SgdConfig};
use common::rng::{stream, Purpose};
use std::time::Instant;
fn main() {
    common::device::cpu::set_blas_threads(1);
    let data = Dataset::load(
        DatasetKind::Mnist,
        std::path::Path::new("data"),
        Split::Train,
    )
    .unwrap();
    let net = Network::new(Architecture::mlp(vec![128], Activation::Relu));
    let mut params: Vec<f32> = initialise(&net, 1);
    let mut opt = Sgd::new(SgdConfig::default()).unwrap();
    let table = data.normalized::<f32>();
    let f = 784;
    let batch = 128;
    let mut ws = net.workspace::<f32>(batch);
    let mut x = vec![0f32; batch * f];
    let mut y = vec![0usize; batch];
    let mut grad = vec![0f32; net.num_params()];
    let order = stream(1, Purpose::Shuffle, 1).permutation(data.len());
    let (mut tg, mut tl, mut to, mut tf) = (0.0, 0.0, 0.0, 0.0);
    for _ in 0..3 {
        for idx in order.chunks(batch) {
            let b = idx.len();
            let s = Instant::now();
            data.gather_normalized(&table, idx, &mut x[..b * f], &mut y[..b]);
            tg += s.elapsed().as_secs_f64();
            let s = Instant::now();
            net.forward(&params, &x[..b * f], b, &mut ws);
            tf += s.elapsed().as_secs_f64();
            let s = Instant::now();
            net.loss_and_gradient(&params, &x[..b * f], &y[..b], &mut grad, &mut ws);
            tl += s.elapsed().as_secs_f64();
            let s = Instant::now();
            opt.apply(&mut params, &mut grad);
            to += s.elapsed().as_secs_f64();
        }
    }
    println!(
        "per epoch: gather {:.3} fwd-only {:.3} loss+grad {:.3} sgd {:.3}",
        tg / 3.0,
        tf / 3.0,
        tl / 3.0,
        to / 3.0
    );
}
