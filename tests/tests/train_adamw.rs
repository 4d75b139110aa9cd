//! `train --optimizer adamw` end to end: its hyperparameters in every record and checkpoint, and
//! `--resume` continuing a run bit for bit (its moments and step count are in the sidecar).

mod support;

use serde_json::Value;
use support::*;

const ADAMW: [&str; 10] = [
    "--optimizer",
    "adamw",
    "--lr",
    "0.002",
    "--weight-decay",
    "0.1",
    "--betas",
    "0.9,0.98",
    "--eps",
    "1e-7",
];

fn resume(out: &std::path::Path, from: &str, epochs: &str, extra: &[&str]) -> std::process::Output {
    let mut c = tool("train");
    c.args(["--data-dir"]).arg(small_data());
    c.args([
        "--hidden", "32", "--epochs", epochs, "--quiet", "--run", "r",
    ])
    .args(ADAMW)
    .args(extra)
    .args(["--resume", "--init"])
    .arg(out.join(from))
    .arg("--out")
    .arg(out);
    run(c)
}

#[test]
fn adamw_records_its_hyperparameters_and_resumes_bit_for_bit() {
    let full = scratch("adamw-full");
    let o = train_small(&full, "2", &ADAMW);
    assert!(o.status.success(), "{}", stderr(&o));
    let recs = records(&o);
    let opt = &recs[0]["optimizer"];
    assert_eq!(opt["name"], "adamw", "{opt}");
    assert_eq!(opt["lr"], 0.002);
    assert_eq!(opt["betas"], serde_json::json!([0.9, 0.98]));
    assert_eq!(opt["eps"], 1e-7);
    assert_eq!(opt["weight_decay"], 0.1);
    assert_eq!(opt["amsgrad"], false);
    // It trains: the loss falls from the first epoch to the second.
    let loss = |r: &serde_json::Map<String, Value>| r["train_loss"].as_f64().unwrap();
    assert!(loss(&recs[1]) < loss(&recs[0]), "{recs:?}");

    // Split at the epoch boundary: one epoch, then resumed to two.
    let part = scratch("adamw-part");
    let o = train_small(&part, "1", &ADAMW);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = resume(&part, "epoch-0001.safetensors", "2", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(records(&o)[0]["epoch"], 2);
    let straight = std::fs::read(full.join("epoch-0002.safetensors")).unwrap();
    assert_eq!(
        straight,
        std::fs::read(part.join("epoch-0002.safetensors")).unwrap(),
        "the resumed AdamW run equals the uninterrupted one"
    );

    // Split mid-epoch (a step checkpoint), resumed to two epochs.
    let mid = scratch("adamw-mid");
    let o = train_small(&mid, "1", &[&ADAMW[..], &["--save-every", "3"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let o = resume(
        &mid,
        "step-0000006.safetensors",
        "2",
        &["--save-every", "3"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        straight,
        std::fs::read(mid.join("epoch-0002.safetensors")).unwrap(),
        "resumed from step 6"
    );

    // A changed β is a changed run: refused without --resume-with-changes.
    let o = resume(
        &part,
        "epoch-0001.safetensors",
        "3",
        &["--betas", "0.9,0.99"],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("betas"), "{}", stderr(&o));
}

#[test]
fn adamw_takes_pytorchs_defaults_and_refuses_bad_settings() {
    let dir = scratch("adamw-defaults");
    let o = train_small(
        &dir,
        "1",
        &["--optimizer", "adamw", "--train-samples", "64"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let opt = &records(&o)[0]["optimizer"];
    assert_eq!(opt["lr"], 1e-3);
    assert_eq!(opt["weight_decay"], 0.01);
    assert_eq!(opt["betas"], serde_json::json!([0.9, 0.999]));
    assert_eq!(opt["eps"], 1e-8);
    for (flags, needle) in [
        (&["--betas", "0.9"][..], "--betas takes two values"),
        (&["--betas", "1.0,0.999"][..], "beta1"),
        (&["--eps", "-1"][..], "--eps"),
        (&["--weight-decay", "-0.1"][..], "--weight-decay"),
    ] {
        let d = scratch("adamw-bad");
        let o = train_small(&d, "1", &[&["--optimizer", "adamw"][..], flags].concat());
        assert_one_line_error(&o, &[needle]);
    }
}

/// `switch --branch adamw:…` continues a checkpoint with AdamW: its settings by `train`'s flag
/// names, PyTorch's defaults for the rest, and the same weights as `train --init … --optimizer
/// adamw` with those settings.
#[test]
fn switch_branches_to_adamw_as_train_does() {
    let dir = scratch("adamw-switch");
    assert!(train_small(&dir.join("src"), "1", &[]).status.success());
    let from = dir.join("src/epoch-0001.safetensors");
    let mut c = tool("switch");
    c.arg("--from")
        .arg(&from)
        .arg("--data-dir")
        .arg(small_data());
    // File order in both, so that epoch 2 of the branch and epoch 1 of train see the same batches.
    c.args(["--epochs", "2", "--no-shuffle", "--quiet", "--out"])
        .arg(dir.join("b"))
        .args([
            "--branch",
            "adamw:lr=0.002,beta2=0.98,weight-decay=0.1,name=aw",
        ]);
    let o = run(c);
    assert!(o.status.success(), "{}", stderr(&o));
    let opt = &records(&o)[0]["optimizer"];
    assert_eq!(opt["name"], "adamw");
    assert_eq!(opt["betas"], serde_json::json!([0.9, 0.98]));
    assert_eq!(
        (opt["lr"].as_f64(), opt["eps"].as_f64()),
        (Some(0.002), Some(1e-8))
    );
    assert_eq!(opt["weight_decay"], 0.1);
    // The same continuation by train.
    let mut c = tool("train");
    c.args(["--data-dir"]).arg(small_data());
    c.args(["--hidden", "32", "--epochs", "1", "--no-shuffle", "--quiet"])
        .args([
            "--optimizer",
            "adamw",
            "--lr",
            "0.002",
            "--betas",
            "0.9,0.98",
        ])
        .args(["--weight-decay", "0.1", "--init"])
        .arg(&from)
        .arg("--out")
        .arg(dir.join("t"));
    let o = run(c);
    assert!(o.status.success(), "{}", stderr(&o));
    let weights = |p: std::path::PathBuf| {
        let bytes = std::fs::read(p).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut names = st.names();
        names.sort();
        names
            .iter()
            .map(|n| st.tensor(n).unwrap().data().to_vec())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        weights(dir.join("b/aw/epoch-0002.safetensors")),
        weights(dir.join("t/epoch-0001.safetensors")),
        "switch's AdamW branch and train --init --optimizer adamw"
    );
}
