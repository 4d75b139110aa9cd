//! `report`: turn JSON-lines runs into tables and figures.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use common::io::{read_records, Record};
use common::summary::{
    best_record, metric_mean, summarise_curves, summarise_table, text_at, TableSpec,
};
use serde_json::{json, Value};
use std::io::BufReader;
use std::path::PathBuf;
use std::process::ExitCode;

mod plot;

const LONG_ABOUT: &str = "\
Turn the JSON-lines records of many runs (train | llc | hessian-trace output) into tables and
figures. Fields are picked with JSON pointers (/llc/mean, /hessian/trace, /optimizer/name), so any
number any tool records can be summarised.

`table` groups records (e.g. by architecture), labels them (e.g. by optimiser), averages the metric
over the chosen epochs for each seed, and reports per group and label the mean ± sd over seeds, the
test loss, and against a baseline label Welch's t, its two-sided p-value and how many seeds beat the
baseline (paired by seed); seeds missing for a label are listed. It writes OUT.md, OUT.json and a bar
chart OUT.svg / OUT.png.

`curves` plots the metric against a number (the epoch, a hyperparameter) per label, mean over seeds
with a ±1 sd band, to OUT.svg / OUT.png and OUT.json.

`best` prints a field of the record where the metric is smallest (--max: largest), and `mean` the
mean of the metric over the records, one line on stdout each, for Makefiles that choose a setting
from runs (a damping by the lowest final test loss, a noise level from a measurement).

Examples:

  The paper's table: LLC averaged over epochs 19 and 20, NGD against SGD per architecture:
    $ report table --metric /llc/mean --epochs 19,20 --group /model/name --label /optimizer/name \\
        --baseline sgd --paper results/paper-values.json --out results/paper-table runs/table/*.jsonl

  The LLC and the Hessian trace against the epoch:
    $ report curves --metric /llc/mean --x /epoch --out results/trace-llc runs/trace/*.jsonl
    $ report curves --metric /hessian/trace --x /epoch --out results/trace-hessian runs/trace/*.jsonl

  The smoothing sweep, LLC against NGD's alpha on a log axis:
    $ report curves --metric /llc/mean --x /optimizer/alpha --log-x --out results/alpha runs/smooth/*.jsonl

  The damping of a sweep whose test loss at epoch 5 is lowest, and a mean over every epoch:
    $ report best --metric /test_loss --epochs 5 --print /optimizer/damping_value runs/damping/*.jsonl
    $ report mean --metric /ngd_shadow_difference runs/noise-level.jsonl";

#[derive(Parser, Debug)]
#[command(name = "report", version, about = "Tables and figures from JSON-lines runs", long_about = LONG_ABOUT)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Mean ± sd over seeds per group and label, Welch's t-test against a baseline, bar chart.
    Table {
        /// JSON pointer of the number to summarise.
        #[arg(long)]
        metric: String,
        /// Epochs averaged per seed, comma-separated [default: each seed's last epoch].
        #[arg(long, value_delimiter = ',')]
        epochs: Vec<u64>,
        /// JSON pointer(s) of the grouping field (one table block per value; repeat to combine).
        #[arg(long, default_values_t = ["/model/name".to_string()])]
        group: Vec<String>,
        /// JSON pointer(s) of the label (repeat to combine fields).
        #[arg(long, default_values_t = ["/optimizer/name".to_string()])]
        label: Vec<String>,
        /// The label the others are compared with.
        #[arg(long, default_value = "sgd")]
        baseline: String,
        /// JSON file of the paper's values, {group: {label: "mean ± sd"}}, shown beside ours.
        #[arg(long)]
        paper: Option<PathBuf>,
        /// Chart title [default: the metric].
        #[arg(long)]
        title: Option<String>,
        /// Output path without extension (writes .md, .json, .svg, .png).
        #[arg(long)]
        out: PathBuf,
        /// JSON-lines files of records.
        files: Vec<PathBuf>,
    },
    /// The metric against x per label: mean over seeds with a ±1 sd band.
    Curves {
        #[arg(long)]
        metric: String,
        /// JSON pointer of the x value.
        #[arg(long, default_value = "/epoch")]
        x: String,
        #[arg(long, default_values_t = ["/optimizer/name".to_string()])]
        label: Vec<String>,
        /// Logarithmic x axis (for hyperparameter sweeps).
        #[arg(long)]
        log_x: bool,
        #[arg(long)]
        title: Option<String>,
        /// Output path without extension (writes .json, .svg, .png).
        #[arg(long)]
        out: PathBuf,
        files: Vec<PathBuf>,
    },
    /// Print a field of the record with the smallest (or largest) metric.
    Best {
        /// JSON pointer of the number compared.
        #[arg(long)]
        metric: String,
        /// Only records of these epochs, comma-separated [default: every record].
        #[arg(long, value_delimiter = ',')]
        epochs: Vec<u64>,
        /// The largest instead of the smallest.
        #[arg(long)]
        max: bool,
        /// JSON pointer of the field printed [default: the whole record].
        #[arg(long)]
        print: Option<String>,
        /// JSON-lines files of records [default: stdin].
        files: Vec<PathBuf>,
    },
    /// Print the mean of a metric over the records.
    Mean {
        /// JSON pointer of the number averaged.
        #[arg(long)]
        metric: String,
        /// Only records of these epochs, comma-separated [default: every record].
        #[arg(long, value_delimiter = ',')]
        epochs: Vec<u64>,
        /// JSON-lines files of records [default: stdin].
        files: Vec<PathBuf>,
    },
}

/// "at epochs 5, 6" or "" for the error messages of `best` and `mean`.
fn at_epochs(epochs: &[u64]) -> String {
    if epochs.is_empty() {
        String::new()
    } else {
        let e: Vec<String> = epochs.iter().map(u64::to_string).collect();
        format!(" at epochs {}", e.join(", "))
    }
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("report: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(files: &[PathBuf]) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    if files.is_empty() {
        for r in read_records(std::io::stdin().lock()) {
            out.push(r?);
        }
    }
    for f in files {
        let file = std::fs::File::open(f).with_context(|| f.display().to_string())?;
        for r in read_records(BufReader::new(file)) {
            out.push(r.with_context(|| f.display().to_string())?);
        }
    }
    Ok(out)
}

fn run(args: Args) -> Result<()> {
    match args.command {
        Command::Best {
            metric,
            epochs,
            max,
            print,
            files,
        } => {
            let records = load(&files)?;
            let Some(r) = best_record(&records, &metric, &epochs, max) else {
                bail!(
                    "no record has a finite {metric}{} ({} records read)",
                    at_epochs(&epochs),
                    records.len()
                );
            };
            match print {
                None => println!("{}", serde_json::to_string(r)?),
                Some(p) => match text_at(r, &p) {
                    Some(t) => println!("{t}"),
                    None => bail!("the chosen record has no {p}"),
                },
            }
            return Ok(());
        }
        Command::Mean {
            metric,
            epochs,
            files,
        } => {
            let records = load(&files)?;
            let Some((m, _)) = metric_mean(&records, &metric, &epochs) else {
                bail!(
                    "no record has a finite {metric}{} ({} records read)",
                    at_epochs(&epochs),
                    records.len()
                );
            };
            println!("{m}");
            return Ok(());
        }
        _ => plot::register_font()?,
    }
    match args.command {
        Command::Best { .. } | Command::Mean { .. } => unreachable!("handled above"),
        Command::Table {
            metric,
            epochs,
            group,
            label,
            baseline,
            paper,
            title,
            out,
            files,
        } => {
            let records = load(&files)?;
            let spec = TableSpec {
                metric: metric.clone(),
                group,
                label,
                epochs,
                baseline,
            };
            let table = summarise_table(&records, &spec);
            let paper: Option<Value> = paper
                .map(|p| -> Result<Value> {
                    serde_json::from_slice(
                        &std::fs::read(&p).with_context(|| p.display().to_string())?,
                    )
                    .with_context(|| p.display().to_string())
                })
                .transpose()?;
            if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
            }
            let md = table.to_markdown(paper.as_ref());
            common::io::atomic_write(&out.with_extension("md"), md.as_bytes())?;
            let mut j = table.to_json();
            if let Some(p) = paper {
                j["paper"] = p;
            }
            common::io::atomic_write(
                &out.with_extension("json"),
                serde_json::to_string_pretty(&j)?.as_bytes(),
            )?;
            plot::bar_chart(&table, title.as_deref().unwrap_or(&metric), &metric, &out)?;
            print!("{md}");
        }
        Command::Curves {
            metric,
            x,
            label,
            log_x,
            title,
            out,
            files,
        } => {
            let records = load(&files)?;
            let mut curves = summarise_curves(&records, &metric, &x, &label);
            if log_x {
                for c in curves.iter_mut() {
                    let dropped: Vec<f64> = c
                        .points
                        .iter()
                        .filter(|p| p.0 <= 0.0)
                        .map(|p| p.1)
                        .collect();
                    if !dropped.is_empty() {
                        eprintln!(
                            "report: {}: {} point(s) at x <= 0 left off the log axis (values {:?}; they are in the JSON)",
                            c.label,
                            dropped.len(),
                            dropped
                        );
                    }
                }
            }
            let plotted: Vec<common::summary::Curve> = curves
                .iter()
                .map(|c| common::summary::Curve {
                    label: c.label.clone(),
                    points: c
                        .points
                        .iter()
                        .filter(|p| !log_x || p.0 > 0.0)
                        .copied()
                        .collect(),
                })
                .collect();
            if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
            }
            let j = json!({
                "metric": metric, "x": x, "label_by": label,
                "curves": curves.iter().map(|c| json!({
                    "label": c.label,
                    "points": c.points.iter().map(|p| json!({"x": p.0, "mean": p.1, "sd": p.2, "n": p.3})).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            });
            common::io::atomic_write(
                &out.with_extension("json"),
                serde_json::to_string_pretty(&j)?.as_bytes(),
            )?;
            plot::line_chart(
                &plotted,
                title.as_deref().unwrap_or(&metric),
                &x,
                &metric,
                log_x,
                &out,
            )?;
            eprintln!("report: wrote {}.{{json,svg,png}}", out.display());
        }
    }
    Ok(())
}
