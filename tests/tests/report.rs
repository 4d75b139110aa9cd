//! End-to-end test of `report`: a table with Welch's t-test and figures from records.

mod support;

use support::*;

#[test]
fn table_and_curves_from_records() {
    let dir = scratch("report");
    let mut lines = String::new();
    // Two labels, three seeds, two epochs; "b" is higher by 5 on every seed.
    for seed in 1..=3 {
        for epoch in [1, 2] {
            for (opt, shift) in [("a", 0.0), ("b", 5.0)] {
                let v = 10.0 + seed as f64 + epoch as f64 + shift;
                lines += &format!(
                    "{{\"model\":{{\"name\":\"m\"}},\"optimizer\":{{\"name\":\"{opt}\"}},\"seed\":{seed},\"epoch\":{epoch},\"test_loss\":0.5,\"llc\":{{\"mean\":{v}}}}}\n"
                );
            }
        }
    }
    let input = dir.join("runs.jsonl");
    std::fs::write(&input, lines).unwrap();
    let mut c = tool("report");
    c.args([
        "table",
        "--metric",
        "/llc/mean",
        "--epochs",
        "1,2",
        "--baseline",
        "a",
        "--out",
    ])
    .arg(dir.join("t"))
    .arg(&input);
    let o = run(c);
    assert!(o.status.success(), "{}", stderr(&o));
    let md = std::fs::read_to_string(dir.join("t.md")).unwrap();
    // Per seed: mean over epochs 1 and 2 = 11.5 + seed (+5 for b): means 13.5 and 18.5, sd 1.
    assert!(md.contains("| m | a | 3 | 13.50 ± 1.00 |"), "{md}");
    assert!(md.contains("| m | b | 3 | 18.50 ± 1.00 |"), "{md}");
    assert!(md.contains("| 3/3 |"), "{md}");
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("t.json")).unwrap()).unwrap();
    let comp = &j["groups"]["m"]["comparisons"][0];
    // Welch: t = 5 / sqrt(1/3 + 1/3) = 6.1237, df = 4; scipy.stats.ttest_ind gives p = 0.0036022326.
    assert!((comp["welch_t"].as_f64().unwrap() - 6.123_724).abs() < 1e-5);
    assert!(
        (comp["p_two_sided"].as_f64().unwrap() - 0.003_602_232_6).abs() < 1e-9,
        "{comp}"
    );
    for ext in ["svg", "png"] {
        assert!(
            std::fs::metadata(dir.join(format!("t.{ext}")))
                .unwrap()
                .len()
                > 1000
        );
    }
    let mut c = tool("report");
    c.args(["curves", "--metric", "/llc/mean", "--out"])
        .arg(dir.join("c"))
        .arg(&input);
    let o = run(c);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("c.json")).unwrap()).unwrap();
    assert_eq!(j["curves"].as_array().unwrap().len(), 2);
    assert!(std::fs::metadata(dir.join("c.png")).unwrap().len() > 1000);
}

/// `best` prints a field of the record with the lowest metric at the chosen epochs, `mean` the mean;
/// both fail with one line when nothing qualifies. `table` groups by several pointers.
#[test]
fn best_mean_and_combined_groups() {
    let dir = scratch("report-best");
    let mut lines = String::new();
    for (damping, losses) in [(0.01, [0.9, 0.2]), (0.1, [0.3, 0.25]), (1.0, [0.1, 0.4])] {
        for (epoch, loss) in [1, 2].iter().zip(losses) {
            lines += &format!(
                "{{\"dataset\":\"mnist\",\"model\":{{\"name\":\"m\"}},\"variant\":\"v\",\"seed\":1,\"epoch\":{epoch},\"optimizer\":{{\"damping_value\":{damping}}},\"test_loss\":{loss}}}\n"
            );
        }
    }
    let input = dir.join("sweep.jsonl");
    std::fs::write(&input, lines).unwrap();
    let best = |extra: &[&str]| {
        let mut c = tool("report");
        c.args(["best", "--metric", "/test_loss"])
            .args(extra)
            .arg(&input);
        run(c)
    };
    let o = best(&["--epochs", "2", "--print", "/optimizer/damping_value"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "0.01\n");
    let o = best(&["--print", "/optimizer/damping_value"]);
    assert_eq!(stdout(&o), "1\n");
    let o = best(&["--epochs", "2", "--max", "--print", "/epoch"]);
    assert_eq!(stdout(&o), "2\n");
    let o = best(&["--epochs", "7"]);
    assert_one_line_error(&o, &["no record has a finite /test_loss at epochs 7"]);

    let mut c = tool("report");
    c.args(["mean", "--metric", "/test_loss", "--epochs", "1"])
        .arg(&input);
    let o = run(c);
    assert!(o.status.success(), "{}", stderr(&o));
    let m: f64 = stdout(&o).trim().parse().unwrap();
    assert!((m - (0.9 + 0.3 + 0.1) / 3.0).abs() < 1e-12, "{m}");

    let mut c = tool("report");
    c.args([
        "table",
        "--metric",
        "/test_loss",
        "--group",
        "/dataset",
        "--group",
        "/model/name",
        "--label",
        "/variant",
        "--epochs",
        "2",
        "--out",
    ])
    .arg(dir.join("t"))
    .arg(&input);
    let o = run(c);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("| mnist m | v |"), "{}", stdout(&o));
}

/// Figures name their axes in words, say what the error bars are, and `replot` redraws a figure
/// from the JSON alone, identically; `--band` draws each record's own error.
#[test]
fn figures_read_as_words_and_replot_from_json() {
    let dir = scratch("report-words");
    let mut lines = String::new();
    for seed in 1..=3 {
        for (opt, v) in [("sgd", 20.0), ("ngd", 30.0)] {
            lines += &format!(
                "{{\"model\":{{\"name\":\"m\"}},\"optimizer\":{{\"name\":\"{opt}\"}},\"seed\":{seed},\"epoch\":2,\"test_acc\":0.9,\"llc\":{{\"llc\":{},\"llc_sd\":0.5}}}}\n",
                v + seed as f64
            );
        }
    }
    let input = dir.join("runs.jsonl");
    std::fs::write(&input, lines).unwrap();
    let mut c = tool("report");
    c.args(["table", "--metric", "/llc/llc", "--out"])
        .arg(dir.join("t"))
        .arg(&input);
    let o = run(c);
    assert!(o.status.success(), "{}", stderr(&o));
    let svg = std::fs::read_to_string(dir.join("t.svg")).unwrap();
    assert!(svg.contains("LLC (local learning coefficient)"), "{svg}");
    assert!(svg.contains("error bars: ±1 sd over seeds"), "{svg}");
    assert!(svg.contains("mean over 3 seeds"), "{svg}");
    assert!(!svg.contains("/llc/llc"), "a pointer is left in the figure");
    std::fs::rename(dir.join("t.svg"), dir.join("t-first.svg")).unwrap();
    let mut c = tool("report");
    c.arg("replot").arg(dir.join("t.json"));
    let o = run(c);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(dir.join("t.svg")).unwrap(),
        svg,
        "replot draws another figure"
    );
    // Curves: test accuracy in %, the band from each record's own sd, and overrides of the words.
    let mut c = tool("report");
    c.args([
        "curves",
        "--metric",
        "/test_acc",
        "--x",
        "/seed",
        "--ylabel",
        "accuracy",
        "--out",
    ])
    .arg(dir.join("acc"))
    .arg(&input);
    let o = run(c);
    assert!(o.status.success(), "{}", stderr(&o));
    let svg = std::fs::read_to_string(dir.join("acc.svg")).unwrap();
    assert!(
        svg.contains("\naccuracy\n") && svg.contains("\n90.0\n"),
        "{svg}"
    );
    let mut c = tool("report");
    c.args([
        "curves",
        "--metric",
        "/llc/llc",
        "--x",
        "/seed",
        "--band",
        "/llc/llc_sd",
        "--out",
    ])
    .arg(dir.join("band"))
    .arg(&input);
    let o = run(c);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("band.json")).unwrap()).unwrap();
    assert_eq!(j["band"], "/llc/llc_sd");
    assert_eq!(j["curves"][0]["points"][0]["band"], 0.5);
    let svg = std::fs::read_to_string(dir.join("band.svg")).unwrap();
    assert!(svg.contains("bands: ±1 sd of the LLC over chains"), "{svg}");
    // Not a report JSON: one line naming the file.
    std::fs::write(dir.join("other.json"), "{\"a\": 1}").unwrap();
    let mut c = tool("report");
    c.arg("replot").arg(dir.join("other.json"));
    let o = run(c);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("other.json"), "{}", stderr(&o));
}

#[test]
fn several_metrics_share_a_figure_and_panels_stack_on_one_x_axis() {
    let dir = scratch("report-stack");
    // One run: accuracies at epochs 1-4, the LLC at epochs 2 and 4 only.
    let mut acc = String::new();
    let mut llc = String::new();
    for epoch in 1..=4 {
        let (tr, te) = (0.25 * epoch as f64, 0.1 * epoch as f64);
        acc += &format!("{{\"run\":\"g\",\"epoch\":{epoch},\"train_acc\":{tr},\"test_acc\":{te},\"test_loss\":1.5}}\n");
        if epoch % 2 == 0 {
            llc += &format!(
                "{{\"run\":\"g\",\"epoch\":{epoch},\"llc\":{{\"llc\":{},\"llc_sd\":0.5}}}}\n",
                10 * epoch
            );
        }
    }
    std::fs::write(dir.join("acc.jsonl"), acc).unwrap();
    std::fs::write(dir.join("llc.jsonl"), llc).unwrap();
    let curves = |out: &str, file: &str, args: &[&str]| {
        let mut c = tool("report");
        c.arg("curves")
            .args(args)
            .args(["--label", "/run", "--out"]);
        c.arg(dir.join(out)).arg(dir.join(file));
        run(c)
    };
    let o = curves(
        "acc",
        "acc.jsonl",
        &[
            "--metric",
            "/train_acc",
            "--metric",
            "/test_acc",
            "--ylabel",
            "accuracy (%)",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("acc.json")).unwrap()).unwrap();
    assert_eq!(j["metrics"], serde_json::json!(["/train_acc", "/test_acc"]));
    assert_eq!(j["ylabel"], "accuracy (%)");
    let c = j["curves"].as_array().unwrap();
    assert_eq!(c.len(), 2);
    assert_eq!(c[0]["label"], "training accuracy");
    assert_eq!(c[1]["label"], "test accuracy");
    assert_eq!(c[0]["points"][3]["mean"], 1.0);
    assert_eq!(c[1]["points"][1]["mean"], 0.2);
    let svg = std::fs::read_to_string(dir.join("acc.svg")).unwrap();
    assert!(
        svg.contains("\naccuracy (%)\n") && svg.contains("\n100.0\n"),
        "{svg}"
    );
    // Different units in one figure, and a band with several metrics, are refused in one line.
    let o = curves(
        "bad",
        "acc.jsonl",
        &["--metric", "/train_acc", "--metric", "/test_loss"],
    );
    assert_one_line_error(&o, &["/test_loss", "different units"]);
    let o = curves(
        "bad",
        "acc.jsonl",
        &[
            "--metric",
            "/train_acc",
            "--metric",
            "/test_acc",
            "--band",
            "/test_loss",
        ],
    );
    assert_one_line_error(&o, &["--band", "single --metric"]);
    let o = curves(
        "llc",
        "llc.jsonl",
        &["--metric", "/llc/llc", "--band", "/llc/llc_sd"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // Alone, the LLC's axis spans epochs 2-4; stacked under the accuracies it spans 1-4, so the tick
    // "1" is drawn in both panels.
    let ticks = |svg: &str, t: &str| svg.matches(&format!("\n{t}\n")).count();
    let alone = std::fs::read_to_string(dir.join("llc.svg")).unwrap();
    assert_eq!(ticks(&alone, "1"), 0, "{alone}");
    let mut c = tool("report");
    c.args(["stack", "--title", "Grokking", "--out"])
        .arg(dir.join("both"))
        .arg(dir.join("acc.json"))
        .arg(dir.join("llc.json"));
    let o = run(c);
    assert!(o.status.success(), "{}", stderr(&o));
    let svg = std::fs::read_to_string(dir.join("both.svg")).unwrap();
    assert_eq!(ticks(&svg, "1"), 2, "{svg}");
    assert_eq!(ticks(&svg, "4"), 2, "{svg}");
    for words in [
        "Grokking",
        "accuracy (%)",
        "LLC (local learning coefficient)",
        "test accuracy",
    ] {
        assert!(svg.contains(words), "{words} missing: {svg}");
    }
    assert!(dir.join("both.png").exists());
    // A file that is not a curves JSON is named.
    let mut c = tool("report");
    c.args(["stack", "--out"])
        .arg(dir.join("bad"))
        .arg(dir.join("acc.json"))
        .arg(dir.join("acc.jsonl"));
    let o = run(c);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("acc.jsonl"), "{}", stderr(&o));
}
