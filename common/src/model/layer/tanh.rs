//! `nn.Tanh`: y = tanh(x), with φ′ = 1 − y² and φ″ = −2y·(1 − y²), both from the output, so
//! φ″·δ = −2y·∂x with ∂x = φ′·δ. The φ″ term is the Hessian's second-derivative part; it is why
//! tanh networks are not piecewise linear and their exact trace is not tr(G).

use super::Elementwise;
use crate::Real;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tanh {
    pub features: usize,
}

impl Elementwise for Tanh {
    fn module(&self) -> &'static str {
        "Tanh"
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
        x.tanh()
    }
    fn backward_one<T: Real>(&self, x: T, y: T, g: T) -> T {
        g * self.derivative(x, y)
    }
    fn derivative<T: Real>(&self, _x: T, y: T) -> T {
        T::one() - y * y
    }
    fn add_second_order<T: Real>(&self, r: T, x: T, y: T, rx: T, dy: T) -> T {
        let dx = dy * self.derivative(x, y);
        r - T::of_f64(2.0) * y * rx * dx
    }
}
