//! Watanabe's widely applicable Bayesian information criterion (Watanabe 2013, "A widely applicable
//! Bayesian information criterion", JMLR 14):
//!
//!   WBIC = E_w^β[ n·L_n(w) ],   β = 1/ln n,
//!
//! the expectation over the tempered posterior ∝ exp(−nβ·L_n(w))·φ(w). SGLD samples it with nβ = n·β
//! and, by default, no localisation (γ = 0: WBIC is global; γ > 0 gives a local WBIC around w*). Each
//! draw contributes n·L_m(w_t), an unbiased estimate of n·L_n(w_t) from its minibatch; a chain's
//! estimate is their mean, and the reported WBIC is the mean over chains with the standard error
//! sd/√chains. Since WBIC ≈ n·L_n(w₀) + λ·ln n, the implied learning coefficient is
//! (WBIC − n·L_n(w*))/ln n.
//!
//! `devinterp` mode reproduces what the paper computed instead: SGLD at the LLC's settings (nβ by
//! the batch rule, γ = 100) and n times the mean of the sampled minibatch losses.

use super::estimate::{mean_sd, settings_json, with_spread, ChainDiagnostics};
use super::potential::Potential;
use super::sgld::{run_chains, ChainTrace, SgldConfig};
use crate::io::finite_or_null;
use crate::{Error, Result};
use serde_json::{Map, Value};

/// Which quantity is computed.
#[derive(Clone, Debug, PartialEq)]
pub enum WbicMode {
    /// Watanabe's WBIC at β (nβ = n·β).
    Watanabe { beta: f64, beta_rule: String },
    /// The paper's devinterp computation at an LLC-style nβ.
    Devinterp { nbeta_rule: String },
}

/// A WBIC estimate.
#[derive(Clone, Debug)]
pub struct WbicEstimate {
    pub mode: WbicMode,
    pub sgld: SgldConfig,
    pub samples: usize,
    pub batch_size: usize,
    pub wbic: f64,
    pub se: f64,
    pub per_chain: Vec<f64>,
    /// n·L_n(w*).
    pub n_loss_at_star: f64,
    /// (WBIC − n·L_n(w*))/ln n.
    pub implied_lambda: f64,
    pub traces: Vec<ChainTrace>,
    pub diagnostics: ChainDiagnostics,
    pub seconds: f64,
}

/// Watanabe's temperature: the inverse temperature β of WBIC and the nβ at which SGLD samples it,
///
///   β = 1/ln n,   nβ = n·β = n/ln n,
///
/// with n the number of training samples, or a `given` β (`--beta`) in place of 1/ln n. At β = 1/ln n
/// the tempered posterior mean of n·L_n(w) is n·L_n(w₀) + λ·ln n + O_p(√ln n), the expansion that makes
/// WBIC an estimate of the free energy (Watanabe 2013, "A widely applicable Bayesian information
/// criterion", JMLR 14, the main theorem with β₀ = 1).
///
/// Returns the [`WbicMode::Watanabe`] to record (β and the rule that chose it: `given` or
/// `1/ln n with n = N`) and nβ (computed as `n as f64 * β`).
///
/// # Errors
/// [`Error::Invalid`] when nβ is not a finite number (n = 1, where ln n = 0, or a given β so large
/// that n·β overflows).
pub fn watanabe_temperature(samples: usize, given: Option<f64>) -> Result<(WbicMode, f64)> {
    let n = samples;
    let (beta, beta_rule) = match given {
        Some(b) => (b, "given".to_string()),
        None => (1.0 / (n as f64).ln(), format!("1/ln n with n = {n}")),
    };
    let nbeta = n as f64 * beta;
    if !nbeta.is_finite() {
        return Err(Error::invalid(format!(
            "--beta {beta:e}: nβ = n·β with n = {n} is not a finite number"
        )));
    }
    Ok((WbicMode::Watanabe { beta, beta_rule }, nbeta))
}

/// Runs the chains at `sgld` (nβ already set: n·β, or the LLC's nβ in devinterp mode) and estimates
/// WBIC.
///
/// # Errors
/// Invalid settings (a β that is not a positive number, or n·β not finite, included) or a failing
/// full loss.
pub fn estimate_wbic<P: Potential>(
    potential: &P,
    w_star: &[f32],
    sgld: &SgldConfig,
    mode: WbicMode,
) -> Result<WbicEstimate> {
    let start = std::time::Instant::now();
    if let WbicMode::Watanabe { beta, .. } = mode {
        if !(beta.is_finite() && beta > 0.0) {
            return Err(Error::invalid(format!(
                "--beta must be a positive number (got {beta})"
            )));
        }
    }
    sgld.validate()?;
    let n = potential.samples() as f64;
    let n_loss_at_star = n * potential.full_loss(w_star)?;
    let traces = run_chains(potential, w_star, sgld)?;
    let diagnostics = ChainDiagnostics::new(&traces);
    let per_chain: Vec<f64> = diagnostics.mean_loss.iter().map(|&m| n * m).collect();
    let used: Vec<f64> = diagnostics.used.iter().map(|&c| per_chain[c]).collect();
    let (wbic, sd) = mean_sd(&used);
    Ok(WbicEstimate {
        mode,
        sgld: sgld.clone(),
        samples: potential.samples(),
        batch_size: potential.batch_size(),
        wbic,
        se: sd / (used.len() as f64).sqrt(),
        per_chain,
        n_loss_at_star,
        implied_lambda: (wbic - n_loss_at_star) / n.ln(),
        traces,
        diagnostics,
        seconds: start.elapsed().as_secs_f64(),
    })
}

impl WbicEstimate {
    /// Warnings specific to WBIC: a negative implied λ means the chains found a lower training loss
    /// than the checkpoint's (w* is not a minimum, e.g. an early checkpoint), so n·L_n(w*) is not the
    /// n·L_n(w₀) of WBIC ≈ n·L_n(w₀) + λ·ln n.
    pub fn extra_warnings(&self) -> Vec<String> {
        if self.implied_lambda < 0.0 {
            vec![format!(
                "negative implied learning coefficient ({:.2}): the chains reached lower loss than the checkpoint, which is not a minimum",
                self.implied_lambda
            )]
        } else {
            Vec::new()
        }
    }

    /// The progress line of `wbic` for the checkpoint `name`, the estimate called `key` (`wbic` or
    /// `wbic_devinterp`): `name: wbic = 2947.74 ± 0.52 (se over 2 chains), n·L_n(w*) = …, implied λ =
    /// …, ok, 0.4 s`; with one chain `(one chain: no spread)` instead of `± NaN`.
    pub fn summary_line(&self, name: &str, key: &str) -> String {
        let warnings = self.diagnostics.warnings.len() + self.extra_warnings().len();
        format!(
            "{name}: {key} = {}, n·L_n(w*) = {:.2}, implied λ = {:.2}, {}, {:.1} s",
            with_spread(self.wbic, self.se, self.diagnostics.used.len(), "se", 2),
            self.n_loss_at_star,
            self.implied_lambda,
            if warnings == 0 {
                "ok".to_string()
            } else {
                format!("{warnings} warning(s)")
            },
            self.seconds
        )
    }

    /// The `wbic` object of a record.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        match &self.mode {
            WbicMode::Watanabe { beta, beta_rule } => {
                m.insert("estimator".into(), Value::from("wbic"));
                m.insert("wbic".into(), finite_or_null(self.wbic));
                m.insert("wbic_se".into(), finite_or_null(self.se));
                m.insert("beta".into(), Value::from(*beta));
                m.insert("beta_rule".into(), Value::from(beta_rule.as_str()));
                m.insert(
                    "localisation".into(),
                    Value::from(if self.sgld.localization > 0.0 {
                        "local WBIC: SGLD localised at w* with gamma > 0"
                    } else {
                        "none (global WBIC)"
                    }),
                );
            }
            WbicMode::Devinterp { nbeta_rule } => {
                m.insert(
                    "estimator".into(),
                    Value::from("devinterp: n × mean minibatch loss of SGLD at the LLC's nβ (the paper's 'WBIC')"),
                );
                m.insert("wbic_devinterp".into(), finite_or_null(self.wbic));
                m.insert("wbic_devinterp_se".into(), finite_or_null(self.se));
                m.insert("nbeta_rule".into(), Value::from(nbeta_rule.as_str()));
            }
        }
        m.insert(
            "per_chain".into(),
            Value::from(
                self.per_chain
                    .iter()
                    .map(|&x| finite_or_null(x))
                    .collect::<Vec<_>>(),
            ),
        );
        m.insert(
            "n_loss_at_checkpoint".into(),
            finite_or_null(self.n_loss_at_star),
        );
        m.insert("implied_lambda".into(), finite_or_null(self.implied_lambda));
        m.insert(
            "draw_estimate".into(),
            Value::from("n × L_m(w_t) at each draw (unbiased for n·L_n(w_t))"),
        );
        m.insert("nbeta".into(), Value::from(self.sgld.nbeta));
        m.insert("batch_size".into(), Value::from(self.batch_size));
        m.insert("samples".into(), Value::from(self.samples));
        m.extend(settings_json(&self.sgld));
        m.insert("diagnostics".into(), self.diagnostics.to_json(&self.traces));
        m.extend(self.diagnostics.verdict(&self.extra_warnings()));
        m.insert("seconds".into(), Value::from(self.seconds));
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::AnalyticPotential;

    fn sgld(chains: usize) -> SgldConfig {
        SgldConfig {
            step_size: 1e-4,
            nbeta: 10.0,
            localization: 0.0,
            weight_decay: 0.0,
            bounding_box: None,
            draws: 50,
            burn_in: 0,
            thin: 1,
            chains,
            threads: 1,
            seed: 3,
        }
    }

    fn watanabe(beta: f64) -> WbicMode {
        WbicMode::Watanabe {
            beta,
            beta_rule: "given".into(),
        }
    }

    #[test]
    fn a_beta_that_is_not_a_positive_number_is_refused() {
        let pot = AnalyticPotential::Quadratic { dim: 2 };
        for beta in [f64::NAN, f64::INFINITY, 0.0, -1.0] {
            let e = estimate_wbic(&pot, &[0.0, 0.0], &sgld(2), watanabe(beta)).unwrap_err();
            assert!(
                e.to_string()
                    .starts_with("--beta must be a positive number"),
                "{e}"
            );
        }
    }

    #[test]
    fn watanabes_temperature_is_one_over_ln_n_unless_given() {
        // ln 1000 = 3 ln 10 = 6.907755278982137.
        let (mode, nbeta) = watanabe_temperature(1000, None).unwrap();
        let ln_n = 3.0 * std::f64::consts::LN_10;
        let WbicMode::Watanabe { beta, beta_rule } = mode else {
            panic!("{mode:?}")
        };
        assert!((beta - 1.0 / 6.907755278982137).abs() < 1e-15, "{beta}");
        assert!((beta * ln_n - 1.0).abs() < 1e-15);
        assert!((nbeta - 1000.0 / ln_n).abs() < 1e-12, "{nbeta}");
        assert_eq!(beta_rule, "1/ln n with n = 1000");
        let (mode, nbeta) = watanabe_temperature(200, Some(0.05)).unwrap();
        assert_eq!(mode, watanabe(0.05));
        assert_eq!(nbeta, 10.0);
    }

    #[test]
    fn a_temperature_whose_nbeta_is_not_finite_is_refused() {
        for (n, given) in [(1, None), (10, Some(f64::MAX))] {
            let e = watanabe_temperature(n, given).unwrap_err().to_string();
            assert!(
                e.starts_with("--beta ") && e.contains("is not a finite number"),
                "{e}"
            );
        }
    }

    #[test]
    fn one_chain_has_no_spread_and_says_so() {
        let pot = AnalyticPotential::Quadratic { dim: 2 };
        let one = estimate_wbic(&pot, &[0.0, 0.0], &sgld(1), watanabe(0.5)).unwrap();
        assert!(one.se.is_nan());
        let line = one.summary_line("ck", "wbic");
        assert!(
            line.starts_with(&format!(
                "ck: wbic = {:.2} (one chain: no spread), ",
                one.wbic
            )),
            "{line}"
        );
        assert!(!line.contains("NaN"), "{line}");
        let two = estimate_wbic(&pot, &[0.0, 0.0], &sgld(2), watanabe(0.5)).unwrap();
        let line = two.summary_line("ck", "wbic");
        assert!(
            line.contains(&format!(
                "{:.2} ± {:.2} (se over 2 chains)",
                two.wbic, two.se
            )),
            "{line}"
        );
    }
}
