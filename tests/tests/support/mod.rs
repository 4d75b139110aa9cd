//! Helpers for the end-to-end tests: locate the built tools, scratch folders, run and pipe.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The folder holding the built tools: the test executable lives in `<target>/<profile>/deps`.
/// The workspace's binaries are built once per test process, in the same profile: plain `cargo
/// test` builds test targets, not every package's binary, and a tool left from an older build
/// would test old code and pass (a no-op build costs a fraction of a second).
pub fn bin_dir() -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf();
    BUILT.get_or_init(|| {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.current_dir(repo())
            .args(["build", "--quiet", "--workspace", "--bins"]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        assert!(
            cmd.status().expect("run cargo build").success(),
            "cargo build --bins failed"
        );
    });
    dir
}

/// The path of a built tool.
pub fn tool_path(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(path.is_file(), "{} is not built", path.display());
    path
}

/// Runs `name args…` in the repository root with `stdin` and returns its output.
pub fn run_tool(name: &str, args: &[&str], stdin: &str) -> Output {
    let mut c = tool(name);
    c.args(args);
    run_with_input(c, stdin.as_bytes())
}

/// `llc` (2 chains × 40 draws, minibatch 16) and `hessian-trace` (8 probes) on checkpoint `ckpt`
/// with data file `data`: each must succeed with a finite estimate; their first records.
pub fn llc_and_trace(
    data: &Path,
    ckpt: &Path,
) -> (
    serde_json::Map<String, serde_json::Value>,
    serde_json::Map<String, serde_json::Value>,
) {
    let (data, ckpt) = (data.to_str().unwrap(), ckpt.to_str().unwrap());
    let args = [
        "--data",
        data,
        "--draws",
        "40",
        "--chains",
        "2",
        "--batch-size",
        "16",
        ckpt,
    ];
    let o = run_tool("llc", &args, "");
    assert!(o.status.success(), "llc: {}", stderr(&o));
    let llc = records(&o).swap_remove(0);
    assert!(
        llc["llc"]["llc"].as_f64().is_some_and(f64::is_finite),
        "{llc:?}"
    );
    let o = run_tool(
        "hessian-trace",
        &["--data", data, "--probes", "8", ckpt],
        "",
    );
    assert!(o.status.success(), "hessian-trace: {}", stderr(&o));
    let trace = records(&o).swap_remove(0);
    assert!(
        trace["hessian"]["trace"]
            .as_f64()
            .is_some_and(f64::is_finite),
        "{trace:?}"
    );
    (llc, trace)
}

pub fn tool(name: &str) -> Command {
    let mut c = Command::new(tool_path(name));
    c.current_dir(repo());
    c
}

/// The repository root: the parent of this package's folder, as `cargo test` names it when it runs
/// the test (a binary that cargo reuses from another checkout sharing the target dir carries that
/// checkout's compile-time path), else as it was at compile time.
pub fn repo() -> PathBuf {
    let package = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    package.join("..").canonicalize().expect("repo root")
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

/// `train` on the committed MNIST subset: MLP with one hidden layer of 32, run name `r`, `epochs`
/// epochs into `out`, plus `extra` flags.
pub fn train_small(out: &Path, epochs: &str, extra: &[&str]) -> Output {
    let mut c = tool("train");
    c.args(["--data-dir"]).arg(small_data());
    c.args([
        "--hidden", "32", "--epochs", epochs, "--quiet", "--run", "r", "--out",
    ])
    .arg(out);
    c.args(extra);
    run(c)
}

/// `train --model MODEL --data DATA --out OUT` plus `extra` flags (a spec model on a data file).
pub fn train_spec(
    model: impl AsRef<std::ffi::OsStr>,
    data: impl AsRef<std::ffi::OsStr>,
    out: impl AsRef<std::ffi::OsStr>,
    extra: &[&str],
) -> Output {
    let mut c = tool("train");
    c.arg("--model").arg(model).arg("--data").arg(data);
    c.args(extra).arg("--out").arg(out);
    run(c)
}

/// The training losses of a finished `train` run's records, in order.
pub fn train_losses(o: &Output) -> Vec<f64> {
    assert!(o.status.success(), "{}", stderr(o));
    records(o)
        .iter()
        .filter_map(|r| r["train_loss"].as_f64())
        .collect()
}

/// Writes a safetensors file of F32 tensors with these names and shapes and no metadata (a checkpoint
/// as foreign code would write it); element `i` of each tensor is `value(i)`.
pub fn write_f32_safetensors(
    path: &Path,
    shapes: &[(&str, Vec<usize>)],
    value: impl Fn(usize) -> f32,
) {
    let bufs: Vec<Vec<u8>> = shapes
        .iter()
        .map(|(_, s)| {
            let n: usize = s.iter().product();
            (0..n).flat_map(|i| value(i).to_le_bytes()).collect()
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = shapes
        .iter()
        .zip(&bufs)
        .map(|((n, s), b)| {
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b);
            (n.to_string(), view.expect("tensor view"))
        })
        .collect();
    std::fs::write(
        path,
        safetensors::serialize(views, None).expect("serialize"),
    )
    .expect("write");
}
