//! Data files end to end: `train`, `llc`, `wbic`, `hessian-trace` and `switch` on a regression data
//! file with the mean squared error and an MLP (and `train` + `llc` on a classification file), on
//! small safetensors files written here; bad files and mismatched losses refused in one line.

mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use support::*;

/// A deterministic stream of values in [−1, 1) (a 64-bit LCG; no dependency on the library).
fn uniform(seed: u64) -> impl FnMut() -> f64 {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }
}

fn bytes_f32(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect()
}

fn bytes_i64(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn write(path: &Path, tensors: &[(&str, safetensors::Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(&str, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            let v = safetensors::tensor::TensorView::new(*d, s.clone(), b).expect("view");
            (*n, v)
        })
        .collect();
    std::fs::write(
        path,
        safetensors::serialize(views, None).expect("serialize"),
    )
    .expect("write");
}

/// Inputs x ∈ [−1, 1)⁴ and two targets y = (sin(2x₀) + x₁, x₂·x₃) + 0.05·noise, float32; 160
/// training and 40 test samples.
fn regression_file(dir: &Path) -> PathBuf {
    let mut u = uniform(7);
    let mut split = |n: usize| {
        let x: Vec<f64> = (0..n * 4).map(|_| u()).collect();
        let y: Vec<f64> = x
            .chunks(4)
            .flat_map(|r| [(2.0 * r[0]).sin() + r[1], r[2] * r[3]])
            .map(|v| v + 0.05 * u())
            .collect();
        (x, y)
    };
    let (x, y) = split(160);
    let (xt, yt) = split(40);
    let path = dir.join("regression.safetensors");
    let f = safetensors::Dtype::F32;
    write(
        &path,
        &[
            ("x", f, vec![160, 4], bytes_f32(&x)),
            ("y", f, vec![160, 2], bytes_f32(&y)),
            ("x_test", f, vec![40, 4], bytes_f32(&xt)),
            ("y_test", f, vec![40, 2], bytes_f32(&yt)),
        ],
    );
    path
}

fn last(o: &std::process::Output) -> serde_json::Map<String, Value> {
    assert!(o.status.success(), "{}", stderr(o));
    records(o).pop().expect("a record")
}

fn train_regression(dir: &Path, data: &Path, name: &str, extra: &[&str]) -> std::process::Output {
    let mut c = tool("train");
    c.arg("--data").arg(data);
    c.args([
        "--hidden",
        "16",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--lr",
        "0.05",
        "--seed",
        "2",
        "--quiet",
        "--out",
    ])
    .arg(dir.join(name));
    c.args(extra);
    run(c)
}

#[test]
fn every_tool_runs_on_a_regression_file_with_the_mean_squared_error() {
    let dir = scratch("data-file-regression");
    let data = regression_file(&dir);
    let o = train_regression(&dir, &data, "sgd", &[]);
    let all = records(&o);
    let r = last(&o);
    // The loss follows the float targets; accuracy is not defined (null, not 0).
    assert_eq!(r["loss"], "mse");
    assert_eq!(r["test_acc"], Value::Null);
    assert!(r["test_loss"].as_f64().is_some_and(f64::is_finite));
    assert_eq!(r["data_file"], data.display().to_string());
    assert_eq!(r["data_fingerprint"].as_str().map(str::len), Some(16));
    assert_eq!(r["data_normalize"], Value::Null);
    assert!(!r.contains_key("dataset") && !r.contains_key("data_dir"));
    assert_eq!(r["model"]["input"], 4);
    assert_eq!(r["model"]["classes"], 2);
    // Training on it lowers the loss (a predictor of 0 has mean squared error ≈ 0.4 here).
    let (first, second) = (
        all[0]["train_loss"].as_f64().unwrap(),
        r["train_loss"].as_f64().unwrap(),
    );
    assert!(second < first && second < 0.4, "{first} → {second}");
    let record = stdout(&o).lines().last().unwrap().to_string() + "\n";

    // The analysis tools take the data file (and the loss) from the checkpoint's metadata.
    let o = run_tool(
        "llc",
        &[
            "--draws",
            "60",
            "--chains",
            "1",
            "--batch-size",
            "16",
            "--seed",
            "3",
            "--quiet",
        ],
        &record,
    );
    let l = &last(&o)["llc"];
    assert_eq!(l["loss"], "mse");
    assert_eq!(l["data_file"], data.display().to_string());
    assert!(l["llc"].as_f64().is_some_and(f64::is_finite), "{l:?}");

    let o = run_tool(
        "wbic",
        &[
            "--draws",
            "60",
            "--chains",
            "1",
            "--batch-size",
            "16",
            "--seed",
            "3",
            "--quiet",
        ],
        &record,
    );
    let w = &last(&o)["wbic"];
    assert_eq!(w["loss"], "mse");
    assert!(w["wbic"].as_f64().is_some_and(f64::is_finite), "{w:?}");

    // A ReLU MLP is piecewise linear: the exact trace applies to the mean squared error too, and
    // Hutchinson in f64 lands within a few standard errors of it.
    let o = run_tool(
        "hessian-trace",
        &["--exact", "--f64", "--full", "--quiet"],
        &record,
    );
    let h = last(&o);
    assert_eq!(h["hessian"]["data"]["loss"], "mse");
    assert_eq!(h["hessian"]["data"]["samples"], 160);
    let exact = h["hessian"]["trace"].as_f64().unwrap();
    assert!(exact > 0.0, "{h:?}");
    let o = run_tool(
        "hessian-trace",
        &[
            "--probes", "200", "--f64", "--full", "--seed", "4", "--quiet",
        ],
        &record,
    );
    let hh = last(&o);
    let (t, se) = (
        hh["hessian"]["trace"].as_f64().unwrap(),
        hh["hessian"]["trace_se"].as_f64().unwrap(),
    );
    assert!(
        (t - exact).abs() <= 4.0 * se,
        "Hutchinson {t} ± {se} vs exact {exact}"
    );
    // On the test split, named by --data.
    let mut c = tool("hessian-trace");
    c.arg("--data").arg(&data);
    c.args(["--exact", "--split", "test", "--full", "--quiet"]);
    let o = run_with_input(c, record.as_bytes());
    assert_eq!(last(&o)["hessian"]["data"]["samples"], 40);

    // switch continues the run with another optimiser; ngd-exact's sampled Fisher draws Gaussian
    // targets.
    let from = dir.join("sgd/epoch-0002.safetensors");
    let mut c = tool("switch");
    c.arg("--from").arg(&from);
    c.args(["--epochs", "3", "--quiet", "--out"])
        .arg(dir.join("switch"))
        .args(["--branch", "sgd", "--branch", "ngd-exact"]);
    let o = run(c);
    assert!(o.status.success(), "{}", stderr(&o));
    let rs = records(&o);
    assert_eq!(rs.len(), 2);
    for r in &rs {
        assert_eq!(r["loss"], "mse");
        assert_eq!(r["test_acc"], Value::Null);
        assert!(r["train_loss"].as_f64().is_some_and(f64::is_finite));
    }

    // --resume continues the run on the data file its checkpoint records (no --data), and a
    // changed data file would be a changed setting.
    let mut c = tool("train");
    c.arg("--init")
        .arg(&from)
        .args([
            "--resume",
            "--epochs",
            "3",
            "--batch-size",
            "16",
            "--lr",
            "0.05",
        ])
        .args(["--quiet", "--out"])
        .arg(dir.join("sgd"));
    let o = run(c);
    let r = last(&o);
    assert_eq!(
        (r["epoch"].as_u64(), r["loss"].as_str()),
        (Some(3), Some("mse"))
    );

    // --dataset for a checkpoint trained on a data file is refused, naming both.
    let o = run_tool(
        "llc",
        &[
            "--dataset",
            "mnist",
            "--draws",
            "5",
            "--quiet",
            from.to_str().unwrap(),
        ],
        "",
    );
    assert!(
        stdout(&o).contains("--dataset mnist: the checkpoint was trained on the data file"),
        "{}",
        stdout(&o)
    );

    // train with ngd-exact from scratch, and with the online NGD.
    for opt in ["ngd-exact", "ngd"] {
        let o = train_regression(&dir, &data, opt, &["--optimizer", opt]);
        let r = last(&o);
        assert!(
            r["test_loss"].as_f64().is_some_and(f64::is_finite),
            "{opt}: {r:?}"
        );
    }
}

#[test]
fn a_classification_file_trains_with_cross_entropy_and_measures() {
    let dir = scratch("data-file-classification");
    // Three classes by the sign pattern of two of six inputs, float64 inputs, int64 labels; no test
    // split (test_loss and test_acc are then null).
    let mut u = uniform(11);
    let n = 120;
    let x: Vec<f64> = (0..n * 6).map(|_| u()).collect();
    let y: Vec<i64> = x
        .chunks(6)
        .map(|r| match (r[0] > 0.0, r[1] > 0.0) {
            (true, true) => 0,
            (true, false) | (false, true) => 1,
            _ => 2,
        })
        .collect();
    let data = dir.join("cls.safetensors");
    let xb: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    write(
        &data,
        &[
            ("x", safetensors::Dtype::F64, vec![n, 6], xb),
            ("y", safetensors::Dtype::I64, vec![n], bytes_i64(&y)),
        ],
    );
    let mut c = tool("train");
    c.arg("--data").arg(&data);
    c.args([
        "--hidden",
        "8",
        "--epochs",
        "1",
        "--batch-size",
        "20",
        "--normalize",
        "0,0.5",
        "--quiet",
        "--out",
    ])
    .arg(dir.join("run"));
    let o = run(c);
    let r = last(&o);
    assert_eq!(r["loss"], "cross_entropy");
    assert_eq!(r["model"]["classes"], 3);
    assert_eq!(r["data_normalize"], "0,0.5");
    assert_eq!(r["test_loss"], Value::Null);
    assert_eq!(r["test_acc"], Value::Null);
    let record = stdout(&o).lines().last().unwrap().to_string() + "\n";
    let o = run_tool(
        "llc",
        &[
            "--draws",
            "40",
            "--chains",
            "1",
            "--batch-size",
            "20",
            "--quiet",
        ],
        &record,
    );
    let l = &last(&o)["llc"];
    assert_eq!(l["loss"], "cross_entropy");
    assert_eq!(l["data_normalize"], "0,0.5");
    assert!(l["llc"].as_f64().is_some_and(f64::is_finite), "{l:?}");
}

#[test]
fn bad_data_and_mismatched_losses_are_refused_in_one_line() {
    let dir = scratch("data-file-bad");
    let data = regression_file(&dir);
    // Float targets with cross-entropy.
    let o = train_regression(&dir, &data, "ce", &["--loss", "cross_entropy"]);
    assert_one_line_error(
        &o,
        &[
            "the targets `y` are floats (regression) but the loss is cross_entropy",
            "--loss mse",
        ],
    );
    // Integer labels (MNIST) with the mean squared error.
    let o = train_small(&dir.join("mnist-mse"), "1", &["--loss", "mse"]);
    assert_one_line_error(
        &o,
        &["the targets `y` are integer labels but the loss is mse"],
    );
    // --normalize needs a data file.
    let o = train_small(&dir.join("norm"), "1", &["--normalize", "0.5,0.5"]);
    assert_one_line_error(&o, &["--normalize applies to a --data file"]);
    // A NaN in x, named with the tensor and the file.
    let nan = dir.join("nan.safetensors");
    let mut xs = vec![0.5; 40];
    xs[13] = f64::NAN;
    write(
        &nan,
        &[
            ("x", safetensors::Dtype::F32, vec![10, 4], bytes_f32(&xs)),
            (
                "y",
                safetensors::Dtype::F32,
                vec![10],
                bytes_f32(&[0.0; 10]),
            ),
        ],
    );
    let o = train_regression(&dir, &nan, "nan", &[]);
    assert_one_line_error(
        &o,
        &[
            "nan.safetensors",
            "tensor `x`: value NaN at flat index 13 is not finite",
        ],
    );
    // Labels past a checkpoint's outputs: a 3-class model measured on labels up to 5.
    let cls = dir.join("cls6.safetensors");
    write(
        &cls,
        &[
            (
                "x",
                safetensors::Dtype::F32,
                vec![6, 4],
                bytes_f32(&[0.1; 24]),
            ),
            (
                "y",
                safetensors::Dtype::I64,
                vec![6],
                bytes_i64(&[0, 1, 2, 0, 1, 2]),
            ),
        ],
    );
    let mut c = tool("train");
    c.arg("--data").arg(&cls);
    c.args(["--hidden", "4", "--epochs", "1", "--quiet", "--out"])
        .arg(dir.join("cls3"));
    assert!(run(c).status.success());
    let six = dir.join("six.safetensors");
    write(
        &six,
        &[
            (
                "x",
                safetensors::Dtype::F32,
                vec![6, 4],
                bytes_f32(&[0.1; 24]),
            ),
            (
                "y",
                safetensors::Dtype::I64,
                vec![6],
                bytes_i64(&[0, 1, 5, 0, 1, 2]),
            ),
        ],
    );
    let ck = dir.join("cls3/epoch-0001.safetensors");
    let o = run_tool(
        "llc",
        &[
            "--data",
            six.to_str().unwrap(),
            "--draws",
            "10",
            "--batch-size",
            "3",
            "--quiet",
            ck.to_str().unwrap(),
        ],
        "",
    );
    assert!(!o.status.success());
    assert!(
        stdout(&o).contains("has 6 classes but the model mlp_1x4 has 3 outputs"),
        "{}{}",
        stdout(&o),
        stderr(&o)
    );
    // --data and --dataset together are a usage error.
    let o = run_tool(
        "train",
        &[
            "--data",
            "x.safetensors",
            "--dataset",
            "mnist",
            "--out",
            "o",
        ],
        "",
    );
    assert_eq!(o.status.code(), Some(2));
}

/// `datagen teacher` writes a deep linear network's outputs: the same command gives the same bytes,
/// the teacher's own weights have loss 0 on its noiseless data (measured by `hessian-trace` through
/// `--data`), `llc` measures at them, and `train` fits a student on the file.
#[test]
fn datagen_teacher_writes_data_its_teacher_fits_exactly() {
    let dir = scratch("datagen-teacher");
    let gen = |out: &str, teacher: &str| {
        run_tool(
            "datagen",
            &[
                "teacher",
                "--hidden",
                "4,4",
                "--activation",
                "identity",
                "--inputs",
                "5",
                "--outputs",
                "3",
                "--samples",
                "300",
                "--test-samples",
                "60",
                "--input-dist",
                "uniform:3",
                "--seed",
                "8",
                "--out",
                dir.join(out).to_str().unwrap(),
                "--teacher-out",
                dir.join(teacher).to_str().unwrap(),
            ],
            "",
        )
    };
    for (out, teacher) in [
        ("a.safetensors", "ta.safetensors"),
        ("b.safetensors", "tb.safetensors"),
    ] {
        let o = gen(out, teacher);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let a = std::fs::read(dir.join("a.safetensors")).unwrap();
    assert_eq!(a, std::fs::read(dir.join("b.safetensors")).unwrap());
    let text = String::from_utf8_lossy(&a[..a.len().min(2000)]).into_owned();
    // The settings, a JSON object in the metadata's `datagen` string (its quotes escaped).
    for key in [
        "\\\"seed\\\":8",
        "\\\"half_width\\\":3.0",
        "\\\"noise_sd\\\":0.0",
        "mlp_2x4_identity",
    ] {
        assert!(text.contains(key), "metadata lacks {key}: {text}");
    }
    let data = dir.join("a.safetensors");
    let teacher = dir.join("ta.safetensors");
    let o = run_tool(
        "hessian-trace",
        &[
            "--data",
            data.to_str().unwrap(),
            "--exact",
            "--f64",
            "--full",
            "--quiet",
            teacher.to_str().unwrap(),
        ],
        "",
    );
    let h = &last(&o)["hessian"];
    let loss = h["loss"].as_f64().unwrap();
    // Targets rounded to float32: the teacher's loss is the rounding's, ~1e-14 of y².
    assert!(loss < 1e-10, "teacher loss {loss}");
    assert_eq!(h["data"]["loss"], "mse");
    let o = run_tool(
        "llc",
        &[
            "--data",
            data.to_str().unwrap(),
            "--draws",
            "50",
            "--chains",
            "1",
            "--batch-size",
            "30",
            "--quiet",
            teacher.to_str().unwrap(),
        ],
        "",
    );
    assert!(last(&o)["llc"]["llc"].as_f64().is_some_and(f64::is_finite));
    let mut c = tool("train");
    c.arg("--data").arg(&data);
    c.args([
        "--model",
        "mlp_2x4_identity",
        "--epochs",
        "1",
        "--batch-size",
        "30",
        "--quiet",
        "--out",
    ])
    .arg(dir.join("student"));
    let r = last(&run(c));
    assert_eq!(r["model"]["input"], 5);
    assert!(r["test_loss"].as_f64().is_some_and(f64::is_finite));
    // Bad settings: one line.
    let o = run_tool(
        "datagen",
        &[
            "teacher",
            "--model",
            "lenet",
            "--out",
            dir.join("x").to_str().unwrap(),
        ],
        "",
    );
    assert_one_line_error(&o, &["a teacher is an MLP"]);
}

/// A closed form through the whole pipeline: linear regression y = Wx + b is a regular model, so its
/// learning coefficient is d/2 with d its parameter count. A noiseless teacher `mlp_0` (4 inputs, 2
/// outputs: d = 10) is its own empirical minimiser; `llc` with the mean squared error at nβ = n/ln n
/// (n = 10,000) lands within 5% of λ = 5 (measured: 5.06 ± 0.05 s.e.; for 6 inputs and 3 outputs
/// 10.59 ± 0.11 against 10.5).
#[test]
fn llc_of_a_linear_teacher_is_half_its_parameter_count() {
    let dir = scratch("datagen-linear");
    let (data, teacher) = (dir.join("lin.safetensors"), dir.join("teacher.safetensors"));
    let o = run_tool(
        "datagen",
        &[
            "teacher",
            "--model",
            "mlp_0",
            "--inputs",
            "4",
            "--outputs",
            "2",
            "--samples",
            "10000",
            "--input-dist",
            "uniform:1",
            "--seed",
            "1",
            "--out",
            data.to_str().unwrap(),
            "--teacher-out",
            teacher.to_str().unwrap(),
        ],
        "",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run_tool(
        "llc",
        &[
            "--data",
            data.to_str().unwrap(),
            "--nbeta",
            "dataset",
            "--epsilon",
            "1e-4",
            "--gamma",
            "1",
            "--draws",
            "10000",
            "--burn-in",
            "2000",
            "--chains",
            "8",
            "--batch-size",
            "1000",
            "--seed",
            "2",
            "--threads",
            "2",
            "--quiet",
            teacher.to_str().unwrap(),
        ],
        "",
    );
    let l = &last(&o)["llc"];
    let llc = l["llc"].as_f64().unwrap();
    assert_eq!(l["loss"], "mse");
    assert!((llc - 5.0).abs() <= 0.25, "λ̂ = {llc}, λ = d/2 = 5: {l}");
}

/// Images in a data file: uint8 x [n, 2, 16, 16] builds a LeNet for two-channel 16×16 inputs and the
/// labels' classes, normalised per channel; its exact Hessian trace runs on it.
#[test]
fn a_lenet_is_built_for_the_images_of_a_data_file() {
    let dir = scratch("data-file-lenet");
    let n = 24;
    let mut u = uniform(5);
    let x: Vec<u8> = (0..n * 2 * 16 * 16)
        .map(|_| ((u() + 1.0) * 127.5) as u8)
        .collect();
    let y: Vec<i64> = (0..n as i64).map(|i| i % 4).collect();
    let data = dir.join("images.safetensors");
    write(
        &data,
        &[
            ("x", safetensors::Dtype::U8, vec![n, 2, 16, 16], x),
            ("y", safetensors::Dtype::I64, vec![n], bytes_i64(&y)),
        ],
    );
    let mut c = tool("train");
    c.arg("--data").arg(&data);
    c.args([
        "--model",
        "lenet",
        "--extra-layers",
        "0",
        "--normalize",
        "0.5,0.4,0.25,0.3",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--quiet",
        "--out",
    ])
    .arg(dir.join("run"));
    let o = run(c);
    let r = last(&o);
    assert_eq!(r["model"]["input"], serde_json::json!([2, 16, 16]));
    assert_eq!(r["model"]["classes"], 4);
    assert_eq!(r["data_normalize"], "0.5,0.4,0.25,0.3");
    let record = stdout(&o).lines().last().unwrap().to_string() + "\n";
    let o = run_tool("hessian-trace", &["--exact", "--full", "--quiet"], &record);
    let h = &last(&o)["hessian"];
    assert!(h["trace"].as_f64().is_some_and(|t| t > 0.0), "{h}");
    assert_eq!(h["data"]["samples"], n);
}

/// A checkpoint written elsewhere (no metadata) with one output: refused as a cross-entropy model,
/// measured with `--loss mse`, and the loss `hessian-trace` reports is F.mse_loss of the network
/// computed here by hand (a ReLU MLP 4-3-1 from the file's own weights).
#[test]
fn a_foreign_scalar_regression_checkpoint_is_measured_with_loss_mse() {
    let dir = scratch("data-file-foreign");
    let ck = dir.join("foreign.safetensors");
    let value = |i: usize| ((i * 7 % 11) as f32 - 5.0) * 0.1;
    write_f32_safetensors(
        &ck,
        &[
            ("1.weight", vec![3, 4]),
            ("1.bias", vec![3]),
            ("3.weight", vec![1, 3]),
            ("3.bias", vec![1]),
        ],
        value,
    );
    let mut u = uniform(3);
    let n = 20;
    let x: Vec<f64> = (0..n * 4).map(|_| u()).collect();
    let y: Vec<f64> = (0..n).map(|_| u()).collect();
    let data = dir.join("scalar.safetensors");
    write(
        &data,
        &[
            ("x", safetensors::Dtype::F32, vec![n, 4], bytes_f32(&x)),
            ("y", safetensors::Dtype::F32, vec![n], bytes_f32(&y)),
        ],
    );
    let args = |extra: &[&'static str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "--data",
            data.to_str().unwrap(),
            "--exact",
            "--f64",
            "--full",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a.push("--quiet".into());
        a.push(ck.to_str().unwrap().into());
        a
    };
    let run_ht = |extra: &[&'static str]| {
        let a = args(extra);
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        run_tool("hessian-trace", &refs, "")
    };
    let o = run_ht(&[]);
    assert!(!o.status.success());
    assert!(
        stdout(&o).contains("1 class (cross-entropy needs at least 2"),
        "{}",
        stdout(&o)
    );
    let o = run_ht(&["--loss", "mse"]);
    let h = &last(&o)["hessian"];
    // By hand: the inputs and weights as float32, the arithmetic in f64.
    let xf: Vec<f64> = x.iter().map(|&v| v as f32 as f64).collect();
    let w = |i: usize| value(i) as f64;
    let mut sq = 0.0;
    for s in 0..n {
        let hidden: Vec<f64> = (0..3)
            .map(|r| (w(r) + (0..4).map(|c| w(r * 4 + c) * xf[s * 4 + c]).sum::<f64>()).max(0.0))
            .collect();
        let out = w(0) + (0..3).map(|c| w(c) * hidden[c]).sum::<f64>();
        sq += (out - y[s] as f32 as f64).powi(2);
    }
    let by_hand = sq / n as f64;
    let loss = h["loss"].as_f64().unwrap();
    assert!(
        (loss - by_hand).abs() <= 1e-12 * by_hand,
        "{loss} vs {by_hand}"
    );
    assert_eq!(h["data"]["loss"], "mse");
}

#[test]
fn eval_train_reports_the_training_set_as_the_test_set_is() {
    // A test split that is the training set itself: `--eval-train` must report exactly the test
    // split's loss and accuracy at every checkpoint (the same evaluation of the same samples), which
    // differ from the epoch's running train_loss (taken before each step).
    let dir = scratch("data-file-eval-train");
    let mut u = uniform(5);
    let n = 60;
    let x: Vec<f64> = (0..n * 4).map(|_| u()).collect();
    let y: Vec<i64> = x.chunks(4).map(|r| i64::from(r[0] + r[2] > 0.0)).collect();
    let data = dir.join("cls.safetensors");
    let xb = bytes_f32(&x);
    write(
        &data,
        &[
            ("x", safetensors::Dtype::F32, vec![n, 4], xb.clone()),
            ("y", safetensors::Dtype::I64, vec![n], bytes_i64(&y)),
            ("x_test", safetensors::Dtype::F32, vec![n, 4], xb),
            ("y_test", safetensors::Dtype::I64, vec![n], bytes_i64(&y)),
        ],
    );
    // The same training split with another test split: the same training run (the test split only
    // is evaluated), so the training set's numbers are those above and not this test split's.
    let other = dir.join("other.safetensors");
    let xo: Vec<f64> = (0..n * 4).map(|_| u()).collect();
    let yo: Vec<i64> = xo.chunks(4).map(|r| i64::from(r[1] > 0.0)).collect();
    write(
        &other,
        &[
            ("x", safetensors::Dtype::F32, vec![n, 4], bytes_f32(&x)),
            ("y", safetensors::Dtype::I64, vec![n], bytes_i64(&y)),
            (
                "x_test",
                safetensors::Dtype::F32,
                vec![n, 4],
                bytes_f32(&xo),
            ),
            ("y_test", safetensors::Dtype::I64, vec![n], bytes_i64(&yo)),
        ],
    );
    let train_on = |data: &Path, name: &str, extra: &[&str]| {
        let mut c = tool("train");
        c.arg("--data").arg(data);
        c.args([
            "--hidden",
            "8",
            "--epochs",
            "3",
            "--batch-size",
            "16",
            "--lr",
            "0.1",
            "--quiet",
            "--out",
        ])
        .arg(dir.join(name));
        c.args(extra);
        let o = run(c);
        assert!(o.status.success(), "{}", stderr(&o));
        records(&o)
    };
    let train = |name: &str, extra: &[&str]| train_on(&data, name, extra);
    let with = train("with", &["--eval-train"]);
    assert_eq!(with.len(), 3);
    for r in &with {
        assert_eq!(r["train_eval_loss"], r["test_loss"], "{r:?}");
        assert_eq!(r["train_acc"], r["test_acc"], "{r:?}");
        assert_ne!(r["train_eval_loss"], r["train_loss"], "{r:?}");
        let acc = r["train_acc"].as_f64().unwrap();
        assert!(
            (0.0..=1.0).contains(&acc) && (acc * n as f64).fract() == 0.0,
            "{acc}"
        );
    }
    // Without the flag the records have neither field, and the run's numbers are the same.
    let without = train("without", &[]);
    for (a, b) in with.iter().zip(&without) {
        assert!(!b.contains_key("train_acc") && !b.contains_key("train_eval_loss"));
        assert_eq!(a["train_loss"], b["train_loss"]);
        assert_eq!(a["test_loss"], b["test_loss"]);
    }
    let apart = train_on(&other, "other", &["--eval-train"]);
    for (a, b) in with.iter().zip(&apart) {
        assert_eq!(a["train_loss"], b["train_loss"]);
        assert_eq!(a["train_eval_loss"], b["train_eval_loss"]);
        assert_eq!(a["train_acc"], b["train_acc"]);
        assert_ne!(b["train_eval_loss"], b["test_loss"], "{b:?}");
    }
}
