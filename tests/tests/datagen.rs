//! End-to-end tests of `datagen`: the files it writes, their determinism and settings, refusals.

mod support;

use serde_json::Value;
use support::{
    assert_one_line_error, llc_and_trace, records, run_tool as run, scratch, stderr, train_losses,
    train_spec,
};

fn header(path: &std::path::Path) -> Value {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    serde_json::from_slice(&bytes[8..8 + n]).unwrap()
}

#[test]
fn teacher_files_are_seeded_recorded_and_never_overwritten() {
    let dir = scratch("datagen-teacher");
    let (a, b, t) = (
        dir.join("a.safetensors"),
        dir.join("b.safetensors"),
        dir.join("t.safetensors"),
    );
    let args = |out: &std::path::Path| -> Vec<String> {
        [
            "teacher",
            "--hidden",
            "6",
            "--activation",
            "identity",
            "--inputs",
            "5",
            "--outputs",
            "4",
            "--low-rank",
            "1.weight:2",
            "--samples",
            "300",
            "--test-samples",
            "50",
            "--noise",
            "0.1",
            "--seed",
            "3",
            "--out",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([out.display().to_string()])
        .collect()
    };
    let mut first: Vec<String> = args(&a);
    first.extend(["--teacher-out".to_string(), t.display().to_string()]);
    let out = run(
        "datagen",
        &first.iter().map(String::as_str).collect::<Vec<_>>(),
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let rec = &records(&out)[0];
    assert_eq!(rec["datagen"]["kind"], "teacher");
    assert_eq!(rec["datagen"]["model"]["low_rank"][0]["rank"], 2);
    let h = header(&a);
    assert_eq!(h["x"]["shape"], serde_json::json!([300, 5]));
    assert_eq!(h["y"]["shape"], serde_json::json!([300, 4]));
    assert_eq!(h["x_test"]["shape"], serde_json::json!([50, 5]));
    assert_eq!(h["y"]["dtype"], "F32");
    let settings: Value =
        serde_json::from_str(h["__metadata__"]["datagen"].as_str().unwrap()).unwrap();
    assert_eq!(settings["seed"], 3);
    assert_eq!(settings["noise_sd"], 0.1);
    assert_eq!(settings["inputs"]["half_width"], 10.0);
    // The teacher checkpoint holds the model's tensors under PyTorch's names.
    let th = header(&t);
    assert_eq!(th["1.weight"]["shape"], serde_json::json!([6, 5]));
    assert_eq!(th["3.weight"]["shape"], serde_json::json!([4, 6]));

    // The same settings, the same bytes.
    let second = args(&b);
    let out = run(
        "datagen",
        &second.iter().map(String::as_str).collect::<Vec<_>>(),
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());

    // An existing file is not overwritten.
    let before = std::fs::read(&a).unwrap();
    let out = run(
        "datagen",
        &first.iter().map(String::as_str).collect::<Vec<_>>(),
        "",
    );
    assert_one_line_error(&out, &["--out", "the file exists"]);
    assert_eq!(std::fs::read(&a).unwrap(), before);
}

#[test]
fn bad_settings_are_refused_in_one_line() {
    let dir = scratch("datagen-bad");
    let out_path = dir.join("x.safetensors");
    let o = out_path.to_str().unwrap();
    for (args, needles) in [
        (
            vec![
                "teacher",
                "--hidden",
                "4",
                "--low-rank",
                "3.weight:2",
                "--out",
                o,
            ],
            vec!["--low-rank 3.weight:2", "its rank is at most 1"],
        ),
        (
            vec!["teacher", "--low-rank", "9.weight:1", "--out", o],
            vec!["--low-rank 9.weight:1", "no tensor 9.weight"],
        ),
        (
            vec!["teacher", "--input-dist", "cauchy:1", "--out", o],
            vec!["--input-dist", "cauchy:1"],
        ),
        (
            vec!["teacher", "--samples", "0", "--out", o],
            vec!["--samples must be at least 1"],
        ),
        (
            vec!["normal-crossing", "--x-sd", "0", "--out", o],
            vec!["input sd"],
        ),
    ] {
        let out = run("datagen", &args, "");
        assert_one_line_error(&out, &needles);
        assert!(!out_path.exists(), "{args:?} wrote a file");
    }
}

/// A deep linear network through the tools: a bias-free spec (widths 5, 5, 5), a teacher whose first
/// weight has rank 2, n = 100,000 noiseless samples, and `llc` at the teacher's weights with the mean
/// squared error. The record carries Aoyagi's λ = 11.5 for the widths and the rank it reads from the
/// checkpoint, and λ̂ lands within 5 % of it (measured 11.5; `results/dln.md` has four cases).
#[test]
fn llc_of_a_deep_linear_teacher_matches_aoyagi() {
    let dir = scratch("datagen-dln");
    let spec = dir.join("dln.json");
    std::fs::write(
        &spec,
        r#"{"input": [5], "layers": [{"type": "linear", "out": 5, "bias": false},
            {"type": "linear", "out": 5, "bias": false}], "loss": "mse"}"#,
    )
    .unwrap();
    let (data, teacher) = (dir.join("d.safetensors"), dir.join("t.safetensors"));
    let out = run(
        "datagen",
        &[
            "teacher",
            "--model",
            spec.to_str().unwrap(),
            "--low-rank",
            "0.weight:2",
            "--samples",
            "100000",
            "--input-dist",
            "uniform:10",
            "--out",
            data.to_str().unwrap(),
            "--teacher-out",
            teacher.to_str().unwrap(),
        ],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(
        "llc",
        &[
            "--data",
            data.to_str().unwrap(),
            "--nbeta",
            "dataset",
            "--epsilon",
            "2.5e-7",
            "--gamma",
            "1",
            "--batch-size",
            "500",
            "--chains",
            "4",
            "--draws",
            "60000",
            "--burn-in",
            "20000",
            "--quiet",
            teacher.to_str().unwrap(),
        ],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let l = &records(&out)[0]["llc"];
    let theory = &l["theory"];
    assert_eq!(theory["widths"], serde_json::json!([5, 5, 5]));
    assert_eq!(theory["rank"], 2);
    assert_eq!(theory["lambda"], 11.5);
    assert_eq!(l["loss"], "mse");
    let llc = l["llc"].as_f64().unwrap();
    assert!((llc - 11.5).abs() < 0.05 * 11.5, "λ̂ {llc} vs Aoyagi's 11.5");
}

/// `datagen modular`: every pair once as int64 tokens [a, b, =] with its label, the seeded split in
/// the metadata; the tools read the tokens as token ids and refuse them for a model without an
/// embedding.
#[test]
fn modular_files_hold_every_pair_as_int64_tokens() {
    let dir = scratch("datagen-modular");
    let out = dir.join("mul.safetensors");
    let o = run(
        "datagen",
        &[
            "modular",
            "--p",
            "11",
            "--op",
            "mul",
            "--train-fraction",
            "0.4",
            "--seed",
            "3",
            "--out",
            out.to_str().unwrap(),
        ],
        "",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(records(&o)[0]["datagen"]["samples"], 48); // ⌊0.4·121⌋
    let bytes = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let ints = |name: &str| -> (Vec<i64>, Vec<usize>) {
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), safetensors::Dtype::I64, "{name}");
        let v = t
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        (v, t.shape().to_vec())
    };
    let mut pairs = std::collections::BTreeSet::new();
    for (xn, yn) in [("x", "y"), ("x_test", "y_test")] {
        let ((x, xs), (y, ys)) = (ints(xn), ints(yn));
        assert_eq!(xs, vec![ys[0], 3]);
        for (row, &t) in x.chunks(3).zip(&y) {
            assert_eq!(row[2], 11, "'=' is the token p");
            assert_eq!(t, row[0] * row[1] % 11);
            assert!(pairs.insert((row[0], row[1])));
        }
    }
    assert_eq!(pairs.len(), 121);
    let meta = &header(&out)["__metadata__"]["datagen"];
    let settings: Value = serde_json::from_str(meta.as_str().unwrap()).unwrap();
    assert_eq!(settings["kind"], "modular");
    assert_eq!(settings["vocab"], 12);
    assert_eq!(settings["seed"], 3);
    assert_eq!(settings["test_samples"], 73);

    // An MLP would read the ids as numbers: refused, naming the tokens and the embedding.
    let o = run(
        "train",
        &[
            "--data",
            out.to_str().unwrap(),
            "--hidden",
            "8",
            "--epochs",
            "1",
            "--out",
            dir.join("run").to_str().unwrap(),
        ],
        "",
    );
    assert_one_line_error(&o, &["token ids", "embedding", "mul.safetensors"]);
    let o = run(
        "train",
        &[
            "--data",
            out.to_str().unwrap(),
            "--normalize",
            "0.5,0.5",
            "--out",
            dir.join("run2").to_str().unwrap(),
        ],
        "",
    );
    assert_one_line_error(&o, &["`x`", "token ids", "--normalize"]);

    for (args, needle) in [
        (&["--p", "1"][..], "at least 2"),
        (&["--p", "12", "--op", "div"][..], "prime"),
        (&["--op", "pow"][..], "unknown --op"),
        (&["--train-fraction", "0"][..], "(0, 1]"),
    ] {
        let o = run(
            "datagen",
            &[
                &["modular"][..],
                args,
                &["--out", dir.join("bad.safetensors").to_str().unwrap()],
            ]
            .concat(),
            "",
        );
        assert_one_line_error(&o, &[needle]);
    }
}

/// `datagen icl-regression`: [n, 2K, D + 1] interleaved tokens and [n, K] targets, recorded; the
/// tools read it as a regression data file (an MLP over the flattened sequence trains on it).
#[test]
fn icl_regression_files_are_sequences_of_pairs() {
    let dir = scratch("datagen-icl");
    let out = dir.join("icl.safetensors");
    let o = run(
        "datagen",
        &[
            "icl-regression",
            "--dim",
            "3",
            "--context",
            "4",
            "--tasks",
            "16",
            "--samples",
            "256",
            "--test-samples",
            "32",
            "--seed",
            "2",
            "--out",
            out.to_str().unwrap(),
        ],
        "",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let h = header(&out);
    assert_eq!(h["x"]["shape"], serde_json::json!([256, 8, 4]));
    assert_eq!(h["y"]["shape"], serde_json::json!([256, 4]));
    assert_eq!(h["x_test"]["shape"], serde_json::json!([32, 8, 4]));
    let settings: Value =
        serde_json::from_str(h["__metadata__"]["datagen"].as_str().unwrap()).unwrap();
    assert_eq!(settings["kind"], "icl-regression");
    assert_eq!(settings["tasks"], 16);
    let o = run(
        "train",
        &[
            "--data",
            out.to_str().unwrap(),
            "--hidden",
            "16",
            "--epochs",
            "1",
            "--quiet",
            "--out",
            dir.join("run").to_str().unwrap(),
        ],
        "",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(records(&o)[0]["loss"], "mse");
}

/// The pipeline a grokking user runs: `datagen modular` → `train` a small causal transformer (a spec
/// starting with an `embedding`) with AdamW → `llc` and `hessian-trace` on its checkpoint. The token
/// file is accepted by the embedding model (and its ids checked against the vocabulary), training
/// lowers the loss, and both analyses produce finite records; a vocabulary smaller than the ids is
/// refused naming the layer.
#[test]
fn modular_tokens_train_a_transformer_and_are_analysed() {
    let dir = scratch("datagen-modular-transformer");
    let data = dir.join("add.safetensors");
    let o = run(
        "datagen",
        &[
            "modular",
            "--p",
            "7",
            "--train-fraction",
            "0.6",
            "--seed",
            "1",
            "--out",
            data.to_str().unwrap(),
        ],
        "",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let spec = |vocab: usize| {
        serde_json::json!({
            "input": [3],
            "layers": [
                {"type": "embedding", "num": vocab, "dim": 8},
                {"type": "positional"},
                {"type": "residual", "layers": [{"type": "layernorm"}, {"type": "attention", "heads": 2, "causal": true}]},
                {"type": "residual", "layers": [{"type": "layernorm"}, {"type": "linear", "out": 16}, {"type": "gelu"}, {"type": "linear", "out": 8}]},
                {"type": "layernorm"},
                {"type": "last"},
                {"type": "linear", "out": 7}
            ],
            "loss": "cross_entropy"
        })
        .to_string()
    };
    let model = dir.join("tiny.json");
    std::fs::write(&model, spec(8)).unwrap();
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
        ],
    );
    let losses = train_losses(&o);
    let recs = records(&o);
    assert!(losses.len() >= 2, "{recs:?}");
    assert!(
        losses[losses.len() - 1] < 0.1 * losses[0],
        "AdamW did not lower the loss: {losses:?}"
    );
    let ckpt = out.join("epoch-0060.safetensors");
    assert!(ckpt.exists(), "no checkpoint in {}", out.display());
    llc_and_trace(&data, &ckpt);

    // A vocabulary of 7 cannot read the `=` token (id 7): refused naming the embedding.
    std::fs::write(&model, spec(7)).unwrap();
    let o = train_spec(&model, &data, dir.join("run-bad"), &["--epochs", "1"]);
    assert_one_line_error(&o, &["Embedding(7, 8)", "0..7"]);
}
