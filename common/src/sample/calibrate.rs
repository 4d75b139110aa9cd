//! `llc --calibrate`: a grid of step sizes ε × (nβ or γ) on one checkpoint, with the estimate and
//! diagnostics of each cell, marking for each row the largest ε whose chains are stable — what
//! devinterp's users do by hand with trace plots (devinterp's `sgld_calibration` notebook).

use super::estimate::with_spread;
use super::llc::{estimate_llc, LlcConfig};
use super::nbeta::NBeta;
use super::potential::Potential;
use crate::io::finite_or_null;
use crate::{Error, Result};
use serde_json::{json, Value};

/// The second axis of the grid.
#[derive(Clone, Debug, PartialEq)]
/// The rows of the grid: nβ values or localisation strengths γ.
pub enum CalibrationAxis {
    NBeta(Vec<NBeta>),
    Gamma(Vec<f64>),
}

/// `count` values log-spaced from `lo` to `hi` inclusive.
pub fn log_spaced(lo: f64, hi: f64, count: usize) -> Result<Vec<f64>> {
    if !(lo > 0.0 && hi >= lo && lo.is_finite() && hi.is_finite()) || count == 0 {
        return Err(Error::invalid(format!(
            "a log-spaced range needs 0 < lo <= hi and at least one point (got {lo}..{hi}, {count})"
        )));
    }
    if count == 1 {
        return Ok(vec![lo]);
    }
    // lo·(hi/lo)^(i/(count−1)) in decades, so that 1e-6:1e-3:4 gives 1e-6, 1e-5, 1e-4, 1e-3 exactly
    // (10^k is correctly rounded), with the end points as given.
    let (a, b) = (lo.log10(), hi.log10());
    Ok((0..count)
        .map(|i| match i {
            0 => lo,
            i if i == count - 1 => hi,
            i => 10f64.powf(a + (b - a) * i as f64 / (count - 1) as f64),
        })
        .collect())
}

/// A cell is stable when no chain diverged and no warning other than a negative LLC was raised.
fn stable(warnings: &[String], diverged: usize) -> bool {
    diverged == 0 && warnings.iter().all(|w| w.starts_with("negative LLC"))
}

/// Runs the grid; returns the `llc_calibration` object: `cells` (one per (row, ε)) and `rows` with the
/// largest stable ε of each row (null when none is).
pub fn calibrate<P: Potential>(
    potential: &P,
    w_star: &[f32],
    base: &LlcConfig,
    epsilons: &[f64],
    axis: &CalibrationAxis,
    mut progress: impl FnMut(&str),
) -> Result<Value> {
    let rows: Vec<(String, LlcConfig)> = match axis {
        CalibrationAxis::NBeta(list) => list
            .iter()
            .map(|&nb| {
                let mut c = base.clone();
                c.nbeta = nb;
                (
                    match nb {
                        NBeta::Value(v) => format!("nbeta={v}"),
                        NBeta::Batch => "nbeta=batch".to_string(),
                        NBeta::Dataset => "nbeta=dataset".to_string(),
                    },
                    c,
                )
            })
            .collect(),
        CalibrationAxis::Gamma(list) => list
            .iter()
            .map(|&g| {
                let mut c = base.clone();
                c.sgld.localization = g;
                (format!("gamma={g}"), c)
            })
            .collect(),
    };
    let mut cells = Vec::new();
    let mut row_summaries = Vec::new();
    for (label, row_cfg) in &rows {
        let mut largest_stable: Option<f64> = None;
        let mut row_nbeta = f64::NAN;
        for &eps in epsilons {
            let mut cfg = row_cfg.clone();
            cfg.sgld.step_size = eps;
            let est = estimate_llc(potential, w_star, &cfg)?;
            row_nbeta = est.sgld.nbeta;
            let mut warnings = est.diagnostics.warnings.clone();
            warnings.extend(est.extra_warnings());
            let ok = stable(&warnings, est.diagnostics.diverged.len());
            if ok {
                largest_stable = Some(largest_stable.map_or(eps, |l: f64| l.max(eps)));
            }
            progress(&format!(
                "{label} eps={eps:.3e}: llc {}, R-hat {:.3}, acceptance {:.2}, {}",
                with_spread(est.llc, est.llc_sd, est.diagnostics.used.len(), "sd", 3),
                est.diagnostics.rhat,
                est.diagnostics.acceptance.iter().sum::<f64>()
                    / est.diagnostics.acceptance.len() as f64,
                if ok { "stable" } else { "unstable" }
            ));
            cells.push(json!({
                "row": label,
                "epsilon": eps,
                "nbeta": est.sgld.nbeta,
                "gamma": est.sgld.localization,
                "llc": finite_or_null(est.llc),
                "llc_sd": finite_or_null(est.llc_sd),
                "llc_per_chain": est.per_chain.iter().map(|&x| finite_or_null(x)).collect::<Vec<_>>(),
                "init_loss": finite_or_null(est.init_loss),
                "rhat": finite_or_null(est.diagnostics.rhat),
                "ess_bulk": finite_or_null(est.diagnostics.ess),
                "mala_acceptance_per_chain": est.diagnostics.acceptance.iter().map(|&x| finite_or_null(x)).collect::<Vec<_>>(),
                "geweke_z_per_chain": est.diagnostics.geweke.iter().map(|&x| finite_or_null(x)).collect::<Vec<_>>(),
                "diverged_chains": est.diagnostics.diverged.iter().map(|&(c, d)| json!({"chain": c, "draw": d})).collect::<Vec<_>>(),
                "stable": ok,
                "warnings": warnings,
            }));
        }
        row_summaries.push(json!({
            "row": label,
            "nbeta": finite_or_null(row_nbeta),
            "largest_stable_epsilon": largest_stable.map_or(Value::Null, Value::from),
        }));
    }
    Ok(json!({
        "epsilons": epsilons,
        "axis": match axis { CalibrationAxis::NBeta(_) => "nbeta", CalibrationAxis::Gamma(_) => "gamma" },
        "stable_means": "no chain diverged, R-hat <= 1.05, no trending trace, MALA acceptance >= 0.5",
        "rows": row_summaries,
        "cells": cells,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_spacing_hits_decades() {
        assert_eq!(
            log_spaced(1e-6, 1e-3, 4).unwrap(),
            vec![1e-6, 1e-5, 1e-4, 1e-3]
        );
        let v = log_spaced(1e-5, 1e-3, 3).unwrap();
        assert_eq!(v, vec![1e-5, 1e-4, 1e-3]);
        assert!(log_spaced(0.0, 1.0, 3).is_err());
        assert!(log_spaced(1.0, 0.1, 3).is_err());
    }
}
