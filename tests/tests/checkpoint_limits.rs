//! End-to-end tests of what every tool that reads a checkpoint refuses: models in metadata (or flags)
//! too large to build, empty layers and one-class outputs, files that are not regular files, and what
//! `--model mlp` / `--model lenet` mean with a checkpoint.
//!
//! Each bad input must give exit status 1 and one line on stderr, never an abort, a panic or growth
//! until killed: the tools run under `ulimit -v` (4 GB of address space) and `timeout`, so that an
//! unbounded allocation fails fast and a blocking read ends.

mod support;

use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use support::*;

/// The address space each tool may use (KiB, for `ulimit -v`).
const ADDRESS_SPACE_KIB: &str = "4000000";

/// `tool args…` under a 4 GB address-space limit and a 60 s timeout.
fn limited(tool: &str, args: &[&str]) -> Output {
    let mut c = Command::new("sh");
    c.current_dir(repo());
    c.arg("-c")
        .arg(format!(
            "ulimit -v {ADDRESS_SPACE_KIB}; exec timeout 60 \"$0\" \"$@\""
        ))
        .arg(tool_path(tool))
        .args(args);
    run(c)
}

/// Exit status 1 and one line on stderr holding every needle.
fn refused(o: &Output, needles: &[&str]) {
    assert_eq!(
        o.status.code(),
        Some(1),
        "expected exit 1 (not an abort, a signal or a timeout); stderr: {}",
        stderr(o)
    );
    assert_one_line_error(o, needles);
}

/// A safetensors file of one 1-element F32 tensor with metadata `meta`: 100 to 160 bytes.
fn tiny_with_metadata(path: &Path, meta: &[(&str, &str)]) {
    let data = 0.5f32.to_le_bytes();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &data).unwrap();
    let meta: HashMap<String, String> = meta
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let bytes = safetensors::serialize(vec![("a".to_string(), view)], Some(meta)).unwrap();
    assert!(bytes.len() < 160, "{} bytes", bytes.len());
    std::fs::write(path, bytes).unwrap();
}

/// A checkpoint with PyTorch names, the given shapes (values 0.01) and no metadata.
fn foreign(path: &Path, shapes: &[(&str, Vec<usize>)]) {
    write_f32_safetensors(path, shapes, |_| 0.01);
}

fn data() -> String {
    small_data().display().to_string()
}

/// Every tool that reads a checkpoint, with arguments that make it read `ck` and fail fast on it.
fn every_reader(ck: &str, out: &Path) -> Vec<(&'static str, Vec<String>)> {
    let d = data();
    let out = out.display().to_string();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    vec![
        ("llc", s(&["--data-dir", &d, "--draws", "2", "--quiet", ck])),
        (
            "wbic",
            s(&["--data-dir", &d, "--draws", "2", "--quiet", ck]),
        ),
        ("hessian-trace", s(&["--data-dir", &d, "-q", ck])),
        (
            "train",
            s(&[
                "--data-dir",
                &d,
                "--epochs",
                "1",
                "--quiet",
                "--init",
                ck,
                "--out",
                &out,
            ]),
        ),
        (
            "switch",
            s(&[
                "--data-dir",
                &d,
                "--from",
                ck,
                "--epochs",
                "2",
                "--branch",
                "sgd",
                "--quiet",
                "--out",
                &out,
            ]),
        ),
    ]
}

fn run_every_reader(ck: &Path, out: &Path, needles: &[&str]) {
    let ck = ck.display().to_string();
    for (tool, args) in every_reader(&ck, out) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = limited(tool, &args);
        let mut all = needles.to_vec();
        all.push(&ck);
        refused(&o, &all);
        assert!(
            std::fs::read_dir(out).map(|d| d.count()).unwrap_or(0) == 0,
            "{tool} wrote into {}",
            out.display()
        );
    }
}

/// Before the fix, `lenet_k4000000000` in a 106-byte file made the tools abort (`memory allocation
/// of … failed`), an MLP of width 2⁶² panicked (`capacity overflow`), and 99,999,999,999 grew
/// until killed.
#[test]
fn models_in_metadata_too_large_to_build_are_refused_by_every_tool() {
    let dir = scratch("limits-huge");
    let out = dir.join("out");
    for (i, (arch, needle)) in [
        (
            "lenet_k4000000000",
            "1 tensor in the file but model lenet_k4000000000 has 8000000010",
        ),
        (
            "mlp_1x99999999999",
            "1 tensor in the file but model mlp_1x99999999999 has 4",
        ),
        (
            "mlp_1x4611686018427387904",
            "model mlp_1x4611686018427387904 has 4",
        ),
        (
            r#"{"kind":"mlp","hidden":[99999999999]}"#,
            "model mlp_1x99999999999 has 4",
        ),
        (
            r#"{"kind":"mlp","hidden":[4611686018427387904]}"#,
            "model mlp_1x4611686018427387904 has 4",
        ),
        (
            "mlp_4000000000x1",
            "4000000000 hidden layers (at most 10000)",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let ck = dir.join(format!("huge-{i}.safetensors"));
        tiny_with_metadata(&ck, &[("arch", arch)]);
        run_every_reader(&ck, &out, &[needle]);
    }
}

/// The same sizes given as `--model` on a real checkpoint: compared with its shapes, not built.
#[test]
fn huge_models_given_as_flags_are_refused() {
    let dir = scratch("limits-flags");
    let ck = fixtures().join("reference/mlp_1x128.safetensors");
    let ck = ck.to_str().unwrap();
    let d = data();
    for tool in ["llc", "hessian-trace"] {
        let o = limited(
            tool,
            &["--data-dir", &d, "-q", "--model", "mlp_1x99999999999", ck],
        );
        refused(
            &o,
            &["tensor 1.weight has shape [128, 784] but model mlp_1x99999999999 expects [99999999999, 784]"],
        );
        let o = limited(
            tool,
            &["--data-dir", &d, "-q", "--model", "lenet_k4000000000", ck],
        );
        refused(
            &o,
            &["4 tensors in the file but model lenet_k4000000000 has 8000000010"],
        );
        let o = limited(tool, &["--data-dir", &d, "-q", "--model", "mlp_1x0", ck]);
        refused(&o, &["--model mlp_1x0: hidden layer 1 has width 0"]);
    }
    let out = dir.join("out");
    let out = out.to_str().unwrap();
    for (flags, needles) in [
        (
            &["--hidden", "50000000"][..],
            &[
                "--hidden 50000000: the model would need at least",
                "39,750,000,010 parameters",
                "this machine has",
            ][..],
        ),
        (
            &["--model", "lenet", "--extra-layers", "100000"][..],
            &[
                "--extra-layers 100000: the model would need at least",
                "GiB of memory",
                "batches of 128",
            ][..],
        ),
        (
            &["--model", "mlp_1x99999999999"][..],
            &["--model mlp_1x99999999999: the model would need at least"][..],
        ),
        (
            &["--model", "mlp_4000000000x1"][..],
            &["--model mlp_4000000000x1", "at most 10000"][..],
        ),
        (
            &["--hidden", "0"][..],
            &["--hidden 0: hidden layer 1 has width 0 (every layer needs at least one unit)"][..],
        ),
        (
            &["--hidden", "64,0"][..],
            &["--hidden 64,0: hidden layer 2 has width 0"][..],
        ),
        (
            &["--model", "mlp_1x0"][..],
            &["--model mlp_1x0: hidden layer 1 has width 0"][..],
        ),
    ] {
        let mut args = vec!["--data-dir", &d, "--epochs", "1", "--quiet", "--out", out];
        args.extend_from_slice(flags);
        let o = limited("train", &args);
        refused(&o, needles);
        assert!(!Path::new(out).exists(), "{flags:?} created {out}");
    }
}

/// Before the fix a zero width panicked (`chunk size must be non-zero`) and a one-class output
/// indexed past the logits, in `llc` and `train`.
#[test]
fn empty_layers_and_one_class_outputs_are_refused_naming_the_tensor() {
    let dir = scratch("limits-degenerate");
    let out = dir.join("out");
    let zero = dir.join("zero.safetensors");
    foreign(
        &zero,
        &[
            ("1.weight", vec![0, 784]),
            ("1.bias", vec![0]),
            ("3.weight", vec![10, 0]),
            ("3.bias", vec![10]),
        ],
    );
    run_every_reader(
        &zero,
        &out,
        &["tensor 1.weight has shape [0, 784], an empty layer"],
    );
    let one = dir.join("one.safetensors");
    foreign(
        &one,
        &[
            ("1.weight", vec![4, 784]),
            ("1.bias", vec![4]),
            ("3.weight", vec![1, 4]),
            ("3.bias", vec![1]),
        ],
    );
    run_every_reader(
        &one,
        &out,
        &["tensor 3.weight has shape [1, 4]: the output layer has 1 class (cross-entropy needs at least 2"],
    );
    // Fewer outputs than the data set has classes: labels would index past the logits.
    let five = dir.join("five.safetensors");
    foreign(
        &five,
        &[
            ("1.weight", vec![4, 784]),
            ("1.bias", vec![4]),
            ("3.weight", vec![5, 4]),
            ("3.bias", vec![5]),
        ],
    );
    let five = five.display().to_string();
    for (tool, args) in every_reader(&five, &out) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = limited(tool, &args);
        refused(
            &o,
            &["mnist has 10 classes but the model mlp_1x4 has 5 outputs"],
        );
    }
}

/// Before the fix `--init /dev/zero` read until memory ran out, a FIFO blocked forever, and a
/// directory was "no such checkpoint file".
#[test]
fn only_regular_files_are_read_as_checkpoints() {
    let dir = scratch("limits-files");
    let out = dir.join("out");
    run_every_reader(
        Path::new("/dev/zero"),
        &out,
        &["/dev/zero: is not a regular file (a FIFO, device or socket)"],
    );
    let folder = dir.join("folder.safetensors");
    std::fs::create_dir_all(&folder).unwrap();
    run_every_reader(&folder, &out, &["is a directory, not a checkpoint file"]);
    let fifo = dir.join("fifo.safetensors");
    let made = Command::new("mkfifo").arg(&fifo).status();
    if made.is_ok_and(|s| s.success()) {
        run_every_reader(
            &fifo,
            &out,
            &["is not a regular file (a FIFO, device or socket)"],
        );
    }

    // The optimiser sidecar read by --resume: a directory, or a FIFO.
    let ck = dir.join("ck.safetensors");
    std::fs::copy(fixtures().join("reference/mlp_1x128.safetensors"), &ck).unwrap();
    let sidecar = PathBuf::from(format!("{}.optim.safetensors", ck.display()));
    std::fs::create_dir_all(&sidecar).unwrap();
    let resume = |needle: &str| {
        let d = data();
        let o = limited(
            "train",
            &[
                "--data-dir",
                &d,
                "--epochs",
                "1",
                "--quiet",
                "--init",
                ck.to_str().unwrap(),
                "--resume",
                "--out",
                out.to_str().unwrap(),
            ],
        );
        refused(&o, &["--resume needs its optimiser sidecar", needle]);
    };
    resume("is a directory, not an optimiser sidecar file");
    std::fs::remove_dir(&sidecar).unwrap();
    if Command::new("mkfifo")
        .arg(&sidecar)
        .status()
        .is_ok_and(|s| s.success())
    {
        resume("is not a regular file (a FIFO, device or socket)");
    }
}

fn model_of(r: &serde_json::Map<String, Value>, key: Option<&str>) -> String {
    let v = match key {
        Some(k) => &r[k]["model"],
        None => &r["model"],
    };
    // train and switch records hold the architecture's description, the analysis tools its name.
    v.get("name")
        .unwrap_or(v)
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// `--model mlp` is the MLP the checkpoint's shapes describe (before the fix it was mlp_1x128, and a
/// 2×64 checkpoint was refused), in every tool; `--model lenet` takes the checkpoint's extra layers.
#[test]
fn model_mlp_and_lenet_take_their_sizes_from_the_checkpoint() {
    let dir = scratch("limits-model-mlp");
    let d = data();
    let src = dir.join("src");
    let mut c = tool("train");
    c.args([
        "--data-dir",
        &d,
        "--hidden",
        "64,64",
        "--train-samples",
        "256",
    ]);
    c.args(["--epochs", "1", "--quiet", "--out"]).arg(&src);
    let o = run(c);
    assert!(o.status.success(), "{}", stderr(&o));
    let ck = src.join("epoch-0001.safetensors");
    let ck = ck.to_str().unwrap();
    // A LeNet without extra layers, as PyTorch writes it (no metadata: the shapes are all there is).
    let lenet = dir.join("lenet.safetensors");
    let shapes: Vec<(String, Vec<usize>)> = [
        ("conv1.0.weight", vec![6, 1, 5, 5]),
        ("conv1.0.bias", vec![6]),
        ("conv2.0.weight", vec![16, 6, 5, 5]),
        ("conv2.0.bias", vec![16]),
        ("fc_1.weight", vec![120, 256]),
        ("fc_1.bias", vec![120]),
        ("fc_2.weight", vec![84, 120]),
        ("fc_2.bias", vec![84]),
        ("fc_3.weight", vec![10, 84]),
        ("fc_3.bias", vec![10]),
    ]
    .into_iter()
    .map(|(n, s)| (n.to_string(), s))
    .collect();
    let borrowed: Vec<(&str, Vec<usize>)> = shapes
        .iter()
        .map(|(n, s)| (n.as_str(), s.clone()))
        .collect();
    foreign(&lenet, &borrowed);
    let lenet = lenet.to_str().unwrap();

    for (model, ck, expect) in [("mlp", ck, "mlp_2x64"), ("lenet", lenet, "lenet_k0")] {
        let o = limited(
            "llc",
            &[
                "--data-dir",
                &d,
                "--model",
                model,
                "--draws",
                "3",
                "--chains",
                "1",
                "--quiet",
                ck,
            ],
        );
        assert!(o.status.success(), "llc --model {model}: {}", stderr(&o));
        assert_eq!(model_of(&records(&o)[0], Some("llc")), expect);
        let o = limited(
            "wbic",
            &[
                "--data-dir",
                &d,
                "--model",
                model,
                "--draws",
                "3",
                "--chains",
                "1",
                "--quiet",
                ck,
            ],
        );
        assert!(o.status.success(), "wbic --model {model}: {}", stderr(&o));
        assert_eq!(model_of(&records(&o)[0], Some("wbic")), expect);
        let o = limited(
            "hessian-trace",
            &[
                "--data-dir",
                &d,
                "--model",
                model,
                "--samples",
                "64",
                "--max-probes",
                "20",
                "-q",
                ck,
            ],
        );
        assert!(
            o.status.success(),
            "hessian-trace --model {model}: {}",
            stderr(&o)
        );
        assert_eq!(model_of(&records(&o)[0], Some("hessian")), expect);
        let out = dir.join(format!("train-{model}"));
        let o = limited(
            "train",
            &[
                "--data-dir",
                &d,
                "--model",
                model,
                "--init",
                ck,
                "--epochs",
                "1",
                "--train-samples",
                "128",
                "--quiet",
                "--out",
                out.to_str().unwrap(),
            ],
        );
        assert!(
            o.status.success(),
            "train --model {model} --init: {}",
            stderr(&o)
        );
        assert_eq!(model_of(&records(&o)[0], None), expect);
        let out = dir.join(format!("switch-{model}"));
        let o = limited(
            "switch",
            &[
                "--data-dir",
                &d,
                "--model",
                model,
                "--from",
                ck,
                "--epochs",
                "2",
                "--train-samples",
                "128",
                "--branch",
                "sgd",
                "--quiet",
                "--out",
                out.to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "switch --model {model}: {}", stderr(&o));
        assert_eq!(model_of(&records(&o)[0], None), expect);
    }
    // A given width is still exact: --hidden with --init must match the checkpoint.
    let out = dir.join("exact");
    let o = limited(
        "train",
        &[
            "--data-dir",
            &d,
            "--model",
            "mlp",
            "--hidden",
            "32",
            "--init",
            ck,
            "--epochs",
            "1",
            "--quiet",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    refused(&o, &["6 tensors in the file but model mlp_1x32 has 4"]);
    // The family must fit the tensors.
    let o = limited(
        "llc",
        &["--data-dir", &d, "--model", "lenet", "--quiet", ck],
    );
    refused(
        &o,
        &["--model lenet, but the tensors are those of mlp_2x64"],
    );
}
