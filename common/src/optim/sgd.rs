//! Stochastic gradient descent with PyTorch's semantics.

use super::{Batch, DirectionNoise, Optimizer};
use crate::device::{Backend, CpuBackend, SgdStep};
use crate::{Error, Result};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// The hyperparameters of `torch.optim.SGD`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    pub lr: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
}

impl Default for SgdConfig {
    /// The paper's settings: lr 0.01, momentum 0.9, Nesterov, no dampening, no weight decay.
    fn default() -> Self {
        SgdConfig {
            lr: 0.01,
            momentum: 0.9,
            dampening: 0.0,
            nesterov: true,
            weight_decay: 0.0,
        }
    }
}

impl SgdConfig {
    /// Checks the settings as PyTorch does.
    pub fn validate(&self) -> Result<()> {
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return Err(Error::invalid(format!(
                "invalid learning rate {} (must be >= 0)",
                self.lr
            )));
        }
        if !(self.momentum.is_finite() && self.momentum >= 0.0) {
            return Err(Error::invalid(format!(
                "invalid momentum {} (must be >= 0)",
                self.momentum
            )));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(Error::invalid(format!(
                "invalid weight decay {} (must be >= 0)",
                self.weight_decay
            )));
        }
        if self.nesterov && (self.momentum <= 0.0 || self.dampening != 0.0) {
            return Err(Error::invalid(
                "Nesterov momentum requires a momentum > 0 and zero dampening",
            ));
        }
        Ok(())
    }

    pub fn to_json(&self) -> Map<String, Value> {
        let v = json!({
            "lr": self.lr,
            "momentum": self.momentum,
            "dampening": self.dampening,
            "nesterov": self.nesterov,
            "weight_decay": self.weight_decay,
        });
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }
}

/// `torch.optim.SGD` (PyTorch ≥ 1.x `_single_tensor_sgd`), on the update direction `d` it is given:
///
/// d ← d + wd·θ;  buf ← d on the first step, else buf ← μ·buf + (1 − τ)·d;
/// d ← d + μ·buf (Nesterov) or d ← buf;  θ ← θ − lr·d.
///
/// Each operation is rounded in f32 in PyTorch's order. It is also the momentum stage of the paper's
/// NGD, applied to the preconditioned gradient. As an optimiser of its own it can add
/// [`DirectionNoise`] to the gradient first (`--direction-noise`).
///
/// On backend `B`: the momentum buffer lives in its memory and the update is
/// [`Backend::sgd_step`] (weight decay by [`Backend::axpy`]).
#[derive(Clone, Debug)]
pub struct Sgd<B: Backend = CpuBackend> {
    pub config: SgdConfig,
    be: B,
    buffer: Option<B::Buffer<f32>>,
    noise: Option<DirectionNoise<B>>,
}

impl Sgd {
    /// SGD on the CPU ([`Sgd::new_on`]).
    pub fn new(config: SgdConfig) -> Result<Self> {
        Self::new_on(CpuBackend, config)
    }
}

impl<B: Backend> Sgd<B> {
    /// SGD with its momentum buffer on backend `be`.
    pub fn new_on(be: B, config: SgdConfig) -> Result<Self> {
        config.validate()?;
        Ok(Sgd {
            config,
            be,
            buffer: None,
            noise: None,
        })
    }

    /// The same optimiser with `noise` added to every gradient before the momentum stage (by
    /// [`Optimizer::step`]; [`Sgd::apply`] stays noise-free).
    pub fn with_direction_noise(mut self, noise: DirectionNoise<B>) -> Self {
        self.noise = Some(noise);
        self
    }

    /// Applies the update for direction `d` (modified in place).
    pub fn apply(&mut self, params: B::ViewMut<'_, f32>, mut d: B::ViewMut<'_, f32>) {
        let c = self.config;
        let be = &self.be;
        let (lr, mu, wd) = (c.lr as f32, c.momentum as f32, c.weight_decay as f32);
        let one_minus_tau = (1.0 - c.dampening) as f32;
        if wd != 0.0 {
            be.axpy(wd, B::freeze(&params), B::reborrow(&mut d));
        }
        let d = B::freeze(&d);
        let step = SgdStep {
            lr,
            momentum: mu,
            one_minus_dampening: one_minus_tau,
            nesterov: c.nesterov,
        };
        if mu != 0.0 {
            match &mut self.buffer {
                // First step: buf ← d, then the update with that buffer.
                None => {
                    let mut buf = be.zeros(B::len(d));
                    be.copy(d, B::view_mut(&mut buf));
                    be.sgd_first_momentum_step(params, d, B::view(&buf), &step);
                    self.buffer = Some(buf);
                }
                // One fused pass: buf ← μ·buf + (1−τ)·d, then θ ← θ − lr·(d + μ·buf) or θ − lr·buf.
                Some(buf) => be.sgd_step(params, d, Some(B::view_mut(buf)), &step),
            }
        } else {
            be.sgd_step(params, d, None, &step);
        }
    }
}

impl<B: Backend> Optimizer<B> for Sgd<B> {
    fn name(&self) -> &'static str {
        "sgd"
    }
    fn hyperparameters(&self) -> Map<String, Value> {
        let mut m = self.config.to_json();
        if let Some(n) = &self.noise {
            m.extend(n.config.to_json());
        }
        m
    }
    fn step(
        &mut self,
        params: B::ViewMut<'_, f32>,
        mut grad: B::ViewMut<'_, f32>,
        _batch: &Batch<'_, B>,
    ) -> Result<()> {
        if let Some(n) = &mut self.noise {
            n.perturb(B::reborrow(&mut grad));
        }
        self.apply(params, grad);
        Ok(())
    }
    fn state(&self) -> BTreeMap<String, Vec<f32>> {
        let mut m = BTreeMap::new();
        if let Some(b) = &self.buffer {
            m.insert("sgd.momentum_buffer".to_string(), download(&self.be, b));
        }
        if let Some(n) = &self.noise {
            n.state(&mut m);
        }
        m
    }
    fn load_state(&mut self, state: &BTreeMap<String, Vec<f32>>) -> Result<()> {
        self.buffer = state.get("sgd.momentum_buffer").map(|b| self.be.upload(b));
        if let Some(n) = &mut self.noise {
            n.load_state(state)?;
        }
        Ok(())
    }
    /// With noise: `direction_noise_ratio` (see [`DirectionNoise::take_epoch_stats`]).
    fn take_epoch_stats(&mut self) -> Map<String, Value> {
        self.noise
            .as_mut()
            .map(DirectionNoise::take_epoch_stats)
            .unwrap_or_default()
    }
}

/// A buffer's contents on the host (an optimiser's state for the sidecar).
pub(super) fn download<B: Backend, E: crate::device::Element>(
    be: &B,
    buf: &B::Buffer<E>,
) -> Vec<E> {
    let mut host = vec![E::default(); B::buffer_len(buf)];
    be.download(B::view(buf), &mut host);
    host
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three steps computed by hand from PyTorch's documented update, in f64 then compared in f32.
    #[test]
    fn matches_torch_sgd_nesterov_by_hand() {
        let cfg = SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            dampening: 0.0,
            nesterov: true,
            weight_decay: 0.01,
        };
        let mut sgd = Sgd::new(cfg).unwrap();
        let mut p = vec![1.0f32, -2.0];
        let grads = [[0.5f32, 0.25], [-1.0, 0.5], [0.125, -0.75]];
        // Independent f64 computation.
        let (mut pe, mut buf) = ([1.0f64, -2.0], None::<[f64; 2]>);
        for g in grads {
            let d: Vec<f64> = (0..2).map(|i| g[i] as f64 + 0.01 * pe[i]).collect();
            let b = match buf {
                None => [d[0], d[1]],
                Some(b) => [0.9 * b[0] + d[0], 0.9 * b[1] + d[1]],
            };
            buf = Some(b);
            for i in 0..2 {
                pe[i] -= 0.1 * (d[i] + 0.9 * b[i]);
            }
            let mut gg = g.to_vec();
            sgd.apply(&mut p, &mut gg);
        }
        for i in 0..2 {
            assert!((p[i] as f64 - pe[i]).abs() < 1e-6, "{p:?} vs {pe:?}");
        }
    }

    #[test]
    fn plain_momentum_and_no_momentum() {
        let mut sgd = Sgd::new(SgdConfig {
            lr: 1.0,
            momentum: 0.5,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        })
        .unwrap();
        let mut p = vec![0.0f32];
        sgd.apply(&mut p, &mut [1.0]); // buf = 1, p = -1
        sgd.apply(&mut p, &mut [1.0]); // buf = 1.5, p = -2.5
        assert_eq!(p[0], -2.5);
        let mut plain = Sgd::new(SgdConfig {
            lr: 0.5,
            momentum: 0.0,
            nesterov: false,
            ..SgdConfig::default()
        })
        .unwrap();
        let mut p = vec![1.0f32];
        plain.apply(&mut p, &mut [2.0]);
        assert_eq!(p[0], 0.0);
    }

    #[test]
    fn rejects_bad_settings() {
        assert!(Sgd::new(SgdConfig {
            lr: -1.0,
            ..SgdConfig::default()
        })
        .is_err());
        assert!(Sgd::new(SgdConfig {
            momentum: 0.0,
            nesterov: true,
            ..SgdConfig::default()
        })
        .is_err());
    }
}
