//! `--ngd-shadow-f64`: an f64-state preconditioner beside an f32 run, seeing the same gradients and
//! compared with the run's direction every step, never used.

use super::preconditioner::Preconditioners;
use super::settings::NgdConfig;
use super::stats::EpochStats;
use crate::io::finite_or_null;
use crate::model::ParamLayout;
use serde_json::{Map, Value};

/// The running comparison of the shadow with the f32 run over an epoch.
#[derive(Clone, Debug)]
pub(super) struct ShadowStats {
    /// Steps and Σ ‖d_f32 − d_f64‖/‖g‖ over all tensors.
    pub(super) steps: u64,
    pub(super) overall_sum: f64,
    /// Per tensor: Σ ‖d_f32,t − d_f64,t‖/‖g_t‖ and Σ cos(d_f32,t, d_f64,t), with their counts.
    pub(super) diff_sum: Vec<f64>,
    pub(super) diff_count: Vec<u64>,
    pub(super) cos_sum: Vec<f64>,
    pub(super) cos_count: Vec<u64>,
}

impl ShadowStats {
    pub(super) fn new(tensors: usize) -> Self {
        ShadowStats {
            steps: 0,
            overall_sum: 0.0,
            diff_sum: vec![0.0; tensors],
            diff_count: vec![0; tensors],
            cos_sum: vec![0.0; tensors],
            cos_count: vec![0; tensors],
        }
    }
}

/// The shadow f64 preconditioner of `--ngd-shadow-f64`.
#[derive(Clone, Debug)]
pub(super) struct Shadow {
    pub(super) pre: Preconditioners<f64>,
    /// The gradient, then the shadow's direction.
    pub(super) direction: Vec<f32>,
    /// ‖g_t‖² per tensor of this step.
    pub(super) grad_sq: Vec<f64>,
    /// The shadow's own preconditioner statistics (not reported).
    pub(super) own_stats: EpochStats,
    pub(super) stats: ShadowStats,
}

impl Shadow {
    pub(super) fn new(layout: &ParamLayout, cfg: &NgdConfig) -> Self {
        let n = layout.tensors.len();
        Shadow {
            pre: Preconditioners::new(layout, cfg),
            direction: Vec::new(),
            grad_sq: vec![0.0; n],
            own_stats: EpochStats::new(n),
            stats: ShadowStats::new(n),
        }
    }

    /// Keeps a copy of the gradient g (after weight decay) before the f32 preconditioner runs.
    pub(super) fn see_gradient(&mut self, layout: &ParamLayout, grad: &[f32]) {
        self.direction.clear();
        self.direction.extend_from_slice(grad);
        for (sq, spec) in self.grad_sq.iter_mut().zip(&layout.tensors) {
            *sq = grad[spec.range()]
                .iter()
                .map(|&v| (v as f64) * (v as f64))
                .sum();
        }
    }

    /// Preconditions the kept gradient in f64 and compares with the f32 run's direction `d32`.
    pub(super) fn compare(&mut self, layout: &ParamLayout, d32: &[f32]) {
        let mut d64 = std::mem::take(&mut self.direction);
        self.pre.precondition(layout, &mut d64, &mut self.own_stats);
        let s = &mut self.stats;
        let (mut diff_total, mut grad_total) = (0.0, 0.0);
        for (t, spec) in layout.tensors.iter().enumerate() {
            let (mut diff, mut dot, mut n32, mut n64) = (0.0, 0.0, 0.0, 0.0);
            for (&a, &b) in d32[spec.range()].iter().zip(&d64[spec.range()]) {
                let (a, b) = (a as f64, b as f64);
                diff += (a - b) * (a - b);
                dot += a * b;
                n32 += a * a;
                n64 += b * b;
            }
            let g = self.grad_sq[t];
            diff_total += diff;
            grad_total += g;
            if g > 0.0 {
                s.diff_sum[t] += (diff / g).sqrt();
                s.diff_count[t] += 1;
            }
            if n32 > 0.0 && n64 > 0.0 {
                s.cos_sum[t] += dot / (n32 * n64).sqrt();
                s.cos_count[t] += 1;
            }
        }
        if grad_total > 0.0 {
            s.overall_sum += (diff_total / grad_total).sqrt();
            s.steps += 1;
        }
        self.direction = d64;
    }

    /// `ngd_shadow_difference` into `m`; `shadow_difference` and `shadow_cosine` into each tensor's
    /// entry of `per`; then starts the next epoch's statistics.
    pub(super) fn take_epoch_stats(
        &mut self,
        layout: &ParamLayout,
        m: &mut Map<String, Value>,
        per: &mut Map<String, Value>,
    ) {
        let n = layout.tensors.len();
        let s = std::mem::replace(&mut self.stats, ShadowStats::new(n));
        self.own_stats = EpochStats::new(n);
        m.insert(
            "ngd_shadow_difference".into(),
            finite_or_null(s.overall_sum / s.steps as f64),
        );
        for (t, spec) in layout.tensors.iter().enumerate() {
            if let Some(Value::Object(e)) = per.get_mut(&spec.name) {
                e.insert(
                    "shadow_difference".into(),
                    finite_or_null(s.diff_sum[t] / s.diff_count[t] as f64),
                );
                e.insert(
                    "shadow_cosine".into(),
                    finite_or_null(s.cos_sum[t] / s.cos_count[t] as f64),
                );
            }
        }
    }
}
