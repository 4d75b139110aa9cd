//! One-layer transformers (`tests/fixtures/transformer-torch/*.json`: embedding, positional,
//! residual(layernorm, attention), residual(layernorm, linear, gelu, linear), layernorm, last,
//! linear; one causal with biases, one not causal without) and one with a second causal attention
//! block (where the first block's mask matters) against PyTorch in float64
//! (`*.torch.json`, written by `scripts/fixtures/transformer_torch.py`, which builds the module
//! from the format's definition with `nn.MultiheadAttention`'s functional form, independently of
//! ours): the same `state_dict` names and shapes, and the mean cross-entropy loss, its gradient, a
//! Hessian-vector product and the per-sample Gram matrix to 1e-8 (measured ≤ 5e-12: the loss to 5e-13).
//! One more is read out at every position (no `last`, output `[4, 7]`) with labels `[6, 4]` and
//! cross-entropy averaged over positions, `F.cross_entropy(z.reshape(-1, 7), y.reshape(-1))`.
//! And in-context linear regression (`icl-regression`: float tokens `[8, 4]`, two causal attention
//! blocks, read at the x-tokens by `positions` (start 0, step 2), a linear head of one output)
//! against `F.mse_loss(pred.squeeze(-1), y)` with y `[6, 4]`.

mod support;

use common::curvature::HessianOperator;
use common::model::{Architecture, Loss, NetSpec, Network, Targets};
use serde_json::Value;
use support::{f64s, fixtures};

/// max |a − b| / max |b|.
fn max_rel(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

fn matches_pytorch(stem: &str) {
    let dir = fixtures().join("transformer-torch");
    let fx: Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{stem}.torch.json"))).unwrap())
            .unwrap();
    let spec = NetSpec::load(&dir.join(format!("{stem}.json"))).unwrap();
    assert_eq!(spec.source(), &fx["spec"], "{stem}: the fixture's spec");
    let loss = Loss::parse(spec.loss().unwrap_or("cross_entropy")).unwrap();
    let mut net = Network::try_new(Architecture::Spec(Box::new(spec))).unwrap();
    net.loss = loss;

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
    assert_eq!(got, want, "{stem}: PyTorch's named_parameters");

    let params = f64s(&fx["params"]);
    let x = f64s(&fx["x"]);
    let read = |key: &str| fx.get(key).map(f64s).unwrap_or_default();
    let labels: Vec<usize> = read("labels").iter().map(|&l| l as usize).collect();
    let values = read("targets");
    // Labels at every position for a per-position output (`positions` in the fixture); float
    // targets [batch, width] for the mean squared error (`width` in the fixture).
    let positions = fx["positions"].as_u64().map_or(1, |t| t as usize);
    let labels = match (fx["width"].as_u64(), positions) {
        (Some(width), _) => {
            assert_eq!(loss, Loss::MeanSquaredError, "{stem}: float targets");
            assert_eq!(net.classes(), width as usize, "{stem}: the outputs");
            Targets::Values {
                values: &values,
                width: width as usize,
            }
        }
        (None, 1) => Targets::Labels(&labels),
        (None, t) => {
            assert_eq!(net.positions(), t, "{stem}: the output's positions");
            Targets::Tokens {
                labels: &labels,
                positions: t,
            }
        }
    };
    let b = labels.len();
    assert_eq!(params.len(), net.num_params());
    assert_eq!(x.len(), b * net.input_features());

    let mut ws = net.workspace(b);
    let mut grad = vec![0.0; params.len()];
    let loss = net.loss_and_gradient(&params, &x, labels, &mut grad, &mut ws);
    let torch_loss = fx["loss"].as_f64().unwrap();
    let loss_err = ((loss - torch_loss) / torch_loss).abs();
    let grad_err = max_rel(&grad, &f64s(&fx["grad"]));

    let mut op = HessianOperator::new(&net, &params, &x, labels, 2, 1 << 20).unwrap();
    let v = f64s(&fx["v"]);
    let mut hv = vec![0.0; params.len()];
    op.hvp(&v, &mut hv);
    let hv_err = max_rel(&hv, &f64s(&fx["hv"]));

    let mut ws = net.workspace(b);
    net.per_sample_pass(&params, &x, labels, &mut ws);
    let mut sc = net.per_sample_scratch(b);
    net.per_sample_prepare(&params, &x, b, &ws, &mut sc);
    let mut gram = vec![0.0; b * b];
    net.per_sample_gram(&x, b, &ws, &mut sc, &mut gram);
    let gram_err = max_rel(&gram, &f64s(&fx["gram"]));

    eprintln!(
        "{stem}: loss {loss} (PyTorch {torch_loss}, rel. error {loss_err:e}); max rel. errors: \
         gradient {grad_err:e}, H·v {hv_err:e}, per-sample Gram {gram_err:e}"
    );
    assert!(loss_err < 1e-8, "{stem}: loss vs PyTorch: {loss_err:e}");
    assert!(grad_err < 1e-8, "{stem}: gradient vs PyTorch: {grad_err:e}");
    assert!(hv_err < 1e-8, "{stem}: H·v vs PyTorch: {hv_err:e}");
    assert!(
        gram_err < 1e-8,
        "{stem}: per-sample Gram vs PyTorch: {gram_err:e}"
    );
}

#[test]
fn a_causal_transformer_matches_pytorch_in_float64() {
    matches_pytorch("transformer");
}

/// Two causal attention layers: the first one's mask shapes what the second reads at the last
/// position (with one layer read at the last position, the mask changes nothing: the last query
/// sees every key either way).
#[test]
fn a_two_layer_causal_transformer_matches_pytorch_in_float64() {
    matches_pytorch("transformer-2l");
}

#[test]
fn a_transformer_without_biases_or_mask_matches_pytorch_in_float64() {
    matches_pytorch("transformer-noncausal");
}

/// Read out at every position: cross-entropy averaged over the 4 positions of each of 6 sequences.
#[test]
fn a_transformer_read_out_at_every_position_matches_pytorch_in_float64() {
    matches_pytorch("transformer-per-position");
}

/// In-context linear regression: a two-layer causal transformer on float tokens, read at the
/// x-tokens (`positions`, start 0, step 2), trained against `F.mse_loss(pred.squeeze(-1), y)`.
#[test]
fn an_icl_transformer_read_at_its_x_tokens_matches_pytorch_in_float64() {
    matches_pytorch("icl-regression");
}
