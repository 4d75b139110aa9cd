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

mod labels;
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

Figures label their axes in words (LLC (local learning coefficient), Tr(H), test loss, test
accuracy (%)) for the pointers the tools write; --ylabel / --xlabel / --title name any other.
`replot` redraws the figure of a table or curves JSON written by `report`, without the records.

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

  Redraw a committed figure from its JSON:
    $ report replot results/full-seeds1-5/paper-table.json

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
        #[command(flatten)]
        words: Words,
        /// Output path without extension (writes .md, .json, .svg, .png).
        #[arg(long)]
        out: PathBuf,
        /// JSON-lines files of records.
        files: Vec<PathBuf>,
    },
    /// The metric against x per label: mean over seeds with a ±1 sd band.
    Curves {
        /// JSON pointer of the number plotted; repeat for several metrics of the same unit in one
        /// figure (e.g. /train_acc and /test_acc), each curve then named by its metric.
        #[arg(long, required = true)]
        metric: Vec<String>,
        /// JSON pointer of the x value.
        #[arg(long, default_value = "/epoch")]
        x: String,
        #[arg(long, default_values_t = ["/optimizer/name".to_string()])]
        label: Vec<String>,
        /// Logarithmic x axis (for hyperparameter sweeps).
        #[arg(long)]
        log_x: bool,
        /// JSON pointer of each record's own error (e.g. /llc/llc_sd, the sd over chains), drawn as
        /// the band instead of the sd over seeds [default: the sd over seeds].
        #[arg(long)]
        band: Option<String>,
        #[command(flatten)]
        words: Words,
        /// Output path without extension (writes .json, .svg, .png).
        #[arg(long)]
        out: PathBuf,
        files: Vec<PathBuf>,
    },
    /// Stack the figures of curves JSONs that `report curves` wrote into one figure, one panel
    /// each, top to bottom, on a shared x axis (e.g. accuracies and the LLC against the epoch).
    Stack {
        /// Title above the panels [default: none].
        #[arg(long)]
        title: Option<String>,
        /// Output path without extension (writes .svg, .png).
        #[arg(long)]
        out: PathBuf,
        /// The curves JSON files, top panel first.
        #[arg(required = true)]
        json: Vec<PathBuf>,
    },
    /// Redraw the figure of a table or curves JSON that `report` wrote (OUT.svg / OUT.png).
    Replot {
        /// The JSON file (`table`'s or `curves`'s).
        json: PathBuf,
        /// Output path without extension [default: the JSON's path without .json].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Logarithmic x axis (curves).
        #[arg(long)]
        log_x: bool,
        #[command(flatten)]
        words: Words,
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

/// The words of a figure that can be given instead of the defaults.
#[derive(clap::Args, Debug, Clone, Default)]
struct Words {
    /// Title [default: the metric in words and the epochs].
    #[arg(long)]
    title: Option<String>,
    /// Label of the y axis [default: the metric in words, e.g. "LLC (local learning coefficient)"].
    #[arg(long)]
    ylabel: Option<String>,
    /// Label of the x axis [default: the x (curves) or group (table) pointer in words].
    #[arg(long)]
    xlabel: Option<String>,
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
    common::cli::run_main("report", common::cli::ClosedStdout::Quiet, || {
        run(Args::parse())
    })
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
            words,
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
            create_parent(&out)?;
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
            if table.cells.is_empty() {
                bail!("nothing to plot: no record has the metric {metric}");
            }
            let (set, texts) = table_figure(&j, &words)?;
            plot::bar_chart(&set, &texts, &out)?;
            print!("{md}");
        }
        Command::Curves {
            metric,
            x,
            label,
            log_x,
            band,
            words,
            out,
            files,
        } => {
            let records = load(&files)?;
            let (curves, bands) = metric_curves(&records, &metric, &x, &label, band.as_deref())?;
            create_parent(&out)?;
            let mut j = json!({
                "metric": metric[0], "x": x, "label_by": label,
                "curves": curves.iter().map(|c| {
                    let band_of = |xv: f64| bands.as_ref().and_then(|bs| {
                        bs.iter().find(|b| b.label == c.label)?.points.iter().find(|p| p.0 == xv).map(|p| p.1)
                    });
                    json!({
                        "label": c.label,
                        "points": c.points.iter().map(|p| {
                            let mut pt = json!({"x": p.0, "mean": p.1, "sd": p.2, "n": p.3});
                            if band.is_some() {
                                pt["band"] = json!(band_of(p.0));
                            }
                            pt
                        }).collect::<Vec<_>>(),
                    })
                }).collect::<Vec<_>>(),
            });
            if let Some(b) = &band {
                j["band"] = json!(b);
            }
            if metric.len() > 1 {
                j["metrics"] = json!(metric);
            }
            // The words given are kept, so that `replot` and `stack` draw the same figure.
            for (key, given) in [
                ("title", &words.title),
                ("ylabel", &words.ylabel),
                ("xlabel", &words.xlabel),
            ] {
                if let Some(w) = given {
                    j[key] = json!(w);
                }
            }
            common::io::atomic_write(
                &out.with_extension("json"),
                serde_json::to_string_pretty(&j)?.as_bytes(),
            )?;
            let (curves, texts) = curves_figure(&j, log_x, &words)?;
            plot::line_chart(&curves, &texts, log_x, &out)?;
            eprintln!("report: wrote {}.{{json,svg,png}}", out.display());
        }
        Command::Stack { title, out, json } => {
            let mut panels = Vec::new();
            for path in &json {
                let j: Value = serde_json::from_slice(
                    &std::fs::read(path).with_context(|| path.display().to_string())?,
                )
                .with_context(|| path.display().to_string())?;
                if j.get("curves").is_none() {
                    bail!("{}: not a curves JSON (no \"curves\")", path.display());
                }
                let (curves, texts) = curves_figure(&j, false, &Words::default())
                    .with_context(|| path.display().to_string())?;
                panels.push((curves, texts));
            }
            create_parent(&out)?;
            plot::stacked_line_charts(&panels, title.as_deref(), &out)?;
            eprintln!("report: wrote {}.{{svg,png}}", out.display());
        }
        Command::Replot {
            json: path,
            out,
            log_x,
            words,
        } => {
            let j: Value = serde_json::from_slice(
                &std::fs::read(&path).with_context(|| path.display().to_string())?,
            )
            .with_context(|| path.display().to_string())?;
            let out = out.unwrap_or_else(|| path.with_extension(""));
            create_parent(&out)?;
            if j.get("groups").is_some() {
                let (set, texts) =
                    table_figure(&j, &words).with_context(|| path.display().to_string())?;
                plot::bar_chart(&set, &texts, &out)?;
            } else if j.get("curves").is_some() {
                let (curves, texts) =
                    curves_figure(&j, log_x, &words).with_context(|| path.display().to_string())?;
                plot::line_chart(&curves, &texts, log_x, &out)?;
            } else {
                bail!(
                    "{}: neither a table (no \"groups\") nor curves (no \"curves\") written by report",
                    path.display()
                );
            }
            eprintln!("report: wrote {}.{{svg,png}}", out.display());
        }
    }
    Ok(())
}

fn create_parent(out: &std::path::Path) -> Result<()> {
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    }
    Ok(())
}

/// A JSON field holding one pointer or a list of them (older tables wrote `group_by` as a string).
fn pointers(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(String::from))
            .collect(),
        _ => Vec::new(),
    }
}

/// A number of the JSON, NaN where it is null (serde_json writes NaN as null).
fn num(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

/// The bars and words of a table's figure, from the table's JSON (what `table` writes).
fn table_figure(j: &Value, words: &Words) -> Result<(plot::BarSet, plot::Texts)> {
    let metric = j["metric"]
        .as_str()
        .context("no \"metric\" in the table JSON")?;
    let groups = j["groups"]
        .as_object()
        .context("\"groups\" is not an object")?;
    let mut set = plot::BarSet::default();
    for (g, gv) in groups {
        set.groups.push(g.clone());
        for (l, c) in gv["labels"].as_object().into_iter().flatten() {
            set.labels.push(l.clone());
            let n = c["n"].as_u64().unwrap_or(0) as usize;
            set.bars.insert(
                (g.clone(), l.clone()),
                plot::Bar {
                    mean: num(c, "mean"),
                    err: num(c, "sd"),
                    n,
                },
            );
        }
    }
    set.labels.sort();
    set.labels.dedup();
    if set.bars.is_empty() {
        bail!("nothing to plot: no bars in the table");
    }
    let q = labels::quantity(metric);
    let epochs: Vec<u64> = j["epochs_averaged"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .collect();
    let seeds = labels::seeds_phrase(set.bars.values().map(|b| b.n));
    let per_seed = if epochs.len() > 1 {
        format!(
            " (each seed: the mean over {})",
            labels::epochs_phrase(&epochs)
        )
    } else {
        String::new()
    };
    let note = if set.bars.values().all(|b| b.n <= 1) {
        format!("Bars: one seed each{per_seed}; no error bars.")
    } else {
        format!("Bars: mean over {seeds}{per_seed}; error bars: ±1 sd over seeds.")
    };
    let texts = plot::Texts {
        title: words
            .title
            .clone()
            .unwrap_or_else(|| format!("{} at {}", q.short, labels::epochs_phrase(&epochs))),
        x_label: words
            .xlabel
            .clone()
            .unwrap_or_else(|| labels::names(&pointers(j.get("group_by")))),
        y_label: words.ylabel.clone().unwrap_or(q.label),
        legend_title: labels::names(&pointers(j.get("label_by"))),
        note,
        y_scale: q.scale,
    };
    Ok((set, texts))
}

/// The curves and words of a curves figure, from the curves JSON (what `curves` writes). Points at
/// x ≤ 0 are left off a log axis (said on stderr; they stay in the JSON).
/// The curves of each metric per label (and the band's, for one metric). With several metrics
/// (which must share a unit: the figure has one y axis) each curve is named by its metric, and by
/// its label too where the records have more than one.
fn metric_curves(
    records: &[Record],
    metrics: &[String],
    x: &str,
    label: &[String],
    band: Option<&str>,
) -> Result<(
    Vec<common::summary::Curve>,
    Option<Vec<common::summary::Curve>>,
)> {
    if metrics.len() == 1 {
        let curves = summarise_curves(records, &metrics[0], x, label);
        let bands = band.map(|b| summarise_curves(records, b, x, label));
        return Ok((curves, bands));
    }
    if band.is_some() {
        bail!("--band takes a single --metric (it is the error of that metric)");
    }
    let scale = labels::quantity(&metrics[0]).scale;
    if let Some(m) = metrics[1..]
        .iter()
        .find(|m| labels::quantity(m).scale != scale)
    {
        bail!(
            "--metric {} and {m} are shown in different units; one figure has one y axis",
            metrics[0]
        );
    }
    let mut curves = Vec::new();
    for m in metrics {
        let short = labels::quantity(m).short;
        let mine = summarise_curves(records, m, x, label);
        let single = mine.len() == 1;
        curves.extend(mine.into_iter().map(|mut c| {
            c.label = if single {
                short.clone()
            } else {
                format!("{short} · {}", c.label)
            };
            c
        }));
    }
    Ok((curves, None))
}

fn curves_figure(
    j: &Value,
    log_x: bool,
    words: &Words,
) -> Result<(Vec<common::summary::Curve>, plot::Texts)> {
    let metric = j["metric"]
        .as_str()
        .context("no \"metric\" in the curves JSON")?;
    let x = j["x"].as_str().unwrap_or("/epoch");
    let band = j.get("band").and_then(Value::as_str);
    let mut curves = Vec::new();
    for c in j["curves"].as_array().context("\"curves\" is not a list")? {
        let label = c["label"].as_str().unwrap_or_default().to_string();
        let mut points = Vec::new();
        let mut dropped = Vec::new();
        for p in c["points"].as_array().into_iter().flatten() {
            let (xv, mean) = (num(p, "x"), num(p, "mean"));
            let err = if band.is_some() {
                num(p, "band")
            } else {
                num(p, "sd")
            };
            if log_x && xv <= 0.0 {
                dropped.push(mean);
                continue;
            }
            points.push((xv, mean, err, p["n"].as_u64().unwrap_or(0) as usize));
        }
        if !dropped.is_empty() {
            eprintln!(
                "report: {label}: {} point(s) at x <= 0 left off the log axis (values {dropped:?}; they are in the JSON)",
                dropped.len()
            );
        }
        curves.push(common::summary::Curve { label, points });
    }
    let metrics: Vec<&str> = match j.get("metrics").and_then(Value::as_array) {
        Some(ms) => ms.iter().filter_map(Value::as_str).collect(),
        None => vec![metric],
    };
    let mut qy = labels::quantity(metric);
    if metrics.len() > 1 {
        let qs: Vec<labels::Quantity> = metrics.iter().map(|m| labels::quantity(m)).collect();
        qy.label = qs
            .iter()
            .map(|q| q.label.as_str())
            .collect::<Vec<_>>()
            .join(" / ");
        qy.short = qs
            .iter()
            .map(|q| q.short.as_str())
            .collect::<Vec<_>>()
            .join(" and ");
    }
    let qx = labels::quantity(x);
    // A word given now, else the one the JSON kept.
    let given = |now: &Option<String>, key: &str| {
        now.clone()
            .or_else(|| j.get(key).and_then(Value::as_str).map(str::to_string))
    };
    let ns = curves.iter().flat_map(|c| c.points.iter().map(|p| p.3));
    let seeds = labels::seeds_phrase(ns.clone());
    let one_run = ns.clone().all(|n| n <= 1);
    let lines = if one_run {
        "Lines: one run per point".to_string()
    } else {
        format!("Lines: mean over {seeds}")
    };
    let note = match band {
        Some(b) => format!("{lines}; bands: ±1 {}.", labels::quantity(b).short),
        None if one_run => format!("{lines}; no bands."),
        None => format!("{lines}; bands: ±1 sd over seeds."),
    };
    let texts = plot::Texts {
        title: given(&words.title, "title")
            .unwrap_or_else(|| format!("{} against {}", qy.short, qx.short)),
        x_label: given(&words.xlabel, "xlabel").unwrap_or(qx.label),
        y_label: given(&words.ylabel, "ylabel").unwrap_or(qy.label),
        legend_title: labels::names(&pointers(j.get("label_by"))),
        note,
        y_scale: qy.scale,
    };
    Ok((curves, texts))
}
