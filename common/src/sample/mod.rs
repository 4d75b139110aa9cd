//! Sampling: SGLD over a generic potential, the local learning coefficient (LLC), WBIC, and the
//! diagnostics that say whether to trust them.
//!
//! - [`potential`]: the [`Potential`] trait; the network's minibatch cross-entropy.
//! - [`analytic`]: potentials with a known learning coefficient, for verification.
//! - [`deep_linear`]: a deep linear network's population loss (λ from [`theory`]), likewise.
//! - [`restrict`]: λ̂ over some tensors only, the rest held at w* (devinterp's `optimize_over`).
//! - [`sgld`]: devinterp's SGLD step, parallel chains with seeded streams, MALA acceptance.
//! - [`nbeta`]: the inverse temperature rules.
//! - [`llc`], [`wbic`]: the estimators; [`calibrate`]: the ε × nβ (or γ) grid.
//! - [`diagnostics`], [`estimate`]: R-hat, ESS, stationarity, the verdict.
//! - [`theory`]: closed-form learning coefficients (reduced rank regression, deep linear networks).
//! - [`special`]: Φ and Φ⁻¹. (The N(0, 1) noise of SGLD is [`crate::rng::NoiseSource`].)

pub mod analytic;
pub mod calibrate;
pub mod deep_linear;
pub mod diagnostics;
pub mod estimate;
pub mod inputs;
pub mod llc;
pub mod nbeta;
pub mod potential;
pub mod restrict;
pub mod sgld;
pub mod special;
pub mod theory;
pub mod wbic;

pub use analytic::AnalyticPotential;
pub use calibrate::{calibrate, log_spaced, CalibrationAxis};
pub use deep_linear::DeepLinearPotential;
pub use inputs::DataCache;
pub use llc::{estimate_llc, InitLoss, LlcConfig, LlcEstimate};
pub use nbeta::NBeta;
pub use potential::{NetworkPotential, Potential};
pub use restrict::{select_tensors, Restricted};
pub use sgld::{run_chain, run_chains, ChainTrace, SgldConfig};
pub use wbic::{estimate_wbic, watanabe_temperature, WbicEstimate, WbicMode};
