//! `train --optimizer adam` end to end (torch.optim.Adam: weight decay as L2 in the gradient):
//! its name and hyperparameters in every record, PyTorch's defaults, a run that differs from AdamW
//! with the same flags, and `--resume` continuing it bit for bit from a mid-epoch checkpoint.

mod support;

use support::*;

const ADAM: [&str; 8] = [
    "--optimizer",
    "adam",
    "--lr",
    "0.002",
    "--weight-decay",
    "0.1",
    "--betas",
    "0.9,0.98",
];

#[test]
fn adam_records_its_settings_differs_from_adamw_and_resumes_bit_for_bit() {
    let full = scratch("adam-full");
    let o = train_small(&full, "2", &ADAM);
    assert!(o.status.success(), "{}", stderr(&o));
    let recs = records(&o);
    let opt = &recs[0]["optimizer"];
    assert_eq!(opt["name"], "adam", "{opt}");
    assert_eq!(opt["lr"], 0.002);
    assert_eq!(opt["betas"], serde_json::json!([0.9, 0.98]));
    assert_eq!(opt["eps"], 1e-8);
    assert_eq!(opt["weight_decay"], 0.1);
    let loss = |r: &serde_json::Map<String, serde_json::Value>| r["train_loss"].as_f64().unwrap();
    assert!(loss(&recs[1]) < loss(&recs[0]), "{recs:?}");
    let straight = std::fs::read(full.join("epoch-0002.safetensors")).unwrap();

    // The same flags with AdamW (decoupled decay) give other weights: the variant is wired through.
    let aw = scratch("adam-vs-adamw");
    let mut flags = ADAM;
    flags[1] = "adamw";
    assert!(train_small(&aw, "2", &flags).status.success());
    assert_ne!(
        straight,
        std::fs::read(aw.join("epoch-0002.safetensors")).unwrap()
    );

    // Split mid-epoch (a step checkpoint), resumed to two epochs: the same weights.
    let mid = scratch("adam-mid");
    let o = train_small(&mid, "1", &[&ADAM[..], &["--save-every", "3"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let mut c = tool("train");
    c.args(["--data-dir"]).arg(small_data());
    c.args(["--hidden", "32", "--epochs", "2", "--quiet", "--run", "r"])
        .args(ADAM)
        .args(["--save-every", "3", "--resume", "--init"])
        .arg(mid.join("step-0000006.safetensors"))
        .arg("--out")
        .arg(&mid);
    let o = run(c);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        straight,
        std::fs::read(mid.join("epoch-0002.safetensors")).unwrap(),
        "the resumed Adam run equals the uninterrupted one"
    );

    // Resuming the Adam run as AdamW is refused (a changed optimiser).
    let mut c = tool("train");
    c.args(["--data-dir"]).arg(small_data());
    c.args(["--hidden", "32", "--epochs", "3", "--quiet", "--run", "r"])
        .args(flags)
        .args(["--resume", "--init"])
        .arg(full.join("epoch-0002.safetensors"))
        .arg("--out")
        .arg(&full);
    let o = run(c);
    assert!(!o.status.success(), "{}", stderr(&o));
}

#[test]
fn adam_takes_pytorchs_defaults() {
    let dir = scratch("adam-defaults");
    let o = train_small(&dir, "1", &["--optimizer", "adam", "--train-samples", "64"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let opt = &records(&o)[0]["optimizer"];
    assert_eq!(opt["name"], "adam");
    assert_eq!(opt["lr"], 1e-3);
    assert_eq!(
        opt["weight_decay"], 0.0,
        "torch.optim.Adam's default, not AdamW's 0.01"
    );
    assert_eq!(opt["betas"], serde_json::json!([0.9, 0.999]));
    let d = scratch("adam-bad");
    let o = train_small(&d, "1", &["--optimizer", "adam", "--weight-decay", "-0.1"]);
    assert_one_line_error(&o, &["--weight-decay"]);
}

/// `switch --branch adam:…` builds torch.optim.Adam with its own defaults (weight decay 0), not
/// AdamW's.
#[test]
fn switch_branches_to_adam_with_its_defaults() {
    let dir = scratch("adam-switch");
    assert!(
        train_small(&dir.join("src"), "1", &["--train-samples", "64"])
            .status
            .success()
    );
    let mut c = tool("switch");
    c.arg("--from")
        .arg(dir.join("src/epoch-0001.safetensors"))
        .arg("--data-dir")
        .arg(small_data());
    c.args(["--epochs", "2", "--train-samples", "64", "--quiet", "--out"])
        .arg(dir.join("b"))
        .args(["--branch", "adam:lr=0.002,name=a"]);
    let o = run(c);
    assert!(o.status.success(), "{}", stderr(&o));
    let opt = &records(&o)[0]["optimizer"];
    assert_eq!(opt["name"], "adam", "{opt}");
    assert_eq!(opt["lr"], 0.002);
    assert_eq!(opt["weight_decay"], 0.0);
}
