//! Whether a natural-gradient step exploded: the ratio of the preconditioned step to the plain
//! gradient step at the same learning rate, ‖lr·d‖/‖lr·g‖ = ‖d‖/‖g‖, with g the minibatch gradient and
//! d the direction the preconditioner hands to the momentum stage (which is SGD's for every
//! optimiser, so it is left out: it would flag SGD itself whenever the gradient shrinks under a full
//! momentum buffer).
//!
//! The online NGD rescales each axis's output to the gradient's norm and `ngd-exact --preserve-norm`
//! rescales d to ‖g‖, so the ratio is about 1 there; without the rescaling (F + λI)⁻¹g grows up to 1/λ
//! along directions the Fisher does not see. A step whose ratio exceeds [`EXPLOSION_RATIO`] is
//! counted; the epoch record carries the count, the mean and the maximum of the ratio.

use crate::io::finite_or_null;
use serde_json::{Map, Value};

/// ‖d‖/‖g‖ above which a step counts as exploded: 100 times the SGD step at the same learning rate.
pub const EXPLOSION_RATIO: f64 = 100.0;

/// The epoch's step ratios of one optimiser.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepRatioStats {
    steps: u64,
    exploded: u64,
    sum: f64,
    max: f64,
}

impl StepRatioStats {
    /// Records one step with ‖g‖ = `grad_norm` and ‖d‖ = `direction_norm` and returns the ratio (∞ for
    /// a zero gradient with a non-zero direction, 1 when both are zero).
    pub fn record(&mut self, grad_norm: f64, direction_norm: f64) -> f64 {
        let ratio = if grad_norm > 0.0 {
            direction_norm / grad_norm
        } else if direction_norm > 0.0 {
            f64::INFINITY
        } else {
            1.0
        };
        self.steps += 1;
        // NaN counts as exploded too.
        if ratio.is_nan() || ratio > EXPLOSION_RATIO {
            self.exploded += 1;
        }
        self.sum += ratio;
        self.max = self.max.max(ratio);
        ratio
    }

    /// Steps with a ratio above [`EXPLOSION_RATIO`] since the last [`StepRatioStats::take`].
    pub fn exploded(&self) -> u64 {
        self.exploded
    }

    /// `<prefix>_step_ratio_mean`, `_max`, `<prefix>_exploded_steps` and
    /// `<prefix>_explosion_threshold`, then starts the next epoch.
    pub fn take(&mut self, prefix: &str, m: &mut Map<String, Value>) {
        let s = std::mem::take(self);
        m.insert(
            format!("{prefix}_step_ratio_mean"),
            finite_or_null(s.sum / s.steps as f64),
        );
        m.insert(format!("{prefix}_step_ratio_max"), finite_or_null(s.max));
        m.insert(format!("{prefix}_exploded_steps"), Value::from(s.exploded));
        m.insert(
            format!("{prefix}_explosion_threshold"),
            Value::from(EXPLOSION_RATIO),
        );
    }
}

/// The one-line warning for a train record whose optimiser counted exploded steps (any
/// `<prefix>_exploded_steps` > 0), or None.
pub fn explosion_warning(record: &Map<String, Value>) -> Option<String> {
    let (key, count) = record
        .iter()
        .filter_map(|(k, v)| Some((k.strip_suffix("_exploded_steps")?, v.as_u64()?)))
        .find(|&(_, n)| n > 0)?;
    let max = record
        .get(&format!("{key}_step_ratio_max"))
        .and_then(Value::as_f64)
        .map_or("non-finite".to_string(), |v| format!("{v:.3e}"));
    let epoch = record.get("epoch").map_or(Value::Null, Value::clone);
    let hint = if key == "ngd_exact" {
        "keep --preserve-norm (the default) or raise --damping-relative"
    } else {
        "lower --lr or raise --ngd-alpha"
    };
    Some(format!(
        "epoch {epoch}: {count} step(s) with a preconditioned step over {EXPLOSION_RATIO}× the \
         gradient's (‖d‖/‖g‖ up to {max}): the natural gradient exploded; {hint}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_steps_over_the_threshold_and_resets() {
        let mut s = StepRatioStats::default();
        assert_eq!(s.record(2.0, 2.0), 1.0);
        assert_eq!(s.record(1.0, 150.0), 150.0);
        assert_eq!(s.record(0.0, 0.0), 1.0);
        assert!(s.record(0.0, 1.0).is_infinite());
        assert!(s.record(1.0, f64::NAN).is_nan());
        assert_eq!(s.exploded(), 3);
        let mut m = Map::new();
        s.take("ngd_exact", &mut m);
        assert_eq!(m["ngd_exact_exploded_steps"], 3);
        assert_eq!(m["ngd_exact_step_ratio_max"], Value::Null);
        assert_eq!(m["ngd_exact_explosion_threshold"], 100.0);
        m.insert("epoch".into(), Value::from(2));
        let w = explosion_warning(&m).unwrap();
        assert!(w.starts_with("epoch 2: 3 step(s)"), "{w}");
        assert!(w.contains("--preserve-norm"), "{w}");
        // The next epoch starts from nothing.
        assert_eq!(s, StepRatioStats::default());
        s.record(1.0, 1.0);
        let mut m = Map::new();
        s.take("ngd", &mut m);
        assert_eq!(m["ngd_exploded_steps"], 0);
        assert_eq!(m["ngd_step_ratio_max"], 1.0);
        assert_eq!(explosion_warning(&m), None);
    }
}
