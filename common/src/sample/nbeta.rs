//! The inverse temperature nβ, never implicit: a number, devinterp's batch rule, or the data-set rule.

use crate::{Error, Result};
use serde_json::{Map, Value};

/// How nβ is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NBeta {
    /// A given value.
    Value(f64),
    /// nβ = m/ln m for minibatch size m: devinterp's `default_nbeta`, which the paper used
    /// (128/ln 128 ≈ 26.38).
    Batch,
    /// nβ = n/ln n for n training samples: Watanabe's β = 1/ln n of WBIC.
    Dataset,
}

impl NBeta {
    /// Parses `batch`, `dataset` or a positive number.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "batch" => Ok(NBeta::Batch),
            "dataset" => Ok(NBeta::Dataset),
            _ => match s.parse::<f64>() {
                Ok(v) if v.is_finite() && v > 0.0 => Ok(NBeta::Value(v)),
                _ => Err(Error::invalid(format!(
                    "--nbeta must be a positive number, 'batch' (m/ln m) or 'dataset' (n/ln n); got '{s}'"
                ))),
            },
        }
    }

    /// Checks a given value (the rules are always defined up to m, n ≤ 1, see [`NBeta::resolve`]).
    ///
    /// # Errors
    /// When a [`NBeta::Value`] is not a positive finite number.
    pub fn validate(self) -> Result<()> {
        match self {
            NBeta::Value(v) if !(v.is_finite() && v > 0.0) => Err(Error::invalid(format!(
                "--nbeta must be a positive number (got {v})"
            ))),
            _ => Ok(()),
        }
    }

    /// The value for minibatch size m and n samples.
    ///
    /// # Errors
    /// When the rule is undefined (m or n ≤ 1).
    pub fn resolve(self, batch: usize, samples: usize) -> Result<f64> {
        let rule = |k: usize, what: &str| {
            if k <= 1 {
                Err(Error::invalid(format!(
                    "nβ = k/ln k is undefined for {what} = {k}; give --nbeta a number"
                )))
            } else {
                Ok(k as f64 / (k as f64).ln())
            }
        };
        self.validate()?;
        match self {
            NBeta::Value(v) => Ok(v),
            NBeta::Batch => rule(batch, "minibatch size"),
            NBeta::Dataset => rule(samples, "training samples"),
        }
    }

    /// `{"nbeta": value, "nbeta_rule": ...}` for records.
    pub fn describe(self, value: f64, batch: usize, samples: usize) -> Map<String, Value> {
        let rule = match self {
            NBeta::Value(_) => "given".to_string(),
            NBeta::Batch => format!("batch: m/ln m with m = {batch}"),
            NBeta::Dataset => format!("dataset: n/ln n with n = {samples}"),
        };
        let mut m = Map::new();
        m.insert("nbeta".into(), Value::from(value));
        m.insert("nbeta_rule".into(), Value::from(rule));
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        // devinterp default_nbeta(128) = 128/ln(128) = 26.3803...
        assert!((NBeta::Batch.resolve(128, 60000).unwrap() - 26.380_709_319_112_476).abs() < 1e-12);
        assert!(
            (NBeta::Dataset.resolve(128, 60000).unwrap() - 60000.0 / 60000f64.ln()).abs() < 1e-9
        );
        assert_eq!(NBeta::parse("3.5").unwrap(), NBeta::Value(3.5));
        assert!(NBeta::parse("0").is_err());
        assert!(NBeta::parse("-1").is_err());
        assert!(NBeta::Batch.resolve(1, 10).is_err());
        for v in [f64::NAN, f64::INFINITY, 0.0, -2.0] {
            let e = NBeta::Value(v).resolve(128, 1000).unwrap_err().to_string();
            assert!(e.starts_with("--nbeta must be a positive number"), "{e}");
        }
    }
}
