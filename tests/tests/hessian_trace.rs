//! End-to-end tests of `hessian-trace`: the built binary on the fixture checkpoints and the committed
//! MNIST subset (tests/fixtures/mnist-small), compared with the PyTorch float64 reference values.

use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod support;

fn workspace() -> PathBuf {
    support::repo()
}

fn fixture(name: &str) -> String {
    workspace()
        .join("tests/fixtures/reference")
        .join(name)
        .display()
        .to_string()
}

fn data_dir() -> String {
    workspace()
        .join("tests/fixtures/mnist-small")
        .display()
        .to_string()
}

fn run(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(support::tool_path("hessian-trace"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run hessian-trace");
    {
        let mut input = child.stdin.take().expect("stdin");
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).expect("write stdin");
        }
    }
    child.wait_with_output().expect("wait")
}

fn records(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

fn reference(name: &str) -> Value {
    serde_json::from_slice(
        &std::fs::read(workspace().join("tests/fixtures/reference").join(name)).unwrap(),
    )
    .unwrap()
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs()
}

/// A small MLP 784-2-10 checkpoint with PyTorch names and no metadata (as PyTorch would write it).
fn tiny_checkpoint(dir: &Path, name: &str, value: f32) -> PathBuf {
    let shapes: [(&str, Vec<usize>); 4] = [
        ("1.weight", vec![2, 784]),
        ("1.bias", vec![2]),
        ("3.weight", vec![10, 2]),
        ("3.bias", vec![10]),
    ];
    let path = dir.join(name);
    support::write_f32_safetensors(&path, &shapes, |i| value * ((i as f32) * 0.37).sin());
    path
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hessian-trace-e2e-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn exact_trace_of_the_mlp_matches_pytorch() {
    let dd = data_dir();
    let out = run(
        &[
            "--data-dir",
            &dd,
            "--per-tensor",
            &fixture("mlp_1x128.safetensors"),
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recs = records(&out);
    assert_eq!(recs.len(), 1);
    let h = &recs[0]["hessian"];
    let r = reference("mlp_1x128.ref.json");
    assert_eq!(h["method"], "exact");
    assert_eq!(h["precision"], "f32");
    assert_eq!(h["data"]["samples"], 1280);
    assert_eq!(h["data"]["split"], "train");
    assert_eq!(h["data"]["dataset"], "mnist");
    // Float32 model and inputs: 1e-5 relative (fixtures README).
    let want = r["trace"]["exact"].as_f64().unwrap();
    assert!(rel(h["trace"].as_f64().unwrap(), want) < 1e-5, "{h}");
    for (name, v) in r["trace"]["per_tensor"].as_object().unwrap() {
        let got = h["per_tensor"][name].as_f64().unwrap();
        assert!(
            (got - v.as_f64().unwrap()).abs() < 1e-5 * want,
            "{name}: {got} vs {v}"
        );
    }
}

#[test]
fn exact_trace_in_f64_matches_to_1e10() {
    let dd = data_dir();
    let out = run(
        &[
            "--data-dir",
            &dd,
            "--f64",
            "-q",
            &fixture("mlp_1x128.safetensors"),
        ],
        None,
    );
    assert!(out.status.success());
    let h = &records(&out)[0]["hessian"];
    let want = reference("mlp_1x128.ref.json")["trace"]["exact"]
        .as_f64()
        .unwrap();
    assert!(rel(h["trace"].as_f64().unwrap(), want) < 1e-10, "{h}");
    assert_eq!(h["precision"], "f64");
}

#[test]
fn hutchinson_agrees_within_its_error_bar_and_is_reproducible() {
    let dd = data_dir();
    let ck = fixture("mlp_1x128.safetensors");
    let args = [
        "--data-dir",
        &dd,
        "--probes",
        "64",
        "--seed",
        "5",
        "-q",
        &ck,
    ];
    let a = records(&run(&args, None));
    let b = records(&run(&args, None));
    let h = &a[0]["hessian"];
    assert_eq!(
        h,
        &b[0]["hessian"]
            .as_object()
            .map(|o| {
                let mut o = o.clone();
                o.insert("seconds".into(), h["seconds"].clone());
                Value::Object(o)
            })
            .unwrap()
    );
    assert_eq!(h["method"], "hutchinson");
    assert_eq!(h["probe"], "rademacher");
    assert_eq!(h["seed"], 5);
    assert_eq!(h["probes"], 64);
    let want = reference("mlp_1x128.ref.json")["trace"]["exact"]
        .as_f64()
        .unwrap();
    let (t, se) = (
        h["trace"].as_f64().unwrap(),
        h["trace_se"].as_f64().unwrap(),
    );
    assert!((t - want).abs() <= 3.0 * se, "{t} ± {se} vs {want}");
    // A different seed gives a different estimate; Gaussian probes are recorded as such.
    let g = records(&run(
        &[
            "--data-dir",
            &dd,
            "--probes",
            "16",
            "--probe",
            "gaussian",
            "-q",
            &ck,
        ],
        None,
    ));
    assert_eq!(g[0]["hessian"]["probe"], "gaussian");
    assert_ne!(g[0]["hessian"]["trace"], h["trace"]);
}

#[test]
fn adaptive_hutchinson_reaches_its_relative_error() {
    let dd = data_dir();
    let out = run(
        &[
            "--data-dir",
            &dd,
            "--rtol",
            "0.05",
            "-q",
            &fixture("mlp_1x128.safetensors"),
        ],
        None,
    );
    let h = &records(&out)[0]["hessian"];
    let (t, se) = (
        h["trace"].as_f64().unwrap(),
        h["trace_se"].as_f64().unwrap(),
    );
    assert_eq!(h["converged"], true);
    assert!(se <= 0.05 * t && h["probes"].as_u64().unwrap() >= 10, "{h}");
    assert_eq!(h["rtol"], 0.05);
}

#[test]
fn top_eigenvalue_and_density() {
    let dd = data_dir();
    let dir = temp_dir("density");
    let pattern = dir.join("{name}.json").display().to_string();
    let out = run(
        &[
            "--data-dir",
            &dd,
            "--top-k",
            "2",
            "--density",
            &pattern,
            "--density-steps",
            "30",
            "-q",
            &fixture("mlp_1x128.safetensors"),
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let h = &records(&out)[0]["hessian"];
    let eigs = &reference("mlp_1x128.ref.json")["top_eig_reference"]["eigenvalues_desc"];
    for j in 0..2 {
        // f32 products: the eigenvalue to 1e-4 relative (the tolerance).
        let got = h["top_eigenvalues"][j]["value"].as_f64().unwrap();
        assert!(rel(got, eigs[j].as_f64().unwrap()) < 1e-4, "λ{j} {got}");
    }
    let d: Value =
        serde_json::from_slice(&std::fs::read(dir.join("mlp_1x128.json")).unwrap()).unwrap();
    let w: f64 = d["runs"][0]["weights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .sum();
    assert!((w - 1.0).abs() < 1e-6, "weights sum to {w}");
    assert_eq!(d["runs"][0]["nodes"].as_array().unwrap().len(), 30);
    let top = d["runs"][0]["nodes"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .as_f64()
        .unwrap();
    assert!(
        top <= eigs[0].as_f64().unwrap() * (1.0 + 1e-4),
        "a Ritz value above λ_max"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn pyhessian_mode_records_its_settings() {
    let dd = data_dir();
    let out = run(
        &[
            "--data-dir",
            &dd,
            "--pyhessian",
            "-q",
            &fixture("mlp_1x128.safetensors"),
        ],
        None,
    );
    let h = &records(&out)[0]["hessian"];
    assert_eq!(h["method"], "pyhessian");
    assert_eq!(h["pyhessian"]["max_iter"], 50);
    assert_eq!(h["pyhessian"]["repeats"], 5);
    let per: u64 = h["pyhessian"]["probes_per_repeat"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(per, h["probes"].as_u64().unwrap());
    assert!((10..=250).contains(&per));
}

#[test]
fn stream_passes_records_through_and_reports_bad_ones() {
    let dd = data_dir();
    let dir = temp_dir("stream");
    let nan = tiny_checkpoint(&dir, "nan.safetensors", f32::NAN);
    let good = fixture("mlp_1x128.safetensors");
    let input = format!(
        "{{\"type\":\"note\"}}\n{{\"checkpoint\":\"{}\",\"run\":\"bad\"}}\n{{\"checkpoint\":\"{good}\",\"run\":\"good\"}}\n",
        nan.display()
    );
    // The NaN checkpoint has no metadata: its architecture is inferred from the tensor shapes.
    let out = run(&["--data-dir", &dd], Some(&input));
    assert_eq!(out.status.code(), Some(1));
    let recs = records(&out);
    assert_eq!(recs.len(), 3, "one line out per line in");
    assert_eq!(recs[0], serde_json::json!({"type": "note"}));
    assert!(recs[1]["hessian"]["error"]
        .as_str()
        .unwrap()
        .contains("non-finite"));
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.contains("nan.safetensors"))
        .expect("error names the checkpoint");
    assert!(
        line.contains("NaN") || line.contains("non-finite"),
        "{line}"
    );
    // The good record after the bad one is processed.
    assert_eq!(recs[2]["run"], "good");
    assert_eq!(recs[2]["hessian"]["method"], "exact");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn foreign_checkpoints_load_with_model_and_tanh_refuses_exact() {
    let dd = data_dir();
    let dir = temp_dir("foreign");
    let ck = tiny_checkpoint(&dir, "tiny.safetensors", 0.05);
    let ck = ck.display().to_string();
    let ok = run(
        &[
            "--data-dir",
            &dd,
            "--model",
            "mlp_1x2",
            "--samples",
            "64",
            "-q",
            &ck,
        ],
        None,
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(records(&ok)[0]["hessian"]["model"], "mlp_1x2");
    assert_eq!(records(&ok)[0]["hessian"]["data"]["samples"], 64);
    let tanh = run(
        &["--data-dir", &dd, "--model", "mlp_1x2_tanh", "--exact", &ck],
        None,
    );
    assert_eq!(tanh.status.code(), Some(1));
    let err = String::from_utf8_lossy(&tanh.stderr);
    assert!(
        err.contains("tanh") && err.contains("tiny.safetensors"),
        "{err}"
    );
    // Without --exact a tanh network gets Hutchinson (adaptive, 1% by default).
    let h = run(
        &[
            "--data-dir",
            &dd,
            "--model",
            "mlp_1x2_tanh",
            "--samples",
            "64",
            "--max-probes",
            "200",
            "-q",
            &ck,
        ],
        None,
    );
    assert_eq!(records(&h)[0]["hessian"]["method"], "hutchinson");
    // More Lanczos steps than parameters (P = 1,600) for the density.
    let d = dir.join("d.json").display().to_string();
    let too_many = run(
        &[
            "--data-dir",
            &dd,
            "--model",
            "mlp_1x2",
            "--density",
            &d,
            "--density-steps",
            "2000",
            &ck,
        ],
        None,
    );
    assert_eq!(too_many.status.code(), Some(1));
    let err = String::from_utf8_lossy(&too_many.stderr);
    assert!(
        err.contains("2000") && err.contains("1600") && err.contains("tiny.safetensors"),
        "{err}"
    );
    assert!(!dir.join("d.json").exists());
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn bad_settings_fail_with_one_line() {
    let dd = data_dir();
    let ck = fixture("mlp_1x128.safetensors");
    let zero = run(&["--data-dir", &dd, "--probes", "0", &ck], None);
    assert_eq!(zero.status.code(), Some(1));
    let err = String::from_utf8_lossy(&zero.stderr);
    assert!(
        err.contains("--probes") && err.lines().count() == 1,
        "{err}"
    );
    assert!(zero.stdout.is_empty());
    let empty = run(&["--data-dir", &dd, "--samples", "0", &ck], None);
    assert_eq!(empty.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&empty.stderr).contains("empty"));
    let missing = run(&["--data-dir", &dd, "/nonexistent/x.safetensors"], None);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/x.safetensors"));
}

#[test]
fn help_starts_with_prose_then_examples() {
    let out = run(&["--help"], None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("The Hessian trace") || text.starts_with("Measure"),
        "{text}"
    );
    assert!(text.contains("$ hessian-trace"));
}
