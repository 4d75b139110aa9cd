//! Building an optimiser from its settings (shared by `train` and `switch`).

use super::{
    Damping, FisherKind, Ngd, NgdConfig, NgdDtype, NgdExact, NgdExactConfig, Optimizer, Sgd,
    SgdConfig,
};
use crate::model::Network;
use crate::{Error, Result};

/// Which optimiser and all its hyperparameters (the ones that do not apply are ignored).
#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerSettings {
    /// `sgd`, `ngd` or `ngd-exact`.
    pub name: String,
    /// The momentum stage (all three optimisers).
    pub sgd: SgdConfig,
    /// `ngd` (its `sgd` field is overwritten by [`OptimizerSettings::sgd`]).
    pub ngd: NgdConfig,
    /// `ngd-exact` (its `sgd` field is overwritten by [`OptimizerSettings::sgd`]).
    pub exact: NgdExactConfig,
}

impl Default for OptimizerSettings {
    fn default() -> Self {
        OptimizerSettings {
            name: "sgd".into(),
            sgd: SgdConfig::default(),
            ngd: NgdConfig::default(),
            exact: NgdExactConfig::default(),
        }
    }
}

/// The optimiser names [`build`] knows.
pub const OPTIMIZERS: [&str; 3] = ["sgd", "ngd", "ngd-exact"];

impl OptimizerSettings {
    /// Parses the `--ngd-dtype`, `--fisher` and damping flags into the settings.
    #[allow(clippy::too_many_arguments)]
    pub fn with_flags(
        mut self,
        ngd_dtype: &str,
        fisher: &str,
        damping: Option<f64>,
        damping_relative: Option<f64>,
    ) -> Result<Self> {
        self.ngd.dtype = NgdDtype::parse(ngd_dtype)?;
        self.exact.fisher = FisherKind::parse(fisher)?;
        self.exact.damping = match (damping, damping_relative) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid(
                    "give either --damping (absolute λ) or --damping-relative (α), not both",
                ))
            }
            (Some(l), None) => Damping::Absolute(l),
            (None, Some(a)) => Damping::Relative(a),
            (None, None) => self.exact.damping,
        };
        Ok(self)
    }
}

/// The optimiser the settings describe, for `net`'s parameter layout.
///
/// # Errors
/// An unknown name or an invalid hyperparameter, with the flag named.
pub fn build(settings: &OptimizerSettings, net: &Network) -> Result<Box<dyn Optimizer>> {
    match settings.name.as_str() {
        "sgd" => Ok(Box::new(Sgd::new(settings.sgd)?)),
        "ngd" => {
            let cfg = NgdConfig {
                sgd: settings.sgd,
                ..settings.ngd
            };
            if let Some(k) = cfg.rank {
                let max_dim = net
                    .layout
                    .tensors
                    .iter()
                    .flat_map(|t| t.shape.iter().copied())
                    .max()
                    .unwrap_or(0);
                if k >= max_dim {
                    return Err(Error::invalid(format!(
                        "invalid --ngd-rank {k}: it must be below the largest axis size ({max_dim}); \
                         smaller axes cap it at their size − 1"
                    )));
                }
            }
            Ok(Box::new(Ngd::new(cfg, &net.layout)?))
        }
        "ngd-exact" => {
            let cfg = NgdExactConfig {
                sgd: settings.sgd,
                ..settings.exact
            };
            Ok(Box::new(NgdExact::new(cfg)?))
        }
        o => Err(Error::invalid(format!(
            "unknown optimiser {o:?} (expected one of {})",
            OPTIMIZERS.join(", ")
        ))),
    }
}
