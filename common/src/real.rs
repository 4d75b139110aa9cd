//! The floating-point types the numerics run in.

use std::fmt::{Debug, Display};

/// A real scalar usable by the models: `f32` (training, as PyTorch) or `f64` (verification).
///
/// BLAS is used for both through ndarray's `general_mat_mul` (sgemm / dgemm).
pub trait Real:
    num_traits::Float
    + ndarray::LinalgScalar
    + Default
    + Debug
    + Display
    + Send
    + Sync
    + std::iter::Sum
    + std::ops::AddAssign
    + std::ops::SubAssign
    + std::ops::MulAssign
    + crate::device::Element
    + 'static
{
    /// The name used in records and safetensors (`F32`, `F64`).
    const NAME: &'static str;
    fn of_f64(x: f64) -> Self;
    fn as_f64(self) -> f64;
    fn of_usize(x: usize) -> Self {
        Self::of_f64(x as f64)
    }
}

impl Real for f32 {
    const NAME: &'static str = "f32";
    #[inline(always)]
    fn of_f64(x: f64) -> Self {
        x as f32
    }
    #[inline(always)]
    fn as_f64(self) -> f64 {
        self as f64
    }
}

impl Real for f64 {
    const NAME: &'static str = "f64";
    #[inline(always)]
    fn of_f64(x: f64) -> Self {
        x
    }
    #[inline(always)]
    fn as_f64(self) -> f64 {
        self
    }
}
