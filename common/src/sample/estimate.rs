//! Summaries of SGLD chains shared by the LLC and WBIC estimators: per-chain means, exclusion of
//! diverged chains, diagnostics and the verdict.

use super::diagnostics::{
    ess_bulk, geweke_z, mean, split_rhat, ACCEPTANCE_LIMIT, GEWEKE_LIMIT, RHAT_LIMIT,
};
use super::sgld::{ChainTrace, SgldConfig};
use serde_json::{json, Map, Value};

/// Diagnostics of a set of chains' loss traces.
#[derive(Clone, Debug, PartialEq)]
pub struct ChainDiagnostics {
    /// Chains whose every draw is finite, in chain order.
    pub used: Vec<usize>,
    /// (chain, draw) of each diverged chain, excluded from every mean.
    pub diverged: Vec<(usize, usize)>,
    /// Mean loss over draws of each chain (NaN for a diverged chain).
    pub mean_loss: Vec<f64>,
    /// Mean MALA acceptance per chain.
    pub acceptance: Vec<f64>,
    /// Geweke z of each chain's trace.
    pub geweke: Vec<f64>,
    /// Rank-normalised split R-hat and bulk ESS over the used chains.
    pub rhat: f64,
    pub ess: f64,
    pub warnings: Vec<String>,
}

impl ChainDiagnostics {
    /// Computes the diagnostics of `traces` (diverged chains excluded from R-hat and ESS).
    pub fn new(traces: &[ChainTrace]) -> Self {
        let mut used = Vec::new();
        let mut diverged = Vec::new();
        for t in traces {
            match t.diverged_at {
                Some(d) => diverged.push((t.chain, d)),
                None => used.push(t.chain),
            }
        }
        let mean_loss = traces
            .iter()
            .map(|t| {
                if t.diverged_at.is_some() {
                    f64::NAN
                } else {
                    mean(&t.losses)
                }
            })
            .collect();
        let acceptance: Vec<f64> = traces.iter().map(ChainTrace::mean_acceptance).collect();
        let geweke: Vec<f64> = traces.iter().map(|t| geweke_z(&t.losses)).collect();
        let refs: Vec<&[f64]> = used.iter().map(|&c| traces[c].losses.as_slice()).collect();
        let (rhat, ess) = if refs.is_empty() {
            (f64::NAN, f64::NAN)
        } else {
            (split_rhat(&refs), ess_bulk(&refs))
        };
        let mut warnings = Vec::new();
        for &(c, d) in &diverged {
            warnings.push(format!(
                "chain {c} diverged (non-finite loss at draw {d}); excluded from the mean"
            ));
        }
        if used.is_empty() {
            warnings.push("every chain diverged: lower ε".to_string());
        }
        if rhat > RHAT_LIMIT {
            warnings.push(format!(
                "R-hat {rhat:.3} > {RHAT_LIMIT}: chains disagree, increase draws or lower ε"
            ));
        }
        for &c in &used {
            if geweke[c].abs() > GEWEKE_LIMIT {
                warnings.push(format!(
                    "loss still trending in chain {c} (Geweke z = {:.1}): increase draws or lower ε",
                    geweke[c]
                ));
            }
        }
        for &c in &used {
            if acceptance[c] < ACCEPTANCE_LIMIT {
                warnings.push(format!(
                    "acceptance {:.2} < {ACCEPTANCE_LIMIT} in chain {c}: lower ε",
                    acceptance[c]
                ));
            }
        }
        ChainDiagnostics {
            used,
            diverged,
            mean_loss,
            acceptance,
            geweke,
            rhat,
            ess,
            warnings,
        }
    }

    /// The diagnostics object of a record.
    pub fn to_json(&self, traces: &[ChainTrace]) -> Value {
        let stationarity: Vec<Value> = self
            .geweke
            .iter()
            .enumerate()
            .map(|(c, z)| {
                json!({"chain": c, "geweke_z": finite_or_null(*z),
                       "stationary": z.is_finite() && z.abs() <= GEWEKE_LIMIT})
            })
            .collect();
        let accept_used: Vec<f64> = self.used.iter().map(|&c| self.acceptance[c]).collect();
        json!({
            "rhat": finite_or_null(self.rhat),
            "rhat_method": "rank-normalised split R-hat, max of bulk and tail (Vehtari et al. 2021), on the loss trace",
            "ess_bulk": finite_or_null(self.ess),
            "mala_acceptance_per_chain": self.acceptance.iter().map(|&a| finite_or_null(a)).collect::<Vec<_>>(),
            "mala_acceptance_mean": finite_or_null(if accept_used.is_empty() { f64::NAN } else { mean(&accept_used) }),
            "stationarity": stationarity,
            "stationarity_test": format!("Geweke z of first 10% vs last 50% of draws, ESS-based errors; |z| > {GEWEKE_LIMIT} = trending"),
            "mean_loss_per_chain": self.mean_loss.iter().map(|&a| finite_or_null(a)).collect::<Vec<_>>(),
            "final_distance_per_chain": traces.iter().map(|t| finite_or_null(t.final_distance)).collect::<Vec<_>>(),
            "seconds_per_chain": traces.iter().map(|t| t.seconds).collect::<Vec<_>>(),
        })
    }

    /// `"verdict"` and `"warnings"` fields.
    pub fn verdict(&self, extra: &[String]) -> Map<String, Value> {
        let mut all = self.warnings.clone();
        all.extend_from_slice(extra);
        let mut m = Map::new();
        m.insert(
            "verdict".into(),
            Value::from(if all.is_empty() { "ok" } else { "warning" }),
        );
        m.insert("warnings".into(), Value::from(all));
        m
    }
}

/// A JSON number, or null for NaN/±∞.
pub fn finite_or_null(x: f64) -> Value {
    if x.is_finite() {
        Value::from(x)
    } else {
        Value::Null
    }
}

/// Mean and sample standard deviation (n − 1 in the denominator, as torch's `std`) of `xs`.
pub fn mean_sd(xs: &[f64]) -> (f64, f64) {
    if xs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let m = mean(xs);
    if xs.len() < 2 {
        return (m, f64::NAN);
    }
    let var = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (xs.len() - 1) as f64;
    (m, var.sqrt())
}

/// `value ± spread (what)` for a log line, where the spread needs two chains: `value (one chain: no
/// spread)` for one, `undefined (every chain diverged)` for none, so that no `NaN` is printed.
pub fn with_spread(
    value: f64,
    spread: f64,
    chains_used: usize,
    what: &str,
    digits: usize,
) -> String {
    match chains_used {
        0 => "undefined (every chain diverged)".to_string(),
        1 => format!("{value:.digits$} (one chain: no spread)"),
        n => format!("{value:.digits$} ± {spread:.digits$} ({what} over {n} chains)"),
    }
}

/// The sampler settings of a record.
pub fn settings_json(cfg: &SgldConfig) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("epsilon".into(), Value::from(cfg.step_size));
    m.insert("gamma".into(), Value::from(cfg.localization));
    m.insert("weight_decay".into(), Value::from(cfg.weight_decay));
    m.insert(
        "bounding_box".into(),
        cfg.bounding_box.map_or(Value::Null, Value::from),
    );
    m.insert("draws".into(), Value::from(cfg.draws));
    m.insert("burn_in".into(), Value::from(cfg.burn_in));
    m.insert("thin".into(), Value::from(cfg.thin));
    m.insert("chains".into(), Value::from(cfg.chains));
    m.insert("threads".into(), Value::from(cfg.threads.min(cfg.chains)));
    m.insert("seed".into(), Value::from(cfg.seed));
    m.insert(
        "chain_streams".into(),
        Value::from(
            "chain c: rng::stream(seed, Chain, c), Xoshiro256++, for its minibatch order and noise",
        ),
    );
    m
}
