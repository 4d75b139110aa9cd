//! The loss: the network's last node, with its value, gradient and R-operator with respect to the
//! logits, and a factor of its Hessian (for the exact trace).

use crate::device::{Backend, CpuBackend};
use crate::Real;

/// The loss a network is trained and measured with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Loss {
    /// Mean softmax cross-entropy over the batch, as `nn.CrossEntropyLoss()`.
    #[default]
    SoftmaxCrossEntropy,
}

impl Loss {
    /// The name in records (`cross_entropy`).
    pub fn name(self) -> &'static str {
        match self {
            Loss::SoftmaxCrossEntropy => "cross_entropy",
        }
    }

    /// (Σₙ lossₙ in f64, number of rows whose arg-max is the label); with `dlogits`, also
    /// ∂L/∂z·`scale`-weighted per sample (scale = 1/B for the mean). See [`softmax_cross_entropy`].
    pub fn evaluate<T: Real>(
        self,
        logits: &[T],
        labels: &[usize],
        classes: usize,
        scale: T,
        dlogits: Option<&mut [T]>,
    ) -> (f64, usize) {
        self.evaluate_on(&CpuBackend, logits, labels, classes, scale, dlogits)
    }

    /// [`Loss::evaluate`] on backend `be` (logits and their gradient in its memory).
    pub fn evaluate_on<B: Backend, T: Real>(
        self,
        be: &B,
        logits: B::View<'_, T>,
        labels: &[usize],
        classes: usize,
        scale: T,
        dlogits: Option<B::ViewMut<'_, T>>,
    ) -> (f64, usize) {
        match self {
            Loss::SoftmaxCrossEntropy => {
                be.softmax_cross_entropy(logits, labels, classes, scale, dlogits)
            }
        }
    }

    /// The R-operator of its gradient with respect to the logits: R{∂L/∂z} = scale·A·R{z}, with A
    /// the Hessian of the per-sample loss in the logits. For cross-entropy A = diag(p) − p·pᵀ,
    /// p = softmax(z) (the label drops out). `logits` and `rz` are `batch × classes`.
    pub fn r_gradient<T: Real>(
        self,
        logits: &[T],
        rz: &[T],
        classes: usize,
        scale: T,
        rg: &mut [T],
    ) {
        self.r_gradient_on(&CpuBackend, logits, rz, classes, scale, rg);
    }

    /// [`Loss::r_gradient`] on backend `be`.
    pub fn r_gradient_on<B: Backend, T: Real>(
        self,
        be: &B,
        logits: B::View<'_, T>,
        rz: B::View<'_, T>,
        classes: usize,
        scale: T,
        rg: B::ViewMut<'_, T>,
    ) {
        match self {
            Loss::SoftmaxCrossEntropy => be.softmax_cross_entropy_r(logits, rz, classes, scale, rg),
        }
    }

    /// A factor M of the per-sample loss Hessian A = M·Mᵀ in the logits, one `classes × classes`
    /// matrix per row of `logits`; [`HessianFactor::column`] gives its columns. For cross-entropy
    /// M = diag(s)·(I − s·sᵀ) with s = √p (I − s·sᵀ is a projector since ‖s‖ = 1).
    pub fn hessian_factor<T: Real>(self, logits: &[T], classes: usize) -> HessianFactor<T> {
        match self {
            Loss::SoftmaxCrossEntropy => {
                let mut p = vec![T::zero(); logits.len()];
                for (z, q) in logits
                    .chunks_exact(classes)
                    .zip(p.chunks_exact_mut(classes))
                {
                    let m = z.iter().copied().fold(T::neg_infinity(), T::max);
                    let mut sum = T::zero();
                    for (qi, &zi) in q.iter_mut().zip(z) {
                        *qi = (zi - m).exp();
                        sum += *qi;
                    }
                    q.iter_mut().for_each(|qi| *qi = *qi / sum);
                }
                HessianFactor {
                    sqrt_p: p.iter().map(|v| v.sqrt()).collect(),
                    classes,
                }
            }
        }
    }
}

/// The factor of [`Loss::hessian_factor`].
#[derive(Clone, Debug)]
pub struct HessianFactor<T> {
    sqrt_p: Vec<T>,
    classes: usize,
}

impl<T: Real> HessianFactor<T> {
    /// Column `c` of every row's factor, `batch × classes`: Mₙ[k, c] = sₖ·(δₖc − sₖ·s_c).
    pub fn column(&self, c: usize, out: &mut [T]) {
        let classes = self.classes;
        for (row, sr) in out
            .chunks_exact_mut(classes)
            .zip(self.sqrt_p.chunks_exact(classes))
        {
            for (k, r) in row.iter_mut().enumerate() {
                let delta = if k == c { T::one() } else { T::zero() };
                *r = sr[k] * (delta - sr[k] * sr[c]);
            }
        }
    }
}

/// Mean softmax cross-entropy over a batch, as `nn.CrossEntropyLoss()`:
/// L = (1/B) Σ_n [logsumexp(z_n) − z_n[y_n]], computed stably with the row maximum.
///
/// Returns (Σ_n loss_n in f64, number of rows whose arg-max is the label). When `dlogits` is given it
/// receives ∂L/∂z = (softmax(z_n) − onehot(y_n))·`scale` (scale = 1/B for the mean).
pub fn softmax_cross_entropy<T: Real>(
    logits: &[T],
    labels: &[usize],
    classes: usize,
    scale: T,
    dlogits: Option<&mut [T]>,
) -> (f64, usize) {
    CpuBackend.softmax_cross_entropy(logits, labels, classes, scale, dlogits)
}
