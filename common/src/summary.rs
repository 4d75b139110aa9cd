//! Summaries of many runs' records: per-seed values, means and spreads per group and label, Welch's
//! t-tests against a baseline, and curves against a variable, for the `report` tool.
//!
//! Records are selected and grouped through JSON pointers (RFC 6901: `/llc/mean`, `/optimizer/name`),
//! so the same code summarises `llc`, `hessian-trace` or `train` fields.

use crate::io::Record;
use crate::stats::{mean, sample_sd, welch_t_test};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

/// The text of a pointer's value (strings bare, other JSON as written); `None` when absent or null.
pub fn text_at(r: &Record, pointer: &str) -> Option<String> {
    let v = Value::Object(r.clone());
    match v.pointer(pointer)? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// A finite number at a pointer.
pub fn number_at(r: &Record, pointer: &str) -> Option<f64> {
    let v = Value::Object(r.clone());
    v.pointer(pointer)?.as_f64().filter(|x| x.is_finite())
}

/// The label of a record: the texts at `pointers` joined by spaces.
pub fn label_of(r: &Record, pointers: &[String]) -> Option<String> {
    let parts: Option<Vec<String>> = pointers.iter().map(|p| text_at(r, p)).collect();
    parts.map(|p| p.join(" "))
}

/// One (group, label) cell of a table.
#[derive(Clone, Debug)]
pub struct Cell {
    pub seeds: BTreeMap<u64, f64>,
    pub mean: f64,
    pub sd: f64,
    /// Mean over seeds of the test loss at each seed's last epoch, when recorded.
    pub test_loss: Option<f64>,
}

/// A comparison of a label against the baseline within a group.
#[derive(Clone, Debug)]
pub struct Comparison {
    pub label: String,
    pub t: Option<f64>,
    pub df: Option<f64>,
    pub p_two_sided: Option<f64>,
    /// Seeds (present in both) where the label's value exceeds the baseline's.
    pub wins: usize,
    pub paired: usize,
}

/// What [`summarise_table`] needs to know.
#[derive(Clone, Debug)]
pub struct TableSpec {
    pub metric: String,
    /// Pointer(s) of the group; a record's group is their texts joined by spaces.
    pub group: Vec<String>,
    pub label: Vec<String>,
    /// Epochs averaged per seed (empty: the last epoch of each seed).
    pub epochs: Vec<u64>,
    pub baseline: String,
}

/// The summary of a table.
#[derive(Clone, Debug)]
pub struct Table {
    pub spec: TableSpec,
    /// group → label → cell.
    pub cells: BTreeMap<String, BTreeMap<String, Cell>>,
    pub comparisons: BTreeMap<String, Vec<Comparison>>,
    /// group → label → seeds seen for some label of the group but missing for this one.
    pub missing: BTreeMap<String, BTreeMap<String, Vec<u64>>>,
}

/// Per-seed values: for each (group, label, seed) the mean of the metric over `epochs`.
pub fn summarise_table(records: &[Record], spec: &TableSpec) -> Table {
    // (group, label, seed) → (epoch → value), and the test loss at the largest epoch.
    let mut values: BTreeMap<(String, String, u64), BTreeMap<u64, f64>> = BTreeMap::new();
    let mut losses: BTreeMap<(String, String, u64), (u64, f64)> = BTreeMap::new();
    for r in records {
        let (Some(g), Some(l), Some(seed)) = (
            label_of(r, &spec.group),
            label_of(r, &spec.label),
            number_at(r, "/seed"),
        ) else {
            continue;
        };
        let epoch = number_at(r, "/epoch").unwrap_or(0.0) as u64;
        let key = (g, l, seed as u64);
        if let Some(tl) = number_at(r, "/test_loss") {
            let e = losses.entry(key.clone()).or_insert((epoch, tl));
            if epoch >= e.0 {
                *e = (epoch, tl);
            }
        }
        if let Some(v) = number_at(r, &spec.metric) {
            values.entry(key).or_default().insert(epoch, v);
        }
    }
    let mut cells: BTreeMap<String, BTreeMap<String, Cell>> = BTreeMap::new();
    for ((g, l, seed), by_epoch) in &values {
        let picked: Vec<f64> = if spec.epochs.is_empty() {
            by_epoch.values().last().copied().into_iter().collect()
        } else {
            spec.epochs
                .iter()
                .filter_map(|e| by_epoch.get(e).copied())
                .collect()
        };
        if picked.len() != spec.epochs.len().max(1) {
            continue; // an incomplete seed counts as missing
        }
        let cell = cells
            .entry(g.clone())
            .or_default()
            .entry(l.clone())
            .or_insert_with(|| Cell {
                seeds: BTreeMap::new(),
                mean: f64::NAN,
                sd: f64::NAN,
                test_loss: None,
            });
        cell.seeds.insert(*seed, mean(&picked));
    }
    let mut missing: BTreeMap<String, BTreeMap<String, Vec<u64>>> = BTreeMap::new();
    let mut comparisons = BTreeMap::new();
    for (g, labels) in cells.iter_mut() {
        let all_seeds: BTreeSet<u64> = values
            .keys()
            .filter(|(vg, _, _)| vg == g)
            .map(|(_, _, s)| *s)
            .collect();
        for (l, cell) in labels.iter_mut() {
            let v: Vec<f64> = cell.seeds.values().copied().collect();
            cell.mean = mean(&v);
            cell.sd = sample_sd(&v);
            let tl: Vec<f64> = cell
                .seeds
                .keys()
                .filter_map(|s| losses.get(&(g.clone(), l.clone(), *s)).map(|x| x.1))
                .collect();
            cell.test_loss = (!tl.is_empty()).then(|| mean(&tl));
            let miss: Vec<u64> = all_seeds
                .iter()
                .filter(|s| !cell.seeds.contains_key(s))
                .copied()
                .collect();
            if !miss.is_empty() {
                missing
                    .entry(g.clone())
                    .or_default()
                    .insert(l.clone(), miss);
            }
        }
        let Some(base) = labels.get(&spec.baseline).cloned() else {
            continue;
        };
        let mut comps = Vec::new();
        for (l, cell) in labels.iter() {
            if *l == spec.baseline {
                continue;
            }
            let a: Vec<f64> = base.seeds.values().copied().collect();
            let b: Vec<f64> = cell.seeds.values().copied().collect();
            let w = welch_t_test(&a, &b);
            let paired: Vec<(f64, f64)> = cell
                .seeds
                .iter()
                .filter_map(|(s, v)| base.seeds.get(s).map(|bv| (*bv, *v)))
                .collect();
            comps.push(Comparison {
                label: l.clone(),
                t: w.map(|w| w.t),
                df: w.map(|w| w.df),
                p_two_sided: w.map(|w| w.p_two_sided),
                wins: paired.iter().filter(|(b, v)| v > b).count(),
                paired: paired.len(),
            });
        }
        comparisons.insert(g.clone(), comps);
    }
    Table {
        spec: spec.clone(),
        cells,
        comparisons,
        missing,
    }
}

impl Table {
    /// The table as JSON (every number, every seed).
    pub fn to_json(&self) -> Value {
        let mut groups = serde_json::Map::new();
        for (g, labels) in &self.cells {
            let mut ls = serde_json::Map::new();
            for (l, c) in labels {
                ls.insert(
                    l.clone(),
                    json!({
                        "n": c.seeds.len(),
                        "mean": c.mean,
                        "sd": c.sd,
                        "test_loss": c.test_loss,
                        "per_seed": c.seeds.iter().map(|(s, v)| (s.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
                        "missing_seeds": self.missing.get(g).and_then(|m| m.get(l)).cloned().unwrap_or_default(),
                    }),
                );
            }
            let comps: Vec<Value> = self
                .comparisons
                .get(g)
                .map(|cs| {
                    cs.iter()
                        .map(|c| {
                            json!({
                                "label": c.label, "versus": self.spec.baseline,
                                "welch_t": c.t, "df": c.df, "p_two_sided": c.p_two_sided,
                                "wins": c.wins, "paired_seeds": c.paired,
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            groups.insert(g.clone(), json!({"labels": ls, "comparisons": comps}));
        }
        json!({
            "metric": self.spec.metric,
            "group_by": self.spec.group,
            "label_by": self.spec.label,
            "epochs_averaged": self.spec.epochs,
            "baseline": self.spec.baseline,
            "groups": groups,
        })
    }

    /// The table as Markdown: one row per group and label, with the comparison against the baseline
    /// and, when given, the paper's value (`paper[group][label]`, a string such as "16.31 ± 0.59").
    pub fn to_markdown(&self, paper: Option<&Value>) -> String {
        let mut out = format!(
            "| group | label | n | {m} mean ± sd | paper | test loss | vs {b}: Welch t | p (two-sided) | wins | missing seeds |\n|---|---|---|---|---|---|---|---|---|---|\n",
            m = self.spec.metric,
            b = self.spec.baseline
        );
        for (g, labels) in &self.cells {
            for (l, c) in labels {
                let comp = self
                    .comparisons
                    .get(g)
                    .and_then(|cs| cs.iter().find(|x| &x.label == l));
                let paper_v = paper
                    .and_then(|p| p.pointer(&format!("/{}/{}", escape(g), escape(l))))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let miss = self
                    .missing
                    .get(g)
                    .and_then(|m| m.get(l))
                    .map(|v| {
                        v.iter()
                            .map(|s| s.to_string())
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default();
                let value = if c.sd.is_finite() {
                    let scale = c.mean.abs().max(c.sd);
                    format!("{} ± {}", short(c.mean, scale), short(c.sd, scale))
                } else {
                    short(c.mean, c.mean)
                };
                out += &format!(
                    "| {g} | {l} | {} | {value} | {paper_v} | {} | {} | {} | {} | {miss} |\n",
                    c.seeds.len(),
                    c.test_loss.map(|x| format!("{x:.4}")).unwrap_or_default(),
                    comp.and_then(|c| c.t)
                        .map(|t| format!("{t:.2}"))
                        .unwrap_or_default(),
                    comp.and_then(|c| c.p_two_sided)
                        .map(|p| format!("{p:.2e}"))
                        .unwrap_or_default(),
                    comp.map(|c| format!("{}/{}", c.wins, c.paired))
                        .unwrap_or_default(),
                );
            }
        }
        out
    }
}

/// `x` with about four significant digits of `scale`: two decimals from 10 up (16.31), more below
/// (0.9712, 2.514), and exponent notation outside [1e-3, 1e5) (2.500e-4).
fn short(x: f64, scale: f64) -> String {
    let a = scale.abs();
    if !x.is_finite() || a == 0.0 {
        return format!("{x:.2}");
    }
    if !(1e-3..1e5).contains(&a) {
        return format!("{x:.3e}");
    }
    let decimals = (3 - a.log10().floor() as i64).max(2) as usize;
    format!("{x:.decimals$}")
}

/// Records with a finite `metric` at one of `epochs` (every epoch when empty).
fn with_metric<'a>(records: &'a [Record], metric: &str, epochs: &[u64]) -> Vec<(&'a Record, f64)> {
    records
        .iter()
        .filter_map(|r| {
            let at_epoch = epochs.is_empty()
                || number_at(r, "/epoch").is_some_and(|e| epochs.contains(&(e as u64)));
            let v = number_at(r, metric)?;
            at_epoch.then_some((r, v))
        })
        .collect()
}

/// The record with the smallest `metric` (the largest with `maximize`) among those at `epochs`
/// (every record when empty); ties go to the first in input order; records without a finite
/// metric are skipped. `None` when no record qualifies.
pub fn best_record<'a>(
    records: &'a [Record],
    metric: &str,
    epochs: &[u64],
    maximize: bool,
) -> Option<&'a Record> {
    let mut best: Option<(&Record, f64)> = None;
    for (r, v) in with_metric(records, metric, epochs) {
        let better = match best {
            None => true,
            Some((_, b)) => (maximize && v > b) || (!maximize && v < b),
        };
        if better {
            best = Some((r, v));
        }
    }
    best.map(|(r, _)| r)
}

/// The mean of `metric` over the records at `epochs` (every record when empty) that have it
/// finite, and their number; `None` when there are none.
pub fn metric_mean(records: &[Record], metric: &str, epochs: &[u64]) -> Option<(f64, usize)> {
    let v: Vec<f64> = with_metric(records, metric, epochs)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    (!v.is_empty()).then(|| (mean(&v), v.len()))
}

fn escape(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// A curve: for each label, the mean and sd over seeds of the metric at each x.
#[derive(Clone, Debug)]
pub struct Curve {
    pub label: String,
    /// (x, mean, sd, n)
    pub points: Vec<(f64, f64, f64, usize)>,
}

/// Curves of `metric` against the number at `x` (e.g. `/epoch`, `/optimizer/alpha`), one per label.
pub fn summarise_curves(records: &[Record], metric: &str, x: &str, label: &[String]) -> Vec<Curve> {
    let mut acc: BTreeMap<String, BTreeMap<i64, (f64, Vec<f64>)>> = BTreeMap::new();
    for r in records {
        let (Some(l), Some(xv), Some(v)) =
            (label_of(r, label), number_at(r, x), number_at(r, metric))
        else {
            continue;
        };
        // Key by x's bit pattern order (exact values; no float keys in maps).
        let key = (xv * 1e9).round() as i64;
        acc.entry(l)
            .or_default()
            .entry(key)
            .or_insert((xv, Vec::new()))
            .1
            .push(v);
    }
    acc.into_iter()
        .map(|(label, pts)| Curve {
            label,
            points: pts
                .into_values()
                .map(|(xv, vs)| (xv, mean(&vs), sample_sd(&vs), vs.len()))
                .collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(v: Value) -> Record {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn table_averages_epochs_per_seed_and_compares() {
        let mut rs = Vec::new();
        for seed in 1..=4u64 {
            for epoch in [19u64, 20] {
                let s = seed as f64;
                rs.push(rec(json!({"model": {"name": "m"}, "optimizer": {"name": "sgd"}, "seed": seed, "epoch": epoch, "llc": {"mean": 10.0 + s + epoch as f64 * 0.1}, "test_loss": 0.1})));
                if seed != 4 || epoch != 20 {
                    rs.push(rec(json!({"model": {"name": "m"}, "optimizer": {"name": "ngd"}, "seed": seed, "epoch": epoch, "llc": {"mean": 20.0 + 2.0 * s}})));
                }
            }
        }
        let spec = TableSpec {
            metric: "/llc/mean".into(),
            group: vec!["/model/name".into()],
            label: vec!["/optimizer/name".into()],
            epochs: vec![19, 20],
            baseline: "sgd".into(),
        };
        let t = summarise_table(&rs, &spec);
        let sgd = &t.cells["m"]["sgd"];
        assert_eq!(sgd.seeds.len(), 4);
        assert!((sgd.seeds[&1] - 12.95).abs() < 1e-12);
        let ngd = &t.cells["m"]["ngd"];
        assert_eq!(ngd.seeds.len(), 3, "seed 4 lacks epoch 20");
        assert_eq!(t.missing["m"]["ngd"], vec![4]);
        let c = &t.comparisons["m"][0];
        assert_eq!((c.wins, c.paired), (3, 3));
        assert!(c.t.unwrap() > 0.0);
        assert!(t.to_markdown(None).contains("| m | ngd | 3 |"));
    }

    #[test]
    fn curves_group_by_x() {
        let rs: Vec<Record> = (0..6)
            .map(|i| {
                rec(json!({"optimizer": {"name": "sgd"}, "epoch": 1 + i % 2, "trace": i as f64}))
            })
            .collect();
        let c = summarise_curves(&rs, "/trace", "/epoch", &["/optimizer/name".into()]);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].points.len(), 2);
        assert_eq!(c[0].points[0].0, 1.0);
        assert!((c[0].points[0].1 - 2.0).abs() < 1e-12);
        assert_eq!(c[0].points[0].3, 3);
    }

    #[test]
    fn best_record_and_mean() {
        let rs: Vec<Record> = [(1, 0.5, "a"), (2, 0.3, "b"), (2, 0.3, "c"), (2, 0.9, "d")]
            .iter()
            .map(|(e, l, n)| rec(json!({"epoch": e, "test_loss": l, "name": n})))
            .chain([rec(json!({"epoch": 2, "test_loss": null, "name": "e"}))])
            .collect();
        let name = |r: Option<&Record>| r.and_then(|r| text_at(r, "/name"));
        assert_eq!(
            name(best_record(&rs, "/test_loss", &[], false)),
            Some("b".into())
        );
        assert_eq!(
            name(best_record(&rs, "/test_loss", &[2], true)),
            Some("d".into())
        );
        assert_eq!(
            name(best_record(&rs, "/test_loss", &[1], false)),
            Some("a".into())
        );
        assert!(best_record(&rs, "/test_loss", &[3], false).is_none());
        let (m, n) = metric_mean(&rs, "/test_loss", &[2]).unwrap();
        assert_eq!(n, 3);
        assert!((m - 0.5).abs() < 1e-15);
        assert!(metric_mean(&rs, "/missing", &[]).is_none());
    }

    #[test]
    fn short_numbers_keep_four_digits() {
        assert_eq!(short(16.314, 16.314), "16.31");
        assert_eq!(short(0.59, 16.3), "0.59");
        assert_eq!(short(0.97123, 0.97123), "0.9712");
        assert_eq!(short(0.0021, 0.97), "0.0021");
        assert_eq!(short(2.5e-4, 2.5e-4), "2.500e-4");
        assert_eq!(short(1.5e6, 1.5e6), "1.500e6");
    }
}
