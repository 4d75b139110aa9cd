//! Building an optimiser from its settings (shared by `train` and `switch`).

use super::{
    AdamW, AdamWConfig, Damping, DirectionNoise, DirectionNoiseConfig, FisherKind, Ngd, NgdConfig,
    NgdDtype, NgdExact, NgdExactConfig, Optimizer, Sgd, SgdConfig,
};
use crate::device::{Backend, CpuBackend};
use crate::model::Network;
use crate::{Error, Result};

/// Which optimiser and all its hyperparameters (the ones that do not apply are ignored).
#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerSettings {
    /// `sgd`, `ngd`, `ngd-exact`, `adamw` or `adam`.
    pub name: String,
    /// The momentum stage (all three optimisers).
    pub sgd: SgdConfig,
    /// `ngd` (its `sgd` field is overwritten by [`OptimizerSettings::sgd`]).
    pub ngd: NgdConfig,
    /// `ngd-exact` (its `sgd` field is overwritten by [`OptimizerSettings::sgd`]).
    pub exact: NgdExactConfig,
    /// `sgd` only: noise added to the gradient (none when R = 0).
    pub noise: DirectionNoiseConfig,
    /// `adamw` and `adam` (PyTorch's defaults unless set; `adam` builds it with
    /// [`AdamWConfig::decoupled`] false whatever this field says).
    pub adamw: AdamWConfig,
}

impl Default for OptimizerSettings {
    fn default() -> Self {
        OptimizerSettings {
            name: "sgd".into(),
            sgd: SgdConfig::default(),
            ngd: NgdConfig::default(),
            exact: NgdExactConfig::default(),
            noise: DirectionNoiseConfig::default(),
            adamw: AdamWConfig::default(),
        }
    }
}

/// The optimiser names [`build`] knows.
pub const OPTIMIZERS: [&str; 5] = ["sgd", "ngd", "ngd-exact", "adamw", "adam"];

impl OptimizerSettings {
    /// Seeds the optimisers' own streams (sampled Fisher labels, direction noise) with the run seed.
    pub fn set_seed(&mut self, seed: u64) {
        self.exact.seed = seed;
        self.noise.seed = seed;
    }

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

/// The optimiser the settings describe, for `net`'s parameter layout, on the CPU
/// ([`build_on`] with [`CpuBackend`]).
///
/// # Errors
/// As [`build_on`].
pub fn build(settings: &OptimizerSettings, net: &Network) -> Result<Box<dyn Optimizer>> {
    build_on(CpuBackend, settings, net)
}

/// The optimiser the settings describe, for `net`'s parameter layout, with its state on backend
/// `be` (the parameters and gradients it is stepped with must be `be`'s memory too).
///
/// # Errors
/// An unknown name or an invalid hyperparameter, with the flag named; `--direction-noise` with
/// another optimiser than `sgd`, `--ngd-shadow-f64` with another than `ngd`.
pub fn build_on<B: Backend>(
    be: B,
    settings: &OptimizerSettings,
    net: &Network,
) -> Result<Box<dyn Optimizer<B>>> {
    let name = settings.name.as_str();
    settings.noise.validate()?;
    if settings.noise.is_active() && name != "sgd" {
        return Err(Error::invalid(format!(
            "--direction-noise applies to --optimizer sgd only (the noise control), not {name}"
        )));
    }
    if settings.ngd.shadow_f64 && name != "ngd" {
        return Err(Error::invalid(format!(
            "--ngd-shadow-f64 applies to --optimizer ngd only, not {name}"
        )));
    }
    match name {
        "sgd" => {
            settings.noise.check_tensors(&net.layout)?;
            let sgd = Sgd::new_on(be.clone(), settings.sgd)?;
            Ok(Box::new(if settings.noise.is_active() {
                sgd.with_direction_noise(DirectionNoise::new_on(
                    be,
                    settings.noise.clone(),
                    &net.layout,
                )?)
            } else {
                sgd
            }))
        }
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
            Ok(Box::new(Ngd::new_on(be, cfg, &net.layout)?))
        }
        "ngd-exact" => {
            let cfg = NgdExactConfig {
                sgd: settings.sgd,
                ..settings.exact
            };
            Ok(Box::new(NgdExact::new_on(be, cfg)?))
        }
        "adamw" => Ok(Box::new(AdamW::new_on(
            be,
            AdamWConfig {
                decoupled: true,
                ..settings.adamw
            },
        )?)),
        "adam" => Ok(Box::new(AdamW::new_on(
            be,
            AdamWConfig {
                decoupled: false,
                ..settings.adamw
            },
        )?)),
        o => Err(Error::invalid(format!(
            "unknown optimiser {o:?} (expected one of {})",
            OPTIMIZERS.join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Activation, Architecture};
    use crate::optim::Batch;

    fn net() -> Network {
        Network::new(Architecture::Mlp {
            input: 9,
            hidden: vec![7],
            classes: 4,
            activation: Activation::Relu,
        })
    }

    fn steps(opt: &mut dyn Optimizer, net: &Network) -> Vec<f32> {
        let p = net.num_params();
        let batch = Batch {
            net,
            x: &[][..],
            targets: crate::model::Targets::Labels(&[]),
        };
        let mut params = vec![0.1f32; p];
        for k in 0..7 {
            let mut g: Vec<f32> = (0..p)
                .map(|i| ((i * 5 + k * 11) as f32 * 0.29).cos())
                .collect();
            opt.step(&mut params, &mut g, &batch).unwrap();
        }
        params
    }

    /// R = 0 builds plain SGD: the same hyperparameters, state and parameters bit for bit.
    #[test]
    fn zero_noise_is_plain_sgd() {
        let net = net();
        let plain = OptimizerSettings::default();
        let mut zero = OptimizerSettings::default();
        zero.noise.relative = 0.0;
        zero.set_seed(5);
        let (mut a, mut b) = (build(&plain, &net).unwrap(), build(&zero, &net).unwrap());
        assert_eq!(steps(a.as_mut(), &net), steps(b.as_mut(), &net));
        assert_eq!(a.hyperparameters(), b.hyperparameters());
        assert_eq!(a.state(), b.state());
        // With noise the run differs, and the records say so.
        let mut noisy = zero.clone();
        noisy.noise.relative = 0.1;
        let mut c = build(&noisy, &net).unwrap();
        assert_ne!(steps(a.as_mut(), &net), steps(c.as_mut(), &net));
        assert_eq!(c.hyperparameters()["direction_noise"], 0.1);
        assert_eq!(c.hyperparameters()["direction_noise_seed"], 5);
    }

    #[test]
    fn noise_and_shadow_only_with_their_optimiser() {
        let net = net();
        let mut s = OptimizerSettings::default();
        s.noise.relative = 0.1;
        s.name = "ngd".into();
        let e = build(&s, &net).err().unwrap().to_string();
        assert!(
            e.contains("--direction-noise") && e.contains("sgd only"),
            "{e}"
        );
        s.noise.relative = f64::NAN;
        s.name = "sgd".into();
        let e = build(&s, &net).err().unwrap().to_string();
        assert!(e.contains("invalid --direction-noise NaN"), "{e}");
        let mut s = OptimizerSettings::default();
        s.ngd.shadow_f64 = true;
        for name in ["sgd", "ngd-exact"] {
            s.name = name.into();
            let e = build(&s, &net).err().unwrap().to_string();
            assert!(
                e.contains("--ngd-shadow-f64") && e.contains("ngd only"),
                "{e}"
            );
        }
        s.name = "ngd".into();
        s.ngd.dtype = NgdDtype::F64;
        let e = build(&s, &net).err().unwrap().to_string();
        assert!(e.contains("--ngd-shadow-f64"), "{e}");
    }
}
