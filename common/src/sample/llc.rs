//! The local learning coefficient estimated by SGLD (Lau et al. 2023; devinterp's `LLCEstimator`).
//!
//! Per chain c with draws w_1..w_T (after burn-in and thinning):
//!
//!   λ̂_c = nβ·( (1/T) Σ_t L_m(w_t) − L_init )
//!
//! with L_m(w_t) the minibatch loss at the draw's pre-step weights and L_init the loss at w*: by
//! default devinterp's estimate (the mean of minibatch losses at w* over as many minibatches as there
//! are chains, `get_init_loss_multi_batch`), or the exact full-batch L_n(w*). The estimate is the
//! mean of λ̂_c over the chains that did not diverge; its spread is their sample standard deviation.

use super::estimate::{mean_sd, settings_json, with_spread, ChainDiagnostics};
use super::nbeta::NBeta;
use super::potential::Potential;
use super::sgld::{run_chains, ChainTrace, SgldConfig};
use crate::device::Backend;
use crate::io::finite_or_null;
use crate::rng::{stream, Purpose};
use crate::{Error, Result};
use serde_json::{json, Map, Value};

/// The chain index of the stream that draws L_init's minibatches (disjoint from every real chain).
pub const INIT_LOSS_STREAM: u64 = 1 << 40;

/// How L_init, the loss at w*, is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitLoss {
    /// The mean of the minibatch losses at w* over `count` minibatches (devinterp: count = chains),
    /// drawn from the stream `rng::stream(seed, Chain, 2^40)`.
    Minibatches { count: usize },
    /// L_n(w*) on the whole training set.
    Full,
}

/// Everything that shapes an LLC estimate. `sgld.nbeta` is overwritten by `nbeta` resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct LlcConfig {
    pub sgld: SgldConfig,
    pub nbeta: NBeta,
    pub init_loss: InitLoss,
}

impl LlcConfig {
    /// Checks every setting (the sampler's but its nβ, which comes from the rule); errors name the
    /// flag.
    ///
    /// # Errors
    /// An invalid sampler setting ([`SgldConfig::validate`]), an nβ that is not a positive number,
    /// or L_init from zero minibatches.
    pub fn validate(&self) -> Result<()> {
        let mut sgld = self.sgld.clone();
        sgld.nbeta = 1.0;
        sgld.validate()?;
        self.nbeta.validate()?;
        if self.init_loss == (InitLoss::Minibatches { count: 0 }) {
            return Err(Error::invalid(
                "--init-loss-batches must be at least 1 (got 0)",
            ));
        }
        Ok(())
    }
}

/// An LLC estimate with its chains and diagnostics.
#[derive(Clone, Debug)]
pub struct LlcEstimate {
    /// The sampler settings actually used (nβ resolved).
    pub sgld: SgldConfig,
    pub nbeta_rule: NBeta,
    pub init_loss_method: InitLoss,
    pub samples: usize,
    pub batch_size: usize,
    /// Mean λ̂ over the chains that did not diverge.
    pub llc: f64,
    /// Sample standard deviation of λ̂_c across those chains.
    pub llc_sd: f64,
    /// λ̂_c of every chain (NaN for a diverged one).
    pub per_chain: Vec<f64>,
    pub init_loss: f64,
    pub traces: Vec<ChainTrace>,
    pub diagnostics: ChainDiagnostics,
    pub seconds: f64,
}

/// L_init at w* (see [`InitLoss`]).
pub fn init_loss<P: Potential>(
    potential: &P,
    w_star: &[f32],
    method: InitLoss,
    seed: u64,
) -> Result<f64> {
    match method {
        InitLoss::Full => potential.full_loss(w_star),
        InitLoss::Minibatches { count } => {
            let mut rng = stream(seed, Purpose::Chain, INIT_LOSS_STREAM);
            let mut state = potential.chain_state();
            let w = potential.backend().upload(w_star);
            let count = count.max(1);
            let mut sum = 0.0;
            for _ in 0..count {
                sum += potential.minibatch_loss(
                    &mut state,
                    &mut rng,
                    <P::Backend as Backend>::view(&w),
                )?;
            }
            if sum.is_finite() {
                // The first chain takes these buffers over.
                potential.recycle(state);
            }
            Ok(sum / count as f64)
        }
    }
}

/// Runs the chains and estimates λ̂ (see the module documentation).
///
/// # Errors
/// Invalid settings (see [`LlcConfig::validate`]), an undefined nβ rule, or a failing full loss.
pub fn estimate_llc<P: Potential>(
    potential: &P,
    w_star: &[f32],
    cfg: &LlcConfig,
) -> Result<LlcEstimate> {
    let start = std::time::Instant::now();
    cfg.validate()?;
    let mut sgld = cfg.sgld.clone();
    sgld.nbeta = cfg
        .nbeta
        .resolve(potential.batch_size(), potential.samples())?;
    sgld.validate()?;
    let l_init = init_loss(potential, w_star, cfg.init_loss, sgld.seed)?;
    let traces = run_chains(potential, w_star, &sgld)?;
    let diagnostics = ChainDiagnostics::new(&traces);
    let per_chain: Vec<f64> = traces
        .iter()
        .zip(&diagnostics.mean_loss)
        .map(|(_, &m)| sgld.nbeta * (m - l_init))
        .collect();
    let used: Vec<f64> = diagnostics.used.iter().map(|&c| per_chain[c]).collect();
    let (llc, llc_sd) = mean_sd(&used);
    Ok(LlcEstimate {
        sgld,
        nbeta_rule: cfg.nbeta,
        init_loss_method: cfg.init_loss,
        samples: potential.samples(),
        batch_size: potential.batch_size(),
        llc,
        llc_sd,
        per_chain,
        init_loss: l_init,
        traces,
        diagnostics,
        seconds: start.elapsed().as_secs_f64(),
    })
}

impl LlcEstimate {
    /// Warnings specific to the LLC (on top of the chains' diagnostics).
    pub fn extra_warnings(&self) -> Vec<String> {
        if self.llc < 0.0 {
            vec![format!(
                "negative LLC ({:.3}): the chains found lower loss than w* (w* is not a local minimum, or L_init is noisy: try --init-loss full)",
                self.llc
            )]
        } else {
            Vec::new()
        }
    }

    /// The progress line of `llc` for the checkpoint `name`: `name: λ̂ = 1.234 ± 0.056 (sd over 2
    /// chains), L_init …, nβ …, ok, 1.2 s`; with one chain `(one chain: no spread)` instead of `± NaN`.
    pub fn summary_line(&self, name: &str) -> String {
        let warnings = self.diagnostics.warnings.len() + self.extra_warnings().len();
        format!(
            "{name}: λ̂ = {}, L_init {:.5}, nβ {:.3}, {}, {:.1} s",
            with_spread(self.llc, self.llc_sd, self.diagnostics.used.len(), "sd", 3),
            self.init_loss,
            self.sgld.nbeta,
            if warnings == 0 {
                "ok".to_string()
            } else {
                format!("{warnings} warning(s)")
            },
            self.seconds
        )
    }

    /// The `llc` object of a record: the estimate, each chain's value, L_init, every setting,
    /// the diagnostics and the verdict.
    pub fn to_json(&self) -> Value {
        let used = self.diagnostics.used.len();
        let mut m = Map::new();
        m.insert("estimator".into(), Value::from("sgld"));
        m.insert("llc".into(), finite_or_null(self.llc));
        m.insert("llc_sd".into(), finite_or_null(self.llc_sd));
        m.insert(
            "llc_se".into(),
            finite_or_null(self.llc_sd / (used as f64).sqrt()),
        );
        m.insert(
            "llc_per_chain".into(),
            Value::from(
                self.per_chain
                    .iter()
                    .map(|&x| finite_or_null(x))
                    .collect::<Vec<_>>(),
            ),
        );
        m.insert("chains_used".into(), Value::from(used));
        m.insert(
            "excluded_chains".into(),
            Value::from(
                self.diagnostics
                    .diverged
                    .iter()
                    .map(|&(c, d)| json!({"chain": c, "reason": format!("diverged: non-finite loss at draw {d}")}))
                    .collect::<Vec<_>>(),
            ),
        );
        m.insert("init_loss".into(), finite_or_null(self.init_loss));
        let (method, count) = match self.init_loss_method {
            InitLoss::Full => ("full", Value::Null),
            InitLoss::Minibatches { count } => ("minibatches", Value::from(count)),
        };
        m.insert("init_loss_method".into(), Value::from(method));
        m.insert("init_loss_batches".into(), count);
        m.extend(
            self.nbeta_rule
                .describe(self.sgld.nbeta, self.batch_size, self.samples),
        );
        m.insert("batch_size".into(), Value::from(self.batch_size));
        m.insert("samples".into(), Value::from(self.samples));
        m.extend(settings_json(&self.sgld));
        m.insert("diagnostics".into(), self.diagnostics.to_json(&self.traces));
        m.extend(self.diagnostics.verdict(&self.extra_warnings()));
        m.insert("seconds".into(), Value::from(self.seconds));
        Value::Object(m)
    }
}

/// The per-draw loss trace as JSON lines `{"chain", "draw", "loss", "acceptance"}` (plus `fields` on
/// every line), for `--trace-out`. `acceptance` is the MALA acceptance probability of the step into
/// the draw when every step is a draw (thinning 1; null for draw 0), else absent.
pub fn trace_lines(traces: &[ChainTrace], fields: &Map<String, Value>, thin: usize) -> String {
    let mut out = String::new();
    for t in traces {
        for (d, &loss) in t.losses.iter().enumerate() {
            let mut line = fields.clone();
            line.insert("chain".into(), Value::from(t.chain));
            line.insert("draw".into(), Value::from(d));
            line.insert("loss".into(), finite_or_null(loss));
            if thin == 1 {
                let a = d.checked_sub(1).and_then(|k| t.acceptance.get(k)).copied();
                line.insert("acceptance".into(), a.map_or(Value::Null, finite_or_null));
            }
            out.push_str(&Value::Object(line).to_string());
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::AnalyticPotential;

    fn config(chains: usize) -> LlcConfig {
        LlcConfig {
            sgld: SgldConfig {
                step_size: 1e-4,
                nbeta: 1.0,
                localization: 100.0,
                weight_decay: 0.0,
                bounding_box: None,
                draws: 50,
                burn_in: 0,
                thin: 1,
                chains,
                threads: 1,
                seed: 3,
            },
            nbeta: NBeta::Value(10.0),
            init_loss: InitLoss::Full,
        }
    }

    #[test]
    fn meaningless_settings_are_refused_naming_the_flag() {
        let pot = AnalyticPotential::Quadratic { dim: 2 };
        let mut zero_batches = config(2);
        zero_batches.init_loss = InitLoss::Minibatches { count: 0 };
        let mut nan_nbeta = config(2);
        nan_nbeta.nbeta = NBeta::Value(f64::NAN);
        let mut long_burn_in = config(2);
        long_burn_in.sgld.burn_in = usize::MAX;
        let mut huge_thin = config(2);
        huge_thin.sgld.thin = usize::MAX;
        let mut too_many_draws = config(2);
        too_many_draws.sgld.draws = 4_000_000_000_000_000_000;
        for (cfg, flag) in [
            (zero_batches, "--init-loss-batches"),
            (nan_nbeta, "--nbeta"),
            (
                long_burn_in,
                "--chains 2 × --draws 50 × --thin 1 (with --burn-in",
            ),
            (huge_thin, "--chains"),
            (too_many_draws, "--chains"),
        ] {
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.starts_with(flag), "{cfg:?}: {e}");
            let e = estimate_llc(&pot, &[0.0, 0.0], &cfg).unwrap_err();
            assert!(e.to_string().starts_with(flag), "{e}");
        }
        assert!(config(2).validate().is_ok());
    }

    #[test]
    fn one_chain_has_no_spread_and_says_so() {
        let pot = AnalyticPotential::Quadratic { dim: 2 };
        let one = estimate_llc(&pot, &[0.0, 0.0], &config(1)).unwrap();
        assert!(one.llc_sd.is_nan());
        let line = one.summary_line("ck.safetensors");
        assert!(
            line.starts_with(&format!(
                "ck.safetensors: λ̂ = {:.3} (one chain: no spread), L_init ",
                one.llc
            )),
            "{line}"
        );
        assert!(!line.contains("NaN"), "{line}");
        let two = estimate_llc(&pot, &[0.0, 0.0], &config(2)).unwrap();
        let line = two.summary_line("ck");
        assert!(
            line.contains(&format!(
                "λ̂ = {:.3} ± {:.3} (sd over 2 chains)",
                two.llc, two.llc_sd
            )),
            "{line}"
        );
    }
}
