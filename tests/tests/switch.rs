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
        ("adagrad", "unknown optimiser"),
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

fn source(dir: &std::path::Path) -> std::path::PathBuf {
    let mut c = tool("train");
    c.args(["--data-dir"]).arg(small_data());
    c.args(["--hidden", "8", "--epochs", "1", "--quiet", "--out"])
        .arg(dir.join("src"));
    assert!(run(c).status.success());
    dir.join("src/epoch-0001.safetensors")
}

fn switch(
    from: &std::path::Path,
    out: &std::path::Path,
    epochs: &str,
    extra: &[&str],
) -> std::process::Output {
    let mut c = tool("switch");
    c.arg("--from")
        .arg(from)
        .arg("--data-dir")
        .arg(small_data());
    c.args(["--epochs", epochs, "--quiet", "--out"])
        .arg(out)
        .args(extra);
    run(c)
}

#[test]
fn branch_names_must_be_single_folder_names() {
    let dir = scratch("switch-names");
    let from = source(&dir);
    for name in ["../x", "/abs", "..", "a/b", ""] {
        let o = switch(
            &from,
            &dir.join("b"),
            "2",
            &["--branch", &format!("sgd:name={name}")],
        );
        assert_one_line_error(&o, &["branch name", "one plain name"]);
        assert!(
            !dir.join("x").exists() && !dir.join("b").exists(),
            "{name:?}"
        );
    }
    assert!(!std::path::Path::new("/abs").exists());
}

#[test]
fn branch_folders_holding_runs_are_refused_unless_resumed_or_overwritten() {
    let dir = scratch("switch-rerun");
    let from = source(&dir);
    let branches = ["--branch", "sgd", "--branch", "ngd"];
    let o = switch(&from, &dir.join("b"), "2", &branches);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = switch(&from, &dir.join("b"), "3", &branches);
    assert_one_line_error(
        &o,
        &[
            "branch sgd",
            "already holds a run",
            "--resume",
            "--overwrite",
        ],
    );
    // --resume continues each branch exactly: the same as a run straight to epoch 3.
    let o = switch(
        &from,
        &dir.join("b"),
        "3",
        &branches_with(&branches, &["--resume"]),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let recs = records(&o);
    assert_eq!(recs.len(), 2);
    assert!(recs.iter().all(|r| r["epoch"] == 3));
    let o = switch(&from, &dir.join("straight"), "3", &branches);
    assert!(o.status.success(), "{}", stderr(&o));
    for b in ["sgd", "ngd"] {
        let tensors = |d: &str| {
            let bytes = std::fs::read(dir.join(d).join(b).join("epoch-0003.safetensors")).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            ["1.weight", "1.bias", "3.weight", "3.bias"]
                .map(|n| st.tensor(n).unwrap().data().to_vec())
        };
        assert_eq!(tensors("b"), tensors("straight"), "{b}");
        let log = std::fs::read_to_string(dir.join("b").join(b).join("run.jsonl")).unwrap();
        assert_eq!(log.lines().count(), 2, "epochs 2 and 3 once each");
    }
    // A changed setting on resume is refused, naming it.
    let o = switch(
        &from,
        &dir.join("b"),
        "4",
        &["--resume", "--branch", "sgd:lr=0.1,name=sgd"],
    );
    assert_one_line_error(&o, &["branch sgd", "--lr", "was 0.01", "is 0.1"]);
    // --overwrite starts the branches again.
    let o = switch(
        &from,
        &dir.join("b"),
        "2",
        &branches_with(&branches, &["--overwrite"]),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!dir.join("b/sgd/epoch-0003.safetensors").exists());
}

fn branches_with<'a>(branches: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    branches.iter().chain(extra).copied().collect()
}

#[test]
fn a_closed_stdout_stops_switch_with_a_message_and_a_failing_status() {
    let dir = scratch("switch-pipe");
    let from = source(&dir);
    let mut c = tool("switch");
    c.arg("--from")
        .arg(&from)
        .arg("--data-dir")
        .arg(small_data());
    c.args(["--epochs", "40", "--quiet", "--branch", "sgd", "--out"])
        .arg(dir.join("b"));
    c.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut first = [0u8; 1];
    std::io::Read::read_exact(&mut out, &mut first).unwrap();
    drop(out);
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(141), "{}", stderr(&o));
    assert_one_line_error(&o, &["stdout was closed", "--resume"]);
}

#[test]
fn ctrl_c_stops_switch_with_status_130_and_one_line() {
    let dir = scratch("switch-sigint");
    let from = source(&dir);
    let mut c = tool("switch");
    c.arg("--from")
        .arg(&from)
        .arg("--data-dir")
        .arg(small_data());
    c.args(["--epochs", "100000", "--quiet", "--branch", "sgd", "--out"])
        .arg(dir.join("b"));
    c.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let kill = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    // Keep reading stdout so that the branch is not stopped by a full pipe instead.
    std::io::Read::read_to_end(&mut out, &mut Vec::new()).unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    assert_one_line_error(
        &o,
        &["interrupted", "every checkpoint written so far is complete"],
    );
}
