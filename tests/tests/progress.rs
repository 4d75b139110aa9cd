//! End-to-end test of progress reports: plain lines on stderr when it is not a terminal, nothing
//! with --quiet, and stdout carrying the same records either way.

mod support;

use support::*;

/// The records without their wall times (the only fields that differ between two runs).
fn without_seconds(o: &std::process::Output) -> Vec<serde_json::Map<String, serde_json::Value>> {
    let mut rs = records(o);
    for r in rs.iter_mut() {
        r.remove("seconds");
        if let Some(serde_json::Value::Object(l)) = r.get_mut("llc") {
            l.remove("seconds");
            if let Some(serde_json::Value::Object(d)) = l.get_mut("diagnostics") {
                d.remove("seconds_per_chain");
            }
        }
    }
    rs
}

#[test]
fn plain_progress_lines_on_stderr_and_records_unchanged_on_stdout() {
    let dir = scratch("progress");
    let train = |out: &str, quiet: bool| {
        let mut c = tool("train");
        c.args(["--data-dir"]).arg(small_data());
        c.args(["--hidden", "32", "--epochs", "2", "--run", "r", "--out"])
            .arg(dir.join(out));
        if quiet {
            c.arg("--quiet");
        }
        // A report every step: the fixture's epochs are far shorter than the default 10 s.
        c.env("NGD_SLT_PROGRESS_SECONDS", "0");
        run(c)
    };
    let loud = train("loud", false);
    assert!(loud.status.success(), "{}", stderr(&loud));
    let err = stderr(&loud);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("train r: epoch "))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("train r: epoch 1/2: ") && l.contains(" steps (100%), loss ")),
        "{err}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("train r: epoch 2/2: ")),
        "{err}"
    );
    assert!(
        !err.contains('\r'),
        "a bar was drawn on a non-terminal: {err:?}"
    );
    let quiet = train("quiet", true);
    assert!(quiet.status.success(), "{}", stderr(&quiet));
    assert_eq!(stderr(&quiet), "", "--quiet printed something");
    // stdout: records only, the same ones with and without progress (up to the paths and times).
    let strip = |o: &std::process::Output, name: &str| {
        without_seconds(o)
            .into_iter()
            .map(|mut r| {
                let ck = r["checkpoint"].as_str().unwrap().replace(name, "X");
                r.insert("checkpoint".into(), ck.into());
                r
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(stdout(&loud).lines().count(), 2);
    assert_eq!(strip(&loud, "loud"), strip(&quiet, "quiet"));

    // llc: the SGLD steps of each estimate, the same way.
    let mut c = tool("llc");
    c.args(["--data-dir"]).arg(small_data());
    c.args(["--chains", "2", "--draws", "50", "--seed", "1"]);
    c.env("NGD_SLT_PROGRESS_SECONDS", "0");
    let o = run_with_input(c, stdout(&quiet).as_bytes());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("llc: 2 chain(s) x 50 draws: ") && stderr(&o).contains("SGLD steps ("),
        "{}",
        stderr(&o)
    );
    let mut c = tool("llc");
    c.args(["--data-dir"]).arg(small_data());
    c.args(["--chains", "2", "--draws", "50", "--seed", "1", "--quiet"]);
    c.env("NGD_SLT_PROGRESS_SECONDS", "0");
    let q = run_with_input(c, stdout(&quiet).as_bytes());
    assert!(q.status.success(), "{}", stderr(&q));
    assert_eq!(stderr(&q), "");
    assert_eq!(without_seconds(&o), without_seconds(&q));
}
