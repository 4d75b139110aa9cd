//! `nn.ReLU`: y = max(x, 0). Its derivative is read from the output, φ′ = 1[y > 0] (PyTorch's
//! `threshold_backward`); φ″ = 0 almost everywhere, so the layer is piecewise linear.

use super::{zero_unless_positive, Elementwise};
use crate::Real;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relu {
    pub features: usize,
}

impl Elementwise for Relu {
    fn module(&self) -> &'static str {
        "ReLU"
    }
    fn features(&self) -> usize {
        self.features
    }
    fn second_derivative_vanishes(&self) -> bool {
        true
    }
    fn keeps_derivative(&self) -> bool {
        false
    }
    fn derivative_is_output_gate(&self) -> bool {
        true
    }
    fn value<T: Real>(&self, x: T) -> T {
        zero_unless_positive(x, x)
    }
    fn backward_one<T: Real>(&self, _x: T, y: T, g: T) -> T {
        zero_unless_positive(y, g)
    }
    fn derivative<T: Real>(&self, _x: T, y: T) -> T {
        zero_unless_positive(y, T::one())
    }
    fn add_second_order<T: Real>(&self, r: T, _x: T, _y: T, _rx: T, _dy: T) -> T {
        r
    }
}
