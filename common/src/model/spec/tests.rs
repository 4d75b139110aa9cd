use super::*;
use crate::model::{Architecture, LayerOps, Network};
use serde_json::json;

/// The example of issue #15.
fn example() -> Value {
    json!({"input": [1, 28, 28],
           "layers": [{"type": "flatten"},
                      {"type": "linear", "out": 64},
                      {"type": "relu"},
                      {"type": "residual", "layers": [{"type": "layernorm"}, {"type": "linear", "out": 64}, {"type": "gelu"}]},
                      {"type": "linear", "out": 10, "bias": false}],
           "loss": "cross_entropy"})
}

fn arch(v: &Value) -> Architecture {
    Architecture::Spec(Box::new(NetSpec::from_json("t", v).unwrap()))
}

fn err(v: Value) -> String {
    NetSpec::from_json("t", &v).unwrap_err().to_string()
}

/// Σ of out_features over every built layer, residual blocks' inner layers included.
fn activations(layers: &[Layer]) -> u64 {
    layers
        .iter()
        .map(|l| {
            let inner = match l {
                Layer::Residual(r) => activations(&r.layers),
                _ => 0,
            };
            l.out_features() as u64 + inner
        })
        .sum()
}

/// The tensors and sizes computed while parsing are those of the layers built (an independent
/// derivation: the layers take their names from `Scope` as they are built).
fn check_against_build(a: &Architecture) {
    let (layers, layout) = a.build();
    assert_eq!(a.tensor_count(), Some(layout.tensors.len()));
    for (i, t) in layout.tensors.iter().enumerate() {
        assert_eq!(a.tensor_spec(i), Some((t.name.clone(), t.shape.clone())));
    }
    assert_eq!(a.tensor_spec(layout.tensors.len()), None);
    let size = a.size().unwrap();
    assert_eq!(size.params, layout.total() as u64);
    assert_eq!(size.tensors, layout.tensors.len() as u64);
    assert_eq!(size.activations, activations(&layers));
    assert_eq!(layers[0].in_features(), a.input_features());
    assert_eq!(layers.last().unwrap().out_features(), a.classes());
}

#[test]
fn the_issues_example_has_pytorchs_sequential_names() {
    let a = arch(&example());
    assert_eq!(
        a.layout().names(),
        [
            "1.weight",
            "1.bias",
            "3.0.weight",
            "3.0.bias",
            "3.1.weight",
            "3.1.bias",
            "4.weight"
        ]
    );
    check_against_build(&a);
    assert_eq!(a.input_shape(), Some([1, 28, 28]));
    assert_eq!((a.input_features(), a.classes()), (784, 10));
    let (layers, _) = a.build();
    let kinds: Vec<&str> = layers.iter().map(|l| l.kind()).collect();
    assert_eq!(kinds, ["Linear", "ReLU", "Residual", "Linear"]);
    let net = Network::new(a.clone());
    assert_eq!(net.not_piecewise_linear(), Some((2, "LayerNorm")));
    match &a {
        Architecture::Spec(s) => {
            assert_eq!(s.first_curved_layer(), Some(("3.0".into(), "LayerNorm")))
        }
        _ => unreachable!(),
    }
    // The description round-trips (what checkpoints store).
    assert_eq!(Architecture::from_json(&a.to_json()).unwrap(), a);
}

#[test]
fn names_override_indices_and_nest_with_dots() {
    let v = json!({"input": [6],
        "layers": [{"type": "linear", "out": 5, "name": "fc"},
                   {"type": "tanh"},
                   {"type": "sequential", "name": "block", "layers": [
                       {"type": "identity"},
                       {"type": "linear", "out": 5},
                       {"type": "residual", "layers": [{"type": "layernorm", "affine": false, "eps": 0.001},
                                                       {"type": "linear", "out": 5, "name": "inner"},
                                                       {"type": "silu"}]}]},
                   {"type": "linear", "out": 3, "name": "head"},
                   {"type": "sigmoid"},
                   {"type": "linear", "out": 2}]});
    let a = arch(&v);
    assert_eq!(
        a.layout().names(),
        [
            "fc.weight",
            "fc.bias",
            "block.1.weight",
            "block.1.bias",
            "block.2.inner.weight",
            "block.2.inner.bias",
            "head.weight",
            "head.bias",
            "5.weight",
            "5.bias"
        ]
    );
    check_against_build(&a);
}

#[test]
fn convolutional_specs_infer_their_shapes() {
    let v = json!({"input": [2, 9, 9],
        "layers": [{"type": "conv2d", "out": 4, "kernel": 3, "padding": 1},
                   {"type": "relu"},
                   {"type": "residual", "layers": [{"type": "conv2d", "out": 4, "kernel": 3, "padding": 1}, {"type": "gelu", "approximate": "tanh"}]},
                   {"type": "maxpool2d", "kernel": 2},
                   {"type": "avgpool2d", "kernel": 2, "stride": 1},
                   {"type": "conv2d", "out": 3, "kernel": 2, "stride": 1},
                   {"type": "layernorm"},
                   {"type": "flatten"},
                   {"type": "linear", "out": 5}]});
    let a = arch(&v);
    // 9 → 9 (padding 1) → 4 (pooling floors) → 3 (average pooling, stride 1) → 2 (kernel 2);
    // LayerNorm over the last side.
    let shapes: Vec<(String, Vec<usize>)> = (0..a.tensor_count().unwrap())
        .map(|i| a.tensor_spec(i).unwrap())
        .collect();
    assert_eq!(shapes[0], ("0.weight".into(), vec![4, 2, 3, 3]));
    assert_eq!(shapes[2], ("2.0.weight".into(), vec![4, 4, 3, 3]));
    assert_eq!(shapes[4], ("5.weight".into(), vec![3, 4, 2, 2]));
    assert_eq!(shapes[6], ("6.weight".into(), vec![2]));
    assert_eq!(shapes[8], ("8.weight".into(), vec![5, 12]));
    check_against_build(&a);
    assert_eq!(a.size().unwrap().scratch, 4 * 9 * 81);
}

/// Issue #15's geometries: a strided convolution (PyTorch's floor: 13 + 2 − 3 = 12 → 7 rows,
/// 12 + 2 − 3 = 11 → 6 columns), one without a bias (no `bias` tensor, so the next layer's tensors
/// follow its weight), and overlapping 3×3 max-pooling with stride 2; the PyTorch source says so.
#[test]
fn strided_and_bias_free_layers_infer_their_shapes_and_print_as_pytorch() {
    let v = json!({"input": [2, 13, 12],
        "layers": [{"type": "conv2d", "out": 3, "kernel": 3, "stride": 2, "padding": 1},
                   {"type": "relu"},
                   {"type": "conv2d", "out": 4, "kernel": 2, "bias": false},
                   {"type": "maxpool2d", "kernel": 3, "stride": 2},
                   {"type": "maxpool2d", "kernel": 2},
                   {"type": "flatten"},
                   {"type": "linear", "out": 5}]});
    let a = arch(&v);
    // [3, 7, 6] → [4, 6, 5] → [4, 2, 2] → [4, 1, 1].
    assert_eq!(
        a.layout().names(),
        ["0.weight", "0.bias", "2.weight", "6.weight", "6.bias"]
    );
    assert_eq!(a.tensor_spec(2).unwrap().1, vec![4, 3, 2, 2]);
    assert_eq!(a.tensor_spec(3).unwrap().1, vec![5, 4]);
    check_against_build(&a);
    let (layers, _) = a.build();
    let features: Vec<usize> = layers.iter().map(|l| l.out_features()).collect();
    assert_eq!(features, [3 * 7 * 6, 3 * 7 * 6, 4 * 6 * 5, 4 * 2 * 2, 4, 5]);
    let src = a.torch_definition();
    for want in [
        r#"("0", nn.Conv2d(2, 3, 3, stride=2, padding=1)),"#,
        r#"("2", nn.Conv2d(3, 4, 2, padding=0, bias=False)),"#,
        r#"("3", nn.MaxPool2d(3, stride=2)),"#,
        r#"("4", nn.MaxPool2d(2)),"#,
    ] {
        assert!(src.contains(want), "{want} not in\n{src}");
    }
}

#[test]
fn malformed_specs_are_refused_with_the_json_path() {
    let cases = [
        (json!({"layers": []}), "input: missing"),
        (json!({"input": [784]}), "layers: missing"),
        (
            json!({"input": [784], "layers": []}),
            "layers: must be a non-empty list",
        ),
        (
            json!({"input": [0], "layers": [{"type": "relu"}]}),
            "input: sizes must be integers ≥ 1",
        ),
        (
            json!({"input": [1, 2, 3, 4], "layers": [{"type": "relu"}]}),
            "input: must be one sample's shape",
        ),
        (
            json!({"input": [4], "layers": [{"type": "linear", "out": 2}], "loss": "nll"}),
            "loss: must be \"cross_entropy\" or \"mse\"",
        ),
        (
            json!({"input": [4], "layers": [{"type": "linear", "out": 1}], "loss": "cross_entropy"}),
            "cross-entropy needs [classes] or [positions, classes] with at least 2",
        ),
        (
            json!({"input": [4], "layers": [{"type": "linear", "out": 2}], "lyers": 1}),
            "lyers: unknown field",
        ),
        (
            json!({"input": [4], "layers": [{"out": 2}]}),
            "layers[0].type: missing",
        ),
        (
            json!({"input": [4], "layers": [{"type": "dense", "out": 2}]}),
            "layers[0].type: unknown layer type 'dense' (expected one of linear, conv2d",
        ),
        (
            json!({"input": [4], "layers": [{"type": "linear", "outs": 2}]}),
            "layers[0].outs: unknown field for linear (it takes out, bias, name)",
        ),
        (
            json!({"input": [4], "layers": [{"type": "linear"}]}),
            "layers[0].out: missing",
        ),
        (
            json!({"input": [4], "layers": [{"type": "linear", "out": -1}]}),
            "layers[0].out: must be an integer ≥ 1, got -1",
        ),
        (
            json!({"input": [4], "layers": [{"type": "linear", "out": 2, "bias": "no"}]}),
            "layers[0].bias: must be true or false",
        ),
        (
            json!({"input": [4], "layers": [{"type": "linear", "out": 4}, {"type": "residual", "layers": [{"type": "relu"}, {"type": "linear"}]}, {"type": "linear", "out": 2}]}),
            "layers[1].layers[1].out: missing",
        ),
        (
            json!({"input": [4], "layers": [{"type": "residual", "layers": [{"type": "linear", "out": 3}]}, {"type": "linear", "out": 2}]}),
            "layers[0]: the block's output [3] differs from its input [4]",
        ),
        (
            json!({"input": [4], "layers": [{"type": "residual", "layers": [{"type": "identity"}]}, {"type": "linear", "out": 2}]}),
            "layers[0].layers: a residual block needs a layer other than identity or flatten",
        ),
        (
            json!({"input": [4], "layers": [{"type": "linear", "out": 4, "name": "a"}, {"type": "linear", "out": 2, "name": "a"}]}),
            "layers[1].name: 'a' is used twice (also by layers[0])",
        ),
        (
            // An explicit name equal to another layer's index.
            json!({"input": [4], "layers": [{"type": "linear", "out": 4, "name": "1"}, {"type": "linear", "out": 2}]}),
            "layers[1].name: '1' is used twice (also by layers[0])",
        ),
        (
            json!({"input": [4], "layers": [{"type": "linear", "out": 2, "name": "a.b"}]}),
            "layers[0].name: must be a non-empty string without dots",
        ),
        (
            json!({"input": [1, 4, 4], "layers": [{"type": "linear", "out": 2}]}),
            "layers[0]: linear takes a flat input but gets [1, 4, 4] (add a flatten before it)",
        ),
        (
            json!({"input": [16], "layers": [{"type": "conv2d", "out": 2, "kernel": 3}]}),
            "layers[0]: conv2d takes [channels, height, width] but gets [16]",
        ),
        (
            json!({"input": [1, 4, 4], "layers": [{"type": "conv2d", "out": 2, "kernel": 5}, {"type": "flatten"}, {"type": "linear", "out": 2}]}),
            "layers[0]: a 5×5 kernel with padding 0 does not fit the 4×4 input",
        ),
        (
            json!({"input": [1, 4, 4], "layers": [{"type": "conv2d", "out": 2, "kernel": 3, "stride": 0}]}),
            "layers[0].stride: must be an integer ≥ 1, got 0",
        ),
        (
            json!({"input": [1, 4, 4], "layers": [{"type": "conv2d", "out": 2, "kernel": 7, "stride": 2, "padding": 1}]}),
            "layers[0]: a 7×7 kernel with padding 1 does not fit the 4×4 input",
        ),
        (
            json!({"input": [1, 4, 4], "layers": [{"type": "conv2d", "out": 2, "kernel": 3, "bias": 0}]}),
            "layers[0].bias: must be",
        ),
        (
            json!({"input": [1, 4, 4], "layers": [{"type": "maxpool2d", "kernel": 5}]}),
            "layers[0]: a 5×5 pooling does not fit the input [1, 4, 4]",
        ),
        (
            json!({"input": [1, 4, 4], "layers": [{"type": "maxpool2d", "kernel": 2, "stride": 0}]}),
            "layers[0].stride: must be an integer ≥ 1, got 0",
        ),
        (
            json!({"input": [4], "layers": [{"type": "gelu", "approximate": "erf"}]}),
            "layers[0].approximate: must be \"none\" or \"tanh\"",
        ),
        (
            json!({"input": [4], "layers": [{"type": "layernorm", "eps": 0}]}),
            "layers[0].eps: must be a positive number",
        ),
        (
            json!({"input": [4], "layers": [{"type": "flatten"}]}),
            "layers: no layer computes anything",
        ),
        (
            json!({"input": [4], "layers": [{"type": "linear", "out": 1}], "loss": "cross_entropy"}),
            "layers: the model's output is [1], but cross-entropy needs [classes] or [positions, classes] with at least 2",
        ),
        (
            json!({"input": [1, 4, 4], "layers": [{"type": "avgpool2d", "kernel": 5}]}),
            "layers[0]: a 5×5 pooling does not fit the input [1, 4, 4]",
        ),
        (
            json!({"input": [1, 4, 4], "layers": [{"type": "avgpool2d", "kernel": 2, "stride": 0}]}),
            "layers[0].stride: must be an integer ≥ 1, got 0",
        ),
        (
            json!({"input": [2, 4, 4], "layers": [{"type": "relu"}]}),
            "layers: the model's output is [2, 4, 4]",
        ),
        (
            json!({"input": [4], "layers": [{"type": "linear", "out": 2}, "relu"]}),
            "layers[1]: must be an object with a \"type\"",
        ),
    ];
    for (v, want) in cases {
        let e = err(v.clone());
        assert!(e.contains(want), "{v}: {e}\n  wanted: {want}");
    }
    // Nested too deep.
    let mut deep = json!({"type": "linear", "out": 4});
    for _ in 0..40 {
        deep = json!({"type": "sequential", "layers": [deep]});
    }
    let e = err(json!({"input": [4], "layers": [deep, {"type": "linear", "out": 2}]}));
    assert!(e.contains("blocks nested more than 32 deep"), "{e}");
}

/// Sizes past 64 bits or past a sample's feature limit are refused by arithmetic alone (building
/// such a model would abort the test).
#[test]
fn huge_specs_are_refused_without_allocating() {
    let e = err(
        json!({"input": [1_000_000_000u64], "layers": [{"type": "linear", "out": 1_000_000_000_000u64}]}),
    );
    assert!(e.contains("layers[0]"), "{e}");
    let e = err(
        json!({"input": [4], "layers": [{"type": "linear", "out": 4_294_967_296u64}, {"type": "linear", "out": 2}]}),
    );
    assert!(e.contains("more than 4294967295 features"), "{e}");
    // Large but countable: sized, not built.
    let a = arch(
        &json!({"input": [100_000], "layers": [{"type": "linear", "out": 1_000_000}, {"type": "linear", "out": 10}]}),
    );
    assert_eq!(
        a.size().unwrap().params,
        100_001 * 1_000_000 + 1_000_001 * 10
    );
}

#[test]
fn the_torch_source_defines_the_same_module() {
    let src = arch(&example()).torch_definition();
    let want = r#"def build():
    return nn.Sequential(OrderedDict([
        ("0", nn.Flatten()),
        ("1", nn.Linear(784, 64)),
        ("2", nn.ReLU()),
        ("3", Residual(OrderedDict([
            ("0", nn.LayerNorm(64, eps=1e-5, elementwise_affine=True)),
            ("1", nn.Linear(64, 64)),
            ("2", nn.GELU()),
        ]))),
        ("4", nn.Linear(64, 10, bias=False)),
    ]))
"#;
    assert!(src.ends_with(want), "{src}");
    assert!(src.contains("class Residual(nn.Sequential):"));
    assert!(src.contains("return x + super().forward(x)"));
}

#[test]
fn spec_paths_are_told_from_preset_names() {
    for p in ["net.json", "NET.JSON", "specs/net", "./x"] {
        assert!(is_spec_path(p), "{p}");
    }
    for m in ["mlp", "mlp_1x128", "lenet_k3", "mlp_128-64_tanh"] {
        assert!(!is_spec_path(m), "{m}");
    }
    let e = Architecture::parse(
        "/nonexistent/net.json",
        &[],
        crate::model::Activation::Relu,
        2,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("/nonexistent/net.json"), "{e}");
}

/// A spec may name the mean squared error and have one output (a scalar regression); without a
/// `loss` one output parses too and the tools choose the loss from the targets (and refuse
/// cross-entropy over one class then: `Architecture::size_for`).
#[test]
fn specs_name_their_loss_and_may_have_one_output_for_mse() {
    let one = json!({"input": [4], "layers": [{"type": "linear", "out": 1}], "loss": "mse"});
    let a = arch(&one);
    assert_eq!(a.named_loss(), Some("mse"));
    assert_eq!(a.classes(), 1);
    assert!(a.size_for(crate::model::Loss::MeanSquaredError).is_ok());
    // The size check without a loss given takes the spec's own: one output is fine under its mse.
    assert!(a.size().is_ok());
    let bare = arch(&json!({"input": [4], "layers": [{"type": "linear", "out": 1}]}));
    assert_eq!(bare.named_loss(), None);
    let why = bare
        .size_for(crate::model::Loss::SoftmaxCrossEntropy)
        .unwrap_err()
        .to_string();
    assert!(why.contains("cross-entropy needs at least 2"), "{why}");
    let ce =
        json!({"input": [4], "layers": [{"type": "linear", "out": 3}], "loss": "cross_entropy"});
    assert_eq!(arch(&ce).named_loss(), Some("cross_entropy"));
}

/// A one-layer transformer: the sequence layers' shapes, PyTorch's names (nn.MultiheadAttention's
/// inside the residual block), the sizes computed while parsing against the layers built, and the
/// printed module.
#[test]
fn sequence_specs_infer_their_shapes_and_pytorchs_names() {
    let v = json!({"input": [3],
        "layers": [{"type": "embedding", "num": 10, "dim": 8},
                   {"type": "positional"},
                   {"type": "residual", "layers": [{"type": "layernorm"}, {"type": "attention", "heads": 2, "causal": true}]},
                   {"type": "residual", "layers": [{"type": "layernorm"}, {"type": "linear", "out": 16}, {"type": "gelu"}, {"type": "linear", "out": 8}]},
                   {"type": "layernorm"},
                   {"type": "last"},
                   {"type": "linear", "out": 9}]});
    let a = arch(&v);
    check_against_build(&a);
    assert_eq!(a.input_features(), 3);
    assert_eq!(a.classes(), 9);
    let names = a.layout().names();
    assert_eq!(
        names[..8],
        [
            "0.weight",
            "1.weight",
            "2.0.weight",
            "2.0.bias",
            "2.1.in_proj_weight",
            "2.1.in_proj_bias",
            "2.1.out_proj.weight",
            "2.1.out_proj.bias"
        ]
    );
    let shapes: Vec<Vec<usize>> = a.layout().tensors.iter().map(|t| t.shape.clone()).collect();
    assert_eq!(
        shapes[..5],
        [vec![10, 8], vec![3, 8], vec![8], vec![8], vec![24, 8]]
    );
    // The MLP block's Linear acts per position: [3, 8] → [3, 16], weight [16, 8].
    assert_eq!(a.layout().get("3.1.weight").unwrap().shape, [16, 8]);
    let src = a.torch_definition();
    for line in [
        "import torch\n",
        "(\"0\", Embedding(10, 8)),",
        "(\"1\", Positional(3, 8)),",
        "(\"1\", SelfAttention(8, 2, causal=True, bias=True)),",
        "(\"1\", nn.Linear(8, 16)),",
        "(\"5\", Last()),",
        "(\"6\", nn.Linear(8, 9)),",
        "class SelfAttention(nn.MultiheadAttention):",
    ] {
        assert!(src.contains(line), "{line} not in {src}");
    }
    // Specs without sequence layers print what they printed before.
    assert!(!arch(&example()).torch_definition().contains("import torch"));
    let without = json!({"input": [3],
        "layers": [{"type": "embedding", "num": 4, "dim": 6},
                   {"type": "attention", "heads": 3, "bias": false},
                   {"type": "last"}, {"type": "linear", "out": 2}]});
    let a = arch(&without);
    check_against_build(&a);
    assert_eq!(
        a.layout().names(),
        [
            "0.weight",
            "1.in_proj_weight",
            "1.out_proj.weight",
            "3.weight",
            "3.bias"
        ]
    );
    assert_eq!(
        NetSpec::from_json("t", &v).unwrap().first_curved_layer(),
        Some(("2.0".to_string(), "LayerNorm"))
    );
    assert_eq!(
        NetSpec::from_json("t", &without)
            .unwrap()
            .first_curved_layer(),
        Some(("1".to_string(), "MultiheadAttention"))
    );
}

#[test]
fn malformed_sequence_specs_are_refused_with_the_json_path() {
    let cases = [
        (
            json!({"input": [3], "layers": [{"type": "linear", "out": 4}, {"type": "embedding", "num": 5, "dim": 4}]}),
            "layers[1]: an embedding reads token ids, so it must be the model's first layer",
        ),
        (
            json!({"input": [3], "layers": [{"type": "residual", "layers": [{"type": "embedding", "num": 5, "dim": 3}]}]}),
            "layers[0].layers[0]: an embedding reads token ids",
        ),
        (
            json!({"input": [3, 2], "layers": [{"type": "embedding", "num": 5, "dim": 4}]}),
            "layers[0]: embedding takes a sequence of token ids [positions] but gets [3, 2]",
        ),
        (
            json!({"input": [3], "layers": [{"type": "embedding", "dim": 4}]}),
            "layers[0].num: missing",
        ),
        (
            json!({"input": [6], "layers": [{"type": "positional"}]}),
            "layers[0]: positional takes a sequence [positions, dim] but gets [6]",
        ),
        (
            json!({"input": [3], "layers": [{"type": "embedding", "num": 5, "dim": 6}, {"type": "attention", "heads": 4}]}),
            "layers[1].heads: 4 heads do not divide the width 6",
        ),
        (
            json!({"input": [3], "layers": [{"type": "embedding", "num": 5, "dim": 6}, {"type": "attention", "heads": 2, "causal": 1}]}),
            "layers[1].causal: must be true or false",
        ),
        (
            json!({"input": [3], "layers": [{"type": "embedding", "num": 5, "dim": 6}, {"type": "attention", "heads": 2, "dropout": 0.1}]}),
            "layers[1].dropout: unknown field for attention",
        ),
        (
            json!({"input": [3], "layers": [{"type": "embedding", "num": 5, "dim": 6}, {"type": "last"}, {"type": "last"}]}),
            "layers[2]: last takes a sequence [positions, dim] but gets [6]",
        ),
        (
            json!({"input": [3], "layers": [{"type": "embedding", "num": 5, "dim": 6}, {"type": "linear", "out": 1}],
                   "loss": "cross_entropy"}),
            "the model's output is [3, 1], but cross-entropy needs [classes] or [positions, classes] with at least 2 classes",
        ),
    ];
    for (v, want) in cases {
        let e = err(v);
        assert!(e.contains(want), "{e:?} does not contain {want:?}");
    }
}

/// The transformer presets: their parameter counts as PyTorch counts the same modules
/// (`sum(p.numel() for p in model.parameters())` of `scripts/fixtures/transformer_torch.py`'s
/// build: 228,081 and 426,353), and `--model` finds them by name.
#[test]
fn the_transformer_presets_have_pytorchs_parameter_counts() {
    for (name, params) in [("transformer_1l", 228_081u64), ("transformer_2l", 426_353)] {
        let a = Architecture::parse(name, &[], crate::model::Activation::Relu, 2).unwrap();
        check_against_build(&a);
        assert_eq!(a.size().unwrap().params, params, "{name}");
        assert_eq!(a.name(), name);
        assert_eq!((a.input_features(), a.classes()), (3, 113), "{name}");
    }
    assert!(transformer_preset("transformer_3l").is_none());
}

/// devinterp's Polynomial as a `monomial` layer: one tensor `weights` [d] of zeros, the input's
/// shape out, y = x·Πᵢ wᵢ^{kᵢ}; curved (for the exact trace) only with a power above 1; malformed
/// powers refused at their JSON path; the PyTorch source defines the module.
#[test]
fn monomial_is_devinterps_polynomial() {
    let v =
        json!({"input": [1], "layers": [{"type": "monomial", "powers": [1, 2]}], "loss": "mse"});
    // (The architecture's size check takes two outputs, as for cross-entropy.)
    check_against_build(&arch(
        &json!({"input": [2], "layers": [{"type": "monomial", "powers": [3, 0, 1]}]}),
    ));
    let a = arch(&v);
    let spec = NetSpec::from_json("nc", &v).unwrap();
    assert_eq!(spec.tensors(), [("0.weights".to_string(), vec![2])]);
    assert_eq!(spec.classes(), 1);
    assert_eq!(
        spec.first_curved_layer(),
        Some(("0".to_string(), "Monomial"))
    );
    let flat = json!({"input": [3], "layers": [{"type": "monomial", "powers": [1, 1, 0]}]});
    assert_eq!(
        NetSpec::from_json("t", &flat).unwrap().first_curved_layer(),
        None
    );
    let net = Network::new(a);
    let w: Vec<f64> = crate::model::initialise(&net, 7);
    assert_eq!(w, [0.0, 0.0]);
    let mut ws = net.workspace(2);
    let y = net.forward(&[2.0, -0.5], &[3.0, 5.0], 2, &mut ws).to_vec();
    assert_eq!(y, [3.0 * 2.0 * 0.25, 5.0 * 2.0 * 0.25]);
    for (powers, msg) in [
        (
            json!([]),
            "layers[0].powers: must be a list of 1 to 64 integers",
        ),
        (json!([1, -1]), "layers[0].powers: must be a list"),
        (json!([65]), "layers[0].powers: must be a list"),
        (json!("2"), "layers[0].powers: must be a list"),
    ] {
        let e = err(json!({"input": [1], "layers": [{"type": "monomial", "powers": powers}]}));
        assert!(e.contains(msg), "{e}");
    }
    let e = err(json!({"input": [1], "layers": [{"type": "monomial"}]}));
    assert!(e.contains("layers[0].powers: missing"), "{e}");
    let src = spec.torch_source();
    assert!(src.contains("class Monomial(nn.Module):"), "{src}");
    assert!(src.contains("(\"0\", Monomial([1, 2]))"), "{src}");
    assert!(!NetSpec::from_json("t", &example())
        .unwrap()
        .torch_source()
        .contains("Monomial"));
}

/// A model without `last` has an output per position `[positions, classes]`: its outputs per
/// sample are their product, its loss rows the positions (cross-entropy averaged over them).
#[test]
fn an_output_per_position_is_accepted_with_its_positions() {
    let v = json!({"input": [3], "layers": [{"type": "embedding", "num": 5, "dim": 6},
                                             {"type": "linear", "out": 4}]});
    let a = arch(&v);
    check_against_build(&a);
    assert_eq!(
        (a.classes(), a.positions(), a.classes_per_position()),
        (12, 3, 4)
    );
    let net = Network::new(a);
    assert_eq!((net.positions(), net.loss_rows()), (3, (3, 4)));
    let mut mse = net.clone();
    mse.loss = crate::model::Loss::MeanSquaredError;
    assert_eq!(mse.loss_rows(), (1, 12));
    assert!(NetSpec::from_json("t", &v)
        .unwrap()
        .torch_source()
        .contains("12 = [3, 4] outputs"));
    // A flat output has one position.
    let flat = arch(&example());
    assert_eq!((flat.positions(), flat.classes_per_position()), (1, 10));
}

/// `positions` is PyTorch's `x[:, start::step]`, cut to `count` when given: the ICL read-out
/// (positions 0, 2, … of [2K, D + 1] tokens) gives [K, 1] after a linear head, K outputs per sample
/// and K positions; the layer is built with the count Python's slice has; the printed module
/// defines `Positions` only where a spec uses it; it is piecewise linear.
#[test]
fn positions_select_a_strided_slice_of_the_sequence() {
    let icl = |pos: serde_json::Value| {
        json!({"input": [16, 5],
            "layers": [{"type": "linear", "out": 8},
                       {"type": "positional"},
                       {"type": "residual", "layers": [{"type": "layernorm"},
                                                       {"type": "attention", "heads": 2, "causal": true}]},
                       pos,
                       {"type": "linear", "out": 1}],
            "loss": "mse"})
    };
    let v = icl(json!({"type": "positions", "start": 0, "step": 2}));
    let a = arch(&v);
    check_against_build(&a);
    assert_eq!((a.classes(), a.positions()), (8, 8));
    let spec = NetSpec::from_json("icl", &v).unwrap();
    let mut net = Network::new(a);
    net.loss = crate::model::Loss::MeanSquaredError;
    let built: Vec<&Layer> = net.layers.iter().collect();
    assert_eq!(
        built[3],
        &Layer::Positions(crate::model::layer::Positions {
            seq: 16,
            dim: 8,
            start: 0,
            step: 2,
            count: 8
        })
    );
    assert_eq!(net.loss_rows(), (1, 8));
    let src = spec.torch_source();
    for line in [
        "class Positions(nn.Module):",
        "return x[:, self.start::self.step][:, :self.count]",
        "(\"3\", Positions(start=0, step=2, count=8)),",
        "(\"4\", nn.Linear(8, 1)),",
    ] {
        assert!(src.contains(line), "{line} not in {src}");
    }
    // Odd starts, a cut count, the last position kept as [1, dim].
    for (pos, count) in [
        (json!({"type": "positions", "start": 1, "step": 2}), 8),
        (json!({"type": "positions", "start": 3, "step": 5}), 3),
        (json!({"type": "positions", "step": 2, "count": 5}), 5),
        (json!({"type": "positions", "start": 15}), 1),
        (json!({"type": "positions"}), 16),
    ] {
        let a = arch(&icl(pos.clone()));
        check_against_build(&a);
        assert_eq!(a.positions(), count, "{pos}");
    }
    assert_eq!(
        NetSpec::from_json("p", &icl(json!({"type": "positions", "step": 2})))
            .unwrap()
            .first_curved_layer(),
        Some(("2.0".to_string(), "LayerNorm"))
    );
    let flat = json!({"input": [4, 3], "layers": [{"type": "positions", "start": 1, "step": 2},
                                                  {"type": "flatten"}, {"type": "linear", "out": 2}]});
    let flat_spec = NetSpec::from_json("flat", &flat).unwrap();
    assert_eq!(flat_spec.first_curved_layer(), None);
    assert_eq!(flat_spec.tensors()[0], ("2.weight".to_string(), vec![2, 6]));
    // Specs without `positions` do not print its module.
    let last = json!({"input": [3], "layers": [{"type": "embedding", "num": 4, "dim": 6},
                                               {"type": "last"}, {"type": "linear", "out": 2}]});
    let src = NetSpec::from_json("t", &last).unwrap().torch_source();
    assert!(
        src.contains("class Last") && !src.contains("Positions"),
        "{src}"
    );
}

#[test]
fn malformed_positions_are_refused_with_the_json_path() {
    let seq = |pos: serde_json::Value| json!({"input": [6, 2], "layers": [{"type": "linear", "out": 3}, pos, {"type": "linear", "out": 2}]});
    let cases = [
        (
            seq(json!({"type": "positions", "step": 0})),
            "layers[1].step: must be an integer ≥ 1, got 0",
        ),
        (
            seq(json!({"type": "positions", "start": 6})),
            "layers[1].start: position 6 is past the input [6, 3] (positions 0 to 5)",
        ),
        (
            seq(json!({"type": "positions", "start": -1})),
            "layers[1].start: must be an integer ≥ 0, got -1",
        ),
        (
            seq(json!({"type": "positions", "start": 1, "step": 2, "count": 4})),
            "layers[1].count: 4 positions from 1 in steps of 2 do not fit the input [6, 3] (x[:, 1::2] has 3)",
        ),
        (
            seq(json!({"type": "positions", "count": 0})),
            "layers[1].count: must be an integer ≥ 1, got 0",
        ),
        (
            seq(json!({"type": "positions", "stride": 2})),
            "layers[1].stride: unknown field for positions (it takes start, step, count, name)",
        ),
        (
            json!({"input": [6], "layers": [{"type": "positions", "step": 2}, {"type": "linear", "out": 2}]}),
            "layers[0]: positions takes a sequence [positions, dim] but gets [6]",
        ),
    ];
    for (v, want) in cases {
        let e = err(v);
        assert!(e.contains(want), "{e:?} does not contain {want:?}");
    }
}
