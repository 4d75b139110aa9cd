//! `nn.SiLU` (swish): y = x·σ(x) (Elfwing et al. 2018, "Sigmoid-weighted linear units"; PyTorch's
//! `F.silu`). With s = σ(x): φ′ = s·(1 + x·(1 − s)) and φ″ = s·(1 − s)·(2 + x·(1 − 2s))
//! (differentiate φ′ with s′ = s·(1 − s)). Its derivative needs x, so it reads the input.

use super::sigmoid::logistic;
use super::Elementwise;
use crate::Real;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Silu {
    pub features: usize,
}

impl Elementwise for Silu {
    fn module(&self) -> &'static str {
        "SiLU"
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
        x * logistic(x)
    }
    fn backward_one<T: Real>(&self, x: T, y: T, g: T) -> T {
        g * self.derivative(x, y)
    }
    fn derivative<T: Real>(&self, x: T, _y: T) -> T {
        let s = logistic(x);
        s * (T::one() + x * (T::one() - s))
    }
    fn add_second_order<T: Real>(&self, r: T, x: T, _y: T, rx: T, dy: T) -> T {
        let s = logistic(x);
        let two = T::of_f64(2.0);
        r + s * (T::one() - s) * (two + x * (T::one() - two * s)) * rx * dy
    }
}
