//! End-to-end tests of `switch`: branches from one checkpoint with fresh optimisers and the same data.

mod support;

use serde_json::Value;
use support::*;

#[test]
fn branches_continue_from_the_same_weights_with_the_same_data_order() {
    let dir = scratch("switch");
    let mut c = tool("train");
    c.args(["--data-dir"]).arg(small_data());
    c.args(["--hidden", "16", "--epochs", "1", "--quiet", "--out"])
        .arg(dir.join("src"));
    assert!(run(c).status.success());
    let from = dir.join("src/epoch-0001.safetensors");
    let mut c = tool("switch");
    c.arg("--from")
        .arg(&from)
        .arg("--data-dir")
        .arg(small_data());
    c.args(["--epochs", "2", "--jobs", "2", "--quiet", "--out"])
        .arg(dir.join("b"));
    c.args([
        "--branch",
        "sgd",
        "--branch",
        "sgd:name=again",
        "--branch",
        "ngd:ngd-alpha=0.1",
        "--branch",
        "sgd:lr=0.1",
    ]);
    let o = run(c);
    assert!(o.status.success(), "{}", stderr(&o));
    let recs = records(&o);
    assert_eq!(recs.len(), 4);
    let by = |b: &str| {
        recs.iter()
            .find(|r| r["branch"] == b)
            .unwrap_or_else(|| panic!("branch {b}"))
            .clone()
    };
    for r in &recs {
        assert_eq!(r["epoch"], 2, "epochs continue from the source checkpoint");
        assert_eq!(r["switched_at"]["epoch"], 1);
        assert_eq!(r["switched_at"]["step"], 10);
    }
    assert_eq!(by("ngd-alpha0.1")["optimizer"]["name"], "ngd");
    assert_eq!(by("ngd-alpha0.1")["optimizer"]["alpha"], 0.1);
    assert_eq!(by("sgd-lr0.1")["optimizer"]["lr"], 0.1);
    // Same optimiser, same data order, fresh state: identical results.
    let a = std::fs::read(repo().join(by("sgd")["checkpoint"].as_str().unwrap())).unwrap();
    let b = std::fs::read(repo().join(by("again")["checkpoint"].as_str().unwrap())).unwrap();
    let tensors = |bytes: &[u8]| {
        let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
        ["1.weight", "3.weight"].map(|n| st.tensor(n).unwrap().data().to_vec())
    };
    assert_eq!(tensors(&a), tensors(&b));
    assert_ne!(by("sgd")["test_loss"], by("sgd-lr0.1")["test_loss"]);
    assert!(matches!(by("sgd")["run"], Value::String(ref s) if s == "b-sgd"));
}

#[test]
fn bad_branches_are_refused_before_training() {
    let dir = scratch("switch-bad");
    let mut c = tool("train");
    c.args(["--data-dir"]).arg(small_data());
    c.args(["--hidden", "8", "--epochs", "1", "--quiet", "--out"])
        .arg(dir.join("src"));
    assert!(run(c).status.success());
    for (branch, needle) in [
        ("adam", "unknown optimiser"),
        ("sgd:bogus=1", "unknown setting"),
        ("ngd:ngd-eta=2", "eta"),
    ] {
        let mut c = tool("switch");
        c.arg("--from")
            .arg(dir.join("src/epoch-0001.safetensors"))
            .arg("--data-dir")
            .arg(small_data());
        c.args(["--epochs", "2", "--quiet", "--out"])
            .arg(dir.join("b"))
            .args(["--branch", branch]);
        let o = run(c);
        assert_one_line_error(&o, &[needle]);
        assert!(!dir.join("b").exists(), "nothing written for {branch}");
    }
}
