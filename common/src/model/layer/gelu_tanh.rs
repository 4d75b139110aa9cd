//! `nn.GELU(approximate='tanh')`: y = ½·x·(1 + tanh(u)), u = c·(x + a·x³), c = √(2/π),
//! a = 0.044715 (Hendrycks & Gimpel 2016; PyTorch's `gelu` with `approximate="tanh"`, the same
//! constants). With t = tanh(u), u′ = c·(1 + 3a·x²), u″ = 6ac·x:
//!
//! φ′ = ½·(1 + t) + ½·x·(1 − t²)·u′,
//! φ″ = (1 − t²)·(u′ + ½·x·(u″ − 2t·u′²)),
//!
//! evaluated in f64 (as the exact GELU is).

use super::Elementwise;
use crate::Real;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeluTanh {
    pub features: usize,
}

const A: f64 = 0.044715;
/// √(2/π).
const C: f64 = 0.797_884_560_802_865_4;

/// (t, u′, u″) at x.
#[inline]
fn parts(x: f64) -> (f64, f64, f64) {
    let t = (C * (x + A * x * x * x)).tanh();
    (t, C * (1.0 + 3.0 * A * x * x), 6.0 * A * C * x)
}

impl Elementwise for GeluTanh {
    fn module(&self) -> &'static str {
        "GELU"
    }
    fn features(&self) -> usize {
        self.features
    }
    fn second_derivative_vanishes(&self) -> bool {
        false
    }
    fn keeps_derivative(&self) -> bool {
        true
    }
    fn value<T: Real>(&self, x: T) -> T {
        let x = x.as_f64();
        T::of_f64(0.5 * x * (1.0 + parts(x).0))
    }
    fn value_and_derivative<T: Real>(&self, x: T) -> (T, T) {
        let x = x.as_f64();
        let (t, du, _) = parts(x);
        (
            T::of_f64(0.5 * x * (1.0 + t)),
            T::of_f64(0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du),
        )
    }
    fn backward_one<T: Real>(&self, x: T, y: T, g: T) -> T {
        g * self.derivative(x, y)
    }
    fn derivative<T: Real>(&self, x: T, _y: T) -> T {
        let x = x.as_f64();
        let (t, du, _) = parts(x);
        T::of_f64(0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du)
    }
    fn add_second_order<T: Real>(&self, r: T, x: T, _y: T, rx: T, dy: T) -> T {
        let x = x.as_f64();
        let (t, du, ddu) = parts(x);
        let second = (1.0 - t * t) * (du + 0.5 * x * (ddu - 2.0 * t * du * du));
        r + T::of_f64(second) * rx * dy
    }
}
