//! Data streamed from disk (`--stream`): a streamed run is the in-memory run bit for bit (`train`'s
//! checkpoints and records, `llc`'s estimate), and a streamed run's memory stays bounded on a data
//! file many times its budget.
//!
//! One test per concern; the memory test reads the peak resident size of the `train` processes it
//! waits for (`getrusage(RUSAGE_CHILDREN)`), so it is the only test of this file that spawns a large
//! run.

mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};

use support::*;

/// A classification file: `n` samples of `features` uint8 or float32 values (a seeded LCG), labels
/// from a fixed rule on the first values (so a model can learn something), and a test split of 64.
/// Written row by row (the safetensors header by hand), so that this process never holds the file:
/// a child's peak resident size starts from its parent's at the fork.
fn classification_file(path: &Path, n: usize, features: usize, float: bool) {
    use std::io::Write;
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 33) as u8
    };
    let (dtype, size) = if float { ("F32", 4) } else { ("U8", 1) };
    let (xb, xtb) = (n * features * size, 64 * features * size);
    let offsets = [
        0,
        xb,
        xb + 8 * n,
        xb + 8 * n + xtb,
        xb + 8 * n + xtb + 8 * 64,
    ];
    let mut header = serde_json::json!({
        "x": {"dtype": dtype, "shape": [n, features], "data_offsets": [offsets[0], offsets[1]]},
        "y": {"dtype": "I64", "shape": [n], "data_offsets": [offsets[1], offsets[2]]},
        "x_test": {"dtype": dtype, "shape": [64, features], "data_offsets": [offsets[2], offsets[3]]},
        "y_test": {"dtype": "I64", "shape": [64], "data_offsets": [offsets[3], offsets[4]]},
    })
    .to_string()
    .into_bytes();
    while !header.len().is_multiple_of(8) {
        header.push(b' ');
    }
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    f.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
    f.write_all(&header).unwrap();
    for rows in [n, 64] {
        let mut labels = Vec::with_capacity(rows * 8);
        for _ in 0..rows {
            let raw: Vec<u8> = (0..features).map(|_| next()).collect();
            labels.extend(((raw[0] as i64 + raw[1] as i64) % 3).to_le_bytes());
            for &b in &raw {
                if float {
                    f.write_all(&(b as f32 / 64.0 - 2.0).to_le_bytes()).unwrap();
                } else {
                    f.write_all(&[b]).unwrap();
                }
            }
        }
        f.write_all(&labels).unwrap();
    }
    f.flush().unwrap();
}

fn train(data: &Path, out: &Path, epochs: &str, extra: &[&str]) -> std::process::Output {
    let mut c = tool("train");
    c.arg("--data").arg(data);
    c.args([
        "--hidden", "16", "--epochs", epochs, "--seed", "4", "--quiet", "--run", "r", "--out",
    ])
    .arg(out)
    .args(extra);
    run(c)
}

/// The records of a run without the fields that differ between runs by design (wall time and
/// the folder).
fn comparable(o: &std::process::Output) -> Vec<serde_json::Map<String, Value>> {
    assert!(o.status.success(), "{}", stderr(o));
    records(o)
        .into_iter()
        .map(|mut r| {
            for k in ["seconds", "checkpoint", "out_dir", "samples_per_second"] {
                r.remove(k);
            }
            r
        })
        .collect()
}

#[test]
fn a_streamed_run_is_the_in_memory_run() {
    let dir = scratch("stream-same");
    for (name, float, extra) in [
        ("bytes", false, &["--normalize", "0.5,0.25"][..]),
        (
            "floats",
            true,
            &["--optimizer", "adamw", "--save-every", "5"][..],
        ),
    ] {
        let data = dir.join(format!("{name}.safetensors"));
        classification_file(&data, 300, 12, float);
        let mem_out = dir.join(format!("{name}-mem"));
        let st_out = dir.join(format!("{name}-stream"));
        let extra = [extra, &["--batch-size", "32"]].concat();
        let mem = train(&data, &mem_out, "2", &extra);
        let st = train(&data, &st_out, "2", &[&extra[..], &["--stream"]].concat());
        assert_eq!(comparable(&mem), comparable(&st), "{name}: records");
        let files = |d: &PathBuf| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".safetensors"))
                .collect();
            v.sort();
            v
        };
        let names = files(&mem_out);
        assert!(names.len() >= 4, "{names:?}");
        assert_eq!(names, files(&st_out));
        for f in &names {
            assert_eq!(
                std::fs::read(mem_out.join(f)).unwrap(),
                std::fs::read(st_out.join(f)).unwrap(),
                "{name}: {f} streamed vs in memory"
            );
        }
        // llc on the final checkpoint: the same estimate streamed.
        let ck = mem_out.join("epoch-0002.safetensors");
        let llc = |extra: &[&str]| {
            let mut c = tool("llc");
            c.args([
                "--draws",
                "30",
                "--chains",
                "2",
                "--batch-size",
                "32",
                "--seed",
                "5",
                "--quiet",
            ])
            .args(extra)
            .arg(&ck);
            let o = run(c);
            assert!(o.status.success(), "{}", stderr(&o));
            let mut r = records(&o).pop().unwrap();
            let mut l = r.remove("llc").unwrap();
            // Wall times differ run to run.
            l.as_object_mut().unwrap().remove("seconds");
            l["diagnostics"]
                .as_object_mut()
                .unwrap()
                .remove("seconds_per_chain");
            l
        };
        let (a, b) = (llc(&[]), llc(&["--stream"]));
        assert!(a["llc"].as_f64().is_some_and(f64::is_finite), "{a}");
        assert_eq!(a, b, "{name}: llc streamed vs in memory");
    }
    // --stream without a data file is refused in one line.
    let o = train_small(&dir.join("idx"), "1", &["--stream"]);
    assert_one_line_error(&o, &["--stream", "data file"]);
}

/// The peak resident size (KiB) of the largest child process waited for so far.
fn children_max_rss_kib() -> i64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct it is given.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    assert_eq!(rc, 0);
    u.ru_maxrss
}

#[test]
fn a_streamed_run_stays_within_its_memory_budget() {
    // 256 MiB of float32 inputs: 65,536 samples of 1,024 values. Streamed, `train` must stay
    // within a budget of 96 MiB resident (the process with its BLAS buffers, a batch, one row);
    // read into memory the same run needs more than the file (the control that the measure sees it).
    const BUDGET_KIB: i64 = 96 * 1024;
    let dir = scratch("stream-budget");
    let data = dir.join("big.safetensors");
    classification_file(&data, 65_536, 1024, true);
    let size = std::fs::metadata(&data).unwrap().len();
    assert!(size > 256 << 20, "{size}");
    let before = children_max_rss_kib();
    // The whole set, one epoch in batches of 512: every row is read.
    let flags = ["--batch-size", "512"];
    let o = train(
        &data,
        &dir.join("streamed"),
        "1",
        &[&flags[..], &["--stream"]].concat(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let streamed = children_max_rss_kib();
    assert!(before < BUDGET_KIB, "an earlier child used {before} KiB");
    assert!(
        streamed < BUDGET_KIB,
        "the streamed run's peak resident size {streamed} KiB is over the {BUDGET_KIB} KiB budget"
    );
    let o = train(&data, &dir.join("memory"), "1", &flags);
    assert!(o.status.success(), "{}", stderr(&o));
    let in_memory = children_max_rss_kib();
    assert!(
        in_memory > (size / 1024) as i64,
        "in memory {in_memory} KiB, file {size} bytes"
    );
    eprintln!(
        "file {} MiB: peak resident {} MiB streamed, {} MiB in memory",
        size >> 20,
        streamed / 1024,
        in_memory / 1024
    );
}
