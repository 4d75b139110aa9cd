//! The rounding amplification of the paper's online NGD, measured on real MNIST gradients.
//!
//! At the reference MLP checkpoint (tests/fixtures/reference/mlp_1x128.safetensors), the gradients
//! of the first `steps` minibatches of 128 (file order, the committed MNIST subset, computed in f64)
//! are fed to per-tensor preconditioners (α = 0.01, η = 0.9), with the state in f64, in f32, and in
//! f64 with the gradient perturbed by a relative 1e-12. Per tensor it prints the cosine between the
//! preconditioned directions of the f64 run and the other two at steps 1 and `steps`, the cosine of
//! the direction with the gradient, and the fraction of the factor's rank on the floor; for the
//! default rank and for `--ngd-rank` values.
//!
//! $ cargo run --release -p common --example ngd_rounding [STEPS] [ALPHA]

extern crate blas_openblas;

use common::data::{Dataset, DatasetKind, Split};
use common::io::Checkpoint;
use common::optim::{NgdConfig, NgdDtype, TensorPreconditioner};
use std::path::Path;

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    d / (na * nb)
}

fn main() {
    common::device::cpu::register_blas_threads(blas_openblas::set_threads);
    let steps: usize = std::env::args()
        .nth(1)
        .map_or(10, |s| s.parse().expect("STEPS"));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    let ck =
        Checkpoint::load(&root.join("reference/mlp_1x128.safetensors"), None).expect("checkpoint");
    let net = &ck.network;
    let data =
        Dataset::load(DatasetKind::Mnist, &root.join("mnist-small"), Split::Train).expect("data");
    let params: Vec<f64> = ck.params.iter().map(|&v| v as f64).collect();
    let table = data.normalisation_table::<f64>();
    let b = 128;
    let f = data.features();
    let mut ws = net.workspace::<f64>(b);
    let mut x = vec![0.0; b * f];
    let mut y = vec![0usize; b];
    let grads: Vec<Vec<f64>> = (0..steps)
        .map(|k| {
            let start = (k * b) % (data.len() - b + 1);
            data.gather_range(&table, start, b, &mut x, &mut y);
            let mut g = vec![0.0; net.num_params()];
            net.loss_and_gradient(&params, &x, &y, &mut g, &mut ws);
            g
        })
        .collect();
    let alpha: f64 = std::env::args()
        .nth(2)
        .map_or(0.01, |s| s.parse().expect("ALPHA"));
    println!("steps {steps}, alpha {alpha}, eta 0.9; cos(a, b) between preconditioned directions");
    for rank in [None, Some(9), Some(5), Some(1)] {
        let cfg = NgdConfig {
            rank,
            alpha,
            ..NgdConfig::default()
        };
        println!(
            "-- rank {}",
            rank.map_or("default min((D+1)/2, 80)".to_string(), |r| r.to_string())
        );
        println!(
            "{:<10} {:>22} {:>22} {:>22} {:>15} {:>10} {:>10}",
            "tensor",
            "f64 vs f32 (1st, last)",
            "f64 vs f64+1e-12",
            "f64 vs f64+1e-8",
            "cos(d,g) f64 f32",
            "floor f64",
            "floor f32"
        );
        for spec in &net.layout.tensors {
            let mut p64 = TensorPreconditioner::<f64>::new(
                &spec.shape,
                &NgdConfig {
                    dtype: NgdDtype::F64,
                    ..cfg
                },
            );
            let mut p64b = TensorPreconditioner::<f64>::new(
                &spec.shape,
                &NgdConfig {
                    dtype: NgdDtype::F64,
                    ..cfg
                },
            );
            let mut p64c = TensorPreconditioner::<f64>::new(
                &spec.shape,
                &NgdConfig {
                    dtype: NgdDtype::F64,
                    ..cfg
                },
            );
            let mut p32 = TensorPreconditioner::<f32>::new(&spec.shape, &cfg);
            let (mut c32, mut cpert, mut cpert8, mut cgrad, mut cgrad32) =
                (vec![], vec![], vec![], 0.0, 0.0);
            let (mut fl64, mut fl32) = (0.0, 0.0);
            let mut noise = common::rng::stream(1, common::rng::Purpose::Probe, 0);
            for (k, g) in grads.iter().enumerate() {
                let g = &g[spec.range()];
                let mut a = g.to_vec();
                let mut bb: Vec<f64> = g
                    .iter()
                    .map(|v| v * (1.0 + 1e-12 * noise.normal()))
                    .collect();
                let mut cc: Vec<f64> = g
                    .iter()
                    .map(|v| v * (1.0 + 1e-8 * noise.normal()))
                    .collect();
                let mut c: Vec<f32> = g.iter().map(|&v| v as f32).collect();
                let (mut s64, mut s32, mut n64, mut n32) = (0.0, 0.0, 0, 0);
                p64.precondition(&mut a, |_, o| {
                    if let Some(fr) = o.floor_fraction {
                        s64 += fr;
                        n64 += 1
                    }
                });
                p64b.precondition(&mut bb, |_, _| {});
                p64c.precondition(&mut cc, |_, _| {});
                p32.precondition(&mut c, |_, o| {
                    if let Some(fr) = o.floor_fraction {
                        s32 += fr;
                        n32 += 1
                    }
                });
                let c: Vec<f64> = c.iter().map(|&v| v as f64).collect();
                c32.push(cosine(&a, &c));
                cpert.push(cosine(&a, &bb));
                cpert8.push(cosine(&a, &cc));
                if k + 1 == grads.len() {
                    cgrad = cosine(&a, g);
                    cgrad32 = cosine(&c, g);
                }
                if n64 > 0 {
                    fl64 = s64 / n64 as f64;
                }
                if n32 > 0 {
                    fl32 = s32 / n32 as f64;
                }
            }
            let last = grads.len() - 1;
            println!(
                "{:<10} {:>10.6} {:>10.6}  {:>10.6} {:>10.6}  {:>10.6} {:>10.6}  {:>7.3} {:>7.3} {:>10.3} {:>10.3}",
                spec.name, c32[0], c32[last], cpert[0], cpert[last], cpert8[0], cpert8[last], cgrad, cgrad32, fl64, fl32
            );
        }
    }
}
