//! End-to-end: a loss at every position. `datagen modular --targets next-token` → `train` a causal
//! transformer whose output is per position `[3, p + 1]` (no `last`) with cross-entropy averaged
//! over positions → `llc` and `hessian-trace` on its checkpoint; the mean squared error over a
//! per-position output `[T, k]` with float targets `[n, T, k]`; and the refusals when labels and
//! the model's output do not fit.

mod support;

use support::{
    assert_one_line_error, llc_and_trace, records, run_tool as run, scratch, stderr, train_losses,
    train_spec, write_f32_safetensors,
};

const P: usize = 7;

/// A one-layer causal transformer over `[a, b, =]` with an output per position of `classes`, or
/// read out at the last position with `last`.
fn spec(vocab: usize, classes: usize, last: bool) -> String {
    let mut layers = vec![
        serde_json::json!({"type": "embedding", "num": vocab, "dim": 8}),
        serde_json::json!({"type": "positional"}),
        serde_json::json!({"type": "residual", "layers": [{"type": "layernorm"}, {"type": "attention", "heads": 2, "causal": true}]}),
        serde_json::json!({"type": "residual", "layers": [{"type": "layernorm"}, {"type": "linear", "out": 16}, {"type": "gelu"}, {"type": "linear", "out": 8}]}),
        serde_json::json!({"type": "layernorm"}),
    ];
    if last {
        layers.push(serde_json::json!({"type": "last"}));
    }
    layers.push(serde_json::json!({"type": "linear", "out": classes}));
    serde_json::json!({"input": [3], "layers": layers, "loss": "cross_entropy"}).to_string()
}

fn modular(dir: &std::path::Path, targets: &str) -> std::path::PathBuf {
    let data = dir.join(format!("add-{targets}.safetensors"));
    let o = run(
        "datagen",
        &[
            "modular",
            "--p",
            &P.to_string(),
            "--train-fraction",
            "0.6",
            "--seed",
            "1",
            "--targets",
            targets,
            "--out",
            data.to_str().unwrap(),
        ],
        "",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    data
}

/// Next-token labels `[n, 3]` train a per-position transformer: the loss falls, the accuracy is
/// per token (in (1/3, 1) once trained, where a count of tokens over samples would exceed 1), the
/// records say the loss is over 3 positions;
/// `llc` and `hessian-trace` give finite values on the checkpoint; `ngd-exact` (sampled Fisher, a
/// label drawn per position) trains it too.
#[test]
fn next_token_labels_train_a_per_position_transformer_and_are_analysed() {
    let dir = scratch("seqloss-next-token");
    let data = modular(&dir, "next-token");
    let model = dir.join("tiny.json");
    std::fs::write(&model, spec(P + 1, P + 1, false)).unwrap();
    let out = dir.join("run");
    let o = train_spec(
        &model,
        &data,
        &out,
        &[
            "--optimizer",
            "adamw",
            "--lr",
            "0.03",
            "--batch-size",
            "29",
            "--epochs",
            "60",
            "--seed",
            "3",
            "--eval-train",
        ],
    );
    let losses = train_losses(&o);
    let recs = records(&o);
    assert!(
        losses[losses.len() - 1] < 0.6 * losses[0],
        "the loss did not fall: {losses:?}"
    );
    let last = recs.last().unwrap();
    assert_eq!(last["loss_positions"], 3, "{last:?}");
    for key in ["train_acc", "test_acc"] {
        let acc = last[key].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc), "{key} {acc}");
    }
    // Position 1's target is always `=`, learned at once: more than a third of the tokens are
    // right; position 0's target b is not seen there, so not every token can be.
    let train_acc = last["train_acc"].as_f64().unwrap();
    assert!(
        train_acc > 1.0 / 3.0 && train_acc < 1.0,
        "train_acc per token {train_acc}"
    );

    let ckpt = out.join("epoch-0060.safetensors");
    let (_, trace) = llc_and_trace(&data, &ckpt);
    let h = &trace["hessian"];
    assert_eq!(h["data"]["loss_positions"], 3, "{h}");

    let o = train_spec(
        &model,
        &data,
        dir.join("run-ngd"),
        &[
            "--optimizer",
            "ngd-exact",
            "--lr",
            "0.05",
            "--batch-size",
            "16",
            "--epochs",
            "3",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let recs = records(&o);
    assert!(
        recs.iter()
            .all(|r| r["train_loss"].as_f64().is_some_and(f64::is_finite)),
        "{recs:?}"
    );
}

/// Labels and the model's output must fit, each refused in one line: per-position labels for a
/// model read out at its last position, one label per sample for a per-position model, and a label
/// past the classes per position (named by tensor, sample and position).
#[test]
fn labels_that_do_not_fit_the_output_are_refused_in_one_line() {
    let dir = scratch("seqloss-refusals");
    let every = modular(&dir, "next-token");
    let last = modular(&dir, "last");
    let model = dir.join("m.json");
    let train = |data: &std::path::Path, run_dir: &str| {
        train_spec(&model, data, dir.join(run_dir), &["--epochs", "1"])
    };
    std::fs::write(&model, spec(P + 1, P + 1, true)).unwrap();
    assert_one_line_error(
        &train(&every, "a"),
        &["labels at 3 positions", "flat output [8]"],
    );
    std::fs::write(&model, spec(P + 1, P, false)).unwrap();
    assert_one_line_error(
        &train(&last, "b"),
        &["one label per sample", "[3, 7]", "labels [n, 3]"],
    );
    // Position 1's label is `=`, the id 7, past 7 classes per position.
    assert_one_line_error(
        &train(&every, "c"),
        &[
            "tensor `y`",
            "position 1 is label 7",
            "7 classes per position",
        ],
    );
}

/// The mean squared error over a per-position output `[3, 2]` with float targets `[n, 3, 2]`
/// (the mean over all n·3·2 values): trains, and `hessian-trace` runs on it; targets of another
/// width are refused in one line.
#[test]
fn float_targets_per_position_train_with_the_mean_squared_error() {
    let dir = scratch("seqloss-mse");
    let data = dir.join("reg.safetensors");
    let n = 24;
    write_f32_safetensors(&data, &[("x", vec![n, 3, 4]), ("y", vec![n, 3, 2])], |i| {
        (i * 7919 % 101) as f32 / 50.0 - 1.0
    });
    let model = dir.join("m.json");
    let spec = |out: usize| {
        serde_json::json!({"input": [3, 4],
            "layers": [{"type": "linear", "out": 8}, {"type": "tanh"},
                       {"type": "attention", "heads": 2, "causal": true},
                       {"type": "linear", "out": out}],
            "loss": "mse"})
        .to_string()
    };
    std::fs::write(&model, spec(2)).unwrap();
    let out = dir.join("run");
    let o = train_spec(
        &model,
        &data,
        &out,
        &[
            "--optimizer",
            "adamw",
            "--lr",
            "0.01",
            "--batch-size",
            "8",
            "--epochs",
            "20",
        ],
    );
    let losses = train_losses(&o);
    let recs = records(&o);
    assert!(losses[losses.len() - 1] < losses[0], "{losses:?}");
    assert_eq!(recs[0]["loss"], "mse");
    let o = run(
        "hessian-trace",
        &[
            "--data",
            data.to_str().unwrap(),
            "--probes",
            "4",
            out.join("epoch-0020.safetensors").to_str().unwrap(),
        ],
        "",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::write(&model, spec(3)).unwrap();
    let o = train_spec(&model, &data, dir.join("run-bad"), &["--epochs", "1"]);
    assert_one_line_error(&o, &["width 6", "9 outputs", "per position [3, 3]"]);
}
