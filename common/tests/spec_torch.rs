//! Spec models against PyTorch in float64 (`tests/fixtures/spec-torch/<model>.torch.json`, written
//! by `scripts/fixtures/spec_torch.py`, which builds the module from the format's definition,
//! independently of ours): a model with every layer type (`every-layer.json`) and one with the
//! convolution and pooling geometries (`conv-geometry.json`: strided and bias-free convolutions,
//! overlapping 3×3 max-pooling with stride 2). The same `state_dict` names and shapes, and the mean
//! cross-entropy loss, its gradient, a Hessian-vector product and the per-sample Gram matrix
//! G Gᵀ to 1e-10.

mod support;

use common::curvature::HessianOperator;
use common::model::{Architecture, NetSpec, Network};
use serde_json::Value;
use support::{f64s, fixtures};

fn fixture(model: &str) -> Value {
    let p = fixtures().join(format!("spec-torch/{model}.torch.json"));
    serde_json::from_slice(&std::fs::read(p).expect("fixture")).expect("JSON")
}

/// max |a − b| / max |b|.
fn max_rel(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

#[test]
fn every_layer_type_matches_pytorch_in_float64() {
    matches_pytorch("every-layer");
}

#[test]
fn convolution_and_pooling_geometries_match_pytorch_in_float64() {
    matches_pytorch("conv-geometry");
}

fn matches_pytorch(model: &str) {
    let fx = fixture(model);
    // The committed spec is the one the fixture was made from.
    let spec_file = fixtures().join(format!("spec-torch/{model}.json"));
    let spec = NetSpec::load(&spec_file).unwrap();
    assert_eq!(spec.source(), &fx["spec"]);
    let net = Network::try_new(Architecture::Spec(Box::new(spec))).unwrap();

    // PyTorch's named_parameters: names, shapes, order.
    let want: Vec<(String, Vec<usize>)> = fx["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let shape = f64s(&t["shape"]).iter().map(|&d| d as usize).collect();
            (t["name"].as_str().unwrap().to_string(), shape)
        })
        .collect();
    let got: Vec<(String, Vec<usize>)> = net
        .layout
        .tensors
        .iter()
        .map(|t| (t.name.clone(), t.shape.clone()))
        .collect();
    assert_eq!(got, want);

    let params = f64s(&fx["params"]);
    let x = f64s(&fx["x"]);
    let labels: Vec<usize> = f64s(&fx["labels"]).iter().map(|&l| l as usize).collect();
    assert_eq!(params.len(), net.num_params());
    assert_eq!(x.len(), labels.len() * net.input_features());

    let mut ws = net.workspace(labels.len());
    let mut grad = vec![0.0; params.len()];
    let loss = net.loss_and_gradient(&params, &x, &labels, &mut grad, &mut ws);
    let torch_loss = fx["loss"].as_f64().unwrap();
    assert!(
        ((loss - torch_loss) / torch_loss).abs() < 1e-10,
        "loss {loss} vs PyTorch {torch_loss}"
    );
    let err = max_rel(&grad, &f64s(&fx["grad"]));
    eprintln!("loss {loss} (PyTorch {torch_loss}); gradient max rel. error {err:e}");
    assert!(err < 1e-10, "gradient vs PyTorch: {err:e}");

    let mut op = HessianOperator::new(&net, &params, &x, &labels, 2, 1 << 20).unwrap();
    let v = f64s(&fx["v"]);
    let mut hv = vec![0.0; params.len()];
    op.hvp(&v, &mut hv);
    let err = max_rel(&hv, &f64s(&fx["hv"]));
    eprintln!("H·v max rel. error {err:e}");
    assert!(err < 1e-10, "H·v vs PyTorch: {err:e}");

    // K = G Gᵀ of the per-sample gradients of the unscaled per-sample losses.
    let b = labels.len();
    let mut ws = net.workspace(b);
    net.per_sample_pass(&params, &x, &labels, &mut ws);
    let mut sc = net.per_sample_scratch(b);
    net.per_sample_prepare(&params, &x, b, &ws, &mut sc);
    let mut gram = vec![0.0; b * b];
    net.per_sample_gram(&x, b, &ws, &mut sc, &mut gram);
    let err = max_rel(&gram, &f64s(&fx["gram"]));
    eprintln!("per-sample Gram max rel. error {err:e}");
    assert!(err < 1e-10, "per-sample Gram vs PyTorch: {err:e}");
}
