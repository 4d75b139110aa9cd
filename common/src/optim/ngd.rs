//! `--optimizer ngd`: the paper's online natural gradient (ngd.py's `NGD`), per tensor and per axis,
//! followed by `torch.optim.SGD` momentum / Nesterov on the preconditioned gradient.
//!
//! For each parameter tensor and each axis a of size D > 1, in axis order, the tensor (as it comes out
//! of the previous axis) is viewed as X ∈ R^{N×D} with the axis as columns and is replaced by the
//! output of that axis's [`AxisPreconditioner`] (norm-preserving). Weight decay, when set, is added to
//! the gradient before preconditioning, as ngd.py does. The preconditioner's state lives in f32 (as the
//! paper ran) or f64 (`--ngd-dtype`).
//!
//! With `--ngd-shadow-f64` an f32-state run also keeps a shadow f64-state preconditioner that sees the
//! same gradient g every step (after weight decay) and whose output is only compared, never used:
//! per step it measures ‖d_f32 − d_f64‖/‖g‖ over all tensors and per tensor t, ‖d_f32,t − d_f64,t‖/‖g_t‖
//! and cos(d_f32,t, d_f64,t), where d is the preconditioned (norm-rescaled) direction before the
//! momentum stage, both as handed to that stage (rounded to f32). The f32 run's trajectory is the
//! same bit for bit with or without the shadow.

use super::ngd_axis::{default_rank, AxisOutcome, AxisPreconditioner, AxisSettings, NgdReal};
use super::{Batch, Optimizer, Sgd, SgdConfig};
use crate::io::finite_or_null;
use crate::model::ParamLayout;
use crate::{Error, Real, Result};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// The element type of the preconditioner's internal state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NgdDtype {
    F32,
    F64,
}

impl NgdDtype {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "f32" | "float32" => Ok(NgdDtype::F32),
            "f64" | "float64" => Ok(NgdDtype::F64),
            o => Err(Error::invalid(format!(
                "unknown NGD dtype {o:?} (expected f32 or f64)"
            ))),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            NgdDtype::F32 => "f32",
            NgdDtype::F64 => "f64",
        }
    }
}

/// Hyperparameters of the online NGD (defaults: the paper's, α = 0.01 of its 30-seed runs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NgdConfig {
    pub alpha: f64,
    pub eta: f64,
    pub epsilon: f64,
    pub delta: f64,
    /// Factor rank r; `None` = min(⌊(D+1)/2⌋, 80). An explicit rank is capped at D − 1 per axis.
    pub rank: Option<usize>,
    pub update_period: u64,
    pub dtype: NgdDtype,
    /// Run a shadow f64-state preconditioner alongside the f32 one and record how far apart their
    /// directions are (`--ngd-shadow-f64`; f32 state only).
    pub shadow_f64: bool,
    /// The momentum stage (its weight decay is applied before preconditioning).
    pub sgd: SgdConfig,
}

impl Default for NgdConfig {
    fn default() -> Self {
        NgdConfig {
            alpha: 0.01,
            eta: 0.9,
            epsilon: 1e-10,
            delta: 5e-4,
            rank: None,
            update_period: 4,
            dtype: NgdDtype::F32,
            shadow_f64: false,
            sgd: SgdConfig::default(),
        }
    }
}

impl NgdConfig {
    /// Refuses settings the algorithm is not defined for, with the flag's name.
    pub fn validate(&self) -> Result<()> {
        self.sgd.validate()?;
        if !(self.eta > 0.0 && self.eta <= 1.0) {
            return Err(Error::invalid(format!(
                "invalid --ngd-eta {} (the Fisher EMA rate must be in (0, 1])",
                self.eta
            )));
        }
        if !(self.alpha.is_finite() && self.alpha >= 0.0) {
            return Err(Error::invalid(format!(
                "invalid --ngd-alpha {} (must be finite and >= 0)",
                self.alpha
            )));
        }
        if !(self.epsilon.is_finite() && self.epsilon > 0.0) {
            return Err(Error::invalid(format!(
                "invalid --ngd-epsilon {} (must be > 0)",
                self.epsilon
            )));
        }
        if !(self.delta.is_finite() && self.delta >= 0.0) {
            return Err(Error::invalid(format!(
                "invalid --ngd-delta {} (must be >= 0)",
                self.delta
            )));
        }
        if self.update_period == 0 {
            return Err(Error::invalid(
                "invalid --ngd-update-period 0 (must be >= 1)",
            ));
        }
        if self.rank == Some(0) {
            return Err(Error::invalid("invalid --ngd-rank 0 (must be >= 1)"));
        }
        if self.shadow_f64 && self.dtype == NgdDtype::F64 {
            return Err(Error::invalid(
                "--ngd-shadow-f64 compares an f32-state run with an f64 shadow; this run's state is \
                 already f64 (--ngd-dtype f64)",
            ));
        }
        Ok(())
    }

    /// The rank used for an axis of size `dim` (≥ 2).
    pub fn rank_for(&self, dim: usize) -> usize {
        match self.rank {
            None => default_rank(dim),
            Some(k) => k.min(dim - 1),
        }
    }

    pub fn to_json(&self) -> Map<String, Value> {
        let mut m = self.sgd.to_json();
        let v = json!({
            "alpha": self.alpha,
            "eta": self.eta,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "rank": match self.rank { None => Value::from("auto"), Some(k) => Value::from(k) },
            "update_period": self.update_period,
            "ngd_dtype": self.dtype.name(),
        });
        if let Value::Object(o) = v {
            m.extend(o);
        }
        if self.shadow_f64 {
            m.insert("shadow_f64".into(), Value::from(true));
        }
        m
    }

    fn axis_settings(&self) -> AxisSettings {
        AxisSettings {
            alpha: self.alpha,
            eta: self.eta,
            epsilon: self.epsilon,
            delta: self.delta,
            update_period: self.update_period,
        }
    }
}

/// Running statistics of one tensor over an epoch.
#[derive(Clone, Debug, Default)]
struct TensorStats {
    cosine_sum: f64,
    cosine_count: u64,
    floor_sum: f64,
    floor_count: u64,
}

/// The preconditioners of one tensor: one per axis of size > 1, in axis order.
#[derive(Clone, Debug)]
pub struct TensorPreconditioner<T: NgdReal> {
    pub shape: Vec<usize>,
    /// (axis, preconditioner) for the axes with size > 1.
    pub axes: Vec<(usize, AxisPreconditioner<T>)>,
    cur: Vec<T>,
    view: Vec<T>,
}

impl<T: NgdReal> TensorPreconditioner<T> {
    pub fn new(shape: &[usize], cfg: &NgdConfig) -> Self {
        let numel: usize = shape.iter().product();
        let axes = shape
            .iter()
            .enumerate()
            .filter(|(_, &d)| d > 1)
            .map(|(a, &d)| {
                let prefix: usize = shape[..a].iter().product();
                let post: usize = shape[a + 1..].iter().product();
                // The first axis of a tensor is X transposed in place (no copy) unless it is also
                // the last; middle axes are gathered into a scratch view.
                let transposed = prefix == 1 && post > 1;
                (
                    a,
                    AxisPreconditioner::new(
                        numel / d,
                        d,
                        cfg.rank_for(d),
                        transposed,
                        cfg.axis_settings(),
                    ),
                )
            })
            .collect();
        TensorPreconditioner {
            shape: shape.to_vec(),
            axes,
            cur: vec![T::zero(); numel],
            view: vec![T::zero(); numel],
        }
    }

    /// Preconditions `g` (the tensor, row-major in its shape) in place through every axis; `on_axis`
    /// sees each axis's outcome.
    pub fn precondition(&mut self, g: &mut [T], mut on_axis: impl FnMut(usize, AxisOutcome)) {
        for (axis, pre) in self.axes.iter_mut() {
            let a = *axis;
            let dim = self.shape[a];
            let post: usize = self.shape[a + 1..].iter().product();
            let prefix: usize = self.shape[..a].iter().product();
            // X[(p, q), d] = g[p, d, q]: the axis as columns, the rest as rows. The last axis is
            // g itself, the first (prefix 1) is gᵀ, which the preconditioner reads transposed.
            let gathered = post != 1 && prefix != 1;
            let x = if !gathered {
                &mut g[..]
            } else {
                for p in 0..prefix {
                    for d in 0..dim {
                        let src = &g[(p * dim + d) * post..][..post];
                        for (q, &v) in src.iter().enumerate() {
                            self.view[(p * post + q) * dim + d] = v;
                        }
                    }
                }
                &mut self.view[..]
            };
            let outcome = pre.precondition(x);
            if gathered {
                for p in 0..prefix {
                    for d in 0..dim {
                        let dst = &mut g[(p * dim + d) * post..][..post];
                        for (q, v) in dst.iter_mut().enumerate() {
                            *v = self.view[(p * post + q) * dim + d];
                        }
                    }
                }
            }
            on_axis(a, outcome);
        }
    }
}

/// All tensors of a model, in one element type.
#[derive(Clone, Debug)]
struct Preconditioners<T: NgdReal> {
    tensors: Vec<TensorPreconditioner<T>>,
}

impl<T: NgdReal> Preconditioners<T> {
    fn new(layout: &ParamLayout, cfg: &NgdConfig) -> Self {
        Preconditioners {
            tensors: layout
                .tensors
                .iter()
                .map(|t| TensorPreconditioner::new(&t.shape, cfg))
                .collect(),
        }
    }

    fn precondition(&mut self, layout: &ParamLayout, grad: &mut [f32], stats: &mut EpochStats) {
        for (ti, (spec, tp)) in layout
            .tensors
            .iter()
            .zip(self.tensors.iter_mut())
            .enumerate()
        {
            let g = &mut grad[spec.range()];
            let mut cur = std::mem::take(&mut tp.cur);
            for (c, &v) in cur.iter_mut().zip(g.iter()) {
                *c = T::of_f64(v as f64);
            }
            let (mut fallbacks, mut ratio_sum, mut ratio_count) = (0u64, 0.0f64, 0u64);
            let (mut floor_sum, mut floor_count) = (0.0f64, 0u64);
            tp.precondition(&mut cur, |_, o| {
                if o.nan_fallback {
                    fallbacks += 1;
                } else {
                    ratio_sum += o.norm_ratio;
                    ratio_count += 1;
                }
                if let Some(f) = o.floor_fraction {
                    floor_sum += f;
                    floor_count += 1;
                }
            });
            stats.nan_fallbacks += fallbacks;
            stats.ratio_sum += ratio_sum;
            stats.ratio_count += ratio_count;
            let ts = &mut stats.tensors[ti];
            ts.floor_sum += floor_sum;
            ts.floor_count += floor_count;
            let (mut dot, mut nd, mut ng) = (0.0, 0.0, 0.0);
            for (c, v) in cur.iter().zip(g.iter_mut()) {
                let (a, b) = (c.as_f64(), *v as f64);
                dot += a * b;
                nd += a * a;
                ng += b * b;
                *v = c.as_f64() as f32;
            }
            if nd > 0.0 && ng > 0.0 {
                ts.cosine_sum += dot / (nd * ng).sqrt();
                ts.cosine_count += 1;
            }
            tp.cur = cur;
        }
    }

    /// The state under `<prefix>.<tensor>.axis<a>.<t|rho|d|W>` (f64 values stored bit-exactly).
    fn state(&self, layout: &ParamLayout, prefix: &str, out: &mut BTreeMap<String, Vec<f32>>) {
        for (spec, tp) in layout.tensors.iter().zip(&self.tensors) {
            for (a, p) in &tp.axes {
                let key = |what: &str| format!("{prefix}.{}.axis{a}.{what}", spec.name);
                out.insert(key("t"), encode_f64(&[p.t as f64]));
                out.insert(key("rho"), encode_f64(&[p.rho]));
                out.insert(key("d"), encode_f64(&to_f64(&p.d)));
                out.insert(key("W"), encode_f64(&to_f64(&p.w)));
            }
        }
    }

    /// Restores [`Preconditioners::state`]; `missing` says what a missing key means.
    fn load_state(
        &mut self,
        layout: &ParamLayout,
        prefix: &str,
        missing: &str,
        st: &BTreeMap<String, Vec<f32>>,
    ) -> Result<()> {
        for (spec, tp) in layout.tensors.iter().zip(self.tensors.iter_mut()) {
            for (a, p) in tp.axes.iter_mut() {
                let key = |what: &str| format!("{prefix}.{}.axis{a}.{what}", spec.name);
                let get = |what: &str, len: usize| -> Result<Vec<f64>> {
                    let k = key(what);
                    let v = st.get(&k).ok_or_else(|| {
                        Error::invalid(format!("optimiser state lacks {k} ({missing})"))
                    })?;
                    let v = decode_f64(v);
                    if v.len() != len {
                        return Err(Error::invalid(format!(
                            "optimiser state {k} has {} values, expected {len} (different --ngd-rank?)",
                            v.len()
                        )));
                    }
                    Ok(v)
                };
                p.t = get("t", 1)?[0] as u64;
                p.rho = get("rho", 1)?[0];
                for (dst, v) in p.d.iter_mut().zip(get("d", p.rank)?) {
                    *dst = T::of_f64(v);
                }
                for (dst, v) in p.w.iter_mut().zip(get("W", p.rank * p.dim)?) {
                    *dst = T::of_f64(v);
                }
            }
        }
        Ok(())
    }
}

fn to_f64<T: Real>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.as_f64()).collect()
}

/// f64 values stored exactly in an f32 sidecar tensor: each value as two 32-bit words (low, high)
/// reinterpreted as f32 bit patterns.
pub(super) fn encode_f64(v: &[f64]) -> Vec<f32> {
    v.iter()
        .flat_map(|x| {
            let b = x.to_bits();
            [f32::from_bits(b as u32), f32::from_bits((b >> 32) as u32)]
        })
        .collect()
}

pub(super) fn decode_f64(v: &[f32]) -> Vec<f64> {
    v.chunks_exact(2)
        .map(|p| f64::from_bits(p[0].to_bits() as u64 | ((p[1].to_bits() as u64) << 32)))
        .collect()
}

#[derive(Clone, Debug, Default)]
struct EpochStats {
    nan_fallbacks: u64,
    ratio_sum: f64,
    ratio_count: u64,
    tensors: Vec<TensorStats>,
}

impl EpochStats {
    fn new(tensors: usize) -> Self {
        EpochStats {
            tensors: vec![TensorStats::default(); tensors],
            ..Default::default()
        }
    }
}

/// The running comparison of the shadow with the f32 run over an epoch.
#[derive(Clone, Debug)]
struct ShadowStats {
    /// Steps and Σ ‖d_f32 − d_f64‖/‖g‖ over all tensors.
    steps: u64,
    overall_sum: f64,
    /// Per tensor: Σ ‖d_f32,t − d_f64,t‖/‖g_t‖ and Σ cos(d_f32,t, d_f64,t), with their counts.
    diff_sum: Vec<f64>,
    diff_count: Vec<u64>,
    cos_sum: Vec<f64>,
    cos_count: Vec<u64>,
}

impl ShadowStats {
    fn new(tensors: usize) -> Self {
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
struct Shadow {
    pre: Preconditioners<f64>,
    /// The gradient, then the shadow's direction.
    direction: Vec<f32>,
    /// ‖g_t‖² per tensor of this step.
    grad_sq: Vec<f64>,
    /// The shadow's own preconditioner statistics (not reported).
    own_stats: EpochStats,
    stats: ShadowStats,
}

impl Shadow {
    fn new(layout: &ParamLayout, cfg: &NgdConfig) -> Self {
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
    fn see_gradient(&mut self, layout: &ParamLayout, grad: &[f32]) {
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
    fn compare(&mut self, layout: &ParamLayout, d32: &[f32]) {
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
    fn take_epoch_stats(
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

#[derive(Clone, Debug)]
enum AnyPreconditioners {
    F32(Preconditioners<f32>),
    F64(Preconditioners<f64>),
}

/// The paper's NGD optimiser: online natural-gradient preconditioning, then SGD with momentum.
#[derive(Clone, Debug)]
pub struct Ngd {
    pub config: NgdConfig,
    layout: ParamLayout,
    pre: AnyPreconditioners,
    shadow: Option<Box<Shadow>>,
    sgd: Sgd,
    stats: EpochStats,
    /// ‖d‖/‖g‖ of each step's direction (see [`super::StepRatioStats`]).
    step_ratio: super::StepRatioStats,
    total_nan_fallbacks: u64,
}

impl Ngd {
    /// An NGD optimiser for the tensors of `layout`.
    pub fn new(config: NgdConfig, layout: &ParamLayout) -> Result<Self> {
        config.validate()?;
        let pre = match config.dtype {
            NgdDtype::F32 => AnyPreconditioners::F32(Preconditioners::new(layout, &config)),
            NgdDtype::F64 => AnyPreconditioners::F64(Preconditioners::new(layout, &config)),
        };
        let sgd = Sgd::new(SgdConfig {
            weight_decay: 0.0,
            ..config.sgd
        })?;
        Ok(Ngd {
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
    pub fn precondition(&mut self, params: &[f32], grad: &mut [f32]) {
        let wd = self.config.sgd.weight_decay as f32;
        if wd != 0.0 {
            for (g, &p) in grad.iter_mut().zip(params) {
                *g += wd * p;
            }
        }
        let before = self.stats.nan_fallbacks;
        if let Some(shadow) = &mut self.shadow {
            shadow.see_gradient(&self.layout, grad);
        }
        match &mut self.pre {
            AnyPreconditioners::F32(p) => p.precondition(&self.layout, grad, &mut self.stats),
            AnyPreconditioners::F64(p) => p.precondition(&self.layout, grad, &mut self.stats),
        }
        if let Some(shadow) = &mut self.shadow {
            shadow.compare(&self.layout, grad);
        }
        self.total_nan_fallbacks += self.stats.nan_fallbacks - before;
    }

    /// NaN fallbacks since construction.
    pub fn total_nan_fallbacks(&self) -> u64 {
        self.total_nan_fallbacks
    }
}

impl Optimizer for Ngd {
    fn name(&self) -> &'static str {
        "ngd"
    }
    fn hyperparameters(&self) -> Map<String, Value> {
        self.config.to_json()
    }
    fn step(&mut self, params: &mut [f32], grad: &mut [f32], _batch: &Batch) -> Result<()> {
        let grad_norm = super::step_ratio::norm(grad);
        self.precondition(params, grad);
        self.step_ratio
            .record(grad_norm, super::step_ratio::norm(grad));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f64_state_survives_f32_sidecar_encoding() {
        let v = [0.1, -3.5e-300, f64::MAX, 1.0 / 3.0];
        assert_eq!(decode_f64(&encode_f64(&v)), v);
    }

    #[test]
    fn orthonormal_start_pattern() {
        // W₀ = √E₀·O with O's rows orthonormal: W₀W₀ᵀ = E₀·I.
        for (dim, rank) in [(7, 4), (6, 3), (784, 80), (10, 5), (5, 3)] {
            let mut p = AxisPreconditioner::<f64>::new(
                3,
                dim,
                rank,
                false,
                NgdConfig::default().axis_settings(),
            );
            p.init_default();
            let e0 = 1.0 / (2.0 + (dim + rank) as f64 * 0.01 / dim as f64);
            for i in 0..rank {
                for j in 0..rank {
                    let dot: f64 = (0..dim).map(|c| p.w[i * dim + c] * p.w[j * dim + c]).sum();
                    let want = if i == j { e0 } else { 0.0 };
                    assert!((dot - want).abs() < 1e-14, "{dim} {rank} {i} {j} {dot}");
                }
            }
        }
    }

    /// Saving the state after a few steps and loading it into a fresh optimiser continues bit for
    /// bit (the sidecar is how `train --resume` is exact).
    #[test]
    fn state_round_trip_continues_exactly() {
        use crate::model::{Activation, Architecture, Network};
        let net = Network::new(Architecture::Mlp {
            input: 9,
            hidden: vec![7],
            classes: 4,
            activation: Activation::Relu,
        });
        for dtype in [NgdDtype::F32, NgdDtype::F64] {
            let cfg = NgdConfig {
                dtype,
                ..Default::default()
            };
            let mut a = Ngd::new(cfg, &net.layout).unwrap();
            let p = net.num_params();
            let grad = |k: usize| -> Vec<f32> {
                (0..p)
                    .map(|i| ((i * 7 + k * 13) as f32 * 0.37).sin())
                    .collect()
            };
            let batch = Batch {
                net: &net,
                x: &[],
                labels: &[],
            };
            let mut pa = vec![0.1f32; p];
            for k in 0..13 {
                a.step(&mut pa, &mut grad(k), &batch).unwrap();
            }
            let mut b = Ngd::new(cfg, &net.layout).unwrap();
            b.load_state(&a.state()).unwrap();
            let mut pb = pa.clone();
            for k in 13..30 {
                a.step(&mut pa, &mut grad(k), &batch).unwrap();
                b.step(&mut pb, &mut grad(k), &batch).unwrap();
            }
            assert_eq!(pa, pb, "{dtype:?}");
        }
    }

    /// The shadow leaves the f32 run's directions untouched and reports the distance to an
    /// independent f64-state run on the same gradients; its state resumes exactly.
    #[test]
    fn shadow_measures_the_f64_run_and_leaves_the_f32_run_alone() {
        use crate::model::{Activation, Architecture, Network};
        let net = Network::new(Architecture::Mlp {
            input: 9,
            hidden: vec![7],
            classes: 4,
            activation: Activation::Relu,
        });
        let layout = &net.layout;
        let p = net.num_params();
        let shadowed_cfg = NgdConfig {
            shadow_f64: true,
            ..Default::default()
        };
        let mut plain = Ngd::new(NgdConfig::default(), layout).unwrap();
        let mut shadowed = Ngd::new(shadowed_cfg, layout).unwrap();
        let mut f64_run = Ngd::new(
            NgdConfig {
                dtype: NgdDtype::F64,
                ..Default::default()
            },
            layout,
        )
        .unwrap();
        let grad = |k: usize| -> Vec<f32> {
            (0..p)
                .map(|i| ((i * 7 + k * 13) as f32 * 0.37).sin() * (1.0 + (k % 3) as f32))
                .collect()
        };
        let params = vec![0.1f32; p];
        let steps = 13;
        let (mut overall, mut per) = (0.0, vec![0.0; layout.tensors.len()]);
        for k in 0..steps {
            let g = grad(k);
            let (mut a, mut b, mut c) = (g.clone(), g.clone(), g.clone());
            plain.precondition(&params, &mut a);
            shadowed.precondition(&params, &mut b);
            f64_run.precondition(&params, &mut c);
            assert_eq!(a, b, "step {k}: the shadow changed the f32 direction");
            let dist = |r: std::ops::Range<usize>| -> f64 {
                let d: f64 = a[r.clone()]
                    .iter()
                    .zip(&c[r.clone()])
                    .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
                    .sum();
                let n: f64 = g[r].iter().map(|&x| (x as f64).powi(2)).sum();
                (d / n).sqrt()
            };
            overall += dist(0..p);
            for (t, spec) in layout.tensors.iter().enumerate() {
                per[t] += dist(spec.range());
            }
        }
        let (sp, ss) = (plain.take_epoch_stats(), shadowed.take_epoch_stats());
        let got = ss["ngd_shadow_difference"].as_f64().unwrap();
        assert!(
            got > 0.0 && (got - overall / steps as f64).abs() < 1e-12,
            "{got}"
        );
        for (t, spec) in layout.tensors.iter().enumerate() {
            let e = &ss["ngd_tensors"][&spec.name];
            let d = e["shadow_difference"].as_f64().unwrap();
            assert!((d - per[t] / steps as f64).abs() < 1e-12, "{}", spec.name);
            assert!(e["shadow_cosine"].as_f64().unwrap().abs() <= 1.0 + 1e-12);
            assert_eq!(e["cosine"], sp["ngd_tensors"][&spec.name]["cosine"]);
        }
        assert_eq!(ss["ngd_nan_fallbacks"], sp["ngd_nan_fallbacks"]);
        // The sidecar holds the f32 state as without the shadow, plus the shadow's; both resume.
        let (st_plain, st_shadow) = (plain.state(), shadowed.state());
        for (k, v) in &st_plain {
            assert_eq!(st_shadow.get(k), Some(v), "{k}");
        }
        assert!(st_shadow.keys().any(|k| k.starts_with("ngd_shadow.")));
        let mut resumed = Ngd::new(shadowed_cfg, layout).unwrap();
        resumed.load_state(&st_shadow).unwrap();
        for k in steps..steps + 5 {
            let (mut a, mut b) = (grad(k), grad(k));
            shadowed.precondition(&params, &mut a);
            resumed.precondition(&params, &mut b);
            assert_eq!(a, b);
        }
        assert_eq!(
            shadowed.take_epoch_stats()["ngd_shadow_difference"],
            resumed.take_epoch_stats()["ngd_shadow_difference"]
        );
        let e = Ngd::new(shadowed_cfg, layout)
            .unwrap()
            .load_state(&st_plain)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--ngd-shadow-f64"), "{e}");
    }

    /// The transposed storage (a tensor's first axis, read in place) gives the same result as the
    /// row-major N×D view.
    #[test]
    fn transposed_storage_matches_row_major() {
        let (n, dim, rank) = (11, 7, 3);
        let set = NgdConfig::default().axis_settings();
        let mut plain = AxisPreconditioner::<f64>::new(n, dim, rank, false, set);
        let mut trans = AxisPreconditioner::<f64>::new(n, dim, rank, true, set);
        let mut rng = crate::rng::stream(5, crate::rng::Purpose::Probe, 0);
        for t in 0..15 {
            // Full-rank gradients (rank 7 > r): well-conditioned, so only rounding differs.
            let x: Vec<f64> = (0..n * dim).map(|_| rng.normal()).collect();
            let mut xt = vec![0.0; n * dim];
            for i in 0..n {
                for d in 0..dim {
                    xt[d * n + i] = x[i * dim + d];
                }
            }
            let mut x1 = x.clone();
            plain.precondition(&mut x1);
            trans.precondition(&mut xt);
            for i in 0..n {
                for d in 0..dim {
                    let (a, b) = (x1[i * dim + d], xt[d * n + i]);
                    assert!((a - b).abs() < 1e-12, "step {t} ({i},{d}) {a} {b}");
                }
            }
        }
    }

    #[test]
    fn rejects_bad_settings() {
        let bad = [
            NgdConfig {
                eta: 0.0,
                ..Default::default()
            },
            NgdConfig {
                eta: 1.5,
                ..Default::default()
            },
            NgdConfig {
                alpha: -0.1,
                ..Default::default()
            },
            NgdConfig {
                rank: Some(0),
                ..Default::default()
            },
            NgdConfig {
                update_period: 0,
                ..Default::default()
            },
            NgdConfig {
                epsilon: 0.0,
                ..Default::default()
            },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
        }
        assert!(NgdConfig {
            eta: 1.0,
            ..Default::default()
        }
        .validate()
        .is_ok());
    }
}
