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

use super::estimate::{finite_or_null, mean_sd, settings_json, ChainDiagnostics};
use super::nbeta::NBeta;
use super::potential::Potential;
use super::sgld::{run_chains, ChainTrace, SgldConfig};
use crate::rng::{stream, Purpose};
use crate::Result;
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
            let count = count.max(1);
            let sum: f64 = (0..count)
                .map(|_| potential.minibatch_loss(&mut state, &mut rng, w_star))
                .sum();
            Ok(sum / count as f64)
        }
    }
}

/// Runs the chains and estimates λ̂ (see the module documentation).
///
/// # Errors
/// Invalid settings (see [`SgldConfig::validate`]), an undefined nβ rule, or a failing full loss.
pub fn estimate_llc<P: Potential>(
    potential: &P,
    w_star: &[f32],
    cfg: &LlcConfig,
) -> Result<LlcEstimate> {
    let start = std::time::Instant::now();
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
