//! Summaries of SGLD chains shared by the LLC and WBIC estimators: per-chain means, exclusion of
//! diverged chains, diagnostics and the verdict.

use super::diagnostics::{
    ess_bulk, geweke_z, mean, mean_difference_z, split_rhat, ACCEPTANCE_LIMIT, BOX_CONTACT_LIMIT,
    DRIFT_LIMIT, GEWEKE_LIMIT, RHAT_LIMIT,
};
use super::sgld::{ChainTrace, SgldConfig};
use crate::io::finite_or_null;
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
    /// ‖w_t − w*‖ over each chain's draws.
    pub distance: Vec<DistanceSummary>,
    pub warnings: Vec<String>,
    /// The warnings about chains moving away from w* or pressing against the bounding box (also in
    /// `warnings`), which the tools print on stderr.
    pub distance_warnings: Vec<String>,
}

/// ‖w_t − w*‖ over one chain's draws: devinterp users' "distance from the initial point". A chain
/// that samples a localised posterior settles at a distance and stays there; one still moving away
/// (w* not a minimum, γ too weak for a flat direction, ε too large) or pinned on the bounding box
/// gives a λ̂ that describes neither w* nor its posterior.
#[derive(Clone, Debug, PartialEq)]
pub struct DistanceSummary {
    pub mean: f64,
    pub max: f64,
    /// At the last draw.
    pub last: f64,
    /// The mean over each quarter of the draws, in order (NaN with fewer than 8 draws).
    pub quarter_means: [f64; 4],
    /// Relative growth of the mean from the third to the last quarter.
    pub growth: f64,
    /// z of that growth, each quarter's standard error from its ESS ([`mean_difference_z`]).
    pub growth_z: f64,
    /// growth > [`DRIFT_LIMIT`] and growth_z > [`GEWEKE_LIMIT`].
    pub moving_away: bool,
    /// With a bounding box: the mean fraction of coordinates on it ([`super::ChainTrace`]).
    pub box_contact: Option<f64>,
    /// box_contact > [`BOX_CONTACT_LIMIT`].
    pub on_box: bool,
}

impl DistanceSummary {
    /// The summary of one chain's distances at its draws.
    pub fn new(distances: &[f64], box_contact: Option<f64>) -> Self {
        let n = distances.len();
        let stat = |f: fn(&[f64]) -> f64| if n == 0 { f64::NAN } else { f(distances) };
        let quarter = |q: usize| &distances[q * n / 4..(q + 1) * n / 4];
        let (quarter_means, growth, growth_z) = if n >= 8 {
            let qm = [0, 1, 2, 3].map(|q| mean(quarter(q)));
            (
                qm,
                qm[3] / qm[2] - 1.0,
                mean_difference_z(quarter(3), quarter(2)),
            )
        } else {
            ([f64::NAN; 4], f64::NAN, f64::NAN)
        };
        let box_contact = box_contact.filter(|_| n > 0);
        DistanceSummary {
            mean: stat(mean),
            max: stat(|d| d.iter().copied().fold(f64::NEG_INFINITY, f64::max)),
            last: distances.last().copied().unwrap_or(f64::NAN),
            quarter_means,
            growth,
            growth_z,
            moving_away: growth > DRIFT_LIMIT && growth_z > GEWEKE_LIMIT,
            on_box: box_contact.is_some_and(|f| f > BOX_CONTACT_LIMIT),
            box_contact,
        }
    }

    fn to_json(&self, chain: usize) -> Value {
        json!({
            "chain": chain,
            "mean": finite_or_null(self.mean),
            "max": finite_or_null(self.max),
            "last": finite_or_null(self.last),
            "quarter_means": self.quarter_means.iter().map(|&q| finite_or_null(q)).collect::<Vec<_>>(),
            "growth": finite_or_null(self.growth),
            "growth_z": finite_or_null(self.growth_z),
            "moving_away": self.moving_away,
            "box_contact": self.box_contact.map_or(Value::Null, finite_or_null),
            "on_box": self.on_box,
        })
    }
}

/// "chain 3" or "chains 0, 1, 2".
fn chain_list(chains: &[usize]) -> String {
    let names: Vec<String> = chains.iter().map(|c| c.to_string()).collect();
    format!(
        "chain{} {}",
        if chains.len() == 1 { "" } else { "s" },
        names.join(", ")
    )
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
        let distance: Vec<DistanceSummary> = traces
            .iter()
            .map(|t| DistanceSummary::new(&t.distances, t.box_contact))
            .collect();
        let mut distance_warnings = Vec::new();
        let on_box: Vec<usize> = used
            .iter()
            .copied()
            .filter(|&c| distance[c].on_box)
            .collect();
        if !on_box.is_empty() {
            let worst = on_box
                .iter()
                .filter_map(|&c| distance[c].box_contact)
                .fold(0.0, f64::max);
            distance_warnings.push(format!(
                "{} pressed against the bounding box (up to {:.0}% of coordinates on it; \
                 distance_from_w_star): the box, not the posterior, shapes the draws and λ̂; \
                 lower ε, raise γ or widen --bounding-box",
                chain_list(&on_box),
                100.0 * worst
            ));
        }
        let away: Vec<usize> = used
            .iter()
            .copied()
            .filter(|&c| distance[c].moving_away)
            .collect();
        if !away.is_empty() {
            let worst = away.iter().map(|&c| distance[c].growth).fold(0.0, f64::max);
            distance_warnings.push(format!(
                "{} still moving away from w* (mean ‖w − w*‖ up {:.0}% from the third to the last \
                 quarter of the draws; distance_from_w_star): not settled in w*'s basin; raise γ, \
                 lower ε or draw longer, and check that w* is a local minimum",
                chain_list(&away),
                100.0 * worst
            ));
        }
        warnings.extend(distance_warnings.iter().cloned());
        ChainDiagnostics {
            used,
            diverged,
            mean_loss,
            acceptance,
            geweke,
            rhat,
            ess,
            distance,
            warnings,
            distance_warnings,
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
            "distance_from_w_star": self.distance.iter().enumerate().map(|(c, d)| d.to_json(c)).collect::<Vec<_>>(),
            "distance_test": format!("‖w_t − w*‖ at the draws' weights; moving away: the last quarter's mean more than {:.0}% above the third quarter's with z > {GEWEKE_LIMIT} (ESS-based errors); on the box: more than {:.0}% of coordinates clamped onto the bounding box on average", 100.0 * DRIFT_LIMIT, 100.0 * BOX_CONTACT_LIMIT),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{estimate_llc, AnalyticPotential, InitLoss, LlcConfig, LlcEstimate, NBeta};

    fn llc(pot: &AnalyticPotential, w_star: &[f32], cfg: SgldConfig) -> LlcEstimate {
        let nbeta = NBeta::Value(cfg.nbeta);
        estimate_llc(
            pot,
            w_star,
            &LlcConfig {
                sgld: cfg,
                nbeta,
                init_loss: InitLoss::Full,
            },
        )
        .unwrap()
    }

    fn cfg(step_size: f64, nbeta: f64, bounding_box: Option<f64>, draws: usize) -> SgldConfig {
        SgldConfig {
            step_size,
            nbeta,
            localization: 0.0,
            weight_decay: 0.0,
            bounding_box,
            draws,
            burn_in: 0,
            thin: 1,
            chains: 4,
            threads: 2,
            seed: 1,
        }
    }

    /// The bad case: L = w² (λ = 1/2) with εnβ = 3.1 > 2, so the recursion w' = (1 − εnβ)w + √ε ξ is
    /// unstable and the bounding box |w| ≤ 1 catches every chain: λ̂ = nβ·E[w²] ≈ nβ = 310 (measured
    /// 309.4), with acceptance, R-hat and Geweke all quiet (the pinned chains agree and are flat). The
    /// distance diagnostic sees every chain on the box and warns. At ε = 1e-3 (εnβ = 0.31) the same
    /// setting is healthy: λ̂ ≈ 1/(2 − εnβ) = 0.59, nothing on the box, no warning at all.
    #[test]
    fn chains_pinned_on_the_box_are_flagged_and_healthy_ones_are_not() {
        let pot = AnalyticPotential::Monomial { powers: vec![1] };
        let bad = llc(&pot, &[0.0], cfg(1e-2, 310.0, Some(1.0), 2000));
        assert!(bad.llc > 300.0, "λ̂ {}", bad.llc);
        let d = &bad.diagnostics;
        for s in &d.distance {
            assert!(s.on_box && s.box_contact.unwrap() > 0.99, "{s:?}");
            assert!(s.mean > 0.99 && s.max == 1.0, "{s:?}");
        }
        assert_eq!(d.distance_warnings.len(), 1, "{:?}", d.warnings);
        assert!(
            d.distance_warnings[0]
                .starts_with("chains 0, 1, 2, 3 pressed against the bounding box"),
            "{}",
            d.distance_warnings[0]
        );
        assert!(d.warnings.contains(&d.distance_warnings[0]));
        let v = bad.to_json();
        assert_eq!(v["verdict"], "warning");
        let per_chain = v["diagnostics"]["distance_from_w_star"].as_array().unwrap();
        assert_eq!(per_chain.len(), 4);
        assert_eq!(per_chain[2]["chain"], 2);
        assert_eq!(per_chain[2]["on_box"], true);
        assert_eq!(per_chain[2]["quarter_means"].as_array().unwrap().len(), 4);

        let good = llc(&pot, &[0.0], cfg(1e-3, 310.0, Some(1.0), 2000));
        assert!((good.llc - 0.59).abs() < 0.15, "λ̂ {}", good.llc);
        let d = &good.diagnostics;
        assert!(d.warnings.is_empty(), "{:?}", d.warnings);
        for s in &d.distance {
            assert_eq!(s.box_contact, Some(0.0));
            assert!(!s.on_box && !s.moving_away, "{s:?}");
            // The stationary sd of w is 1/√(nβ(2 − εnβ)) = 0.044: the chain stays near w*.
            assert!(s.mean < 0.1 && s.max < 0.5, "{s:?}");
        }
        assert_eq!(good.to_json()["verdict"], "ok");
    }

    /// A chain started where the potential is not at a minimum (w* = 1 on L = Σ wᵢ², γ = 0) slides
    /// towards 0 at rate εnβ = 1e-4 per step: after 4,000 draws ‖w − w*‖ ≈ 2(1 − e^{−t/10⁴}) is still
    /// growing by about a third from the third to the last quarter, with noise of sd ≈ 0.02 per
    /// coordinate (1/√(2nβ)). Every chain is flagged. (At nβ = 10 the noise, sd 0.22, hides the same
    /// drift in 4 dimensions: z ≈ 2.5 against the limit 3, so such a chain is not flagged.)
    #[test]
    fn chains_moving_away_from_w_star_are_flagged() {
        let pot = AnalyticPotential::Quadratic { dim: 4 };
        let est = llc(&pot, &[1.0; 4], cfg(1e-7, 1000.0, None, 4000));
        let d = &est.diagnostics;
        for s in &d.distance {
            assert!(s.moving_away, "{s:?}");
            assert!(s.growth > 0.2 && s.growth_z > 3.0, "{s:?}");
            assert_eq!(s.box_contact, None);
            assert!(s.quarter_means.windows(2).all(|q| q[0] < q[1]), "{s:?}");
        }
        assert_eq!(d.distance_warnings.len(), 1);
        assert!(
            d.distance_warnings[0].starts_with("chains 0, 1, 2, 3 still moving away from w*"),
            "{}",
            d.distance_warnings[0]
        );
        assert_eq!(
            est.to_json()["diagnostics"]["distance_from_w_star"][0]["moving_away"],
            true
        );
    }

    /// The summary of a known trace: quarters, growth, last, and no box.
    #[test]
    fn distance_summary_of_a_ramp() {
        let ramp: Vec<f64> = (0..40).map(|i| i as f64).collect();
        let s = DistanceSummary::new(&ramp, None);
        assert_eq!(s.quarter_means, [4.5, 14.5, 24.5, 34.5]);
        assert!((s.growth - 10.0 / 24.5).abs() < 1e-12);
        assert_eq!((s.mean, s.max, s.last), (19.5, 39.0, 39.0));
        assert!(s.moving_away && !s.on_box);
        let flat = DistanceSummary::new(&[2.0; 40], Some(0.5));
        assert_eq!((flat.growth, flat.growth_z), (0.0, 0.0));
        assert!(!flat.moving_away && flat.on_box);
        let short = DistanceSummary::new(&[1.0, 2.0], None);
        assert!(short.growth.is_nan() && !short.moving_away);
    }
}
