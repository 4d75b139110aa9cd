//! End-to-end tests of models from a JSON spec (`--model net.json`, docs/model-spec.md): `train` on
//! the committed MNIST subset with a residual block holding a LayerNorm and a GELU, then
//! `hessian-trace` and `llc` on its checkpoint without `--model` (the checkpoint carries the spec);
//! malformed specs refused with the JSON path of the problem; `--print-torch`.

use serde_json::{json, Value};
use std::path::Path;
use std::process::Output;

mod support;

/// The example, narrower (16 units) so that the test stays quick.
fn spec() -> Value {
    json!({"input": [1, 28, 28],
           "layers": [{"type": "flatten"},
                      {"type": "linear", "out": 16},
                      {"type": "relu"},
                      {"type": "residual", "layers": [{"type": "layernorm"}, {"type": "linear", "out": 16}, {"type": "gelu"}]},
                      {"type": "linear", "out": 10, "bias": false}],
           "loss": "cross_entropy"})
}

fn write_spec(dir: &Path, name: &str, v: &Value) -> String {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_string_pretty(v).unwrap()).unwrap();
    p.display().to_string()
}

fn records(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_spec_model_trains_and_its_checkpoint_is_analysed_without_model() {
    let dir = support::scratch("model-spec-train");
    let spec_path = write_spec(&dir, "resnet.json", &spec());
    let run_dir = dir.join("run").display().to_string();
    let data = support::small_data().display().to_string();
    let out = support::run_tool(
        "train",
        &[
            "--model",
            &spec_path,
            "--data-dir",
            &data,
            "--epochs",
            "1",
            "--train-samples",
            "512",
            "--batch-size",
            "32",
            "--out",
            &run_dir,
            "--quiet",
        ],
        "",
    );
    assert!(out.status.success(), "train: {}", stderr(&out));
    let recs = records(&out);
    let last = recs.last().expect("a record");
    // The record carries the spec as written.
    assert_eq!(last["model"]["kind"], "spec");
    assert_eq!(last["model"]["name"], "resnet");
    assert_eq!(last["model"]["spec"], spec());
    assert_eq!(
        last["params"],
        784 * 16 + 16 + 2 * 16 + 16 * 16 + 16 + 16 * 10
    );
    let test_loss = last["test_loss"].as_f64().unwrap();
    assert!(
        test_loss < 2.0,
        "one epoch lowers the loss below ln 10: {test_loss}"
    );
    let ckpt = dir.join("run/epoch-0001.safetensors").display().to_string();

    // The exact trace is refused, naming the layer that is not piecewise linear.
    let out = support::run_tool(
        "hessian-trace",
        &["--data-dir", &data, "--exact", &ckpt],
        "",
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("this one uses layernorm (layer 3.0, nn.LayerNorm)"),
        "{}",
        stderr(&out)
    );

    // Hutchinson on the checkpoint's own model, no --model.
    let out = support::run_tool(
        "hessian-trace",
        &[
            "--data-dir",
            &data,
            "--probes",
            "8",
            "--samples",
            "256",
            &ckpt,
        ],
        "",
    );
    assert!(out.status.success(), "hessian-trace: {}", stderr(&out));
    let rec = &records(&out)[0]["hessian"];
    assert_eq!(rec["model"], "resnet");
    assert_eq!(rec["model_spec"], spec());
    assert_eq!(rec["method"], "hutchinson");
    let trace = rec["trace"].as_f64().unwrap();
    assert!(trace.is_finite() && trace > 0.0, "{rec}");

    // λ̂ on the same checkpoint, no --model.
    let out = support::run_tool(
        "llc",
        &[
            "--data-dir",
            &data,
            "--draws",
            "20",
            "--chains",
            "2",
            "--burn-in",
            "5",
            "--batch-size",
            "64",
            &ckpt,
        ],
        "",
    );
    assert!(out.status.success(), "llc: {}", stderr(&out));
    let rec = &records(&out)[0]["llc"];
    assert_eq!(rec["model"], "resnet");
    assert_eq!(rec["model_spec"], spec());
    assert!(rec["llc"].as_f64().unwrap().is_finite(), "{rec}");

    // Given explicitly, the same spec loads the checkpoint; another spec is refused, listing the
    // tensors that differ.
    let out = support::run_tool(
        "hessian-trace",
        &[
            "--model",
            &spec_path,
            "--data-dir",
            &data,
            "--probes",
            "2",
            "--samples",
            "64",
            &ckpt,
        ],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let mut other = spec();
    other["layers"][4]["bias"] = json!(true);
    let other_path = write_spec(&dir, "other.json", &other);
    let out = support::run_tool(
        "hessian-trace",
        &[
            "--model",
            &other_path,
            "--data-dir",
            &data,
            "--probes",
            "2",
            &ckpt,
        ],
        "",
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("the tensors do not match model other: 4.bias [10] is missing"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn malformed_specs_are_refused_with_their_json_path() {
    let dir = support::scratch("model-spec-malformed");
    let data = support::small_data().display().to_string();
    let run_dir = dir.join("run").display().to_string();
    let mut missing = spec();
    missing["layers"][3]["layers"][1] = json!({"type": "linear"});
    let mut unknown = spec();
    unknown["layers"][2] = json!({"type": "relu6"});
    let mut twice = spec();
    twice["layers"][1]["name"] = json!("fc");
    twice["layers"][4]["name"] = json!("fc");
    let mut shape = spec();
    shape["layers"][3]["layers"][1]["out"] = json!(8);
    for (name, v, want) in [
        ("missing.json", missing, "layers[3].layers[1].out: missing"),
        (
            "unknown.json",
            unknown,
            "layers[2].type: unknown layer type 'relu6'",
        ),
        (
            "twice.json",
            twice,
            "layers[4].name: 'fc' is used twice (also by layers[1])",
        ),
        (
            "shape.json",
            shape,
            "layers[3]: the block's output [8] differs from its input [16]",
        ),
    ] {
        let p = write_spec(&dir, name, &v);
        for tool in ["train", "llc"] {
            let args: Vec<&str> = match tool {
                "train" => vec!["--model", &p, "--data-dir", &data, "--out", &run_dir],
                _ => vec!["--model", &p, "--data-dir", &data, "missing.safetensors"],
            };
            let out = support::run_tool(tool, &args, "");
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(1), "{tool} {name}: {err}");
            assert!(
                err.contains(&format!("--model {p}: {want}")),
                "{tool} {name}: {err}"
            );
            assert_eq!(err.lines().count(), 1, "{tool} {name}: one line: {err}");
            assert!(out.stdout.is_empty());
        }
    }
    // A spec that does not fit the data: one line naming the data folder and both shapes.
    let mut rgb = spec();
    rgb["input"] = json!([3, 28, 28]);
    rgb["layers"][1]["out"] = json!(16);
    let p = write_spec(&dir, "rgb.json", &rgb);
    let out = support::run_tool(
        "train",
        &["--model", &p, "--data-dir", &data, "--out", &run_dir],
        "",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("mnist images are 1×28×28 but the model rgb expects 3×28×28"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    // Not JSON at all.
    let p = dir.join("broken.json");
    std::fs::write(&p, "{\"input\": [784], ").unwrap();
    let p = p.display().to_string();
    let out = support::run_tool("train", &["--model", &p, "--out", &run_dir], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not valid JSON"), "{}", stderr(&out));
}

#[test]
fn print_torch_prints_the_module_of_a_spec() {
    let dir = support::scratch("model-spec-torch");
    let p = write_spec(&dir, "resnet.json", &spec());
    let out = support::run_tool("train", &["--model", &p, "--print-torch"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    let src = String::from_utf8(out.stdout).unwrap();
    for line in [
        "class Residual(nn.Sequential):",
        "        return x + super().forward(x)",
        "        (\"1\", nn.Linear(784, 16)),",
        "            (\"0\", nn.LayerNorm(16, eps=1e-5, elementwise_affine=True)),",
        "        (\"4\", nn.Linear(16, 10, bias=False)),",
    ] {
        assert!(src.lines().any(|l| l == line), "{line}\n{src}");
    }
    // A preset prints its one-line definition, as before.
    let out = support::run_tool("train", &["--model", "mlp_1x128", "--print-torch"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))\n"
    );
}

/// A regression spec with one output: accepted before any data is read when its loss (or
/// `--loss`) is the mean squared error, or when no loss is named yet; refused under cross-entropy
/// naming the one class; a bad `--loss` names the flag.
#[test]
fn one_output_is_refused_only_under_cross_entropy() {
    let dir = support::scratch("model-spec-one-output");
    let layers =
        json!([{"type": "linear", "out": 4}, {"type": "tanh"}, {"type": "linear", "out": 1}]);
    let mse = write_spec(
        &dir,
        "mse.json",
        &json!({"input": [3], "layers": layers, "loss": "mse"}),
    );
    let bare = write_spec(&dir, "bare.json", &json!({"input": [3], "layers": layers}));
    for (p, extra) in [
        (&mse, &[][..]),
        (&bare, &[][..]),
        (&bare, &["--loss", "mse"][..]),
    ] {
        let args = [&["--model", p.as_str(), "--print-torch"][..], extra].concat();
        let out = support::run_tool("train", &args, "");
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let src = String::from_utf8(out.stdout).unwrap();
        assert!(src.contains("(input [3], 1 outputs)"), "{src}");
    }
    let out = support::run_tool(
        "train",
        &["--model", &bare, "--loss", "cross_entropy", "--print-torch"],
        "",
    );
    support::assert_one_line_error(&out, &["1 class (cross-entropy needs at least 2"]);
    let out = support::run_tool(
        "train",
        &["--model", &mse, "--loss", "foo", "--print-torch"],
        "",
    );
    support::assert_one_line_error(&out, &["--loss", "unknown loss 'foo'"]);
}
