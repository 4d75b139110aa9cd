//! Stochastic gradient Langevin dynamics as devinterp implements it (Lau et al. 2023,
//! "Quantifying degeneracy in singular models via the learning coefficient"; devinterp's
//! `optim/sgld.py` and `SGMCMC.sgld`), run as independent chains in parallel threads.
//!
//! One step from w_t, on a fresh minibatch of m samples:
//!
//!   d_t     = nβ·∇L_m(w_t) + γ·(w_t − w*) + δ·w_t            (drift; δ = weight decay)
//!   w_{t+1} = w_t − (ε/2)·d_t + √ε·ξ_t,   ξ_t ~ N(0, I)
//!   w_{t+1} ← clamp(w_{t+1}, w* − b, w* + b)                 (only with a bounding box b)
//!
//! which samples (for small ε) p(w) ∝ exp(−nβ·L(w) − (γ/2)‖w − w*‖² − (δ/2)‖w‖²). The draw recorded at
//! step t is the minibatch loss L_m(w_t) at the pre-step weights, computed in the same forward pass
//! as the gradient (devinterp's callback receives that loss). After `burn_in` steps every `thin`-th
//! step is a draw.
//!
//! Each chain c uses its own stream `rng::stream(seed, Purpose::Chain, c)` for both its minibatch
//! order and its noise, so its result does not depend on how many threads run the chains. BLAS is
//! set to one thread: the chains are the parallelism.
//!
//! The chain also computes devinterp's MALA acceptance probability of each transition
//! w_{t−1} → w_t (devinterp `slt/mala.py`), with the Gaussian proposal q(w'|w) = N(w − (ε/2)d(w), εI)
//! and the energy U(w) = nβ·L_m(w) + (γ/2)‖w − w*‖² (devinterp omits weight decay from U; so do we):
//!
//!   a_t = min(1, exp(log q(w_{t−1}|w_t) − log q(w_t|w_{t−1}) + U(w_{t−1}) − U(w_t))).
//!
//! A step whose loss or drift is not finite ends the chain: it is reported as diverged at that draw.
//!
//! At every draw the chain also records ‖w_t − w*‖ at the draw's weights (summed in the same fused
//! pass as the update, from the w_t − w* it computes anyway) and, with a bounding box, the fraction of
//! w_t's coordinates that the previous step clamped onto the box: see
//! [`super::estimate::DistanceSummary`] for what is made of them.

use super::potential::Potential;
use crate::device::{Backend, CpuBackend};
use crate::rng::NoiseSource;
use crate::rng::{stream, Purpose};
use crate::{Error, Result};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

/// The most trace values (chains × draws × (1 + thin), 8 bytes each) a run may keep in memory: 2³² − 1,
/// 32 GiB. Longer runs failed with a capacity overflow or an aborting allocation.
pub const MAX_TRACE_VALUES: usize = u32::MAX as usize;

/// The sampler's settings. `nbeta` is already resolved (see [`super::NBeta`]).
#[derive(Clone, Debug, PartialEq)]
pub struct SgldConfig {
    /// ε, the step size.
    pub step_size: f64,
    /// nβ, the inverse temperature times n.
    pub nbeta: f64,
    /// γ, the localisation strength (0: none).
    pub localization: f64,
    /// δ, the weight decay (0: none).
    pub weight_decay: f64,
    /// b, the half-width of the box around w* that the chain is clamped to.
    pub bounding_box: Option<f64>,
    pub draws: usize,
    pub burn_in: usize,
    /// Steps between draws (1: every step is a draw).
    pub thin: usize,
    pub chains: usize,
    /// Worker threads for the chains (at most `chains` are used).
    pub threads: usize,
    pub seed: u64,
}

impl SgldConfig {
    /// Checks every setting; errors name the flag.
    pub fn validate(&self) -> Result<()> {
        let pos = |v: f64, name: &str| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(Error::invalid(format!(
                    "{name} must be a positive number (got {v})"
                )))
            }
        };
        let nonneg = |v: f64, name: &str| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(Error::invalid(format!(
                    "{name} must be zero or positive (got {v})"
                )))
            }
        };
        pos(self.step_size, "--epsilon (step size)")?;
        pos(self.nbeta, "--nbeta")?;
        nonneg(self.localization, "--gamma (localisation)")?;
        nonneg(self.weight_decay, "--weight-decay")?;
        if let Some(b) = self.bounding_box {
            pos(b, "--bounding-box")?;
        }
        for (v, name) in [
            (self.draws, "--draws"),
            (self.thin, "--thin"),
            (self.chains, "--chains"),
            (self.threads, "--threads"),
        ] {
            if v == 0 {
                return Err(Error::invalid(format!("{name} must be at least 1")));
            }
        }
        // The traces are kept in memory: chains × draws × (1 + thin) values (losses, acceptance).
        let kept = self
            .draws
            .checked_mul(self.thin)
            .and_then(|s| s.checked_add(self.burn_in))
            .and_then(|_| self.thin.checked_add(1))
            .and_then(|t| t.checked_mul(self.draws))
            .and_then(|v| v.checked_mul(self.chains));
        if !matches!(kept, Some(v) if v <= MAX_TRACE_VALUES) {
            return Err(Error::invalid(format!(
                "--chains {} × --draws {} × --thin {} (with --burn-in {}) is too long a run to keep its traces in memory (at most {MAX_TRACE_VALUES} values)",
                self.chains, self.draws, self.thin, self.burn_in
            )));
        }
        Ok(())
    }

    /// Total SGLD steps per chain: burn-in + draws × thin.
    pub fn steps(&self) -> usize {
        self.burn_in + self.draws * self.thin
    }
}

/// What one chain produced.
#[derive(Clone, Debug, PartialEq)]
pub struct ChainTrace {
    pub chain: usize,
    /// L_m(w_t) at each draw (pre-step weights). Shorter than `draws` if the chain diverged.
    pub losses: Vec<f64>,
    /// MALA acceptance probability of each transition between consecutive steps after burn-in.
    pub acceptance: Vec<f64>,
    /// The draw at which the loss or the weights became non-finite.
    pub diverged_at: Option<usize>,
    /// ‖w_T − w*‖ at the end of the chain.
    pub final_distance: f64,
    /// ‖w_t − w*‖ at each draw (the draw's pre-step weights), as long as `losses`.
    pub distances: Vec<f64>,
    /// With a bounding box: the mean over draws of the fraction of w_t's coordinates on the box
    /// (clamped by the step into w_t). None without a box.
    pub box_contact: Option<f64>,
    pub seconds: f64,
}

impl ChainTrace {
    pub fn mean_acceptance(&self) -> f64 {
        if self.acceptance.is_empty() {
            f64::NAN
        } else {
            self.acceptance.iter().sum::<f64>() / self.acceptance.len() as f64
        }
    }
}

/// Runs one chain from w* (see the module documentation) on the potential's backend: w, Δ and the
/// gradient live there and the fused update is its [`Backend::sgld_update`]; the per-step scalars
/// (loss, sums, acceptance) come back to the host, and w comes back once, for the final distance.
///
/// # Errors
/// When the potential cannot read a minibatch (a streamed data file truncated or removed while the
/// chain runs): the chain stops and its draws are not returned.
pub fn run_chain<P: Potential>(
    potential: &P,
    w_star: &[f32],
    cfg: &SgldConfig,
    chain: usize,
) -> Result<ChainTrace> {
    let start = std::time::Instant::now();
    let dim = potential.dim();
    assert_eq!(w_star.len(), dim, "w* has the potential's dimension");
    let be = potential.backend();
    type B<P> = <P as Potential>::Backend;
    let mut rng = stream(cfg.seed, Purpose::Chain, chain as u64);
    // The noise generator takes its state from the chain's stream first; the minibatch order then
    // continues the same stream.
    let mut noise_source = NoiseSource::from_stream(&mut rng);
    let mut state = potential.chain_state();
    let w_star_b = be.upload(w_star);
    let mut w = be.upload(w_star);
    // Δ_t = w_t − w_{t−1} (zero before the first step).
    let mut step_taken = be.zeros::<f32>(dim);
    let mut grad = be.zeros::<f32>(dim);
    let coef = StepCoefficients {
        half_eps: 0.5 * cfg.step_size as f32,
        sqrt_eps: cfg.step_size.sqrt() as f32,
        nbeta: cfg.nbeta as f32,
        gamma: cfg.localization as f32,
        decay: cfg.weight_decay as f32,
    };

    let mut losses = Vec::with_capacity(cfg.draws);
    let mut distances = Vec::with_capacity(cfg.draws);
    let mut box_contact_sum = 0.0;
    let mut acceptance = Vec::with_capacity(cfg.draws * cfg.thin);
    let mut diverged_at = None;
    let mut prev_loss = f64::NAN;
    // The previous step's sums: Δ_t·h_{t−1}, ‖h_{t−1}‖² and ‖w_{t−1} − w*‖² − ‖w_t − w*‖².
    let mut prev_sums: Option<UpdateSums> = None;
    let mut ended_finite = true;

    for step in 0..cfg.steps() {
        crate::progress::tick(1);
        let loss = potential.loss_and_gradient(
            &mut state,
            &mut rng,
            B::<P>::view(&w),
            B::<P>::view_mut(&mut grad),
        )?;
        let sampling = step >= cfg.burn_in;
        let draw = if sampling && (step - cfg.burn_in).is_multiple_of(cfg.thin) {
            Some((step - cfg.burn_in) / cfg.thin)
        } else {
            None
        };
        if !loss.is_finite() {
            diverged_at = Some(draw.unwrap_or(losses.len()));
            ended_finite = false;
            break;
        }
        if draw.is_some() {
            losses.push(loss);
        }
        let sums = be.sgld_update(
            B::<P>::view_mut(&mut w),
            B::<P>::view_mut(&mut step_taken),
            B::<P>::view(&w_star_b),
            B::<P>::view(&grad),
            &mut noise_source,
            &coef,
            cfg.bounding_box.map(|b| b as f32),
        );
        if draw.is_some() {
            distances.push(sums.distance2.sqrt());
            // w_t's coordinates on the box were clamped there by the previous step (none at w*).
            box_contact_sum += prev_sums.as_ref().map_or(0.0, |p| p.clamped as f64);
        }
        if let Some(prev) = prev_sums.as_ref().filter(|_| step > cfg.burn_in) {
            // Transition w_{t−1} → w_t (see `UpdateSums`).
            let proposal_diff = 2.0 * (sums.step_dot_drift + prev.next_step_dot_drift)
                + prev.drift_norm2
                - sums.drift_norm2;
            let log_ratio = proposal_diff / (2.0 * cfg.step_size)
                + cfg.nbeta * (prev_loss - loss)
                + 0.5 * cfg.localization * prev.next_localisation_diff;
            acceptance.push(log_ratio.exp().min(1.0));
        }
        prev_loss = loss;
        let finite = sums.finite;
        prev_sums = Some(sums);
        if !finite {
            diverged_at = Some(draw.map_or(losses.len(), |d| d + 1));
            ended_finite = false;
            break;
        }
    }
    if ended_finite {
        // Only the buffers of a chain that stayed finite go back to the potential (a later chain
        // never meets a stale non-finite value, even in a buffer it overwrites).
        potential.recycle(state);
    }
    if diverged_at.is_some_and(|d| d >= cfg.draws) {
        // Diverged on the very last update: every draw was recorded and is finite.
        diverged_at = None;
    }
    let mut w_host = vec![0f32; dim];
    be.download(B::<P>::view(&w), &mut w_host);
    let final_distance = w_host
        .iter()
        .zip(w_star)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let box_contact = cfg
        .bounding_box
        .map(|_| box_contact_sum / (distances.len().max(1) * dim.max(1)) as f64);
    Ok(ChainTrace {
        chain,
        losses,
        acceptance,
        diverged_at,
        final_distance,
        distances,
        box_contact,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The scalars of one SGLD step (see [`update`]).
pub struct StepCoefficients {
    /// ε/2.
    pub half_eps: f32,
    /// √ε.
    pub sqrt_eps: f32,
    pub nbeta: f32,
    /// γ.
    pub gamma: f32,
    /// δ, the weight decay.
    pub decay: f32,
}

/// What the update pass at step t returns besides w_{t+1} and Δ_{t+1}, with h_t = (ε/2)·d(w_t) and
/// Δ_t = w_t − w_{t−1}.
///
/// The MALA log-ratio of the transition w_{t−1} → w_t needs
/// F − R = ‖w_t − w_{t−1} + h_{t−1}‖² − ‖w_{t−1} − w_t + h_t‖² = 2Δ_t·(h_{t−1} + h_t) + ‖h_{t−1}‖² − ‖h_t‖²
/// and ‖w_{t−1} − w*‖² − ‖w_t − w*‖² = −Δ_t·((w_{t−1} − w*) + (w_t − w*)). Every piece is an inner
/// product of two vectors that exist together in one pass (Δ_t with h_t at step t; Δ_{t+1} with h_t and
/// w_t at step t), so the sampler keeps one vector, Δ, instead of w_{t−1} and h_{t−1}: the pass reads
/// four arrays and writes two. No piece is large next to the result (the norms ‖Δ‖² ≈ εP that would
/// cancel are never formed), so f32 sums in blocks, added in f64, lose nothing that matters.
pub struct UpdateSums {
    /// Δ_t·h_t.
    pub step_dot_drift: f64,
    /// Δ_{t+1}·h_t.
    pub next_step_dot_drift: f64,
    /// ‖h_t‖².
    pub drift_norm2: f64,
    /// ‖w_t − w*‖² − ‖w_{t+1} − w*‖² = Σ −Δ_{t+1}·(2(w_t − w*) + Δ_{t+1}).
    pub next_localisation_diff: f64,
    /// ‖w_t − w*‖², the squared distance of the pre-step weights from w*.
    pub distance2: f64,
    /// How many coordinates of w_{t+1} the bounding box clamped (0 without a box).
    pub clamped: u64,
    /// Whether w_{t+1} is finite.
    pub finite: bool,
}

/// One fused pass over the parameters at step t, drawing the noise ξ block by block from `noise`:
/// h = (ε/2)(nβ·g + γ(w − w*) + δ·w), w ← clamp(w − h + √ε·ξ), `step` ← Δ_{t+1} = (new w) − (old w),
/// and the sums of [`UpdateSums`] (`step` holds Δ_t on entry). The kernel is the backend's
/// [`Backend::sgld_update`]: blocks of 512 (a multiple of the noise's round of 16, so the noise
/// equals one fill of the whole vector), each summed in 8 f32 lanes and added to f64 accumulators.
/// This is the update on host slices ([`CpuBackend`]); [`run_chain`] calls its potential's backend.
#[inline]
pub fn update(
    w: &mut [f32],
    step: &mut [f32],
    w_star: &[f32],
    grad: &[f32],
    noise: &mut NoiseSource,
    c: &StepCoefficients,
    bound: Option<f32>,
) -> UpdateSums {
    CpuBackend.sgld_update(w, step, w_star, grad, noise, c, bound)
}

/// Runs `cfg.chains` chains on `min(cfg.threads, cfg.chains)` threads (work-stealing by chain index),
/// with single-threaded BLAS. Results are in chain order and independent of the thread count.
pub fn run_chains<P: Potential>(
    potential: &P,
    w_star: &[f32],
    cfg: &SgldConfig,
) -> Result<Vec<ChainTrace>> {
    cfg.validate()?;
    if w_star.len() != potential.dim() {
        return Err(Error::invalid(format!(
            "w* has {} entries but the potential has {} parameters",
            w_star.len(),
            potential.dim()
        )));
    }
    crate::device::cpu::set_blas_threads(1);
    let _progress = crate::progress::begin(
        format!(
            "{}: {} chain(s) x {} draws",
            crate::progress::tool(),
            cfg.chains,
            cfg.draws
        ),
        "SGLD steps",
        (cfg.chains * cfg.steps()) as u64,
    );
    let threads = cfg.threads.min(cfg.chains).max(1);
    let next = AtomicUsize::new(0);
    // A chain that fails (its data cannot be read) stops the others from starting new chains.
    let failed = AtomicBool::new(false);
    let results: Mutex<Vec<Option<Result<ChainTrace>>>> =
        Mutex::new((0..cfg.chains).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let c = next.fetch_add(1, Ordering::Relaxed);
                if c >= cfg.chains || failed.load(Ordering::Relaxed) {
                    break;
                }
                let trace = run_chain(potential, w_star, cfg, c);
                if trace.is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
                results.lock().expect("no poisoned lock")[c] = Some(trace);
            });
        }
    });
    // A chain is skipped only once another has failed, so an error, if any, is returned here.
    let mut traces = Vec::with_capacity(cfg.chains);
    for t in results.into_inner().expect("no poisoned lock") {
        match t {
            Some(Ok(t)) => traces.push(t),
            Some(Err(e)) => return Err(e),
            None => {}
        }
    }
    assert_eq!(traces.len(), cfg.chains, "chains skipped without a failure");
    Ok(traces)
}
