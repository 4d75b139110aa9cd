//! The loss: the network's last node, with its value, gradient and R-operator with respect to the
//! outputs (logits), and a factor of its Hessian (for the exact trace).
//!
//! Two losses: softmax cross-entropy on integer labels, and the mean squared error on float targets
//! ([`Targets`] carries either). The mean squared error is PyTorch's `F.mse_loss(f, y)` with its
//! default `reduction='mean'`: the mean over all B·k elements of a `B × k` output,
//!
//! L = (1/(B·k)) Σₙ Σⱼ (fₙⱼ − yₙⱼ)²,
//!
//! so that L is the mean over samples of the per-sample loss ℓₙ = (1/k)‖fₙ − yₙ‖² (for k = 1, the
//! mean of the squared residuals). It is −(2/k)·log N(y; f, (k/2)·I) up to a constant, the
//! Gaussian negative log-likelihood with variance σ² = k/2 per output.
//!
//! **How nβ and λ̂ relate to it.** λ̂ = nβ·(E_β[L_n(w)] − L_n(w*)) is estimated from the tempered
//! posterior ∝ exp(−nβ·L_n(w))·(localising prior). Scaling the loss by a constant c > 0 (say, the sum
//! instead of the mean over the k outputs, c = k, or the Gaussian log-likelihood with another σ²) is
//! the same as tempering with β′ = c·β: the learning coefficient λ, a property of the zeros of
//! L − L(w*), is invariant to it (Watanabe 2009, the volume scaling V(ε) ∝ ε^λ is unchanged by
//! L ↦ cL), but the tempered posterior is not, and so neither is a finite-sample estimate at a given
//! nβ. The tools temper the loss exactly as written here; nβ = n/ln n with this L is the setting of
//! devinterp's MSE examples (which use the same `F.mse_loss`).
//!
//! **Loss at every position.** For a per-position output `[T, C]` (a sequence model without
//! `last`) and labels `[B, T]` ([`Targets::Tokens`]) the cross-entropy is averaged over positions,
//!
//! L = (1/(B·T)) Σₙ Σₜ [logsumexp(zₙₜ) − zₙₜ[yₙₜ]],  ℓₙ = (1/T) Σₜ CE(zₙₜ, yₙₜ),
//!
//! PyTorch's `F.cross_entropy(z.reshape(-1, C), y.reshape(-1))`: L is again the mean of the
//! per-sample losses ℓₙ, n counts sequences, and nβ tempers that mean. The sum over positions
//! (the joint negative log-likelihood of a sequence's T labels) is T·ℓₙ, the same posterior at
//! nβ/T — by the argument above λ is unchanged, a finite-nβ estimate is the sum's at nβ/T. The
//! gradient and R-operator act per position with scale/T ([`crate::model::Network::loss_rows`]);
//! the Hessian of ℓₙ in the sample's T·C logits is (1/T)·blockdiag(A₁ … A_T). The mean squared
//! error needs nothing new: over a `[T, k]` output it is already the mean over all T·k values.

use crate::device::{Backend, CpuBackend};
use crate::Real;

/// What a batch's outputs are compared with: integer class labels (one per sample, cross-entropy),
/// integer labels at every position (`batch × positions`, row-major: cross-entropy averaged over
/// positions, for a per-position output `[positions, classes]`), or a `batch × width` float matrix,
/// row-major (mean squared error).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Targets<'a, T> {
    Labels(&'a [usize]),
    Tokens {
        labels: &'a [usize],
        positions: usize,
    },
    Values {
        values: &'a [T],
        width: usize,
    },
}

impl<'a, T> Targets<'a, T> {
    /// The number of samples.
    pub fn len(&self) -> usize {
        match self {
            Targets::Labels(l) => l.len(),
            Targets::Tokens { labels, positions } => labels.len() / (*positions).max(1),
            Targets::Values { values, width } => values.len() / (*width).max(1),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Samples `start..end`.
    pub fn range(&self, start: usize, end: usize) -> Targets<'a, T> {
        match *self {
            Targets::Labels(l) => Targets::Labels(&l[start..end]),
            Targets::Tokens { labels, positions } => Targets::Tokens {
                labels: &labels[start * positions..end * positions],
                positions,
            },
            Targets::Values { values, width } => Targets::Values {
                values: &values[start * width..end * width],
                width,
            },
        }
    }
}

impl<'a, T> From<&'a [usize]> for Targets<'a, T> {
    fn from(labels: &'a [usize]) -> Self {
        Targets::Labels(labels)
    }
}

impl<'a, T> From<&'a Vec<usize>> for Targets<'a, T> {
    fn from(labels: &'a Vec<usize>) -> Self {
        Targets::Labels(labels)
    }
}

impl<'a, T, const N: usize> From<&'a [usize; N]> for Targets<'a, T> {
    fn from(labels: &'a [usize; N]) -> Self {
        Targets::Labels(labels)
    }
}

/// Owned [`Targets`]: a minibatch buffer, or the samples an operator keeps.
#[derive(Clone, Debug, PartialEq)]
pub enum TargetBuf<T> {
    Labels(Vec<usize>),
    Tokens {
        labels: Vec<usize>,
        positions: usize,
    },
    Values {
        values: Vec<T>,
        width: usize,
    },
}

impl<T: Copy> TargetBuf<T> {
    /// A copy of `targets`.
    pub fn copy_of(targets: Targets<'_, T>) -> Self {
        match targets {
            Targets::Labels(l) => TargetBuf::Labels(l.to_vec()),
            Targets::Tokens { labels, positions } => TargetBuf::Tokens {
                labels: labels.to_vec(),
                positions,
            },
            Targets::Values { values, width } => TargetBuf::Values {
                values: values.to_vec(),
                width,
            },
        }
    }

    /// The first `count` samples.
    pub fn first(&self, count: usize) -> Targets<'_, T> {
        self.view().range(0, count)
    }

    pub fn view(&self) -> Targets<'_, T> {
        match self {
            TargetBuf::Labels(l) => Targets::Labels(l),
            TargetBuf::Tokens { labels, positions } => Targets::Tokens {
                labels,
                positions: *positions,
            },
            TargetBuf::Values { values, width } => Targets::Values {
                values,
                width: *width,
            },
        }
    }

    pub fn len(&self) -> usize {
        self.view().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The loss a network is trained and measured with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Loss {
    /// Mean softmax cross-entropy over the batch, as `nn.CrossEntropyLoss()`.
    #[default]
    SoftmaxCrossEntropy,
    /// Mean squared error over all elements, as `F.mse_loss` (see the module doc).
    MeanSquaredError,
}

impl Loss {
    /// The name in records and on the command line (`cross_entropy`, `mse`).
    pub fn name(self) -> &'static str {
        match self {
            Loss::SoftmaxCrossEntropy => "cross_entropy",
            Loss::MeanSquaredError => "mse",
        }
    }

    /// Parses `cross_entropy` (also `cross-entropy`, `ce`) or `mse`.
    ///
    /// # Errors
    /// [`crate::Error::Invalid`] for another name.
    pub fn parse(s: &str) -> crate::Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "cross_entropy" | "cross-entropy" | "ce" => Ok(Loss::SoftmaxCrossEntropy),
            "mse" => Ok(Loss::MeanSquaredError),
            _ => Err(crate::Error::invalid(format!(
                "unknown loss '{s}' (expected cross_entropy or mse)"
            ))),
        }
    }

    /// The loss a data set's targets call for when none is named: cross-entropy for integer labels,
    /// the mean squared error for float targets.
    pub fn for_targets(float_targets: bool) -> Self {
        if float_targets {
            Loss::MeanSquaredError
        } else {
            Loss::SoftmaxCrossEntropy
        }
    }

    /// The loss a tool uses: `--loss` when given, else the one the checkpoint's metadata records,
    /// else the targets' ([`Loss::for_targets`]).
    ///
    /// # Errors
    /// An unknown name.
    pub fn resolve(
        explicit: Option<&str>,
        recorded: Option<&str>,
        float_targets: bool,
    ) -> crate::Result<Self> {
        match explicit.or(recorded) {
            Some(name) => Loss::parse(name),
            None => Ok(Loss::for_targets(float_targets)),
        }
    }

    /// Whether the loss takes float targets (else integer labels).
    pub fn takes_float_targets(self) -> bool {
        self == Loss::MeanSquaredError
    }

    /// (Σₙ lossₙ in f64, number of rows whose arg-max is the label — 0 for float targets); with
    /// `dlogits`, also ∂L/∂z·`scale`-weighted per sample (scale = 1/B for the mean). See
    /// [`softmax_cross_entropy`] and [`mean_squared_error`].
    ///
    /// With [`Targets::Tokens`] (labels at each of T positions, `classes` = T·C outputs per sample)
    /// the per-sample loss is the cross-entropy averaged over the sample's positions,
    /// ℓₙ = (1/T)·Σₜ [logsumexp(zₙₜ) − zₙₜ[yₙₜ]], so that (1/B)·Σₙ ℓₙ is PyTorch's
    /// `F.cross_entropy(z.reshape(-1, C), y.reshape(-1))` (the mean over all B·T tokens); the
    /// count is of tokens (B·T of them) whose arg-max is the label.
    ///
    /// **Panics** if the targets are not the loss's kind (labels for cross-entropy, values of width
    /// `classes` for the mean squared error): [`crate::model::Network::check_input`] refuses such
    /// data before any batch is formed.
    pub fn evaluate<'a, T: Real>(
        self,
        logits: &[T],
        targets: impl Into<Targets<'a, T>>,
        classes: usize,
        scale: T,
        dlogits: Option<&mut [T]>,
    ) -> (f64, usize) {
        self.evaluate_on(&CpuBackend, logits, targets, classes, scale, dlogits)
    }

    /// [`Loss::evaluate`] on backend `be`: the outputs and their gradient in its memory, the
    /// targets (labels or values) on the host, as the backend's loss operations take them.
    pub fn evaluate_on<'a, B: Backend, T: Real>(
        self,
        be: &B,
        logits: B::View<'_, T>,
        targets: impl Into<Targets<'a, T>>,
        classes: usize,
        scale: T,
        dlogits: Option<B::ViewMut<'_, T>>,
    ) -> (f64, usize) {
        match (self, targets.into()) {
            (Loss::SoftmaxCrossEntropy, Targets::Labels(labels)) => {
                be.softmax_cross_entropy(logits, labels, classes, scale, dlogits)
            }
            // The mean over positions: ℓₙ = (1/T)·Σₜ CE(zₙₜ, yₙₜ), each position a row of
            // `classes / T` logits; the gradient rows carry scale/T, the count is of tokens.
            (Loss::SoftmaxCrossEntropy, Targets::Tokens { labels, positions }) => {
                let positions = positions.max(1);
                let (sum, correct) = be.softmax_cross_entropy(
                    logits,
                    labels,
                    classes / positions,
                    scale / T::of_usize(positions),
                    dlogits,
                );
                (sum / positions as f64, correct)
            }
            (Loss::MeanSquaredError, Targets::Values { values, width }) => {
                assert_eq!(width, classes, "mse targets' width is the output width");
                (
                    be.mean_squared_error(logits, values, classes, scale, dlogits),
                    0,
                )
            }
            (loss, t) => panic!(
                "{} was given {} targets (refused when the data were checked)",
                loss.name(),
                if matches!(t, Targets::Values { .. }) {
                    "float"
                } else {
                    "integer"
                }
            ),
        }
    }

    /// The R-operator of its gradient with respect to the logits: R{∂L/∂z} = scale·A·R{z}, with A
    /// the Hessian of the per-sample loss in the logits. For cross-entropy A = diag(p) − p·pᵀ,
    /// p = softmax(z) (the label drops out); for the mean squared error A = (2/k)·I
    /// ([`mse_r_gradient`]). `logits` and `rz` are `batch × classes`.
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
            Loss::MeanSquaredError => be.mse_r_gradient(rz, classes, scale, rg),
        }
    }

    /// A factor M of the per-sample loss Hessian A = M·Mᵀ in the logits, one `classes × classes`
    /// matrix per row of `logits`; [`HessianFactor::column`] gives its columns. For cross-entropy
    /// M = diag(s)·(I − s·sᵀ) with s = √p (I − s·sᵀ is a projector since ‖s‖ = 1); for the mean
    /// squared error M = √(2/k)·I.
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
                HessianFactor::Softmax {
                    sqrt_p: p.iter().map(|v| v.sqrt()).collect(),
                    classes,
                }
            }
            Loss::MeanSquaredError => HessianFactor::Scaled {
                root: mse_hessian_root(classes),
                batch: logits.len() / classes.max(1),
                classes,
            },
        }
    }
}

/// The factor of [`Loss::hessian_factor`].
#[derive(Clone, Debug)]
pub enum HessianFactor<T> {
    /// Cross-entropy: every row's s = √softmax(z).
    Softmax { sqrt_p: Vec<T>, classes: usize },
    /// A multiple of the identity, the same for every row (mean squared error: √(2/k)).
    Scaled {
        root: T,
        batch: usize,
        classes: usize,
    },
}

impl<T: Real> HessianFactor<T> {
    /// Column `c` of every row's factor, `batch × classes`: Mₙ[k, c] = sₖ·(δₖc − sₖ·s_c) for
    /// cross-entropy, √(2/k)·δₖc for the mean squared error.
    pub fn column(&self, c: usize, out: &mut [T]) {
        let (sqrt_p, classes) = match self {
            HessianFactor::Softmax { sqrt_p, classes } => (sqrt_p, *classes),
            HessianFactor::Scaled {
                root,
                batch,
                classes,
            } => {
                for row in out[..batch * classes].chunks_exact_mut(*classes) {
                    for (k, r) in row.iter_mut().enumerate() {
                        *r = if k == c { *root } else { T::zero() };
                    }
                }
                return;
            }
        };
        for (row, sr) in out
            .chunks_exact_mut(classes)
            .zip(sqrt_p.chunks_exact(classes))
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

// ---------------------------------------------------------------------------------------------------
// Mean squared error (PyTorch's `F.mse_loss`, reduction 'mean'); see the module doc. These host
// functions are the CPU kernels of the backend's `mean_squared_error` / `mse_r_gradient` operations:
// `CpuBackend` calls them unchanged (so the arithmetic is main's to the bit), and the generic
// `Loss::evaluate_on` / `r_gradient_on` reach them only through the backend.
// ---------------------------------------------------------------------------------------------------

/// The per-sample mean squared error ℓₙ = (1/k)·Σⱼ (zₙⱼ − yₙⱼ)² summed over the batch (in f64), for
/// `outputs` and `targets` of `batch × k` (row-major); (1/B)·(the sum) is `F.mse_loss(z, y)`. When
/// `doutputs` is given it receives ∂ℓₙ/∂zₙ·`scale` = (2/k)·(zₙ − yₙ)·`scale` (scale = 1/B for the
/// mean).
pub fn mean_squared_error<T: Real>(
    outputs: &[T],
    targets: &[T],
    k: usize,
    scale: T,
    doutputs: Option<&mut [T]>,
) -> f64 {
    debug_assert_eq!(outputs.len(), targets.len());
    let total: f64 = outputs
        .chunks_exact(k)
        .zip(targets.chunks_exact(k))
        .map(|(z, y)| {
            let sq: f64 = z
                .iter()
                .zip(y)
                .map(|(&a, &b)| {
                    let r = a.as_f64() - b.as_f64();
                    r * r
                })
                .sum();
            sq / k as f64
        })
        .sum();
    if let Some(d) = doutputs {
        let c = T::of_f64(2.0) / T::of_usize(k) * scale;
        for ((dv, &z), &y) in d[..outputs.len()].iter_mut().zip(outputs).zip(targets) {
            *dv = c * (z - y);
        }
    }
    total
}

/// R{∂L/∂z} of the mean squared error: (2/k)·`scale`·R{z}, row by row (`rz`, `rg`: `batch × k`).
/// The Hessian of ℓₙ in zₙ is (2/k)·I, independent of z and y.
pub fn mse_r_gradient<T: Real>(rz: &[T], k: usize, scale: T, rg: &mut [T]) {
    let c = T::of_f64(2.0) / T::of_usize(k) * scale;
    for (g, &r) in rg[..rz.len()].iter_mut().zip(rz) {
        *g = c * r;
    }
}

/// √(2/k), the factor M with M·Mᵀ = (2/k)·I of the mean squared error's per-sample Hessian.
pub fn mse_hessian_root<T: Real>(k: usize) -> T {
    (T::of_f64(2.0) / T::of_usize(k)).sqrt()
}

/// The variance σ² = k/2 of the Gaussian N(f(x), σ²·I) whose negative log-likelihood is the
/// per-sample mean squared error ℓ = (1/k)‖f − y‖² up to a constant: −log N(y; f, σ²I) =
/// ‖y − f‖²/(2σ²) + const. Targets drawn from it make the sampled Fisher of ℓ an unbiased
/// estimate of the Gauss–Newton matrix: E_y[∇ℓ∇ℓᵀ] = (2/k)²·σ²·JᵀJ = (2/k)·JᵀJ = Jᵀ·(∂²ℓ/∂f²)·J
/// (as cross-entropy's labels drawn from the softmax do).
pub fn mse_fisher_variance(k: usize) -> f64 {
    k as f64 / 2.0
}

#[cfg(test)]
mod mse_tests {
    use super::*;

    fn data() -> (Vec<f64>, Vec<f64>, usize) {
        let mut rng = crate::rng::stream(11, crate::rng::Purpose::Init, 0);
        let k = 3;
        let z: Vec<f64> = (0..4 * k).map(|_| rng.uniform_in(-2.0, 2.0)).collect();
        let y: Vec<f64> = (0..4 * k).map(|_| rng.uniform_in(-2.0, 2.0)).collect();
        (z, y, k)
    }

    /// F.mse_loss(z, y) written out: the mean over all B·k elements.
    #[test]
    fn the_mean_is_over_every_element_as_torch() {
        let (z, y, k) = data();
        let b = z.len() / k;
        let mean_all: f64 = z
            .iter()
            .zip(&y)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f64>()
            / (b * k) as f64;
        let sum = mean_squared_error(&z, &y, k, 1.0, None);
        assert!((sum / b as f64 - mean_all).abs() < 1e-14);
        // A hand value: z = [1, 2], y = [0, 0], k = 2 → (1 + 4)/2 = 2.5.
        assert_eq!(
            mean_squared_error(&[1.0, 2.0], &[0.0, 0.0], 2, 1.0, None),
            2.5
        );
    }

    /// ∂L/∂z against central differences, and R{∂L/∂z} = ∂²L/∂z² · v against differences of the
    /// gradient; the factor's columns give M·Mᵀ = the Hessian.
    #[test]
    fn gradient_r_operator_and_factor_against_finite_differences() {
        let (z, y, k) = data();
        let b = z.len() / k;
        let scale = 1.0 / b as f64;
        let loss = |z: &[f64]| mean_squared_error(z, &y, k, 1.0, None) * scale;
        let grad = |z: &[f64]| {
            let mut g = vec![0.0; z.len()];
            mean_squared_error(z, &y, k, scale, Some(&mut g));
            g
        };
        let g = grad(&z);
        let h = 1e-6;
        for i in 0..z.len() {
            let (mut up, mut down) = (z.clone(), z.clone());
            up[i] += h;
            down[i] -= h;
            let fd = (loss(&up) - loss(&down)) / (2.0 * h);
            assert!((fd - g[i]).abs() < 1e-8, "{i}: {} vs {fd}", g[i]);
        }
        let v: Vec<f64> = (0..z.len()).map(|i| (i as f64 * 0.37).sin()).collect();
        let mut rg = vec![0.0; z.len()];
        Loss::MeanSquaredError.r_gradient(&z, &v, k, scale, &mut rg);
        let (mut up, mut down) = (z.clone(), z.clone());
        for i in 0..z.len() {
            up[i] += h * v[i];
            down[i] -= h * v[i];
        }
        let (gu, gd) = (grad(&up), grad(&down));
        for i in 0..z.len() {
            let fd = (gu[i] - gd[i]) / (2.0 * h);
            assert!((fd - rg[i]).abs() < 1e-7, "{i}: {} vs {fd}", rg[i]);
        }
        // M·Mᵀ = A, the per-sample Hessian: A·v = rg/scale row by row.
        let f = Loss::MeanSquaredError.hessian_factor(&z, k);
        let mut cols = vec![vec![0.0; z.len()]; k];
        for (c, col) in cols.iter_mut().enumerate() {
            f.column(c, col);
        }
        for n in 0..b {
            for i in 0..k {
                let av: f64 = (0..k)
                    .map(|j| {
                        let a_ij: f64 = (0..k)
                            .map(|c| cols[c][n * k + i] * cols[c][n * k + j])
                            .sum();
                        a_ij * v[n * k + j]
                    })
                    .sum();
                assert!((av - rg[n * k + i] / scale).abs() < 1e-12);
            }
        }
    }

    /// Targets drawn from N(f, k/2) make E[∇ℓ∇ℓᵀ] the Gauss–Newton block (2/k)·I in the outputs.
    #[test]
    fn the_fisher_variance_gives_the_gauss_newton_block() {
        let k = 4;
        let sigma = mse_fisher_variance(k).sqrt();
        let f = [0.3, -1.0, 2.0, 0.5];
        let mut rng = crate::rng::stream(3, crate::rng::Purpose::Init, 1);
        let draws = 200_000;
        let mut second = [[0.0f64; 4]; 4];
        for _ in 0..draws {
            let y: Vec<f64> = f.iter().map(|m| m + sigma * rng.normal()).collect();
            let mut g = vec![0.0; k];
            mean_squared_error(&f, &y, k, 1.0, Some(&mut g));
            for i in 0..k {
                for j in 0..k {
                    second[i][j] += g[i] * g[j] / draws as f64;
                }
            }
        }
        for (i, row) in second.iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                let expect = if i == j { 2.0 / k as f64 } else { 0.0 };
                assert!((v - expect).abs() < 0.01, "[{i},{j}] {v} vs {expect}");
            }
        }
    }
}
