//! Optimisers over the flat f32 parameter vector.
//!
//! An [`Optimizer`] turns a minibatch gradient into an update. It sees the batch too ([`Batch`]),
//! because natural-gradient methods need more than the mean gradient. Its state can be saved to and
//! restored from an optimiser sidecar so that training resumes exactly.
//!
//! The optimisers run on a [`Backend`] `B`: the parameters, the gradient and the batch's inputs are
//! views of `B`'s memory, and each optimiser keeps its state there (SGD's momentum buffer, AdamW's
//! moments, online NGD's factors and scratch); the updates are backend operations
//! ([`Backend::sgd_step`], [`Backend::adamw_step`], gemm, …). What stays on the host: the r×r
//! refresh of online NGD's factors and exact NGD's B×B Cholesky solve (the small dense linear
//! algebra the issue leaves there), exact NGD's per-sample products (the network's per-sample
//! passes are host code; on a device they are staged through host memory), the `--ngd-shadow-f64`
//! comparison (a diagnostic), and the epoch statistics. The sidecar state comes down and goes up
//! through [`Backend::download`] / [`Backend::upload`].

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
pub use build::{build, build_on, OptimizerSettings, OPTIMIZERS};
pub use direction_noise::{
    add_isotropic_noise, add_isotropic_noise_on, DirectionNoise, DirectionNoiseConfig,
};
pub use ngd::{Ngd, NgdConfig, NgdDtype, TensorPreconditioner};
pub use ngd_axis::{default_rank, AxisOutcome, AxisPreconditioner, AxisSettings, NgdReal};
pub use ngd_exact::{
    dense_direction, sample_gaussian_targets, sample_labels, woodbury_direction,
    woodbury_direction_after_forward, Damping, ExactSolve, FisherKind, NgdExact, NgdExactConfig,
    WoodburyScratch,
};
pub use settings_keys::SETTING_KEYS;
pub use sgd::{Sgd, SgdConfig};
pub use step_ratio::{explosion_warning, StepRatioStats, EXPLOSION_RATIO};
pub use sym_eigen::{gram_eigen, Syevd, SymEigen};

use crate::device::{Backend, CpuBackend};
use crate::model::Network;
use crate::Result;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// An optimiser's resumable state: named flat f32 tensors (the sidecar's type, defined by `io`).
pub use crate::io::OptimizerState;

/// The minibatch a gradient was computed on.
pub struct Batch<'a, B: Backend = CpuBackend> {
    pub net: &'a Network,
    /// `batch × input_features`, normalised, in the backend's memory.
    pub x: B::View<'a, f32>,
    /// The batch's targets (labels, or float targets for the mean squared error), on the host.
    pub targets: crate::model::Targets<'a, f32>,
}

/// A first- or second-order optimiser on backend `B` (see the module documentation).
pub trait Optimizer<B: Backend = CpuBackend>: Send {
    /// `sgd`, `ngd`, `ngd-exact`, `adamw`.
    fn name(&self) -> &'static str;
    /// Every hyperparameter that shapes the update, for records and checkpoint metadata.
    fn hyperparameters(&self) -> Map<String, Value>;
    /// θ ← update(θ, g) for θ = `params` and g = `grad` (equal lengths, the model's P) in `B`'s
    /// memory. `grad` may be modified (it is scratch after the call).
    fn step(
        &mut self,
        params: B::ViewMut<'_, f32>,
        grad: B::ViewMut<'_, f32>,
        batch: &Batch<'_, B>,
    ) -> Result<()>;
    /// The state needed to resume exactly, as named flat tensors (on the host).
    fn state(&self) -> BTreeMap<String, Vec<f32>>;
    /// Restores [`Optimizer::state`].
    fn load_state(&mut self, state: &BTreeMap<String, Vec<f32>>) -> Result<()>;
    /// What the optimiser did since the last call (for the epoch record), then resets it.
    fn take_epoch_stats(&mut self) -> Map<String, Value> {
        Map::new()
    }
}

/// The optimiser's description for records: `{"name": ..., <hyperparameters>}`.
pub fn describe<B: Backend>(opt: &dyn Optimizer<B>) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), Value::from(opt.name()));
    m.extend(opt.hyperparameters());
    Value::Object(m)
}

/// `v` as host memory: itself on the CPU, else copied down into `scratch`.
pub(crate) fn host_view<'a, B: Backend, E: crate::device::Element>(
    be: &B,
    v: B::View<'a, E>,
    scratch: &'a mut Vec<E>,
) -> &'a [E] {
    match B::host(v) {
        Some(h) => h,
        None => {
            scratch.resize(B::len(v), E::default());
            be.download(v, scratch);
            scratch
        }
    }
}
