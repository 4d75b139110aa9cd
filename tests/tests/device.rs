//! `--device`: every tool that computes takes it; cpu and auto run on the CPU, and a device the build
//! or the tool cannot use is refused with one line naming the flag, before any work.

mod support;

use support::*;

const TOOLS: [&str; 5] = ["train", "switch", "llc", "wbic", "hessian-trace"];

#[test]
fn a_device_that_cannot_be_used_is_refused_naming_the_flag() {
    let out = scratch("device");
    for tool in TOOLS {
        for spec in ["tpu", "cuda:x"] {
            let mut c = tool_cmd(tool, &out);
            c.args(["--device", spec]);
            let o = run(c);
            assert_eq!(
                o.status.code(),
                Some(1),
                "{tool} --device {spec}: {}",
                stderr(&o)
            );
            assert_one_line_error(&o, &[tool, "--device", spec]);
        }
        // Without CUDA compiled in, or with it but no CUDA backend yet: refused either way, with
        // the reason and what to use instead.
        for spec in ["cuda", "cuda:1"] {
            let mut c = tool_cmd(tool, &out);
            c.args(["--device", spec]);
            assert_one_line_error(
                &run(c),
                &[
                    tool,
                    &format!("--device {spec}"),
                    &format!("{tool} runs on the CPU until the CUDA backend is implemented"),
                    "use --device cpu or auto",
                ],
            );
        }
    }
    assert!(
        std::fs::read_dir(&out).unwrap().next().is_none(),
        "a refused run wrote into its output folder"
    );
}

#[test]
fn cpu_and_auto_run() {
    for spec in ["cpu", "auto"] {
        let out = scratch(&format!("device-{spec}"));
        let trained = train_small(&out.join("run"), "1", &["--device", spec]);
        let o = &trained;
        assert!(o.status.success(), "train --device {spec}: {}", stderr(o));
        let o = run_tool(
            "hessian-trace",
            &[
                "--data-dir",
                small_data().to_str().unwrap(),
                "--device",
                spec,
                "--quiet",
            ],
            &stdout(o),
        );
        assert!(
            o.status.success(),
            "hessian-trace --device {spec}: {}",
            stderr(&o)
        );
        assert!(records(&o)[0].contains_key("hessian"));
        let o = run_tool(
            "llc",
            &[
                "--data-dir",
                small_data().to_str().unwrap(),
                "--device",
                spec,
                "--chains",
                "1",
                "--draws",
                "20",
                "--quiet",
            ],
            &stdout(&trained),
        );
        assert!(o.status.success(), "llc --device {spec}: {}", stderr(&o));
        assert!(records(&o)[0].contains_key("llc"));
    }
}

/// Every tool's `--help` says what `--device` accepts and what `auto` and `cuda` do today.
#[test]
fn help_says_what_the_devices_do() {
    for tool in TOOLS {
        let o = run_tool(tool, &["--help"], "");
        assert!(o.status.success(), "{tool} --help: {}", stderr(&o));
        // Whitespace normalised: clap wraps the help to the terminal's width.
        let text = stdout(&o).split_whitespace().collect::<Vec<_>>().join(" ");
        for words in [
            "--device",
            "cpu, cuda, cuda:N or auto",
            "auto is the CPU",
            "not yet implemented",
        ] {
            assert!(
                text.contains(words),
                "{tool} --help lacks '{words}':\n{text}"
            );
        }
    }
}

/// The tool with the arguments it needs to get past parsing (the device is checked first).
fn tool_cmd(tool: &str, out: &std::path::Path) -> std::process::Command {
    let mut c = support::tool(tool);
    match tool {
        "train" => {
            c.args(["--data-dir"])
                .arg(small_data())
                .arg("--out")
                .arg(out.join("t"));
        }
        "switch" => {
            c.args(["--data-dir"])
                .arg(small_data())
                .arg("--out")
                .arg(out.join("s"));
            c.args([
                "--from",
                "missing.safetensors",
                "--epochs",
                "2",
                "--branch",
                "sgd",
            ]);
        }
        _ => {
            c.args(["--data-dir"]).arg(small_data());
        }
    }
    c
}
