//! End-to-end tests of `train`: records, checkpoints PyTorch can load, determinism, resume, and every
//! kind of bad input named in the foundation issue.

mod support;

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use support::*;

#[test]
fn trains_and_writes_records_and_checkpoints() {
    let dir = scratch("basic");
    let o = train_small(&dir, "2", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let recs = records(&o);
    assert_eq!(recs.len(), 2);
    for (i, r) in recs.iter().enumerate() {
        for key in [
            "type",
            "run",
            "model",
            "optimizer",
            "seed",
            "epoch",
            "step",
            "train_loss",
            "test_loss",
            "test_acc",
            "update_norm",
            "checkpoint",
            "dataset",
            "data_dir",
            "seconds",
        ] {
            assert!(r.contains_key(key), "record lacks {key}: {r:?}");
        }
        assert_eq!(r["epoch"], Value::from(i + 1));
        assert_eq!(
            r["step"],
            Value::from(10 * (i + 1)),
            "1280 samples / 128 = 10 steps per epoch"
        );
        assert_eq!(r["optimizer"]["name"], "sgd");
        assert_eq!(r["optimizer"]["lr"], 0.01);
        assert_eq!(r["optimizer"]["nesterov"], true);
        let ck = Path::new(r["checkpoint"].as_str().unwrap());
        let bytes = std::fs::read(repo().join(ck)).expect("checkpoint written");
        let st = SafeTensors::deserialize(&bytes).expect("valid safetensors");
        let mut names = st.names();
        names.sort();
        assert_eq!(names, ["1.bias", "1.weight", "3.bias", "3.weight"]);
        assert_eq!(st.tensor("1.weight").unwrap().shape(), [32, 784]);
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        let meta = meta.metadata().clone().unwrap();
        assert_eq!(meta["dataset"], "mnist");
        assert_eq!(meta["epoch"], (i + 1).to_string());
        assert!(meta["arch"].contains("\"hidden\":[32]"));
        assert!(repo()
            .join(format!("{}.optim.safetensors", ck.display()))
            .is_file());
    }
    let l0 = recs[0]["train_loss"].as_f64().unwrap();
    let l1 = recs[1]["train_loss"].as_f64().unwrap();
    assert!(l1 < l0, "training reduces the loss: {l0} -> {l1}");
    let log = std::fs::read_to_string(dir.join("run.jsonl")).unwrap();
    assert_eq!(log, stdout(&o), "the run log holds the same records");
}

#[test]
fn same_command_gives_byte_identical_checkpoints() {
    let a = scratch("det-a");
    let b = scratch("det-b");
    for d in [&a, &b] {
        let o = train_small(d, "2", &[]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    for f in [
        "epoch-0002.safetensors",
        "epoch-0002.safetensors.optim.safetensors",
    ] {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{f}"
        );
    }
    // A different seed gives different weights.
    let c = scratch("det-c");
    assert!(train_small(&c, "2", &["--seed", "2"]).status.success());
    assert_ne!(
        std::fs::read(a.join("epoch-0002.safetensors")).unwrap(),
        std::fs::read(c.join("epoch-0002.safetensors")).unwrap()
    );
}

#[test]
fn resume_continues_exactly() {
    let full = scratch("resume-full");
    assert!(train_small(&full, "2", &[]).status.success());
    let part = scratch("resume-part");
    let o = train_small(&part, "1", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut c = tool("train");
    c.args(["--data-dir"]).arg(small_data());
    c.args([
        "--hidden", "32", "--epochs", "2", "--quiet", "--run", "r", "--resume", "--init",
    ])
    .arg(part.join("epoch-0001.safetensors"))
    .arg("--out")
    .arg(&part);
    let o = run(c);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(records(&o)[0]["epoch"], 2);
    assert_eq!(
        std::fs::read(full.join("epoch-0002.safetensors")).unwrap(),
        std::fs::read(part.join("epoch-0002.safetensors")).unwrap(),
        "resumed run equals the uninterrupted one"
    );
    // Mid-epoch resume through --save-every.
    let mid = scratch("resume-mid");
    let mut c = tool("train");
    c.args(["--data-dir"]).arg(small_data());
    c.args([
        "--hidden",
        "32",
        "--epochs",
        "1",
        "--quiet",
        "--run",
        "r",
        "--save-every",
        "4",
        "--out",
    ])
    .arg(&mid);
    assert!(run(c).status.success());
    let mut c = tool("train");
    c.args(["--data-dir"]).arg(small_data());
    c.args([
        "--hidden", "32", "--epochs", "2", "--quiet", "--run", "r", "--resume", "--init",
    ])
    .arg(mid.join("step-0000008.safetensors"))
    .arg("--out")
    .arg(&mid);
    let o = run(c);
    assert!(o.status.success(), "{}", stderr(&o));
    let a = std::fs::read(full.join("epoch-0002.safetensors")).unwrap();
    let b = std::fs::read(mid.join("epoch-0002.safetensors")).unwrap();
    let pa = SafeTensors::deserialize(&a).unwrap();
    let pb = SafeTensors::deserialize(&b).unwrap();
    for n in ["1.weight", "1.bias", "3.weight", "3.bias"] {
        assert_eq!(
            pa.tensor(n).unwrap().data(),
            pb.tensor(n).unwrap().data(),
            "{n}"
        );
    }
}

#[test]
fn init_from_a_pytorch_checkpoint_and_foreign_names_and_dtypes() {
    // The reference checkpoint was made by PyTorch (nn.Sequential names, param_order metadata).
    let dir = scratch("init-ref");
    let mut c = tool("train");
    c.args(["--data-dir"]).arg(small_data());
    c.args(["--epochs", "1", "--quiet", "--init"])
        .arg(fixtures().join("reference/mlp_1x128.safetensors"))
        .arg("--out")
        .arg(&dir);
    let o = run(c);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(records(&o)[0]["model"]["name"], "mlp_1x128");

    // The same weights as F64, F16 and BF16 under fc1/fc2 names without metadata load by shape.
    let bytes = std::fs::read(fixtures().join("reference/mlp_1x128.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    for (dtype, width) in [(Dtype::F64, 8), (Dtype::F16, 2), (Dtype::BF16, 2)] {
        let mut data: HashMap<String, (Vec<usize>, Vec<u8>)> = HashMap::new();
        for (src, dst) in [
            ("1.weight", "fc1.weight"),
            ("1.bias", "fc1.bias"),
            ("3.weight", "fc2.weight"),
            ("3.bias", "fc2.bias"),
        ] {
            let t = st.tensor(src).unwrap();
            let vals: Vec<f32> = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let raw: Vec<u8> = match dtype {
                Dtype::F64 => vals
                    .iter()
                    .flat_map(|v| (*v as f64).to_le_bytes())
                    .collect(),
                Dtype::F16 => vals
                    .iter()
                    .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                    .collect(),
                _ => vals
                    .iter()
                    .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                    .collect(),
            };
            assert_eq!(raw.len(), vals.len() * width);
            data.insert(dst.to_string(), (t.shape().to_vec(), raw));
        }
        let views: Vec<(String, TensorView)> = data
            .iter()
            .map(|(k, (s, b))| (k.clone(), TensorView::new(dtype, s.clone(), b).unwrap()))
            .collect();
        let file = dir.join(format!("foreign-{dtype:?}.safetensors"));
        std::fs::write(&file, safetensors::serialize(views, None).unwrap()).unwrap();
        let out = dir.join(format!("from-{dtype:?}"));
        let mut c = tool("train");
        c.args(["--data-dir"]).arg(small_data());
        c.args(["--epochs", "1", "--quiet", "--init"])
            .arg(&file)
            .arg("--out")
            .arg(&out);
        let o = run(c);
        assert!(o.status.success(), "{dtype:?}: {}", stderr(&o));
        let acc = records(&o)[0]["test_acc"].as_f64().unwrap();
        assert!(
            acc > 0.8,
            "{dtype:?}: the trained reference weights classify well ({acc})"
        );
    }
}

#[test]
fn help_explains_with_examples() {
    let o = run({
        let mut c = tool("train");
        c.arg("--help");
        c
    });
    assert!(o.status.success());
    let h = stdout(&o);
    assert!(h.contains("$ train --model mlp --hidden 128"), "{h}");
    assert!(h.contains("--no-shuffle") && h.contains("--train-samples") && h.contains("--resume"));
}

#[test]
fn a_closed_stdout_stops_the_run_with_a_message_and_a_failing_status() {
    let dir = scratch("pipe");
    let mut c = tool("train");
    c.args(["--data-dir"]).arg(small_data());
    c.args(["--hidden", "8", "--epochs", "30", "--quiet", "--out"])
        .arg(&dir);
    c.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut first = [0u8; 1];
    std::io::Read::read_exact(&mut out, &mut first).unwrap();
    drop(out);
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(141), "{}", stderr(&o));
    assert_one_line_error(&o, &["stdout was closed", "--resume", "epoch-"]);
    // What was written is a complete run that --resume continues.
    let log = std::fs::read_to_string(dir.join("run.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    let ck = last["checkpoint"].as_str().unwrap();
    assert!(stderr(&o).contains(ck), "{} names {ck}", stderr(&o));
    let epoch = last["epoch"].as_u64().unwrap();
    let mut c = tool("train");
    c.args(["--data-dir"]).arg(small_data());
    c.args([
        "--hidden", "8", "--quiet", "--resume", "--init", ck, "--out",
    ])
    .arg(&dir)
    .args(["--epochs", &(epoch + 1).to_string()]);
    let o = run(c);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(records(&o)[0]["epoch"], epoch + 1);
}

#[test]
fn ctrl_c_leaves_valid_checkpoints() {
    let dir = scratch("sigint");
    let mut c = tool("train");
    c.args(["--data-dir"]).arg(small_data());
    c.args(["--hidden", "64", "--epochs", "100000", "--quiet", "--out"])
        .arg(&dir);
    c.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    for _ in 0..3 {
        line.clear();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    }
    let kill = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "interrupted runs exit 130");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        assert!(!name.contains(".tmp"), "no temporary file left: {name}");
        if name.ends_with(".safetensors") {
            SafeTensors::deserialize(&std::fs::read(&p).unwrap())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            n += 1;
        }
    }
    assert!(
        n >= 6,
        "three epochs of checkpoints and sidecars at least ({n})"
    );
}

// ---- bad input: one line, names the file and the problem, non-zero exit, nothing written ----

fn write_idx_set(dir: &Path, images: &[u8], labels: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    for (split, n) in [("train", 4u32), ("t10k", 4u32)] {
        let mut img = vec![0, 0, 8, 3];
        for d in [n, 28, 28] {
            img.extend_from_slice(&d.to_be_bytes());
        }
        img.extend(std::iter::repeat_n(7u8, (n * 784) as usize));
        let mut lab = vec![0, 0, 8, 1];
        lab.extend_from_slice(&n.to_be_bytes());
        lab.extend(std::iter::repeat_n(1u8, n as usize));
        let img = if split == "train" && !images.is_empty() {
            images.to_vec()
        } else {
            img
        };
        let lab = if split == "train" && !labels.is_empty() {
            labels.to_vec()
        } else {
            lab
        };
        std::fs::write(dir.join(format!("{split}-images-idx3-ubyte")), img).unwrap();
        std::fs::write(dir.join(format!("{split}-labels-idx1-ubyte")), lab).unwrap();
    }
}

fn train_on(data: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut c = tool("train");
    c.arg("--data-dir")
        .arg(data)
        .args(["--epochs", "1", "--quiet", "--out"])
        .arg(out)
        .args(extra);
    run(c)
}

fn assert_nothing_written(out: &Path) {
    let n = std::fs::read_dir(out).map(|d| d.count()).unwrap_or(0);
    assert_eq!(n, 0, "{} should hold no output", out.display());
}

#[test]
fn missing_data_folder_says_how_to_fetch() {
    let dir = scratch("bad-missing");
    let out = dir.join("out");
    let o = train_on(&dir.join("nowhere"), &out, &[]);
    assert_one_line_error(&o, &["nowhere", "make data"]);
    assert_nothing_written(&out);
}

#[test]
fn idx_wrong_magic_truncated_bad_labels_and_count_mismatch() {
    let dir = scratch("bad-idx");
    let mut good_img = vec![0, 0, 8, 3];
    for d in [4u32, 28, 28] {
        good_img.extend_from_slice(&d.to_be_bytes());
    }
    good_img.extend(std::iter::repeat_n(7u8, 4 * 784));
    let mut wrong_magic = good_img.clone();
    wrong_magic[3] = 1;
    let truncated = good_img[..good_img.len() - 10].to_vec();
    let mut bad_label = vec![0, 0, 8, 1, 0, 0, 0, 4];
    bad_label.extend([1, 2, 12, 3]);
    let mut short_labels = vec![0, 0, 8, 1, 0, 0, 0, 3];
    short_labels.extend([1, 2, 3]);
    type Case<'a> = (&'a str, &'a [u8], &'a [u8], &'a [&'a str]);
    let cases: [Case; 4] = [
        (
            "magic",
            &wrong_magic,
            &[],
            &["train-images-idx3-ubyte", "wrong IDX magic"],
        ),
        (
            "trunc",
            &truncated,
            &[],
            &["train-images-idx3-ubyte", "truncated"],
        ),
        (
            "label",
            &[],
            &bad_label,
            &["train-labels-idx1-ubyte", "label 12 at index 2"],
        ),
        (
            "count",
            &[],
            &short_labels,
            &["train-labels-idx1-ubyte", "3 labels", "4 images"],
        ),
    ];
    for (name, img, lab, needles) in cases {
        let data = dir.join(name);
        write_idx_set(&data, img, lab);
        let out = dir.join(format!("out-{name}"));
        let o = train_on(&data, &out, &[]);
        assert_one_line_error(&o, needles);
        assert_nothing_written(&out);
    }
}

#[test]
fn bad_checkpoints_are_refused_with_the_file_named() {
    let dir = scratch("bad-ckpt");
    let good = std::fs::read(fixtures().join("reference/mlp_1x128.safetensors")).unwrap();
    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, &good[..good.len() / 2]).unwrap();
    let corrupt = dir.join("corrupt.safetensors");
    let mut c = good.clone();
    c[10] = b'}';
    c[11] = b'{';
    std::fs::write(&corrupt, &c).unwrap();
    let out = dir.join("out");
    for (file, needle) in [
        (&truncated, "not a valid safetensors"),
        (&corrupt, "not a valid safetensors"),
    ] {
        let o = train_on(&small_data(), &out, &["--init", file.to_str().unwrap()]);
        assert_one_line_error(&o, &[file.file_name().unwrap().to_str().unwrap(), needle]);
        assert_nothing_written(&out);
    }
    // A tensor of the wrong shape for the model the user names.
    let o = train_on(
        &small_data(),
        &out,
        &[
            "--model",
            "mlp_1x64",
            "--init",
            fixtures()
                .join("reference/mlp_1x128.safetensors")
                .to_str()
                .unwrap(),
        ],
    );
    assert_one_line_error(
        &o,
        &[
            "mlp_1x128.safetensors",
            "shape [128, 784]",
            "expects [64, 784]",
        ],
    );
    assert_nothing_written(&out);

    // Metadata naming an unknown model.
    let st = SafeTensors::deserialize(&good).unwrap();
    let views: Vec<(String, TensorView)> = st.tensors().into_iter().collect();
    let mut meta = HashMap::new();
    meta.insert("arch".to_string(), "{\"kind\":\"resnet\"}".to_string());
    let unknown = dir.join("unknown.safetensors");
    std::fs::write(&unknown, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
    let o = train_on(&small_data(), &out, &["--init", unknown.to_str().unwrap()]);
    assert_one_line_error(&o, &["unknown.safetensors", "unknown model", "resnet"]);
    assert_nothing_written(&out);
    // The inputs were not modified.
    assert_eq!(
        std::fs::read(fixtures().join("reference/mlp_1x128.safetensors")).unwrap(),
        good
    );
}

#[test]
fn divergence_stops_and_keeps_the_last_good_checkpoint() {
    let dir = scratch("bad-nan");
    let mut c = tool("train");
    c.args(["--data-dir"]).arg(small_data());
    c.args([
        "--hidden",
        "32",
        "--epochs",
        "3",
        "--quiet",
        "--lr",
        "1e30",
        "--save-every",
        "1",
        "--out",
    ])
    .arg(&dir);
    let o = run(c);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("diverged") && err.contains("step"), "{err}");
    if let Some(r) = records(&o).last() {
        let ck = r["checkpoint"].as_str().unwrap();
        assert!(
            err.contains(ck),
            "{err} names the last good checkpoint {ck}"
        );
        SafeTensors::deserialize(&std::fs::read(repo().join(ck)).unwrap()).unwrap();
    } else {
        assert!(err.contains("no checkpoint was written"), "{err}");
    }
}

#[test]
fn unwritable_output_folder_is_refused_before_training() {
    let dir = scratch("bad-out");
    let file = dir.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let o = train_on(&small_data(), &file.join("sub"), &[]);
    assert_one_line_error(&o, &["a-file"]);
    assert!(stdout(&o).is_empty());
}

#[test]
fn invalid_hyperparameters_are_refused() {
    let dir = scratch("bad-hyper");
    let o = train_on(&small_data(), &dir.join("o"), &["--lr=-1"]);
    assert_one_line_error(&o, &["learning rate"]);
    let o = train_on(
        &small_data(),
        &dir.join("o"),
        &["--momentum", "0", "--nesterov"],
    );
    assert_one_line_error(&o, &["Nesterov"]);
}

// ---- runs are never lost or mixed (issue #13) ----

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn log_epochs(dir: &Path) -> Vec<u64> {
    std::fs::read_to_string(dir.join("run.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["epoch"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

fn resume_small(out: &Path, from: &str, epochs: &str, extra: &[&str]) -> std::process::Output {
    let mut c = tool("train");
    c.args(["--data-dir"]).arg(small_data());
    c.args([
        "--hidden", "32", "--epochs", epochs, "--quiet", "--resume", "--init",
    ])
    .arg(out.join(from))
    .arg("--out")
    .arg(out)
    .args(extra);
    run(c)
}

#[test]
fn a_folder_holding_a_run_is_refused_unless_resumed_or_overwritten() {
    let dir = scratch("out-taken");
    assert!(train_small(&dir, "2", &["--seed", "1"]).status.success());
    let before = std::fs::read(dir.join("epoch-0001.safetensors")).unwrap();
    let listing = files_in(&dir);
    let o = train_small(&dir, "1", &["--seed", "2"]);
    assert_one_line_error(
        &o,
        &[
            "out-taken",
            "already holds a run",
            "--resume",
            "--overwrite",
        ],
    );
    assert_eq!(files_in(&dir), listing, "nothing written");
    assert_eq!(
        std::fs::read(dir.join("epoch-0001.safetensors")).unwrap(),
        before
    );
    // --overwrite replaces the whole run: nothing of seed 1 is left beside seed 2's.
    std::fs::write(dir.join("notes.txt"), b"mine").unwrap();
    let o = train_small(&dir, "1", &["--seed", "2", "--overwrite"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        files_in(&dir),
        [
            "epoch-0001.safetensors",
            "epoch-0001.safetensors.optim.safetensors",
            "notes.txt",
            "run.jsonl"
        ]
    );
    assert_eq!(log_epochs(&dir), [1]);
    assert_ne!(
        std::fs::read(dir.join("epoch-0001.safetensors")).unwrap(),
        before
    );
    // --overwrite never removes the checkpoint the run starts from.
    let init = dir.join("epoch-0001.safetensors");
    let o = train_small(
        &dir,
        "1",
        &["--overwrite", "--init", init.to_str().unwrap()],
    );
    assert_one_line_error(&o, &["--overwrite would remove", "epoch-0001.safetensors"]);
    assert!(init.is_file());
    let o = train_small(
        &dir,
        "1",
        &["--overwrite", "--resume", "--init", init.to_str().unwrap()],
    );
    assert!(!o.status.success());
}

#[test]
fn resume_refuses_a_sidecar_of_another_run() {
    let a = scratch("pair-a");
    let b = scratch("pair-b");
    assert!(train_small(&a, "1", &["--seed", "1"]).status.success());
    assert!(train_small(&b, "1", &["--seed", "2"]).status.success());
    let sidecar = "epoch-0001.safetensors.optim.safetensors";
    std::fs::copy(b.join(sidecar), a.join(sidecar)).unwrap();
    let o = resume_small(&a, "epoch-0001.safetensors", "2", &["--run", "r"]);
    assert_one_line_error(
        &o,
        &[
            "pair-a/epoch-0001.safetensors",
            "pair-a/epoch-0001.safetensors.optim.safetensors",
            "`seed` is 1 here and 2",
        ],
    );
    assert!(!a.join("epoch-0002.safetensors").exists());
}

#[test]
fn a_failed_sidecar_write_leaves_no_checkpoint_without_its_sidecar() {
    let dir = scratch("sidecar-fails");
    // A folder where epoch 2's sidecar should go: its write (rename) fails, as on a full disk.
    std::fs::create_dir_all(dir.join("epoch-0002.safetensors.optim.safetensors")).unwrap();
    let o = train_small(&dir, "2", &[]);
    assert_one_line_error(&o, &["epoch-0002.safetensors.optim.safetensors"]);
    assert!(
        !dir.join("epoch-0002.safetensors").exists(),
        "no checkpoint without its sidecar"
    );
    assert_eq!(log_epochs(&dir), [1]);
    assert!(
        !files_in(&dir).iter().any(|f| f.contains(".tmp")),
        "{:?}",
        files_in(&dir)
    );
    std::fs::remove_dir(dir.join("epoch-0002.safetensors.optim.safetensors")).unwrap();
    let o = resume_small(&dir, "epoch-0001.safetensors", "2", &["--run", "r"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(log_epochs(&dir), [1, 2]);
}

#[test]
fn resume_refuses_changed_settings_and_records_the_accepted_ones() {
    let dir = scratch("resume-changes");
    assert!(train_small(&dir, "1", &[]).status.success());
    for (flags, needles) in [
        (&["--lr", "0.1"][..], &["--lr", "was 0.01", "is 0.1"][..]),
        (
            &["--batch-size", "64"],
            &["--batch-size", "was 128", "is 64"],
        ),
        (&["--seed", "2"], &["--seed", "was 1", "is 2"]),
        (&["--no-shuffle"], &["--no-shuffle", "was true", "is false"]),
        (
            &["--train-samples", "640"],
            &["--train-samples", "was 1280", "is 640"],
        ),
        (&["--no-nesterov"], &["--nesterov", "was true", "is false"]),
        (&["--momentum", "0.5"], &["--momentum", "was 0.9", "is 0.5"]),
        (
            &["--weight-decay", "0.001"],
            &["--weight-decay", "was 0.0", "is 0.001"],
        ),
        (
            &["--optimizer", "ngd"],
            &["--optimizer", "was \"sgd\"", "is \"ngd\""],
        ),
        (&["--run", "other"], &["--run", "was \"r\"", "is \"other\""]),
        (&["--threads", "2"], &["--threads", "was 1", "is 2"]),
    ] {
        let mut args = vec!["--run", "r"];
        if flags[0] == "--run" {
            args.clear();
        }
        args.extend_from_slice(flags);
        let o = resume_small(&dir, "epoch-0001.safetensors", "2", &args);
        let mut all = needles.to_vec();
        all.extend(["epoch-0001.safetensors", "--resume-with-changes"]);
        assert_one_line_error(&o, &all);
        assert!(!dir.join("epoch-0002.safetensors").exists(), "{flags:?}");
    }
    // Accepted explicitly, the change is in every record and checkpoint that follows.
    let o = resume_small(
        &dir,
        "epoch-0001.safetensors",
        "2",
        &["--lr", "0.1", "--resume-with-changes"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let r = &records(&o)[0];
    assert_eq!(r["optimizer"]["lr"], 0.1);
    assert_eq!(
        r["resumed_with_changes"],
        serde_json::json!([{"at_step": 10, "flag": "--lr", "from": 0.01, "to": 0.1}])
    );
    let bytes = std::fs::read(dir.join("epoch-0002.safetensors")).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    assert!(meta.metadata().as_ref().unwrap()["resumed_with_changes"].contains("--lr"));
    // Without a flag, --run defaults to the checkpoint's run name.
    let o = resume_small(&dir, "epoch-0002.safetensors", "3", &["--lr", "0.1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(records(&o)[0]["run"], "r");
    assert_eq!(records(&o)[0]["resumed_with_changes"][0]["flag"], "--lr");
}

#[test]
fn resuming_from_an_earlier_epoch_rewrites_what_follows_once() {
    let dir = scratch("resume-earlier");
    assert!(train_small(&dir, "3", &[]).status.success());
    let second = std::fs::read(dir.join("epoch-0002.safetensors")).unwrap();
    let o = resume_small(&dir, "epoch-0001.safetensors", "2", &["--run", "r"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        log_epochs(&dir),
        [1, 2],
        "each epoch once, none past the run"
    );
    assert!(!dir.join("epoch-0003.safetensors").exists());
    assert!(!dir
        .join("epoch-0003.safetensors.optim.safetensors")
        .exists());
    assert_eq!(
        std::fs::read(dir.join("epoch-0002.safetensors")).unwrap(),
        second
    );
}

#[test]
fn stale_temp_files_of_killed_runs_are_removed() {
    let dir = scratch("stale-tmp");
    // PIDs above the kernel's limit (2^22) never run; this test's own PID does.
    let dead = dir.join(".epoch-0001.safetensors.tmp-4194305");
    let live = dir.join(format!(".run.jsonl.tmp-{}", std::process::id()));
    let other = dir.join("keep.tmp-4194305");
    for f in [&dead, &live, &other] {
        std::fs::write(f, b"partial").unwrap();
    }
    let o = train_small(&dir, "1", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!dead.exists(), "a dead writer's temp file is removed");
    assert!(live.exists() && other.exists());
}

#[test]
fn the_wrong_data_set_is_refused_by_name() {
    let dir = scratch("wrong-data");
    let o = train_on(
        &small_data(),
        &dir.join("o"),
        &["--dataset", "fashion-mnist"],
    );
    assert_one_line_error(
        &o,
        &[
            "train-images-idx3-ubyte.gz",
            "holds the MNIST train images",
            "not the Fashion-MNIST",
            "--dataset mnist",
        ],
    );
    assert_nothing_written(&dir.join("o"));
    assert!(train_on(&small_data(), &dir.join("m"), &[])
        .status
        .success());
    let o = train_on(
        &small_data(),
        &dir.join("o"),
        &[
            "--dataset",
            "fashion-mnist",
            "--init",
            dir.join("m/epoch-0001.safetensors").to_str().unwrap(),
        ],
    );
    assert_one_line_error(
        &o,
        &[
            "m/epoch-0001.safetensors",
            "--dataset fashion-mnist",
            "trained on mnist",
        ],
    );
}

#[test]
fn contradictory_flags_are_refused() {
    let dir = scratch("flags");
    let o = train_on(
        &small_data(),
        &dir.join("o"),
        &["--nesterov", "--no-nesterov"],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("cannot be used with"), "{}", stderr(&o));
    assert_nothing_written(&dir.join("o"));
}

/// An IDX data set of 16 training and 8 test images of `rows` × `cols` varied pixels, labels 0–9.
fn write_idx_set_of(dir: &Path, rows: u32, cols: u32) {
    std::fs::create_dir_all(dir).unwrap();
    for (split, n) in [("train", 16u32), ("t10k", 8u32)] {
        let mut img = vec![0, 0, 8, 3];
        for d in [n, rows, cols] {
            img.extend_from_slice(&d.to_be_bytes());
        }
        img.extend((0..n * rows * cols).map(|i| ((i * 37) % 251) as u8));
        let mut lab = vec![0, 0, 8, 1];
        lab.extend_from_slice(&n.to_be_bytes());
        lab.extend((0..n).map(|i| (i % 10) as u8));
        std::fs::write(dir.join(format!("{split}-images-idx3-ubyte")), img).unwrap();
        std::fs::write(dir.join(format!("{split}-labels-idx1-ubyte")), lab).unwrap();
    }
}

/// Shapes come from the data: a LeNet and an MLP trained on 20×24 images are built for them (fc_1
/// takes 16·2·3 features: 20 → 16 → 8 → 4 → 2 and 24 → 20 → 10 → 6 → 3; the MLP 480 inputs), the
/// analysis tools take the checkpoint with that data, and refuse 28×28 images naming both shapes.
#[test]
fn models_are_built_for_the_data_shape() {
    let dir = scratch("data-shape");
    let data = dir.join("data");
    write_idx_set_of(&data, 20, 24);
    for (model, tensor, shape) in [
        ("lenet", "fc_1.weight", vec![120, 96]),
        ("mlp", "1.weight", vec![128, 480]),
    ] {
        let out = dir.join(model);
        let o = train_on(&data, &out, &["--model", model, "--batch-size", "4"]);
        assert!(o.status.success(), "{model}: {}", stderr(&o));
        let record: Value = serde_json::from_str(stdout(&o).lines().last().unwrap()).unwrap();
        let bytes = std::fs::read(out.join("epoch-0001.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor(tensor).unwrap().shape(), &shape[..], "{model}");
        let ck = out.join("epoch-0001.safetensors");
        let ck = ck.to_str().unwrap();
        let args = [
            "--data-dir",
            data.to_str().unwrap(),
            "--probes",
            "2",
            "--samples",
            "8",
        ];
        let o = run_tool("hessian-trace", &[&[ck][..], &args].concat(), "");
        assert!(o.status.success(), "{model}: {}", stderr(&o));
        if model == "lenet" {
            assert_eq!(record["model"]["input"], serde_json::json!([1, 20, 24]));
            let mnist = small_data();
            let o = run_tool(
                "hessian-trace",
                &[ck, "--data-dir", mnist.to_str().unwrap(), "--probes", "2"],
                "",
            );
            let e = stderr(&o);
            assert!(!o.status.success(), "{e}");
            assert!(
                e.contains("mnist images are 1×28×28 but the model lenet expects 1×20×24"),
                "{e}"
            );
        } else {
            assert_eq!(record["model"]["input"], serde_json::json!(480));
        }
    }
    // Images too small for a LeNet are refused naming the data, before anything is written.
    let tiny = dir.join("tiny");
    write_idx_set_of(&tiny, 12, 12);
    let out = dir.join("tiny-out");
    let o = train_on(&tiny, &out, &["--model", "lenet"]);
    assert_one_line_error(
        &o,
        &[
            "model lenet for the 1×12×12 images in",
            "12×12 pixels: each side must be 16",
        ],
    );
    assert_nothing_written(&out);
}
