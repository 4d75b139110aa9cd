//! A PyTorch user's own model, trained in PyTorch (`scripts/fixtures/torch_user_model.py`: an
//! nn.Sequential with GELU, a residual block of LayerNorm, Linear and GELU, and a final LayerNorm,
//! its state_dict saved with safetensors), analysed with the tools through a spec written by hand
//! to describe it (`tests/fixtures/torch-user/model.json`). The loss they report is PyTorch's.

mod support;

use serde_json::Value;
use support::{records, repo, run_tool as run, stderr};

const DIR: &str = "tests/fixtures/torch-user";

fn expected(key: &str) -> f64 {
    let text = std::fs::read_to_string(repo().join(DIR).join("expected.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v[key].as_f64().unwrap()
}

fn hessian(extra: &[&str]) -> Value {
    let (spec, data, ckpt) = (
        format!("{DIR}/model.json"),
        format!("{DIR}/data.safetensors"),
        format!("{DIR}/model.safetensors"),
    );
    let mut args = vec![
        "--model", &spec, "--data", &data, "--full", "--probes", "2", "--quiet",
    ];
    args.extend(extra);
    args.push(&ckpt);
    let out = run("hessian-trace", &args, "");
    assert!(out.status.success(), "{}", stderr(&out));
    Value::Object(records(&out).remove(0))
}

/// In f64 (the f32 weights widened) our loss is PyTorch's float64 loss to rounding (measured
/// 1.5e-11 relative); in f32 it is PyTorch's float32 loss to f32 summation error (measured 1.3e-6
/// relative: the loss is 0.0128, a mean over 512 samples). Every tensor of the state_dict is used,
/// under PyTorch's names.
#[test]
fn the_loss_of_a_pytorch_trained_model_is_pytorchs() {
    let h = hessian(&["--f64"]);
    let loss = h["hessian"]["loss"].as_f64().unwrap();
    let torch = expected("loss_f64");
    assert!(
        (loss - torch).abs() <= 1e-9 * torch,
        "ours {loss} vs PyTorch float64 {torch}"
    );
    assert_eq!(h["hessian"]["data"]["samples"], 512);
    assert_eq!(
        h["hessian"]["parameters"],
        20 * 32 + 32 + 4 * 32 + 32 * 32 + 32 + 4 * 32 + 4
    );
    let f32_loss = hessian(&[])["hessian"]["loss"].as_f64().unwrap();
    let torch32 = expected("loss_f32");
    assert!(
        (f32_loss - torch32).abs() <= 1e-5 * torch32,
        "ours {f32_loss} vs PyTorch float32 {torch32}"
    );
}

/// The exact trace is refused naming the first layer that is not piecewise linear; λ̂ runs, with
/// L_init near PyTorch's loss, and the record carries the spec.
#[test]
fn llc_runs_and_the_exact_trace_is_refused_with_the_reason() {
    let (spec, data, ckpt) = (
        format!("{DIR}/model.json"),
        format!("{DIR}/data.safetensors"),
        format!("{DIR}/model.safetensors"),
    );
    let out = run(
        "hessian-trace",
        &[
            "--model", &spec, "--data", &data, "--exact", "--quiet", &ckpt,
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(1));
    let rec = &records(&out)[0];
    let err = rec["hessian"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(err.contains("gelu (layer 2, nn.GELU)"), "{err}");

    let out = run(
        "llc",
        &[
            "--model",
            &spec,
            "--data",
            &data,
            "--draws",
            "100",
            "--batch-size",
            "64",
            "--quiet",
            &ckpt,
        ],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let l = &records(&out)[0]["llc"];
    assert!(l["llc"].as_f64().unwrap().is_finite());
    assert_eq!(l["model_spec"]["layers"][3]["type"], "residual");
    let init = l["init_loss"].as_f64().unwrap();
    assert!(init > 0.0 && init < 0.1, "L_init {init}");
}
