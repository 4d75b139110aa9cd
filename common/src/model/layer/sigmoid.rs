//! `nn.Sigmoid`: y = σ(x) = 1/(1 + e^{−x}), with φ′ = y·(1 − y) and φ″ = y·(1 − y)·(1 − 2y), both
//! from the output (differentiate σ′ = σ·(1 − σ) once more). Not piecewise linear.

use super::Elementwise;
use crate::Real;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sigmoid {
    pub features: usize,
}

/// σ(x) without overflow: e^{−x} is only formed for x ≥ 0, e^{x} otherwise.
#[inline]
pub(crate) fn logistic<T: Real>(x: T) -> T {
    if x >= T::zero() {
        T::one() / (T::one() + (-x).exp())
    } else {
        let e = x.exp();
        e / (T::one() + e)
    }
}

impl Elementwise for Sigmoid {
    fn module(&self) -> &'static str {
        "Sigmoid"
    }
    fn features(&self) -> usize {
        self.features
    }
    fn second_derivative_vanishes(&self) -> bool {
        false
    }
    fn keeps_derivative(&self) -> bool {
        false
    }
    fn value<T: Real>(&self, x: T) -> T {
        logistic(x)
    }
    fn backward_one<T: Real>(&self, x: T, y: T, g: T) -> T {
        g * self.derivative(x, y)
    }
    fn derivative<T: Real>(&self, _x: T, y: T) -> T {
        y * (T::one() - y)
    }
    fn add_second_order<T: Real>(&self, r: T, x: T, y: T, rx: T, dy: T) -> T {
        let two = T::of_f64(2.0);
        r + self.derivative(x, y) * (T::one() - two * y) * rx * dy
    }
}
