//! End-to-end: in-context linear regression with its loss at the y positions. `datagen
//! icl-regression` → `train` the committed example spec (`examples/icl-regression.json`: a
//! two-layer causal transformer read at its x-tokens by `positions`, a linear head of one output,
//! the mean squared error against y `[n, K]`) → `llc` and `hessian-trace` on its checkpoint; the
//! exact trace of a piecewise-linear model read at the same positions; a spec whose read-out does
//! not match the targets refused in one line.

mod support;

use support::{
    assert_one_line_error, llc_and_trace, records, repo, run_tool as run, scratch, stderr,
    train_spec,
};

/// D = 4, K = 8 (the example's input [16, 5]), fresh tasks, σ = 0.1.
fn icl_data(dir: &std::path::Path) -> std::path::PathBuf {
    let data = dir.join("icl.safetensors");
    let o = run(
        "datagen",
        &[
            "icl-regression",
            "--dim",
            "4",
            "--context",
            "8",
            "--tasks",
            "0",
            "--noise",
            "0.1",
            "--samples",
            "256",
            "--test-samples",
            "64",
            "--seed",
            "1",
            "--out",
            data.to_str().unwrap(),
        ],
        "",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    data
}

fn train(
    model: &str,
    data: &std::path::Path,
    out: &std::path::Path,
    epochs: &str,
) -> Vec<serde_json::Map<String, serde_json::Value>> {
    let o = train_spec(
        model,
        data,
        out,
        &[
            "--optimizer",
            "adamw",
            "--lr",
            "0.003",
            "--batch-size",
            "32",
            "--epochs",
            epochs,
            "--seed",
            "2",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    records(&o)
}

/// The example trains (the loss falls, recorded as `mse`), and `llc` and `hessian-trace` give
/// finite estimates on its checkpoint.
#[test]
fn the_icl_example_trains_at_its_y_positions_and_is_analysed() {
    let dir = scratch("icl-e2e");
    let data = icl_data(&dir);
    let example = repo().join("examples/icl-regression.json");
    let out = dir.join("run");
    let recs = train(example.to_str().unwrap(), &data, &out, "4");
    let losses: Vec<f64> = recs
        .iter()
        .filter_map(|r| r["train_loss"].as_f64())
        .collect();
    assert_eq!(losses.len(), 4, "{recs:?}");
    assert!(losses[3] < losses[0], "the loss did not fall: {losses:?}");
    assert_eq!(recs[0]["loss"], "mse");
    let ckpt = out.join("epoch-0004.safetensors");
    let (llc, trace) = llc_and_trace(&data, &ckpt);
    assert_eq!(llc["llc"]["model"], "icl-regression", "{llc:?}");
    assert_eq!(llc["llc"]["loss"], "mse", "{llc:?}");
    assert_eq!(trace["hessian"]["data"]["samples"], 256, "{trace:?}");

    // `datagen icl-baseline`: the model's error per position averages to the test loss `train`
    // recorded (f32 there, f64 here); ridge and least squares per position, K = 8 of each.
    let table = dir.join("icl.md");
    let o = run(
        "datagen",
        &[
            "icl-baseline",
            "--data",
            data.to_str().unwrap(),
            "--table",
            table.to_str().unwrap(),
            ckpt.to_str().unwrap(),
        ],
        "",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let rec = records(&o).swap_remove(0);
    let b = &rec["icl_baseline"];
    assert_eq!(
        (b["dim"].as_u64(), b["context"].as_u64()),
        (Some(4), Some(8))
    );
    assert_eq!(b["samples"], 64);
    assert!(
        (b["ridge"].as_f64().unwrap() - 0.01).abs() < 1e-12,
        "λ = σ²: {b}"
    );
    let model = &b["models"][0];
    let mse: Vec<f64> = model["mse"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(mse.len(), 8);
    let test_loss = recs[3]["test_loss"].as_f64().unwrap();
    let mean = mse.iter().sum::<f64>() / 8.0;
    assert!(
        (mean - test_loss).abs() < 1e-5 * test_loss,
        "mean per position {mean} vs test_loss {test_loss}"
    );
    assert_eq!(model["epoch"], 4);
    for key in ["ridge_mse", "least_squares_mse"] {
        assert_eq!(b[key].as_array().unwrap().len(), 8, "{key}");
    }
    let md = std::fs::read_to_string(&table).unwrap();
    assert!(
        md.contains("| k | ridge (λ = σ²) | least squares |"),
        "{md}"
    );
    assert_eq!(
        md.lines().filter(|l| l.starts_with("| ")).count(),
        1 + 8 + 1,
        "{md}"
    );
}

/// `datagen icl-baseline` refuses data that is not in-context regression in one line.
#[test]
fn the_icl_baseline_refuses_other_data() {
    let dir = scratch("icl-baseline-refused");
    let data = dir.join("rr.safetensors");
    let o = run(
        "datagen",
        &[
            "random-regression",
            "--inputs",
            "6",
            "--outputs",
            "3",
            "--samples",
            "8",
            "--test-samples",
            "8",
            "--out",
            data.to_str().unwrap(),
        ],
        "",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(
        "datagen",
        &["icl-baseline", "--data", data.to_str().unwrap()],
        "",
    );
    assert_one_line_error(&o, &["is not in-context regression data", "[1, 1, 6]"]);
}

/// A piecewise-linear model read at the x-tokens: `hessian-trace --exact` (exact through
/// `positions`) agrees with Hutchinson's estimate within its error bars.
#[test]
fn the_exact_trace_runs_through_positions() {
    let dir = scratch("icl-exact");
    let data = icl_data(&dir);
    let model = dir.join("relu.json");
    std::fs::write(
        &model,
        serde_json::json!({"input": [16, 5],
            "layers": [{"type": "linear", "out": 16}, {"type": "positional"}, {"type": "relu"},
                       {"type": "positions", "start": 0, "step": 2},
                       {"type": "linear", "out": 1}],
            "loss": "mse"})
        .to_string(),
    )
    .unwrap();
    let out = dir.join("run");
    train(model.to_str().unwrap(), &data, &out, "2");
    let ckpt = out.join("epoch-0002.safetensors");
    let o = run(
        "hessian-trace",
        &[
            "--data",
            data.to_str().unwrap(),
            "--exact",
            ckpt.to_str().unwrap(),
        ],
        "",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let exact = records(&o).swap_remove(0);
    let exact = exact["hessian"]["trace"].as_f64().unwrap();
    let o = run(
        "hessian-trace",
        &[
            "--data",
            data.to_str().unwrap(),
            "--probes",
            "200",
            ckpt.to_str().unwrap(),
        ],
        "",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let h = records(&o).swap_remove(0);
    let est = h["hessian"]["trace"].as_f64().unwrap();
    let se = h["hessian"]["trace_se"].as_f64().unwrap();
    assert!(
        exact > 0.0 && (est - exact).abs() < 4.0 * se + 1e-9,
        "exact {exact} vs Hutchinson {est} ± {se}"
    );
}

/// Read at every position ([16, 1]) or at the y-tokens with a count too small, the model's outputs
/// do not match the K = 8 targets: one line naming both widths.
#[test]
fn a_read_out_that_misses_the_targets_is_refused() {
    let dir = scratch("icl-refused");
    let data = icl_data(&dir);
    let model = dir.join("m.json");
    for (pos, outputs) in [
        (None, "16 outputs"),
        (
            Some(serde_json::json!({"type": "positions", "start": 1, "step": 2, "count": 4})),
            "4 outputs",
        ),
    ] {
        let mut layers = vec![serde_json::json!({"type": "linear", "out": 4})];
        layers.extend(pos);
        layers.push(serde_json::json!({"type": "linear", "out": 1}));
        std::fs::write(
            &model,
            serde_json::json!({"input": [16, 5], "layers": layers, "loss": "mse"}).to_string(),
        )
        .unwrap();
        let o = train_spec(&model, &data, dir.join("bad"), &["--epochs", "1"]);
        assert_one_line_error(&o, &["width 8", outputs]);
    }
}
