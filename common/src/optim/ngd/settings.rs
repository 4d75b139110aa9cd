//! The online NGD's settings: its hyperparameters (the paper's defaults), their validation, and how
//! records and checkpoint metadata name them.

use super::super::ngd_axis::{default_rank, AxisSettings};
use super::super::SgdConfig;
use crate::{Error, Result};
use serde_json::{json, Map, Value};

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

    pub(super) fn axis_settings(&self) -> AxisSettings {
        AxisSettings {
            alpha: self.alpha,
            eta: self.eta,
            epsilon: self.epsilon,
            delta: self.delta,
            update_period: self.update_period,
        }
    }
}
