//! End-to-end tests of the record stream of the analysis tools (`llc`, `wbic`, `hessian-trace`) on
//! hostile input: a record whose checkpoint breaks the tool costs only itself, names substituted
//! into output paths stay inside the output folder, meaningless flags are refused up front, and a
//! closed stdout ends the stream quietly without losing what was written to files.

mod support;

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use support::{records, run_with_input, scratch, small_data, stderr, tool, write_f32_safetensors};

/// A checkpoint of a 784-h-c MLP with PyTorch's `nn.Sequential` names and no metadata (so that the
/// architecture is inferred from the shapes).
fn mlp_checkpoint(path: &Path, hidden: usize, classes: usize) {
    let shapes: [(&str, Vec<usize>); 4] = [
        ("1.weight", vec![hidden, 784]),
        ("1.bias", vec![hidden]),
        ("3.weight", vec![classes, hidden]),
        ("3.bias", vec![classes]),
    ];
    write_f32_safetensors(path, &shapes, |i| 0.05 * ((i as f32) * 0.37).sin());
}

/// `tool args…` with the fixture data, the default panic backtrace switched on (it must not show).
fn analysis(name: &str, args: &[&str]) -> Command {
    let mut c = tool(name);
    c.env("RUST_BACKTRACE", "1");
    c.arg("--data-dir").arg(small_data()).args(args);
    c
}

/// Fast settings of each tool (few draws), and the key of its result.
fn fast(name: &str) -> (Vec<&'static str>, &'static str) {
    match name {
        "llc" => (vec!["--draws", "5", "--threads", "1", "-q"], "llc"),
        "wbic" => (vec!["--draws", "5", "--threads", "1", "-q"], "wbic"),
        _ => (vec!["--samples", "64", "-q"], "hessian"),
    }
}

/// Runs `c` (stdin already set) and returns its output, killing it and failing if it runs longer than
/// `seconds`.
fn output_within(mut c: Command, seconds: u64) -> std::process::Output {
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let read = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = read(Box::new(child.stdout.take().unwrap()));
    let err = read(Box::new(child.stderr.take().unwrap()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running after {seconds} s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    std::process::Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

#[test]
fn a_checkpoint_that_breaks_a_tool_costs_only_its_own_record() {
    let dir = scratch("stream-isolation");
    let good = dir.join("good.safetensors");
    mlp_checkpoint(&good, 2, 10);
    // A hidden width of 0: `1.weight` of shape [0, 784]. It panicked every tool (exit 101, no
    // output at all); whether it is now refused by the reader or caught as a panic, only its own
    // record fails.
    let bad = dir.join("width0.safetensors");
    mlp_checkpoint(&bad, 0, 10);
    let input = format!(
        "{{\"checkpoint\":\"{}\",\"run\":\"a\"}}\n{{\"checkpoint\":\"{}\",\"run\":\"b\"}}\n{{\"type\":\"note\"}}\n{{\"checkpoint\":\"{}\",\"run\":\"c\"}}\n",
        good.display(),
        bad.display(),
        good.display()
    );
    for name in ["llc", "wbic", "hessian-trace"] {
        let (args, key) = fast(name);
        let out = run_with_input(analysis(name, &args), input.as_bytes());
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        let recs = records(&out);
        assert_eq!(recs.len(), 4, "{name}: one line out per line in: {err}");
        for i in [0, 3] {
            assert!(
                recs[i][key].get("error").is_none() && recs[i][key]["model"] == "mlp_1x2",
                "{name}: record {}: {}",
                i + 1,
                Value::Object(recs[i].clone())
            );
        }
        assert_eq!(recs[3]["run"], "c", "{name}: the record after the bad one");
        assert_eq!(
            recs[2],
            serde_json::json!({"type": "note"})
                .as_object()
                .unwrap()
                .clone()
        );
        let e = recs[1][key]["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: {}", Value::Object(recs[1].clone())));
        assert!(!e.is_empty());
        assert_eq!(recs[1]["run"], "b");
        // One line on stderr for the failure, naming the record and its checkpoint; no panic report.
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{name}: {err}");
        assert!(
            lines[0].starts_with(&format!("{name}: record 2 (run b): "))
                && lines[0].contains("width0.safetensors"),
            "{name}: {err}"
        );
        assert!(
            !err.contains("panicked at") && !err.contains("backtrace"),
            "{name}: {err}"
        );
    }
}

#[test]
fn a_checkpoint_name_cannot_move_the_density_file_out_of_its_folder() {
    let dir = scratch("stream-density-names");
    std::fs::create_dir_all(dir.join("out/good")).unwrap();
    let good = dir.join("good.safetensors");
    mlp_checkpoint(&good, 2, 10);
    // The stem of `...safetensors` is `..`: `out/{name}/d.json` was `out/../d.json`.
    let dots = dir.join("...safetensors");
    mlp_checkpoint(&dots, 2, 10);
    let pattern = dir.join("out/{name}/d.json");
    let out = support::run(analysis(
        "hessian-trace",
        &[
            "--samples",
            "64",
            "--density-steps",
            "5",
            "-q",
            "--density",
            pattern.to_str().unwrap(),
            dots.to_str().unwrap(),
            good.to_str().unwrap(),
        ],
    ));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let recs = records(&out);
    assert_eq!(recs.len(), 2);
    let e = recs[0]["hessian"]["error"].as_str().unwrap();
    assert!(
        e.contains("\"..\"") && e.contains("single file name"),
        "{e}"
    );
    assert!(!dir.join("d.json").exists(), "written outside out/");
    assert_eq!(
        recs[1]["hessian"]["density"]["file"],
        dir.join("out/good/d.json").display().to_string()
    );
    assert!(dir.join("out/good/d.json").is_file());
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("...safetensors") && err.contains("--density"),
        "{err}"
    );
}

#[test]
fn a_read_error_on_stdin_is_one_line_naming_its_cause_once() {
    for name in ["llc", "wbic", "hessian-trace"] {
        let mut c = analysis(name, &["-q"]);
        // Reading a directory fails with EISDIR on every read: the tools looped on it for ever.
        c.stdin(std::fs::File::open("/").unwrap());
        let out = output_within(c, 120);
        assert_eq!(out.status.code(), Some(1), "{name}");
        let os = std::io::Error::from_raw_os_error(21).to_string();
        assert_eq!(stderr(&out), format!("{name}: <stdin>: {os}\n"), "{name}");
        assert!(out.stdout.is_empty());
    }
}

/// Runs `name flags… checkpoint` and asserts a one-line error naming `needle`, exit status 1 (as for
/// every invalid flag value that clap itself accepts) and no record.
fn refused(name: &str, flags: &[&str], needle: &str, checkpoint: &Path) {
    let mut c = analysis(name, flags);
    c.arg(checkpoint);
    let out = output_within(with_no_stdin(c), 120);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{name} {flags:?}: {}",
        stderr(&out)
    );
    support::assert_one_line_error(&out, &[&format!("{name}: "), needle]);
    assert!(
        stderr(&out).starts_with(&format!("{name}: {needle}")),
        "{name} {flags:?}: {}",
        stderr(&out)
    );
    assert!(out.stdout.is_empty(), "{name} {flags:?}: no record");
}

fn with_no_stdin(mut c: Command) -> Command {
    c.stdin(Stdio::null());
    c
}

#[test]
fn meaningless_flag_values_are_refused_up_front() {
    let dir = scratch("stream-flags");
    let ck = dir.join("tiny.safetensors");
    mlp_checkpoint(&ck, 2, 10);
    for (flags, needle) in [
        (&["--eig-tol", "nan", "--top-k", "1"][..], "--eig-tol"),
        (&["--eig-tol", "0", "--top-k", "1"], "--eig-tol"),
        (
            &["--density-sigma", "nan", "--density", "d.json"],
            "--density-sigma",
        ),
        (
            &["--density-sigma", "0", "--density", "d.json"],
            "--density-sigma",
        ),
        (&["--rtol", "0.1", "--max-probes", "0"], "--max-probes"),
        (
            &["--rtol", "0.1", "--probes", "20", "--max-probes", "10"],
            "--max-probes",
        ),
        (&["--rtol", "inf"], "--rtol"),
        (&["--rtol", "nan"], "--rtol"),
        (&["--threads", "0"], "--threads"),
        (&["--samples", "0"], "--samples"),
        (&["--top-k", "5", "--max-lanczos-steps", "4"], "--top-k 5"),
        (&["--max-lanczos-steps", "0"], "--max-lanczos-steps"),
        (&["--density-runs", "0"], "--density-runs"),
    ] {
        refused("hessian-trace", flags, needle, &ck);
    }
    for (flags, needle) in [
        (&["--init-loss-batches", "0"][..], "--init-loss-batches"),
        (
            &["--init-loss", "full", "--init-loss-batches", "3"],
            "--init-loss-batches",
        ),
        (&["--batch-size", "0"], "--batch-size"),
        (&["--train-samples", "0"], "--train-samples"),
        (&["--epsilon", "nan"], "--epsilon"),
        (&["--gamma", "inf"], "--gamma"),
        (&["--nbeta", "nan"], "--nbeta"),
        (&["--threads", "0"], "--threads"),
        (&["--thin", "0"], "--thin"),
        (&["--burn-in", "18446744073709551615"], "--chains"),
        (&["--draws", "4000000000000000000"], "--chains"),
        (
            &[
                "--calibrate",
                "--calibrate-epsilon",
                "1e-6:1e-3:100000000000000",
            ],
            "--calibrate-epsilon",
        ),
    ] {
        refused("llc", flags, needle, &ck);
    }
    for (flags, needle) in [
        (&["--batch-size", "0"][..], "--batch-size"),
        (&["--train-samples", "0"], "--train-samples"),
        (&["--beta", "nan"], "--beta"),
        (&["--epsilon", "inf"], "--epsilon"),
        (&["--gamma", "nan"], "--gamma"),
        (&["--chains", "0"], "--chains"),
        (&["--draws", "4000000000000000000"], "--chains"),
    ] {
        refused("wbic", flags, needle, &ck);
    }
}

#[test]
fn one_chain_reports_no_spread_instead_of_nan() {
    let dir = scratch("stream-one-chain");
    let ck = dir.join("tiny.safetensors");
    mlp_checkpoint(&ck, 2, 10);
    for (name, what) in [("llc", "λ̂ = "), ("wbic", "wbic = ")] {
        let mut c = tool(name);
        c.arg("--data-dir").arg(small_data());
        c.args(["--draws", "5", "--chains", "1"]).arg(&ck);
        let out = output_within(with_no_stdin(c), 120);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains(what) && err.contains("(one chain: no spread)") && !err.contains("NaN"),
            "{name}: {err}"
        );
        assert_eq!(records(&out).len(), 1);
    }
}

/// Runs `c` with its stdout closed before it writes anything (`tool | head -0`), and returns its
/// exit status and stderr.
fn with_stdout_closed(mut c: Command) -> (std::process::ExitStatus, String) {
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    (out.status, stderr(&out))
}

#[test]
fn a_closed_stdout_ends_quietly_and_keeps_the_files_already_written() {
    let dir = scratch("stream-broken-pipe");
    let (a, b) = (dir.join("a.safetensors"), dir.join("b.safetensors"));
    mlp_checkpoint(&a, 2, 10);
    mlp_checkpoint(&b, 2, 10);
    for name in ["llc", "wbic"] {
        let trace = dir.join(format!("{name}-trace.jsonl"));
        let mut c = analysis(name, &["--draws", "4", "--chains", "1", "--trace-out"]);
        c.arg(&trace).arg(&a).arg(&b);
        let (status, err) = with_stdout_closed(c);
        assert!(status.success(), "{name}: {err}");
        assert!(
            !err.contains("panicked")
                && !err.contains("failed printing")
                && !err.contains("Broken pipe"),
            "{name}: {err}"
        );
        // The first record was computed before its line could not be written: its trace is kept.
        let lines = std::fs::read_to_string(&trace).unwrap();
        assert_eq!(lines.lines().count(), 4, "{name}: {lines}");
        assert!(lines.contains("a.safetensors"), "{name}");
    }
    let pattern = dir.join("{name}-density.json");
    let mut c = analysis(
        "hessian-trace",
        &["--samples", "64", "--density-steps", "5", "--density"],
    );
    c.arg(&pattern).arg(&a).arg(&b);
    let (status, err) = with_stdout_closed(c);
    assert!(status.success(), "{err}");
    assert!(
        !err.contains("panicked")
            && !err.contains("failed printing")
            && !err.contains("Broken pipe"),
        "{err}"
    );
    let d: Value =
        serde_json::from_slice(&std::fs::read(dir.join("a-density.json")).unwrap()).unwrap();
    assert_eq!(d["steps"], 5);
}
