//! `--optimizer ngd`: the paper's online natural gradient (ngd.py's `NGD`), per tensor and per axis,
//! followed by `torch.optim.SGD` momentum / Nesterov on the preconditioned gradient.
//!
//! For each parameter tensor and each axis a of size D > 1, in axis order, the tensor (as it comes out
//! of the previous axis) is viewed as X ∈ R^{N×D} with the axis as columns and is replaced by the
//! output of that axis's [`AxisPreconditioner`](super::AxisPreconditioner) (norm-preserving). Weight
//! decay, when set, is added to the gradient before preconditioning, as ngd.py does. The
//! preconditioner's state lives in f32 (as the paper ran) or f64 (`--ngd-dtype`).
//!
//! The files: [`settings`] (hyperparameters), [`preconditioner`] (the per-axis update and the
//! direction, per tensor and per model, and their sidecar state), [`stats`] (what the epoch record
//! counts), [`shadow`] (`--ngd-shadow-f64`), [`f64_bits`] (f64 state in f32 sidecar tensors).
//!
//! With `--ngd-shadow-f64` an f32-state run also keeps a shadow f64-state preconditioner that sees the
//! same gradient g every step (after weight decay) and whose output is only compared, never used:
//! per step it measures ‖d_f32 − d_f64‖/‖g‖ over all tensors and per tensor t, ‖d_f32,t − d_f64,t‖/‖g_t‖
//! and cos(d_f32,t, d_f64,t), where d is the preconditioned (norm-rescaled) direction before the
//! momentum stage, both as handed to that stage (rounded to f32). The f32 run's trajectory is the
//! same bit for bit with or without the shadow.

mod f64_bits;
mod preconditioner;
mod settings;
mod shadow;
mod stats;
#[cfg(test)]
mod tests;

pub(super) use f64_bits::{decode_f64, encode_f64};
use preconditioner::Preconditioners;
pub use preconditioner::TensorPreconditioner;
pub use settings::{NgdConfig, NgdDtype};
use shadow::Shadow;
use stats::{EpochStats, TensorStats};

use super::{host_view, Batch, Optimizer, Sgd, SgdConfig};
use crate::device::{Backend, CpuBackend};
use crate::io::finite_or_null;
use crate::model::ParamLayout;
use crate::Result;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

#[derive(Clone, Debug)]
enum AnyPreconditioners<B: Backend> {
    F32(Preconditioners<f32, B>),
    F64(Preconditioners<f64, B>),
}

/// The paper's NGD optimiser: online natural-gradient preconditioning, then SGD with momentum.
///
/// On backend `B`: every tensor's preconditioners (factors W, the N×D and r×D work matrices, the
/// tensor's working copy in the state's type) and the momentum buffer live in its memory; the r×r
/// refresh of each factor runs on the host ([`AxisPreconditioner`](super::AxisPreconditioner)).
/// The `--ngd-shadow-f64` comparison is a host diagnostic: it reads the gradient and the direction
/// as host memory (copied down from a device).
#[derive(Clone, Debug)]
pub struct Ngd<B: Backend = CpuBackend> {
    be: B,
    pub config: NgdConfig,
    layout: ParamLayout,
    pre: AnyPreconditioners<B>,
    shadow: Option<Box<Shadow>>,
    /// The host copy of a device's gradient for the shadow.
    shadow_host: Vec<f32>,
    sgd: Sgd<B>,
    stats: EpochStats,
    /// ‖d‖/‖g‖ of each step's direction (see [`super::StepRatioStats`]).
    step_ratio: super::StepRatioStats,
    total_nan_fallbacks: u64,
}

impl Ngd {
    /// An NGD optimiser for the tensors of `layout`, on the CPU ([`Ngd::new_on`]).
    pub fn new(config: NgdConfig, layout: &ParamLayout) -> Result<Self> {
        Self::new_on(CpuBackend, config, layout)
    }
}

impl<B: Backend> Ngd<B> {
    /// An NGD optimiser for the tensors of `layout`, its state on backend `be`.
    pub fn new_on(be: B, config: NgdConfig, layout: &ParamLayout) -> Result<Self> {
        config.validate()?;
        let pre = match config.dtype {
            NgdDtype::F32 => {
                AnyPreconditioners::F32(Preconditioners::new_on(be.clone(), layout, &config))
            }
            NgdDtype::F64 => {
                AnyPreconditioners::F64(Preconditioners::new_on(be.clone(), layout, &config))
            }
        };
        let sgd = Sgd::new_on(
            be.clone(),
            SgdConfig {
                weight_decay: 0.0,
                ..config.sgd
            },
        )?;
        Ok(Ngd {
            be,
            shadow_host: Vec::new(),
            config,
            layout: layout.clone(),
            pre,
            shadow: config
                .shadow_f64
                .then(|| Box::new(Shadow::new(layout, &config))),
            sgd,
            stats: EpochStats {
                tensors: vec![TensorStats::default(); layout.tensors.len()],
                ..Default::default()
            },
            step_ratio: Default::default(),
            total_nan_fallbacks: 0,
        })
    }

    /// Replaces `grad` (+ weight decay·θ) by its preconditioned direction, without the momentum stage.
    pub fn precondition(&mut self, params: B::View<'_, f32>, grad: B::ViewMut<'_, f32>) {
        self.precondition_summing(params, grad);
    }

    /// [`Ngd::precondition`], returning (Σ g², Σ d²) of the gradient after weight decay and of the
    /// direction, each in f64 left to right (see `Preconditioners::precondition`).
    fn precondition_summing(
        &mut self,
        params: B::View<'_, f32>,
        mut grad: B::ViewMut<'_, f32>,
    ) -> [f64; 2] {
        let wd = self.config.sgd.weight_decay as f32;
        if wd != 0.0 {
            self.be.axpy(wd, params, B::reborrow(&mut grad));
        }
        let before = self.stats.nan_fallbacks;
        if let Some(shadow) = &mut self.shadow {
            let g = host_view(&self.be, B::freeze(&grad), &mut self.shadow_host);
            shadow.see_gradient(&self.layout, g);
        }
        let g = B::reborrow(&mut grad);
        let sums = match &mut self.pre {
            AnyPreconditioners::F32(p) => p.precondition(&self.layout, g, &mut self.stats),
            AnyPreconditioners::F64(p) => p.precondition(&self.layout, g, &mut self.stats),
        };
        if let Some(shadow) = &mut self.shadow {
            let d = host_view(&self.be, B::freeze(&grad), &mut self.shadow_host);
            shadow.compare(&self.layout, d);
        }
        self.total_nan_fallbacks += self.stats.nan_fallbacks - before;
        sums
    }

    /// NaN fallbacks since construction.
    pub fn total_nan_fallbacks(&self) -> u64 {
        self.total_nan_fallbacks
    }
}

impl<B: Backend> Optimizer<B> for Ngd<B> {
    fn name(&self) -> &'static str {
        "ngd"
    }
    fn hyperparameters(&self) -> Map<String, Value> {
        self.config.to_json()
    }
    fn step(
        &mut self,
        params: B::ViewMut<'_, f32>,
        mut grad: B::ViewMut<'_, f32>,
        _batch: &Batch<'_, B>,
    ) -> Result<()> {
        // ‖g‖ and ‖d‖: Σ g² and Σ d² in f64 left to right (the bits of Backend::dot, the host loop
        // it replaced), then the roots. The pass that hands the direction back sums both over the
        // tensors, which tile the vector; ‖g‖ is the gradient before weight decay, so with decay
        // (or a vector longer than the tensors) each takes a pass of its own.
        let tiled = B::len(B::freeze(&grad)) == self.layout.total();
        let decayed = self.config.sgd.weight_decay as f32 != 0.0;
        let dot = |be: &B, g: B::View<'_, f32>| be.dot(g, g);
        let raw_grad_sq = (decayed || !tiled).then(|| dot(&self.be, B::freeze(&grad)));
        let [grad_sq, direction_sq] =
            self.precondition_summing(B::freeze(&params), B::reborrow(&mut grad));
        let direction_sq = if tiled {
            direction_sq
        } else {
            dot(&self.be, B::freeze(&grad))
        };
        self.step_ratio
            .record(raw_grad_sq.unwrap_or(grad_sq).sqrt(), direction_sq.sqrt());
        self.sgd.apply(params, grad);
        Ok(())
    }
    fn state(&self) -> BTreeMap<String, Vec<f32>> {
        let mut m = self.sgd.state();
        match &self.pre {
            AnyPreconditioners::F32(p) => p.state(&self.layout, "ngd", &mut m),
            AnyPreconditioners::F64(p) => p.state(&self.layout, "ngd", &mut m),
        }
        if let Some(shadow) = &self.shadow {
            shadow.pre.state(&self.layout, "ngd_shadow", &mut m);
        }
        m
    }
    fn load_state(&mut self, state: &BTreeMap<String, Vec<f32>>) -> Result<()> {
        self.sgd.load_state(state)?;
        let missing = "not an NGD sidecar?";
        match &mut self.pre {
            AnyPreconditioners::F32(p) => p.load_state(&self.layout, "ngd", missing, state)?,
            AnyPreconditioners::F64(p) => p.load_state(&self.layout, "ngd", missing, state)?,
        }
        if let Some(shadow) = &mut self.shadow {
            shadow.pre.load_state(
                &self.layout,
                "ngd_shadow",
                "the run was trained without --ngd-shadow-f64; resume without it",
                state,
            )?;
        }
        Ok(())
    }
    /// `ngd_nan_fallbacks` (axis calls whose output was NaN and that returned the raw gradient),
    /// `ngd_norm_ratio` (mean ‖X̂‖/‖X‖ before rescaling over all axis calls), and per tensor the mean
    /// cosine between the preconditioned direction and the gradient and the mean fraction of the
    /// factor's rank on the floor (over refreshes and axes). With the shadow also
    /// `ngd_shadow_difference` (mean ‖d_f32 − d_f64‖/‖g‖ over the epoch's steps) and per tensor
    /// `shadow_difference` (mean ‖d_f32,t − d_f64,t‖/‖g_t‖) and `shadow_cosine`. Always the step ratio
    /// ‖d‖/‖g‖ and the count of exploded steps (`ngd_step_ratio_*`, `ngd_exploded_steps`).
    fn take_epoch_stats(&mut self) -> Map<String, Value> {
        let s = std::mem::take(&mut self.stats);
        let mut m = Map::new();
        m.insert("ngd_nan_fallbacks".into(), Value::from(s.nan_fallbacks));
        m.insert(
            "ngd_norm_ratio".into(),
            finite_or_null(s.ratio_sum / s.ratio_count as f64),
        );
        let mut per = Map::new();
        for (spec, t) in self.layout.tensors.iter().zip(&s.tensors) {
            per.insert(
                spec.name.clone(),
                json!({
                    "cosine": finite_or_null(t.cosine_sum / t.cosine_count as f64),
                    "rank_on_floor": finite_or_null(t.floor_sum / t.floor_count as f64),
                }),
            );
        }
        if let Some(shadow) = &mut self.shadow {
            shadow.take_epoch_stats(&self.layout, &mut m, &mut per);
        }
        m.insert("ngd_tensors".into(), Value::Object(per));
        self.step_ratio.take("ngd", &mut m);
        self.stats.tensors = vec![TensorStats::default(); self.layout.tensors.len()];
        m
    }
}
