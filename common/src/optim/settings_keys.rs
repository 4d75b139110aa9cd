//! Setting optimiser hyperparameters by their `train` flag names, for `switch --branch ngd:lr=0.1`.

use super::{Damping, FisherKind, NgdDtype, OptimizerSettings};
use crate::{Error, Result};

/// The keys [`OptimizerSettings::set`] knows: `train`'s flag names without the dashes.
pub const SETTING_KEYS: [&str; 21] = [
    "lr",
    "momentum",
    "dampening",
    "nesterov",
    "weight-decay",
    "ngd-alpha",
    "ngd-eta",
    "ngd-epsilon",
    "ngd-delta",
    "ngd-rank",
    "ngd-update-period",
    "ngd-dtype",
    "fisher",
    "damping",
    "damping-relative",
    "preserve-norm",
    "direction-noise",
    "ngd-shadow-f64",
    "beta1",
    "beta2",
    "eps",
];

fn number(key: &str, value: &str) -> Result<f64> {
    value
        .parse::<f64>()
        .map_err(|_| Error::invalid(format!("{key}={value}: not a number")))
}

fn boolean(key: &str, value: &str) -> Result<bool> {
    match value {
        "true" | "1" | "yes" | "" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(Error::invalid(format!(
            "{key}={value}: expected true or false"
        ))),
    }
}

impl OptimizerSettings {
    /// Sets one hyperparameter by its `train` flag name (`lr`, `ngd-alpha`, `damping`, …).
    ///
    /// # Errors
    /// An unknown key (the message lists the known ones) or a value that does not parse.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            // The learning rate and weight decay of whichever optimiser the settings name.
            "lr" => {
                self.sgd.lr = number(key, value)?;
                self.adamw.lr = self.sgd.lr;
            }
            "momentum" => self.sgd.momentum = number(key, value)?,
            "dampening" => self.sgd.dampening = number(key, value)?,
            "nesterov" => self.sgd.nesterov = boolean(key, value)?,
            "weight-decay" => {
                self.sgd.weight_decay = number(key, value)?;
                self.adamw.weight_decay = self.sgd.weight_decay;
            }
            "ngd-alpha" => self.ngd.alpha = number(key, value)?,
            "ngd-eta" => self.ngd.eta = number(key, value)?,
            "ngd-epsilon" => self.ngd.epsilon = number(key, value)?,
            "ngd-delta" => self.ngd.delta = number(key, value)?,
            "ngd-rank" => {
                self.ngd.rank = Some(
                    value
                        .parse()
                        .map_err(|_| Error::invalid(format!("{key}={value}: not a rank")))?,
                )
            }
            "ngd-update-period" => {
                self.ngd.update_period = value
                    .parse()
                    .map_err(|_| Error::invalid(format!("{key}={value}: not a step count")))?
            }
            "ngd-dtype" => self.ngd.dtype = NgdDtype::parse(value)?,
            "fisher" => self.exact.fisher = FisherKind::parse(value)?,
            "damping" => self.exact.damping = Damping::Absolute(number(key, value)?),
            "damping-relative" => self.exact.damping = Damping::Relative(number(key, value)?),
            "preserve-norm" => self.exact.preserve_norm = boolean(key, value)?,
            "direction-noise" => self.noise.relative = number(key, value)?,
            "ngd-shadow-f64" => self.ngd.shadow_f64 = boolean(key, value)?,
            "beta1" => self.adamw.beta1 = number(key, value)?,
            "beta2" => self.adamw.beta2 = number(key, value)?,
            "eps" => self.adamw.eps = number(key, value)?,
            _ => {
                return Err(Error::invalid(format!(
                    "unknown setting '{key}' (known: {})",
                    SETTING_KEYS.join(", ")
                )))
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_by_flag_name() {
        let mut s = OptimizerSettings::default();
        s.set("lr", "0.1").unwrap();
        s.set("ngd-alpha", "0.5").unwrap();
        s.set("nesterov", "false").unwrap();
        s.set("damping", "0.001").unwrap();
        assert_eq!(s.sgd.lr, 0.1);
        assert_eq!(s.ngd.alpha, 0.5);
        assert!(!s.sgd.nesterov);
        assert_eq!(s.exact.damping, Damping::Absolute(0.001));
        assert_eq!(s.adamw.lr, 0.1);
        s.set("beta2", "0.98").unwrap();
        s.set("weight-decay", "1").unwrap();
        assert_eq!((s.adamw.beta2, s.adamw.weight_decay), (0.98, 1.0));
        assert!(s.set("lr", "x").unwrap_err().to_string().contains("lr=x"));
        assert!(s
            .set("bogus", "1")
            .unwrap_err()
            .to_string()
            .contains("unknown setting"));
    }
}
