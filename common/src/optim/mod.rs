//! Optimisers over the flat f32 parameter vector.
//!
//! An [`Optimizer`] turns a minibatch gradient into an update. It sees the batch too ([`Batch`]),
//! because natural-gradient methods need more than the mean gradient. Its state can be saved to and
//! restored from an optimiser sidecar so that training resumes exactly.

mod adamw;
mod build;
mod direction_noise;
mod ngd;
mod ngd_axis;
mod ngd_exact;
mod settings_keys;
mod sgd;
mod step_ratio;
mod sym_eigen;

pub use adamw::{adamw_step, AdamW, AdamWConfig};
pub use build::{build, OptimizerSettings, OPTIMIZERS};
pub use direction_noise::{add_isotropic_noise, DirectionNoise, DirectionNoiseConfig};
pub use ngd::{Ngd, NgdConfig, NgdDtype, TensorPreconditioner};
pub use ngd_axis::{default_rank, AxisOutcome, AxisPreconditioner, AxisSettings, NgdReal};
pub use ngd_exact::{
    dense_direction, sample_gaussian_targets, sample_labels, woodbury_direction, Damping,
    ExactSolve, FisherKind, NgdExact, NgdExactConfig, WoodburyScratch,
};
pub use settings_keys::SETTING_KEYS;
pub use sgd::{Sgd, SgdConfig};
pub use step_ratio::{explosion_warning, StepRatioStats, EXPLOSION_RATIO};
pub use sym_eigen::{gram_eigen, Syevd, SymEigen};

use crate::model::Network;
use crate::Result;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// An optimiser's resumable state: named flat f32 tensors (the sidecar's type, defined by `io`).
pub use crate::io::OptimizerState;

/// The minibatch a gradient was computed on.
pub struct Batch<'a> {
    pub net: &'a Network,
    /// `batch × input_features`, normalised.
    pub x: &'a [f32],
    /// The batch's targets (labels, or float targets for the mean squared error).
    pub targets: crate::model::Targets<'a, f32>,
}

/// A first- or second-order optimiser.
pub trait Optimizer: Send {
    /// `sgd`, `ngd`, `ngd-exact`, `adamw`.
    fn name(&self) -> &'static str;
    /// Every hyperparameter that shapes the update, for records and checkpoint metadata.
    fn hyperparameters(&self) -> Map<String, Value>;
    /// θ ← update(θ, g). `grad` may be modified (it is scratch after the call).
    fn step(&mut self, params: &mut [f32], grad: &mut [f32], batch: &Batch) -> Result<()>;
    /// The state needed to resume exactly, as named flat tensors.
    fn state(&self) -> BTreeMap<String, Vec<f32>>;
    /// Restores [`Optimizer::state`].
    fn load_state(&mut self, state: &BTreeMap<String, Vec<f32>>) -> Result<()>;
    /// What the optimiser did since the last call (for the epoch record), then resets it.
    fn take_epoch_stats(&mut self) -> Map<String, Value> {
        Map::new()
    }
}

/// The optimiser's description for records: `{"name": ..., <hyperparameters>}`.
pub fn describe(opt: &dyn Optimizer) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), Value::from(opt.name()));
    m.extend(opt.hyperparameters());
    Value::Object(m)
}
