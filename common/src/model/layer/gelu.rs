//! `nn.GELU()` (exact, `approximate='none'`): y = x·Φ(x), Φ the standard normal CDF
//! (Hendrycks & Gimpel 2016, "Gaussian Error Linear Units").
//!
//! φ′(x) = Φ(x) + x·ϕ(x) and φ″(x) = ϕ(x)·(2 − x²), ϕ the standard normal density, evaluated in
//! f64. Unlike ReLU and tanh its derivative is not a function of its output, so it reads the input.

use super::Elementwise;
use crate::Real;
use statrs::function::erf::erf;
use std::f64::consts::{FRAC_1_SQRT_2, PI};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gelu {
    pub features: usize,
}

/// (Φ(x), ϕ(x)).
#[inline]
fn cdf_pdf(x: f64) -> (f64, f64) {
    (
        0.5 * (1.0 + erf(x * FRAC_1_SQRT_2)),
        (-0.5 * x * x).exp() / (2.0 * PI).sqrt(),
    )
}

impl Elementwise for Gelu {
    fn module(&self) -> &'static str {
        "GELU"
    }
    fn features(&self) -> usize {
        self.features
    }
    fn second_derivative_vanishes(&self) -> bool {
        false
    }
    fn value<T: Real>(&self, x: T) -> T {
        let x = x.as_f64();
        T::of_f64(x * cdf_pdf(x).0)
    }
    fn backward_one<T: Real>(&self, x: T, y: T, g: T) -> T {
        g * self.derivative(x, y)
    }
    fn derivative<T: Real>(&self, x: T, _y: T) -> T {
        let x = x.as_f64();
        let (cdf, pdf) = cdf_pdf(x);
        T::of_f64(cdf + x * pdf)
    }
    fn add_second_order<T: Real>(&self, r: T, x: T, _y: T, rx: T, dy: T) -> T {
        let x64 = x.as_f64();
        r + T::of_f64(cdf_pdf(x64).1 * (2.0 - x64 * x64)) * rx * dy
    }
}
