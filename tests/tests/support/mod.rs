//! Helpers for the end-to-end tests: locate the built tools, scratch folders, run and pipe.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The folder holding the release binaries: the test executable lives in `<target>/release/deps`.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf();
    assert!(
        dir.join("train").is_file(),
        "{}: the tools are not built; run `cargo build --release --workspace --bins` first (make test does)",
        dir.display()
    );
    dir
}

pub fn tool(name: &str) -> Command {
    let mut c = Command::new(bin_dir().join(name));
    c.current_dir(repo());
    c
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repo root")
}

pub fn fixtures() -> PathBuf {
    repo().join("tests/fixtures")
}

/// The committed MNIST subset (1,280 training and 200 test images).
pub fn small_data() -> PathBuf {
    fixtures().join("mnist-small")
}

/// A fresh scratch folder under the target directory, removed at the start of each use.
pub fn scratch(name: &str) -> PathBuf {
    let d = bin_dir().join("e2e-scratch").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// Runs a command, feeding `stdin`, and returns its output.
pub fn run_with_input(mut cmd: Command, stdin: &[u8]) -> Output {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

pub fn run(mut cmd: Command) -> Output {
    cmd.stdin(Stdio::null());
    cmd.output().expect("run")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Parses JSON-lines stdout into records.
pub fn records(o: &Output) -> Vec<serde_json::Map<String, serde_json::Value>> {
    stdout(o)
        .lines()
        .map(|l| match serde_json::from_str(l) {
            Ok(serde_json::Value::Object(m)) => m,
            other => panic!("not a JSON object record: {l} ({other:?})"),
        })
        .collect()
}

/// Asserts failure with a one-line error on stderr that contains every `needles`.
pub fn assert_one_line_error(o: &Output, needles: &[&str]) {
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr: {}",
        stderr(o)
    );
    let err = stderr(o);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected a one-line error, got:\n{err}");
    for n in needles {
        assert!(lines[0].contains(n), "error {:?} lacks {n:?}", lines[0]);
    }
}
