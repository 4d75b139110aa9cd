//! AdamW with the semantics of `torch.optim.AdamW` (Loshchilov & Hutter 2019, "Decoupled weight
//! decay regularization"; Kingma & Ba 2015 for Adam), and Adam with the semantics of
//! `torch.optim.Adam` (weight decay as an L2 term added to the gradient before the moments), one
//! update with a switch ([`AdamWConfig::decoupled`]).

use super::ngd::{decode_f64, encode_f64};
use super::sgd::download;
use super::{Batch, Optimizer};
use crate::device::{Backend, CpuBackend};
use crate::{Error, Real, Result};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// The hyperparameters of `torch.optim.AdamW` or `torch.optim.Adam` (amsgrad and maximize off).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// `true`: AdamW, θ ← θ·(1 − lr·wd) before the step (decoupled weight decay). `false`:
    /// `torch.optim.Adam`, g ← g + wd·θ before the moments (coupled L2 weight decay).
    pub decoupled: bool,
}

impl Default for AdamWConfig {
    /// `torch.optim.AdamW`'s defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight decay 0.01.
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            decoupled: true,
        }
    }
}

impl AdamWConfig {
    /// `torch.optim.Adam`'s defaults: AdamW's with weight decay 0, coupled.
    pub fn adam_default() -> Self {
        AdamWConfig {
            weight_decay: 0.0,
            decoupled: false,
            ..AdamWConfig::default()
        }
    }

    /// `adamw` (decoupled weight decay) or `adam` (L2 weight decay in the gradient).
    pub fn name(&self) -> &'static str {
        if self.decoupled {
            "adamw"
        } else {
            "adam"
        }
    }

    /// Checks the settings as PyTorch's constructor does (0 ≤ lr, 0 ≤ eps, 0 ≤ β < 1, 0 ≤ wd).
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the flag and the value.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str, v: f64, rule: &str| {
            Err(Error::invalid(format!("invalid {what} {v} ({rule})")))
        };
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return bad("learning rate --lr", self.lr, "must be >= 0");
        }
        if !(self.eps.is_finite() && self.eps >= 0.0) {
            return bad("--eps", self.eps, "must be >= 0");
        }
        for (name, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return bad(&format!("--betas {name}"), b, "must be in [0, 1)");
            }
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("--weight-decay", self.weight_decay, "must be >= 0");
        }
        Ok(())
    }

    /// The hyperparameters for records, with PyTorch's names (`betas` as a pair).
    pub fn to_json(&self) -> Map<String, Value> {
        match json!({
            "lr": self.lr,
            "betas": [self.beta1, self.beta2],
            "eps": self.eps,
            "weight_decay": self.weight_decay,
            "amsgrad": false,
        }) {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }
}

/// One AdamW (or Adam) step on `params` with gradient `grad`, first and second moments `m`, `v`
/// (updated in place), `step` the step's number t ≥ 1 (1 on the first step). In PyTorch's order
/// (`torch/optim/adam.py`, `_single_tensor_adam`; `decoupled_weight_decay=True` for AdamW):
///
/// AdamW: θ ← θ·(1 − lr·wd);  Adam: g ← g + wd·θ (the L2 term in the gradient, rounded as ATen's
/// `add(g, θ, alpha=wd)`, `fma(θ, wd, g)`); then
/// m ← m + (1 − β₁)(g − m);  v ← v·β₂ + (1 − β₂)·g·g;
/// θ ← θ − (lr / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε).
///
/// The scalars are computed in f64 (Python floats) and rounded to `T` once, each elementwise
/// operation is rounded in `T` in the order of PyTorch's CPU kernels (`lerp` with weight w < ½ as
/// the fused `fma(w, g − m, m)`, else `fma(m − g, 1 − w, g)`; `addcmul` as the fused
/// `fma(s·g, g, v)` for Adam and the unfused `v + (s·g)·g` for AdamW, see below; `addcdiv` as
/// `θ + (s·m)/d`), so `T = f64` is PyTorch's float64 AdamW and `T = f32` its float32
/// one bit for bit (the fixture's float32 run: Adam at every step; AdamW in the parameters at
/// every step and at the end, its second moment 1 ulp off on some steps because its addcmul is
/// unfused — fusing it, as Adam's, moves AdamW's committed records, so it waits for that decision).
///
/// **Panics** if the slices differ in length or `step` is 0.
pub fn adamw_step<T: Real>(
    cfg: &AdamWConfig,
    step: u64,
    params: &mut [T],
    grad: &[T],
    m: &mut [T],
    v: &mut [T],
) {
    CpuBackend.adamw_step(cfg, step, params, grad, m, v);
}

/// `torch.optim.AdamW` (or `torch.optim.Adam`, by [`AdamWConfig::decoupled`]) over the flat f32
/// parameters (its state, as PyTorch's for f32 parameters, in f32; the step count exact). Adam's
/// sidecar names start `adam.` where AdamW's start `adamw.`. On backend `B`: the moments live in
/// its memory and the update is [`Backend::adamw_step`]; the step count is on the host.
#[derive(Clone, Debug)]
pub struct AdamW<B: Backend = CpuBackend> {
    pub config: AdamWConfig,
    be: B,
    step: u64,
    exp_avg: B::Buffer<f32>,
    exp_avg_sq: B::Buffer<f32>,
}

/// Sidecar names of the state: the moments, and the step count as an f64 in two f32 bit patterns.
const KEY_EXP_AVG: &str = "adamw.exp_avg";
const KEY_EXP_AVG_SQ: &str = "adamw.exp_avg_sq";
const KEY_STEP: &str = "adamw.step";
const ADAM_KEY_EXP_AVG: &str = "adam.exp_avg";
const ADAM_KEY_EXP_AVG_SQ: &str = "adam.exp_avg_sq";
const ADAM_KEY_STEP: &str = "adam.step";

impl AdamW {
    /// AdamW (or Adam) on the CPU ([`AdamW::new_on`]).
    ///
    /// # Errors
    /// As [`AdamWConfig::validate`].
    pub fn new(config: AdamWConfig) -> Result<Self> {
        Self::new_on(CpuBackend, config)
    }
}

impl<B: Backend> AdamW<B> {
    /// AdamW (or Adam) with its moments on backend `be`.
    ///
    /// # Errors
    /// As [`AdamWConfig::validate`].
    pub fn new_on(be: B, config: AdamWConfig) -> Result<Self> {
        config.validate()?;
        Ok(AdamW {
            config,
            exp_avg: be.zeros(0),
            exp_avg_sq: be.zeros(0),
            be,
            step: 0,
        })
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// The sidecar names of (exp_avg, exp_avg_sq, step) for this variant.
    fn keys(&self) -> (&'static str, &'static str, &'static str) {
        if self.config.decoupled {
            (KEY_EXP_AVG, KEY_EXP_AVG_SQ, KEY_STEP)
        } else {
            (ADAM_KEY_EXP_AVG, ADAM_KEY_EXP_AVG_SQ, ADAM_KEY_STEP)
        }
    }
}

impl<B: Backend> Optimizer<B> for AdamW<B> {
    fn name(&self) -> &'static str {
        self.config.name()
    }
    fn hyperparameters(&self) -> Map<String, Value> {
        self.config.to_json()
    }
    fn step(
        &mut self,
        params: B::ViewMut<'_, f32>,
        grad: B::ViewMut<'_, f32>,
        _batch: &Batch<'_, B>,
    ) -> Result<()> {
        let p = B::len(B::freeze(&params));
        if self.step == 0 {
            // PyTorch's lazy state: zeros of the parameters' shape on the first step.
            self.exp_avg = self.be.zeros(p);
            self.exp_avg_sq = self.be.zeros(p);
        }
        if B::buffer_len(&self.exp_avg) != p {
            return Err(Error::invalid(format!(
                "{}: the state holds {} values but the model has {p} parameters",
                self.config.name(),
                B::buffer_len(&self.exp_avg),
            )));
        }
        self.step += 1;
        self.be.adamw_step(
            &self.config,
            self.step,
            params,
            B::freeze(&grad),
            B::view_mut(&mut self.exp_avg),
            B::view_mut(&mut self.exp_avg_sq),
        );
        Ok(())
    }
    fn state(&self) -> BTreeMap<String, Vec<f32>> {
        let mut s = BTreeMap::new();
        let (key_m, key_v, key_step) = self.keys();
        if self.step > 0 {
            s.insert(key_m.into(), download(&self.be, &self.exp_avg));
            s.insert(key_v.into(), download(&self.be, &self.exp_avg_sq));
            s.insert(key_step.into(), encode_f64(&[self.step as f64]));
        }
        s
    }
    fn load_state(&mut self, state: &BTreeMap<String, Vec<f32>>) -> Result<()> {
        let (key_m, key_v, key_step) = self.keys();
        let other = if self.config.decoupled {
            ADAM_KEY_STEP
        } else {
            KEY_STEP
        };
        if state.contains_key(other) {
            return Err(Error::invalid(format!(
                "{} sidecar: it holds `{other}`, the other variant's state (adam vs adamw)",
                self.config.name()
            )));
        }
        let Some(step) = state.get(key_step) else {
            // No step taken yet when the sidecar was written.
            *self = AdamW::new_on(self.be.clone(), self.config)?;
            return Ok(());
        };
        let bad = |m: String| {
            Err(Error::invalid(format!(
                "{} sidecar: {m}",
                self.config.name()
            )))
        };
        let step = match decode_f64(step).as_slice() {
            [t] if t.is_finite() && *t >= 1.0 && t.fract() == 0.0 && *t < 2f64.powi(53) => {
                *t as u64
            }
            other => return bad(format!("`{key_step}` is {other:?}, not a step count")),
        };
        let (Some(m), Some(v)) = (state.get(key_m), state.get(key_v)) else {
            return bad(format!("`{key_step}` without `{key_m}` and `{key_v}`"));
        };
        if m.len() != v.len() {
            return bad(format!(
                "`{key_m}` holds {} values but `{key_v}` {}",
                m.len(),
                v.len()
            ));
        }
        self.step = step;
        self.exp_avg = self.be.upload(m);
        self.exp_avg_sq = self.be.upload(v);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `scripts/fixtures/adamw_torch.py`'s output: PyTorch float64 AdamW (`adamw_f64.json`) or
    /// Adam (`adam_f64.json`) on a fixed gradient sequence, for several settings.
    fn fixture_file(name: &str) -> Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/adamw-torch")
            .join(name);
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    }

    /// The fixture and whether its optimiser decouples the weight decay.
    fn fixtures() -> [(Value, bool); 2] {
        [
            (fixture_file("adamw_f64.json"), true),
            (fixture_file("adam_f64.json"), false),
        ]
    }

    fn config_of(c: &Value, decoupled: bool) -> AdamWConfig {
        AdamWConfig {
            lr: c["lr"].as_f64().unwrap(),
            beta1: c["betas"][0].as_f64().unwrap(),
            beta2: c["betas"][1].as_f64().unwrap(),
            eps: c["eps"].as_f64().unwrap(),
            weight_decay: c["weight_decay"].as_f64().unwrap(),
            decoupled,
        }
    }

    fn floats(v: &Value) -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    }

    /// Ours in f64 against PyTorch's float64 AdamW and Adam, every step, to 1e-12 (relative to
    /// max(1, |θ|)).
    #[test]
    fn matches_torch_adamw_and_adam_float64() {
        for (fx, decoupled) in fixtures() {
            let cases = fx["cases"].as_array().unwrap();
            assert!(cases.len() >= 2);
            for case in cases {
                let c = &case["config"];
                let cfg = config_of(c, decoupled);
                let mut p = floats(&case["init"]);
                let (mut m, mut v) = (vec![0.0; p.len()], vec![0.0; p.len()]);
                let grads = case["grads"].as_array().unwrap();
                let expected = case["params"].as_array().unwrap();
                assert!(grads.len() >= 10 && grads.len() == expected.len());
                for (t, (g, want)) in grads.iter().zip(expected).enumerate() {
                    adamw_step(&cfg, t as u64 + 1, &mut p, &floats(g), &mut m, &mut v);
                    for (a, b) in p.iter().zip(floats(want)) {
                        assert!(
                            (a - b).abs() <= 1e-12 * b.abs().max(1.0),
                            "{c} step {}: {a} vs torch {b}",
                            t + 1
                        );
                    }
                }
                for (a, b) in m.iter().zip(floats(&case["exp_avg"])) {
                    assert!(
                        (a - b).abs() <= 1e-12 * b.abs().max(1.0),
                        "exp_avg {a} vs {b}"
                    );
                }
                for (a, b) in v.iter().zip(floats(&case["exp_avg_sq"])) {
                    assert!(
                        (a - b).abs() <= 1e-12 * b.abs().max(1e-3),
                        "exp_avg_sq {a} vs {b}"
                    );
                }
            }
        }
    }

    /// The f32 optimiser is PyTorch's float32 AdamW (and Adam) on the same sequence (the
    /// fixture's f32 run), 12 steps, bit for bit.
    #[test]
    fn matches_torch_adamw_and_adam_float32() {
        for (fx, decoupled) in fixtures() {
            for case in fx["cases"].as_array().unwrap() {
                let c = &case["config"];
                let mut opt = AdamW::new(config_of(c, decoupled)).unwrap();
                assert_eq!(opt.name(), if decoupled { "adamw" } else { "adam" });
                let net = crate::model::Network::new(crate::model::Architecture::Mlp {
                    input: 3,
                    hidden: vec![2],
                    classes: 2,
                    activation: crate::model::Activation::Relu,
                });
                let batch = Batch {
                    net: &net,
                    x: &[][..],
                    targets: crate::model::Targets::Labels(&[]),
                };
                let mut p: Vec<f32> = floats(&case["init"]).iter().map(|&x| x as f32).collect();
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                let torch_bits = |v: &Value| {
                    floats(v)
                        .iter()
                        .map(|&x| (x as f32).to_bits())
                        .collect::<Vec<_>>()
                };
                let (key_m, key_v, _) = opt.keys();
                for (t, g) in case["grads"].as_array().unwrap().iter().enumerate() {
                    let mut g: Vec<f32> = floats(g).iter().map(|&x| x as f32).collect();
                    opt.step(&mut p, &mut g, &batch).unwrap();
                    // Every step: the parameters and the moments, bit for bit (Adam with an
                    // unfused addcmul, or with its L2 term unfused, is 1 ulp off on some steps).
                    let state = opt.state();
                    let mut checks = vec![
                        (&p, &case["params_f32"][t], "params"),
                        (&state[key_m], &case["exp_avg_f32"][t], "exp_avg"),
                    ];
                    if !decoupled {
                        // AdamW's unfused addcmul: see `adamw_step`.
                        checks.push((&state[key_v], &case["exp_avg_sq_f32"][t], "exp_avg_sq"));
                    }
                    for (ours, theirs, what) in checks {
                        assert_eq!(
                            bits(ours),
                            torch_bits(theirs),
                            "{c}: {what} after step {}: {ours:?}",
                            t + 1
                        );
                    }
                }
                for (a, b) in p.iter().zip(floats(&case["params_f32_last"])) {
                    // The same roundings as PyTorch's kernels: equal bit for bit (an unfused lerp
                    // is 6 ulps away on the second setting).
                    assert_eq!(
                        a.to_bits(),
                        (b as f32).to_bits(),
                        "{c}: {a} vs torch f32 {b}"
                    );
                }
            }
        }
    }

    /// Saving the state after k steps and loading it into a fresh optimiser continues bit for bit.
    #[test]
    fn resumes_bit_for_bit_from_its_state() {
        for decoupled in [true, false] {
            resumes_bit_for_bit(decoupled);
        }
    }

    fn resumes_bit_for_bit(decoupled: bool) {
        let cfg = AdamWConfig {
            lr: 0.05,
            weight_decay: 0.1,
            decoupled,
            ..AdamWConfig::default()
        };
        let net = crate::model::Network::new(crate::model::Architecture::Mlp {
            input: 3,
            hidden: vec![2],
            classes: 2,
            activation: crate::model::Activation::Relu,
        });
        let batch = Batch {
            net: &net,
            x: &[][..],
            targets: crate::model::Targets::Labels(&[]),
        };
        let grad = |k: usize| -> Vec<f32> {
            (0..5)
                .map(|i| ((i * 7 + k * 3) as f32 * 0.37).sin())
                .collect()
        };
        let mut straight = AdamW::new(cfg).unwrap();
        let mut p = vec![0.3f32, -0.2, 0.1, 0.9, -1.1];
        let mut split_p = p.clone();
        for k in 0..9 {
            straight.step(&mut p, &mut grad(k), &batch).unwrap();
        }
        let mut first = AdamW::new(cfg).unwrap();
        for k in 0..4 {
            first.step(&mut split_p, &mut grad(k), &batch).unwrap();
        }
        let saved = first.state();
        assert_eq!(saved.len(), 3);
        let prefix = if decoupled { "adamw." } else { "adam." };
        assert!(saved.keys().all(|k| k.starts_with(prefix)), "{saved:?}");
        // The other variant refuses this state rather than starting fresh.
        let mut other = AdamW::new(AdamWConfig {
            decoupled: !decoupled,
            ..cfg
        })
        .unwrap();
        let e = other.load_state(&saved).unwrap_err().to_string();
        assert!(e.contains("other variant"), "{e}");
        let mut second = AdamW::new(cfg).unwrap();
        second.load_state(&saved).unwrap();
        assert_eq!(second.steps(), 4);
        for k in 4..9 {
            second.step(&mut split_p, &mut grad(k), &batch).unwrap();
        }
        assert_eq!(
            p.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            split_p.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
        // Without the state the continuation differs: the comparison above can fail.
        let mut q = p.clone();
        let mut r = p.clone();
        let mut fresh = AdamW::new(cfg).unwrap();
        fresh.step(&mut q, &mut grad(9), &batch).unwrap();
        second.step(&mut r, &mut grad(9), &batch).unwrap();
        assert_ne!(q, r);
    }

    #[test]
    fn refuses_bad_settings_and_state() {
        for cfg in [
            AdamWConfig {
                lr: -1.0,
                ..AdamWConfig::default()
            },
            AdamWConfig {
                beta1: 1.0,
                ..AdamWConfig::default()
            },
            AdamWConfig {
                beta2: -0.1,
                ..AdamWConfig::default()
            },
            AdamWConfig {
                eps: f64::NAN,
                ..AdamWConfig::default()
            },
            AdamWConfig {
                weight_decay: -0.5,
                ..AdamWConfig::default()
            },
        ] {
            assert!(AdamW::new(cfg).is_err(), "{cfg:?}");
        }
        let mut opt = AdamW::new(AdamWConfig::default()).unwrap();
        let mut s = BTreeMap::new();
        s.insert(KEY_STEP.to_string(), encode_f64(&[2.5]));
        let e = opt.load_state(&s).unwrap_err().to_string();
        assert!(e.contains("adamw.step"), "{e}");
        s.insert(KEY_STEP.to_string(), encode_f64(&[3.0]));
        let e = opt.load_state(&s).unwrap_err().to_string();
        assert!(e.contains("without"), "{e}");
    }
}
