//! End-to-end tests of `llc` and `wbic`: the built tools on the reference checkpoint and the MNIST
//! fixture, with few draws so they stay fast.

mod support;

use serde_json::Value;
use std::path::PathBuf;
use support::{fixtures, records, run_tool as run, stderr};

const DATA: &str = "tests/fixtures/mnist-small";
const CKPT: &str = "tests/fixtures/reference/mlp_1x128.safetensors";

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ngd-slt-e2e-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn llc_on_the_pytorch_reference_checkpoint() {
    let out = run(
        "llc",
        &[
            "--data-dir",
            DATA,
            "--draws",
            "40",
            "--threads",
            "1",
            "--quiet",
            CKPT,
        ],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let recs = records(&out);
    assert_eq!(recs.len(), 1);
    let l = &recs[0]["llc"];
    assert_eq!(recs[0]["checkpoint"], CKPT);
    assert_eq!(l["model"], "mlp_1x128");
    assert_eq!(l["dataset"], "mnist");
    // nβ by devinterp's rule for m = 128: 128/ln 128.
    assert!((l["nbeta"].as_f64().unwrap() - 128.0 / 128f64.ln()).abs() < 1e-9);
    assert_eq!(l["nbeta_rule"], "batch: m/ln m with m = 128");
    for (k, v) in [("epsilon", 1e-4), ("gamma", 100.0)] {
        assert_eq!(l[k].as_f64().unwrap(), v, "{k}");
    }
    assert_eq!(l["chains"], 2);
    assert_eq!(l["draws"], 40);
    assert_eq!(l["samples"], 1280);
    let per_chain: Vec<f64> = l["llc_per_chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(per_chain.len(), 2);
    let mean = (per_chain[0] + per_chain[1]) / 2.0;
    assert!((l["llc"].as_f64().unwrap() - mean).abs() < 1e-9);
    // The SGLD chains climb above L_init: λ̂ > 0 for a trained network.
    assert!(mean > 0.0, "llc {mean}");
    assert!(l["init_loss"].as_f64().unwrap() > 0.0);
    let d = &l["diagnostics"];
    assert_eq!(d["mala_acceptance_per_chain"].as_array().unwrap().len(), 2);
    assert!(d["rhat"].as_f64().is_some());
    assert!(matches!(l["verdict"].as_str(), Some("ok" | "warning")));

    // Same seed, same numbers, whatever the thread count.
    let again = run(
        "llc",
        &[
            "--data-dir",
            DATA,
            "--draws",
            "40",
            "--threads",
            "2",
            "--quiet",
            CKPT,
        ],
        "",
    );
    let r2 = records(&again);
    assert_eq!(r2[0]["llc"]["llc_per_chain"], l["llc_per_chain"]);
    assert_eq!(r2[0]["llc"]["init_loss"], l["init_loss"]);
}

#[test]
fn records_on_stdin_pass_through_and_failures_are_named() {
    let input = format!(
        "{{\"type\":\"note\",\"x\":1}}\n{{\"checkpoint\":\"{CKPT}\",\"run\":\"ref\"}}\n{{\"checkpoint\":\"missing.safetensors\",\"run\":\"gone\"}}\n"
    );
    let out = run(
        "llc",
        &["--data-dir", DATA, "--draws", "10", "--quiet"],
        &input,
    );
    assert!(
        !out.status.success(),
        "a failed record makes the exit status non-zero"
    );
    let recs = records(&out);
    assert_eq!(recs.len(), 3);
    assert_eq!(
        serde_json::Value::Object(recs[0].clone()),
        serde_json::json!({"type": "note", "x": 1})
    );
    assert!(recs[1]["llc"]["llc"].as_f64().is_some());
    assert_eq!(recs[1]["run"], "ref");
    let err = recs[2]["llc"]["error"].as_str().unwrap();
    assert!(err.contains("missing.safetensors"), "{err}");
    let e = stderr(&out);
    assert!(e.contains("record 3") && e.contains("run gone"), "{e}");
}

#[test]
fn bad_settings_are_refused_with_one_line() {
    for (args, needle) in [
        (vec!["--epsilon", "0"], "--epsilon"),
        (vec!["--epsilon=-1e-4"], "--epsilon"),
        (vec!["--draws", "0"], "--draws"),
        (vec!["--chains", "-2"], "--chains"),
        (vec!["--nbeta", "hot"], "--nbeta"),
    ] {
        let mut a = vec!["--data-dir", DATA];
        a.extend(&args);
        a.push(CKPT);
        let out = run("llc", &a, "");
        assert!(!out.status.success(), "{args:?}");
        let e = stderr(&out);
        assert!(
            e.starts_with("llc: ") && e.contains(needle),
            "{args:?}: {e}"
        );
        assert!(
            out.stdout.is_empty(),
            "{args:?}: no record on a settings error"
        );
    }
}

#[test]
fn nan_checkpoint_and_mismatched_data_are_reported() {
    let dir = temp_dir("llc-bad");
    // A copy of the reference checkpoint with one NaN parameter.
    let mut bytes = std::fs::read(fixtures().join("reference/mlp_1x128.safetensors")).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    bytes[8 + header..8 + header + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    let nan = dir.join("nan.safetensors");
    std::fs::write(&nan, &bytes).unwrap();
    let out = run(
        "llc",
        &["--data-dir", DATA, "--draws", "5", nan.to_str().unwrap()],
        "",
    );
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(
        e.contains("nan.safetensors") && e.contains("non-finite"),
        "{e}"
    );
    let recs = records(&out);
    assert!(recs[0]["llc"]["error"].as_str().unwrap().contains("NaN"));

    // 10×10 images cannot feed a 784-input MLP.
    let data = dir.join("small-images");
    std::fs::create_dir_all(&data).unwrap();
    let n = 200u32;
    let mut images = vec![0, 0, 8, 3];
    for d in [n, 10, 10] {
        images.extend_from_slice(&d.to_be_bytes());
    }
    images.extend((0..n * 100).map(|i| (i % 251) as u8));
    let mut labels = vec![0, 0, 8, 1];
    labels.extend_from_slice(&n.to_be_bytes());
    labels.extend((0..n).map(|i| (i % 10) as u8));
    std::fs::write(data.join("train-images-idx3-ubyte"), images).unwrap();
    std::fs::write(data.join("train-labels-idx1-ubyte"), labels).unwrap();
    let out = run(
        "llc",
        &["--data-dir", data.to_str().unwrap(), "--draws", "5", CKPT],
        "",
    );
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains("100 pixels") && e.contains("784"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn trace_out_and_calibration() {
    let dir = temp_dir("llc-trace");
    let trace = dir.join("trace.jsonl");
    let out = run(
        "llc",
        &[
            "--data-dir",
            DATA,
            "--draws",
            "12",
            "--chains",
            "3",
            "--quiet",
            "--trace-out",
            trace.to_str().unwrap(),
            CKPT,
        ],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<Value> = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3 * 12);
    assert_eq!(lines[13]["chain"], 1);
    assert_eq!(lines[13]["draw"], 1);
    assert_eq!(lines[13]["checkpoint"], CKPT);
    assert!(
        lines[12]["acceptance"].is_null(),
        "no transition into draw 0"
    );
    let a = lines[13]["acceptance"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&a));
    // The trace is the data behind the estimate: nβ·(mean loss of chain 0 − L_init) = λ̂₀.
    let rec = &records(&out)[0]["llc"];
    let mean0: f64 = lines[..12]
        .iter()
        .map(|l| l["loss"].as_f64().unwrap())
        .sum::<f64>()
        / 12.0;
    let expect = rec["nbeta"].as_f64().unwrap() * (mean0 - rec["init_loss"].as_f64().unwrap());
    assert!(
        (rec["llc_per_chain"][0].as_f64().unwrap() - expect).abs() < 1e-9 * expect.abs().max(1.0)
    );

    let out = run(
        "llc",
        &[
            "--data-dir",
            DATA,
            "--draws",
            "20",
            "--quiet",
            "--calibrate",
            "--calibrate-epsilon",
            "1e-5:1e-4:2",
            "--calibrate-nbeta",
            "batch,100",
            CKPT,
        ],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let c = &records(&out)[0]["llc_calibration"];
    assert_eq!(c["cells"].as_array().unwrap().len(), 4);
    assert_eq!(c["rows"].as_array().unwrap().len(), 2);
    let eps: Vec<f64> = c["epsilons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert!((eps[0] - 1e-5).abs() < 1e-15 && (eps[1] - 1e-4).abs() < 1e-15);
    assert_eq!(c["cells"][2]["nbeta"], 100.0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn wbic_global_local_and_devinterp() {
    let out = run(
        "wbic",
        &["--data-dir", DATA, "--draws", "30", "--quiet", CKPT],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let w = &records(&out)[0]["wbic"];
    let n = 1280f64;
    assert!((w["beta"].as_f64().unwrap() - 1.0 / n.ln()).abs() < 1e-12);
    assert!((w["nbeta"].as_f64().unwrap() - n / n.ln()).abs() < 1e-9);
    assert_eq!(w["gamma"], 0.0);
    assert_eq!(w["localisation"], "none (global WBIC)");
    let wbic = w["wbic"].as_f64().unwrap();
    let star = w["n_loss_at_checkpoint"].as_f64().unwrap();
    let implied = w["implied_lambda"].as_f64().unwrap();
    assert!((implied - (wbic - star) / n.ln()).abs() < 1e-9 * implied.abs().max(1.0));
    assert!(w["wbic_se"].as_f64().is_some());

    let out = run(
        "wbic",
        &[
            "--data-dir",
            DATA,
            "--draws",
            "10",
            "--gamma",
            "100",
            "--quiet",
            CKPT,
        ],
        "",
    );
    let w = &records(&out)[0]["wbic"];
    assert!(w["localisation"]
        .as_str()
        .unwrap()
        .starts_with("local WBIC"));

    let out = run(
        "wbic",
        &[
            "--data-dir",
            DATA,
            "--draws",
            "10",
            "--devinterp",
            "--quiet",
            CKPT,
        ],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let w = &records(&out)[0]["wbic_devinterp"];
    assert!(w["wbic_devinterp"].as_f64().is_some());
    assert!((w["nbeta"].as_f64().unwrap() - 128.0 / 128f64.ln()).abs() < 1e-9);
    assert_eq!(w["gamma"], 100.0);
    assert!(w["estimator"].as_str().unwrap().starts_with("devinterp"));

    let out = run("wbic", &["--data-dir", DATA, "--beta", "0", CKPT], "");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--beta"));
}

/// `--only` samples the named tensors and holds the rest at w* (devinterp's optimize_over): the
/// record says which and how many parameters; selecting every tensor is the unrestricted chain bit
/// for bit (the same coordinates in the same order, the same noise); a pattern that matches nothing
/// fails that record naming the model's tensors.
#[test]
fn llc_only_restricts_the_sampled_tensors() {
    let base = [
        "--data-dir",
        DATA,
        "--draws",
        "30",
        "--threads",
        "1",
        "--quiet",
    ];
    let llc = |extra: &[&str]| {
        let args: Vec<&str> = base.iter().chain(extra).chain(&[CKPT]).copied().collect();
        let out = run("llc", &args, "");
        assert!(out.status.success(), "{}", stderr(&out));
        records(&out).remove(0)["llc"].clone()
    };
    let full = llc(&[]);
    let all = llc(&["--only", "*"]);
    assert_eq!(full["llc_per_chain"], all["llc_per_chain"]);
    assert_eq!(all["only"]["params"], 101_770);
    let last = llc(&["--only", "3.*"]);
    assert_eq!(
        last["only"]["tensors"],
        serde_json::json!(["3.weight", "3.bias"])
    );
    assert_eq!(last["only"]["patterns"], serde_json::json!(["3.*"]));
    assert_eq!(last["only"]["params"], 1290);
    assert_eq!(last["only"]["of_params"], 101_770);
    assert!(last["llc"].as_f64().unwrap().is_finite());
    assert_ne!(last["llc_per_chain"], full["llc_per_chain"]);
    let two = llc(&["--only", "1.bias,3.bias"]);
    assert_eq!(two["only"]["params"], 138);

    let args: Vec<&str> = base
        .iter()
        .chain(&["--only", "fc_*", CKPT])
        .copied()
        .collect();
    let out = run("llc", &args, "");
    assert_eq!(out.status.code(), Some(1));
    let rec = &records(&out)[0];
    let err = rec["llc"]["error"].as_str().unwrap();
    assert!(
        err.contains("--only fc_*: no tensor of the model matches (its tensors: 1.weight, 1.bias, 3.weight, 3.bias)"),
        "{err}"
    );
}
