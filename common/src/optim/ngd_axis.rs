//! One axis of the paper's online natural gradient: Kaldi's `OnlineNaturalGradient`
//! (Povey, Zhang & Khudanpur, "Parallel training of DNNs with natural gradient and parameter
//! averaging", arXiv 1410.7455, and `src/nnet3/natural-gradient-online.h`) as ported to PyTorch in the
//! paper's repository (cxtraa/ngd_with_slt, `ngd.py`), re-derived step for step from that description.
//!
//! The gradient of a tensor, seen along one axis of size D, is a matrix X ∈ R^{N×D} (the axis as
//! columns, the other axes flattened into rows). The inverse Fisher along that axis is approximated by
//! a rank-r factor W ∈ R^{r×D} plus a multiple of the identity; the preconditioned gradient is
//! X̂ = X − X Wᵀ W, and every few calls W, d ∈ R^r and ρ are refreshed from this minibatch's
//! statistics by the closed-form update of the paper (a power-method step through an r×r symmetric
//! eigendecomposition).
//!
//! The N×D and r×D matrices (X, X̂, H = X Wᵀ, J, W) and their products live on a [`Backend`] and
//! go through its gemm, copy, axpy, scale and sum of squares; the r×r part of the refresh (the
//! scalars, Z, its eigendecomposition, A) stays on the host, as the issue allows: L and K come
//! down (r×r each) and A goes up once per refresh.

use super::sym_eigen::{Syevd, SymEigen};
use crate::device::{Backend, CpuBackend};
use crate::Real;
use num_traits::Float;

/// The element types the preconditioner can keep its state in (`f32` as the paper ran, or `f64`).
pub trait NgdReal: Real + Syevd {}
impl NgdReal for f32 {}
impl NgdReal for f64 {}

/// The fixed constants and settings of one axis.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AxisSettings {
    /// α: smoothing of the Fisher with the identity (relative to its mean diagonal).
    pub alpha: f64,
    /// η: rate of the Fisher's exponential moving average.
    pub eta: f64,
    /// ε: absolute floor of ρ and d.
    pub epsilon: f64,
    /// δ: relative floor of d and ρ (times the largest eigenvalue).
    pub delta: f64,
    /// The factor is refreshed on calls t < 10 and t ≡ 0 mod this.
    pub update_period: u64,
}

/// What one call did, for the epoch statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AxisOutcome {
    /// ‖X̂‖/‖X‖ before the norm rescaling (NaN when the fallback fired).
    pub norm_ratio: f64,
    /// The output was not finite and the input was returned unchanged.
    pub nan_fallback: bool,
    /// When the factor was refreshed: the fraction of its r eigenvalues d′ᵢ that sit on the floor f.
    pub floor_fraction: Option<f64>,
}

/// State and scratch of the preconditioner for one (tensor, axis) with a fixed N×D view, on
/// backend `B`.
#[derive(Clone, Debug)]
pub struct AxisPreconditioner<T: NgdReal, B: Backend = CpuBackend> {
    be: B,
    pub dim: usize,
    pub rank: usize,
    pub rows: usize,
    /// X is stored transposed (D×N row-major), as a weight's first axis is: no copy is needed.
    pub transposed: bool,
    pub settings: AxisSettings,
    /// Number of real calls so far (0 = not initialised).
    pub t: u64,
    pub rho: f64,
    /// d ∈ R^r (on the host).
    pub d: Vec<T>,
    /// W ∈ R^{r×D}, row-major, in the backend's memory.
    pub w: B::Buffer<T>,
    h: B::Buffer<T>,
    xhat: B::Buffer<T>,
    j: B::Buffer<T>,
    l_dev: B::Buffer<T>,
    k_dev: B::Buffer<T>,
    a_dev: B::Buffer<T>,
    l: Vec<T>,
    k: Vec<T>,
    /// Z, row-major r×r (a fresh C-layout view is handed to the eigensolver on every update so that
    /// it always reads the same triangle, whatever happened before: resumes stay bit-exact).
    z: Vec<T>,
    eigen: SymEigen<T>,
    a: Vec<T>,
    inv_sqrt_e: Vec<T>,
    s: Vec<T>,
    d_new: Vec<T>,
}

/// The default rank of Kaldi / ngd.py: min(⌊(D+1)/2⌋, 80).
pub fn default_rank(dim: usize) -> usize {
    dim.div_ceil(2).min(80)
}

impl<T: NgdReal> AxisPreconditioner<T> {
    /// A preconditioner for an N×D view (`rows` = N, `dim` = D ≥ 2) with factor rank `rank`
    /// (1 ≤ r < D), X stored N×D row-major, or D×N when `transposed`. State is set on the first
    /// call. On the CPU: [`AxisPreconditioner::new_on`] with [`CpuBackend`].
    pub fn new(
        rows: usize,
        dim: usize,
        rank: usize,
        transposed: bool,
        settings: AxisSettings,
    ) -> Self {
        Self::new_on(CpuBackend, rows, dim, rank, transposed, settings)
    }
}

impl<T: NgdReal, B: Backend> AxisPreconditioner<T, B> {
    /// [`AxisPreconditioner::new`] with its matrices on backend `be`.
    pub fn new_on(
        be: B,
        rows: usize,
        dim: usize,
        rank: usize,
        transposed: bool,
        settings: AxisSettings,
    ) -> Self {
        assert!(
            dim >= 2 && rank >= 1 && rank < dim,
            "rank {rank} for dim {dim}"
        );
        let r = rank;
        AxisPreconditioner {
            dim,
            rank,
            rows,
            transposed,
            settings,
            t: 0,
            rho: settings.epsilon,
            d: vec![T::of_f64(settings.epsilon); r],
            w: be.zeros(r * dim),
            h: be.zeros(rows * r),
            xhat: be.zeros(rows * dim),
            j: be.zeros(r * dim),
            l_dev: be.zeros(r * r),
            k_dev: be.zeros(r * r),
            a_dev: be.zeros(r * r),
            be,
            l: vec![T::zero(); r * r],
            k: vec![T::zero(); r * r],
            z: vec![T::zero(); r * r],
            eigen: SymEigen::new(r),
            a: vec![T::zero(); r * r],
            inv_sqrt_e: vec![T::zero(); r],
            s: vec![T::zero(); r],
            d_new: vec![T::zero(); r],
        }
    }

    /// The starting state: ρ = ε, d = ε·1, W = √E₀·O with E₀ = 1/(2 + (D + r)α/D) and O the
    /// orthonormal r×D pattern whose row i holds 1.1·kᵢ in column i and kᵢ in columns i + r·j
    /// (j ≥ 1), kᵢ making the row unit-norm (`_create_orthonormal_special` of ngd.py).
    pub(crate) fn init_default(&mut self) {
        let (r, dim) = (self.rank, self.dim);
        let eps = self.settings.epsilon;
        self.rho = eps;
        self.d.iter_mut().for_each(|v| *v = T::of_f64(eps));
        let e0 = 1.0 / (2.0 + (dim + r) as f64 * self.settings.alpha / dim as f64);
        let scale = e0.sqrt();
        let num_cols = dim / r;
        let remainder = dim % r;
        let mut w = vec![T::zero(); r * dim];
        for i in 0..r {
            let extra = if i < remainder {
                num_cols
            } else {
                num_cols - 1
            };
            let k = 1.0 / (1.21 + extra as f64).sqrt();
            w[i * dim + i] = T::of_f64(scale * 1.1 * k);
            let mut c = i + r;
            while c < dim {
                w[i * dim + c] = T::of_f64(scale * k);
                c += r;
            }
        }
        self.be.write(&w, B::view_mut(&mut self.w));
    }

    /// Preconditions X (N×D, row-major, overwritten with the result): on the first call the state is
    /// initialised and refined by three updates on this X; then X ← X̂·‖X‖/‖X̂‖ with
    /// X̂ = X − X Wᵀ W, or X unchanged when ‖X̂‖² is NaN (counted in the outcome).
    pub fn precondition(&mut self, x: B::ViewMut<'_, T>) -> AxisOutcome {
        let x = B::slice_mut(x, 0..self.rows * self.dim);
        if self.t == 0 {
            self.init_default();
            self.t = 1;
            for _ in 0..3 {
                let tr = self.be.sum_squares(B::freeze(&x));
                self.step(B::freeze(&x), tr);
            }
            self.t = 0;
        }
        let tr = self.be.sum_squares(B::freeze(&x));
        let floor_fraction = self.step(B::freeze(&x), tr);
        let fin = self.be.sum_squares(B::view(&self.xhat));
        let mut out = AxisOutcome {
            norm_ratio: (fin / tr).sqrt(),
            nan_fallback: false,
            floor_fraction,
        };
        if fin.is_nan() {
            out.nan_fallback = true;
            return out;
        }
        // x ← scale·x̂ (scale·v is v·scale to the bit: IEEE multiplication commutes).
        let scale = T::of_f64((tr / (fin + 1e-30)).sqrt());
        self.be.scaled_copy(scale, B::view(&self.xhat), x);
        out
    }

    /// One call of the core algorithm: X̂ = X − (X Wᵀ) W into `xhat`, and on updating calls
    /// (t < 10 or t mod period = 0, t read before incrementing) the refresh of W, d, ρ. Returns the
    /// floor fraction when it refreshed.
    fn step(&mut self, x: B::View<'_, T>, tr_xx: f64) -> Option<f64> {
        let be = self.be.clone();
        let s = self.settings;
        let updating = self.t < 10 || self.t.is_multiple_of(s.update_period);
        self.t += 1;
        let (n, dim, r) = (self.rows, self.dim, self.rank);
        let one = T::one();
        // H = X Wᵀ (N×r); X̂ = X − H W (stored like X: when transposed, X̂ᵀ = Xᵀ − Wᵀ Hᵀ).
        let tr = self.transposed;
        let (w, h) = (&self.w, &mut self.h);
        be.gemm(
            tr,
            true,
            n,
            r,
            dim,
            one,
            x,
            B::view(w),
            T::zero(),
            B::view_mut(h),
        );
        be.copy(x, B::view_mut(&mut self.xhat));
        if tr {
            be.gemm(
                true,
                true,
                dim,
                n,
                r,
                -one,
                B::view(&self.w),
                B::view(&self.h),
                one,
                B::view_mut(&mut self.xhat),
            );
        } else {
            be.gemm(
                false,
                false,
                n,
                dim,
                r,
                -one,
                B::view(&self.h),
                B::view(&self.w),
                one,
                B::view_mut(&mut self.xhat),
            );
        }
        if !updating {
            return None;
        }
        // J = Hᵀ X (r×D); L = Hᵀ H (= J Wᵀ, cheaper when N > D); K = J Jᵀ.
        let zero = T::zero();
        let (h, j) = (B::view(&self.h), &mut self.j);
        be.gemm(true, tr, r, dim, n, one, h, x, zero, B::view_mut(j));
        let (j, w, l) = (B::view(&self.j), B::view(&self.w), &mut self.l_dev);
        if n > dim {
            be.gemm(false, true, r, r, dim, one, j, w, zero, B::view_mut(l));
        } else {
            be.gemm(true, false, r, r, n, one, h, h, zero, B::view_mut(l));
        }
        be.gemm(
            false,
            true,
            r,
            r,
            dim,
            one,
            j,
            j,
            zero,
            B::view_mut(&mut self.k_dev),
        );
        // The r×r refresh runs on the host.
        be.download(B::view(&self.l_dev), &mut self.l);
        be.download(B::view(&self.k_dev), &mut self.k);

        let (alpha, eta) = (s.alpha, s.eta);
        let rho = self.rho;
        let d_sum: f64 = self.d.iter().map(|v| v.as_f64()).sum();
        let beta = rho * (1.0 + alpha) + alpha * d_sum / dim as f64;
        for (ie, &d) in self.inv_sqrt_e.iter_mut().zip(&self.d) {
            // eᵢ = 1/(β/dᵢ + 1); keep e^{-½}.
            let e = one / (T::of_f64(beta) / d + one);
            *ie = one / Float::sqrt(e);
        }
        let trace_k: f64 = (0..r).map(|i| self.k[i * r + i].as_f64()).sum();
        let zs = trace_k.max(1.0);
        let eta_n = eta / n as f64;
        let c_k = T::of_f64(eta_n * eta_n / zs);
        let c_l = T::of_f64(eta_n * (1.0 - eta) / zs);
        let c_d = T::of_f64((1.0 - eta) * (1.0 - eta) / zs);
        let rho_t = T::of_f64(rho);
        // Z = [(η/N)² E^{-½} K E^{-½} + (η/N)(1−η)(E^{-½} L E^{-½} Dρ + Dρ E^{-½} L E^{-½})
        //      + (1−η)² Dρ²] / z, with Dρ = diag(d) + ρI.
        for i in 0..r {
            let iei = self.inv_sqrt_e[i];
            let dpi = self.d[i] + rho_t;
            for jj in 0..r {
                let iej = self.inv_sqrt_e[jj];
                let dpj = self.d[jj] + rho_t;
                let outer = c_l * iei * iej;
                let mut v = self.k[i * r + jj] * (c_k * iei * iej)
                    + self.l[i * r + jj] * (outer * dpj + outer * dpi);
                if i == jj {
                    v += c_d * (dpi * dpi);
                }
                self.z[i * r + jj] = v;
            }
        }
        // Z = U C Uᵀ (reading Z's upper triangle, as torch.linalg.eigh(UPLO='U')); eigenvalues
        // ascending, used in descending order below; row j of `z` is the eigenvector of value j.
        if self.eigen.decompose(&mut self.z).is_err() {
            // Leave the factor as it was; X̂ is still the output.
            return None;
        }
        let c_asc = &self.eigen.values;
        // ngd.py wraps this floor in a float32 tensor (torch.Tensor([c_floor])), also in float64
        // runs; the reference values depend on that rounding, so it is reproduced.
        let c_floor = (((rho * (1.0 - eta)).powi(2) / zs) as f32) as f64;
        let sqrt_z = zs.sqrt();
        let mut s_sum = 0.0;
        let mut s_max = f64::NEG_INFINITY;
        for i in 0..r {
            let c = c_asc[r - 1 - i].as_f64().max(c_floor);
            let si = Float::sqrt(T::of_f64(c)) * T::of_f64(sqrt_z);
            self.s[i] = si;
            s_sum += si.as_f64();
            s_max = s_max.max(si.as_f64());
        }
        let mut rho_new =
            (eta_n * tr_xx + (1.0 - eta) * (dim as f64 * rho + d_sum) - s_sum) / (dim - r) as f64;
        let floor = s.epsilon.max(s.delta * s_max);
        let mut on_floor = 0usize;
        for i in 0..r {
            let v = self.s[i].as_f64() - rho_new;
            if v <= floor {
                on_floor += 1;
                self.d_new[i] = T::of_f64(floor);
            } else {
                self.d_new[i] = T::of_f64(v);
            }
        }
        if rho_new < floor {
            rho_new = floor;
        }
        let d_new_sum: f64 = self.d_new.iter().map(|v| v.as_f64()).sum();
        let beta_new = rho_new * (1.0 + alpha) + alpha * d_new_sum / dim as f64;
        // B = J + ((1−η)/(η/N)) diag(d + ρ) W, in place in J.
        let coeff = (1.0 - eta) / eta_n;
        for i in 0..r {
            let c = T::of_f64(coeff) * (self.d[i] + rho_t);
            let row = i * dim..(i + 1) * dim;
            be.axpy(
                c,
                B::slice(B::view(&self.w), row.clone()),
                B::slice_mut(B::view_mut(&mut self.j), row),
            );
        }
        // A = diag((η/N)·√e′ᵢ / sᵢ) Uᵀ diag(e^{-½}); U's columns in descending eigenvalue order.
        for i in 0..r {
            let e_new = one / (T::of_f64(beta_new) / self.d_new[i] + one);
            let left = T::of_f64(eta_n) * Float::sqrt(e_new) / self.s[i];
            let col = r - 1 - i;
            for jj in 0..r {
                self.a[i * r + jj] = self.z[col * r + jj] * left * self.inv_sqrt_e[jj];
            }
        }
        // W ← A B.
        be.write(&self.a, B::view_mut(&mut self.a_dev));
        be.gemm(
            false,
            false,
            r,
            dim,
            r,
            one,
            B::view(&self.a_dev),
            B::view(&self.j),
            zero,
            B::view_mut(&mut self.w),
        );
        self.d.copy_from_slice(&self.d_new);
        self.rho = rho_new;
        Some(on_floor as f64 / r as f64)
    }
}
