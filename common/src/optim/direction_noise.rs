//! `--direction-noise R`: isotropic Gaussian noise added to each tensor's gradient before SGD's
//! momentum stage, its norm a fixed multiple of that tensor's gradient norm.
//!
//! For each parameter tensor t with minibatch gradient g_t ∈ R^{n_t} (before weight decay):
//!
//!   z ~ N(0, I_{n_t}),   ξ_t = R_t·‖g_t‖·z/‖z‖,   g_t ← g_t + ξ_t,
//!
//! so ‖ξ_t‖ = R_t·‖g_t‖ exactly (ξ is computed in f64, the sum rounded to f32) and ξ_t's direction is
//! uniform on the sphere, independent of g_t. A tensor whose gradient is zero gets no noise. z is drawn
//! by SGLD's noise source ([`NoiseSource::fill`], Box–Muller, f32 variates) seeded from the stream
//! `(seed, DirectionNoise, step)` (step = the optimiser's steps so far, from 0), tensor
//! after tensor in layout order, so the noise depends only on the run seed and the step: the same for
//! every run of the command, independent of the initialisation and shuffling streams, and resumable by
//! storing the step in the optimiser sidecar.
//!
//! This is the noise control of issue #8: with R set to the measured ‖d_f32 − d_f64‖/‖g‖ of the
//! paper's online NGD (`--ngd-shadow-f64`), it asks whether a perturbation of that size alone, with no
//! preconditioning, raises λ̂.

use super::ngd::{decode_f64, encode_f64};
use crate::device::{Backend, CpuBackend};
use crate::io::finite_or_null;
use crate::model::ParamLayout;
use crate::rng::NoiseSource;
use crate::rng::{stream, Purpose};
use crate::{Error, Result};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::ops::Range;

/// Settings of the direction noise; R = 0 for every tensor means none.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DirectionNoiseConfig {
    /// R: ‖ξ_t‖ = R·‖g_t‖ for every tensor not named in `per_tensor` (`--direction-noise`).
    pub relative: f64,
    /// (tensor name, R_t) overriding `relative` for that tensor (`--direction-noise-tensor`).
    pub per_tensor: Vec<(String, f64)>,
    /// The run seed of the noise stream.
    pub seed: u64,
}

impl DirectionNoiseConfig {
    /// Whether any tensor gets noise.
    pub fn is_active(&self) -> bool {
        self.relative != 0.0 || self.per_tensor.iter().any(|(_, r)| *r != 0.0)
    }

    /// Refuses a negative or non-finite R, naming the flag.
    pub fn validate(&self) -> Result<()> {
        if !(self.relative.is_finite() && self.relative >= 0.0) {
            return Err(Error::invalid(format!(
                "invalid --direction-noise {} (the noise norm relative to the gradient's must be finite and >= 0)",
                self.relative
            )));
        }
        for (name, r) in &self.per_tensor {
            if !(r.is_finite() && *r >= 0.0) {
                return Err(Error::invalid(format!(
                    "invalid --direction-noise-tensor {name}={r} (must be finite and >= 0)"
                )));
            }
        }
        Ok(())
    }

    /// Refuses tensor names the model does not have.
    pub fn check_tensors(&self, layout: &ParamLayout) -> Result<()> {
        for (name, _) in &self.per_tensor {
            if layout.get(name).is_none() {
                let known: Vec<&str> = layout.tensors.iter().map(|t| t.name.as_str()).collect();
                return Err(Error::invalid(format!(
                    "invalid --direction-noise-tensor {name}: the model has no such tensor (it has {})",
                    known.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// `direction_noise` (R), `direction_noise_tensors` (when given) and `direction_noise_seed`.
    pub fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("direction_noise".into(), Value::from(self.relative));
        if !self.per_tensor.is_empty() {
            let per: Map<String, Value> = self
                .per_tensor
                .iter()
                .map(|(n, r)| (n.clone(), Value::from(*r)))
                .collect();
            m.insert("direction_noise_tensors".into(), Value::Object(per));
        }
        m.insert("direction_noise_seed".into(), Value::from(self.seed));
        m
    }
}

/// Adds ξ = R·‖g‖·z/‖z‖ to `g` (ξ in f64, the sum rounded to f32), z ~ N(0, I) drawn from `noise`
/// into the scratch `z`. Returns (‖g‖², ‖ĝ − g‖²) with ĝ the f32 result, both accumulated in f64.
/// On the CPU: [`add_isotropic_noise_on`] with [`CpuBackend`].
pub fn add_isotropic_noise(
    g: &mut [f32],
    relative: f64,
    noise: &mut NoiseSource,
    z: &mut Vec<f32>,
) -> (f64, f64) {
    add_isotropic_noise_on(&CpuBackend, g, relative, noise, z)
}

/// [`add_isotropic_noise`] on backend `be`: ‖g‖² and ‖z‖² by [`Backend::dot`], z by
/// [`Backend::fill_normal`] into the first `g.len()` elements of `z` (grown as needed), the sum by
/// [`Backend::add_scaled_noise`].
pub fn add_isotropic_noise_on<B: Backend>(
    be: &B,
    mut g: B::ViewMut<'_, f32>,
    relative: f64,
    noise: &mut NoiseSource,
    z: &mut B::Buffer<f32>,
) -> (f64, f64) {
    let g_sq = be.dot(B::freeze(&g), B::freeze(&g));
    if relative == 0.0 || g_sq == 0.0 {
        return (g_sq, 0.0);
    }
    let n = B::len(B::freeze(&g));
    be.ensure_len(z, n);
    be.fill_normal(noise, B::slice_mut(B::view_mut(z), 0..n));
    let zv = B::slice(B::view(z), 0..n);
    let z_sq = be.dot(zv, zv);
    let scale = relative * (g_sq / z_sq).sqrt();
    let added_sq = be.add_scaled_noise(scale, zv, B::reborrow(&mut g));
    (g_sq, added_sq)
}

/// The noise of one run: R_t per tensor, the step counter and the epoch's statistics.
#[derive(Clone, Debug)]
pub struct DirectionNoise<B: Backend = CpuBackend> {
    be: B,
    pub config: DirectionNoiseConfig,
    /// (tensor's block of the flat vector, R_t).
    tensors: Vec<(Range<usize>, f64)>,
    step: u64,
    /// z, in the backend's memory.
    z: B::Buffer<f32>,
    ratio_sum: f64,
    ratio_steps: u64,
}

impl DirectionNoise {
    /// The noise for the tensors of `layout`, on the CPU ([`DirectionNoise::new_on`]).
    ///
    /// # Errors
    /// An invalid R or an unknown tensor name, with the flag named.
    pub fn new(config: DirectionNoiseConfig, layout: &ParamLayout) -> Result<Self> {
        Self::new_on(CpuBackend, config, layout)
    }
}

impl<B: Backend> DirectionNoise<B> {
    /// [`DirectionNoise::new`] with its scratch on backend `be`.
    ///
    /// # Errors
    /// An invalid R or an unknown tensor name, with the flag named.
    pub fn new_on(be: B, config: DirectionNoiseConfig, layout: &ParamLayout) -> Result<Self> {
        config.validate()?;
        config.check_tensors(layout)?;
        let tensors = layout
            .tensors
            .iter()
            .map(|t| {
                let r = config
                    .per_tensor
                    .iter()
                    .rev()
                    .find(|(n, _)| *n == t.name)
                    .map_or(config.relative, |(_, r)| *r);
                (t.range(), r)
            })
            .collect();
        Ok(DirectionNoise {
            z: be.zeros(0),
            be,
            config,
            tensors,
            step: 0,
            ratio_sum: 0.0,
            ratio_steps: 0,
        })
    }

    /// g_t ← g_t + ξ_t for every tensor (see the module doc), then counts the step.
    pub fn perturb(&mut self, mut grad: B::ViewMut<'_, f32>) {
        let mut rng = stream(self.config.seed, Purpose::DirectionNoise, self.step);
        let mut noise = NoiseSource::from_stream(&mut rng);
        let (mut g_sq, mut xi_sq) = (0.0, 0.0);
        for (range, r) in &self.tensors {
            let g = B::slice_mut(B::reborrow(&mut grad), range.clone());
            let (g, x) = add_isotropic_noise_on(&self.be, g, *r, &mut noise, &mut self.z);
            g_sq += g;
            xi_sq += x;
        }
        if g_sq > 0.0 {
            self.ratio_sum += (xi_sq / g_sq).sqrt();
            self.ratio_steps += 1;
        }
        self.step += 1;
    }

    /// The step counter, for the sidecar (`sgd.direction_noise_step`, an f64 stored bit-exactly).
    pub fn state(&self, out: &mut BTreeMap<String, Vec<f32>>) {
        out.insert(
            "sgd.direction_noise_step".into(),
            encode_f64(&[self.step as f64]),
        );
    }

    /// Restores [`DirectionNoise::state`].
    pub fn load_state(&mut self, state: &BTreeMap<String, Vec<f32>>) -> Result<()> {
        let v = state
            .get("sgd.direction_noise_step")
            .filter(|v| v.len() == 2)
            .ok_or_else(|| {
                Error::invalid(
                    "optimiser state lacks sgd.direction_noise_step (the run was trained without \
                     --direction-noise; start from it with --init and no --resume)",
                )
            })?;
        self.step = decode_f64(v)[0] as u64;
        Ok(())
    }

    /// `direction_noise_ratio`: the epoch's mean over steps of ‖ξ‖/‖g‖ over all tensors, as
    /// applied in f32 (R itself when every tensor has the same R).
    pub fn take_epoch_stats(&mut self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert(
            "direction_noise_ratio".into(),
            finite_or_null(self.ratio_sum / self.ratio_steps as f64),
        );
        self.ratio_sum = 0.0;
        self.ratio_steps = 0;
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Activation, Architecture, Network};

    fn net() -> Network {
        Network::new(Architecture::Mlp {
            input: 9,
            hidden: vec![7],
            classes: 4,
            activation: Activation::Relu,
        })
    }

    fn gradient(p: usize, k: usize) -> Vec<f32> {
        (0..p)
            .map(|i| ((i * 7 + k * 13) as f32 * 0.37).sin())
            .collect()
    }

    fn norm(v: impl Iterator<Item = f64>) -> f64 {
        v.map(|x| x * x).sum::<f64>().sqrt()
    }

    /// ‖ĝ_t − g_t‖ = R_t·‖g_t‖ for every tensor, to the f32 rounding of the sum.
    #[test]
    fn noise_norm_is_r_times_each_tensors_gradient_norm() {
        let net = net();
        let layout = &net.layout;
        let cfg = DirectionNoiseConfig {
            relative: 0.7,
            per_tensor: vec![("1.bias".into(), 2.5), ("3.bias".into(), 0.0)],
            seed: 3,
        };
        let mut noise = DirectionNoise::new(cfg, layout).unwrap();
        let g = gradient(net.num_params(), 1);
        let mut h = g.clone();
        noise.perturb(&mut h);
        for t in &layout.tensors {
            let want_r = match t.name.as_str() {
                "1.bias" => 2.5,
                "3.bias" => 0.0,
                _ => 0.7,
            };
            let r = t.range();
            let gn = norm(g[r.clone()].iter().map(|&v| v as f64));
            let xn = norm(
                g[r.clone()]
                    .iter()
                    .zip(&h[r])
                    .map(|(&a, &b)| b as f64 - a as f64),
            );
            assert!(
                (xn - want_r * gn).abs() <= 1e-6 * gn,
                "{}: {xn} vs {}",
                t.name,
                want_r * gn
            );
        }
        // And in f64 before rounding: exactly R‖g‖ up to f64 rounding.
        let mut noise = NoiseSource::from_stream(&mut stream(9, Purpose::DirectionNoise, 0));
        let mut z = Vec::new();
        let mut v = vec![1.0f32, -2.0, 0.5, 3.0];
        let gn = norm(v.iter().map(|&x| x as f64));
        add_isotropic_noise(&mut v, 0.25, &mut noise, &mut z);
        let zn = norm(z.iter().map(|&x| x as f64));
        let xi: Vec<f64> = z.iter().map(|&zi| 0.25 * gn * zi as f64 / zn).collect();
        assert!((norm(xi.into_iter()) - 0.25 * gn).abs() < 1e-14);
    }

    /// The epoch statistic is R when every tensor has the same R.
    #[test]
    fn epoch_ratio_is_r() {
        let net = net();
        let cfg = DirectionNoiseConfig {
            relative: 0.3,
            seed: 1,
            ..Default::default()
        };
        let mut noise = DirectionNoise::new(cfg, &net.layout).unwrap();
        for k in 0..5 {
            noise.perturb(&mut gradient(net.num_params(), k));
        }
        let r = noise.take_epoch_stats()["direction_noise_ratio"]
            .as_f64()
            .unwrap();
        assert!((r - 0.3).abs() < 1e-6, "{r}");
    }

    /// The same seed and step give the same noise; another seed or step another; the step survives
    /// the sidecar encoding.
    #[test]
    fn seeded_and_resumable() {
        let net = net();
        let p = net.num_params();
        let make = |seed| {
            DirectionNoise::new(
                DirectionNoiseConfig {
                    relative: 0.5,
                    seed,
                    ..Default::default()
                },
                &net.layout,
            )
            .unwrap()
        };
        let run = |noise: &mut DirectionNoise, steps: std::ops::Range<usize>| -> Vec<Vec<f32>> {
            steps
                .map(|k| {
                    let mut g = gradient(p, k);
                    noise.perturb(&mut g);
                    g
                })
                .collect()
        };
        let (mut a, mut b, mut c) = (make(1), make(1), make(2));
        let ra = run(&mut a, 0..6);
        assert_eq!(ra, run(&mut b, 0..6));
        let rc = run(&mut c, 0..6);
        assert_ne!(ra[0], rc[0]);
        // The same gradient at the next step gets other noise.
        let mut d = make(1);
        let (mut g0, mut g1) = (gradient(p, 0), gradient(p, 0));
        d.perturb(&mut g0);
        d.perturb(&mut g1);
        assert_ne!(g0, g1);
        // Resume after 3 steps from the state.
        let mut first = make(1);
        run(&mut first, 0..3);
        let mut st = BTreeMap::new();
        first.state(&mut st);
        let mut resumed = make(1);
        resumed.load_state(&st).unwrap();
        assert_eq!(run(&mut resumed, 3..6), ra[3..].to_vec());
        assert!(make(1)
            .load_state(&BTreeMap::new())
            .unwrap_err()
            .to_string()
            .contains("--direction-noise"));
    }

    #[test]
    fn rejects_bad_values_and_unknown_tensors() {
        for r in [-0.1, f64::NAN, f64::INFINITY] {
            let e = DirectionNoiseConfig {
                relative: r,
                ..Default::default()
            }
            .validate()
            .unwrap_err()
            .to_string();
            assert!(e.contains("--direction-noise"), "{e}");
        }
        let e = DirectionNoiseConfig {
            per_tensor: vec![("1.bias".into(), -1.0)],
            ..Default::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("--direction-noise-tensor 1.bias=-1"), "{e}");
        let e = DirectionNoise::new(
            DirectionNoiseConfig {
                relative: 0.1,
                per_tensor: vec![("fc9.weight".into(), 1.0)],
                seed: 1,
            },
            &net().layout,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("fc9.weight") && e.contains("1.weight"), "{e}");
    }
}
