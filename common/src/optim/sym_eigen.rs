//! Symmetric eigendecomposition of the small r×r matrices of the online NGD (r ≤ 80), through LAPACK's
//! divide-and-conquer driver `?syevd` (the driver `torch.linalg.eigh` calls) with a workspace
//! allocated once. ndarray-linalg's `Eigh` calls the QR-iteration driver `?syev`, which spent half
//! of an NGD step on these matrices; `?syevd` gives the same decomposition several times faster.

use super::ngd_axis::NgdReal;
use std::os::raw::{c_char, c_int};

/// Element types with a LAPACK `?syevd`.
pub trait Syevd: Sized {
    /// # Safety
    /// The LAPACK contract of `?syevd`: valid pointers and sizes.
    #[allow(clippy::too_many_arguments)]
    unsafe fn syevd(
        jobz: *const c_char,
        uplo: *const c_char,
        n: *const c_int,
        a: *mut Self,
        lda: *const c_int,
        w: *mut Self,
        work: *mut Self,
        lwork: *const c_int,
        iwork: *mut c_int,
        liwork: *const c_int,
        info: *mut c_int,
    );
}

impl Syevd for f32 {
    unsafe fn syevd(
        jobz: *const c_char,
        uplo: *const c_char,
        n: *const c_int,
        a: *mut f32,
        lda: *const c_int,
        w: *mut f32,
        work: *mut f32,
        lwork: *const c_int,
        iwork: *mut c_int,
        liwork: *const c_int,
        info: *mut c_int,
    ) {
        lapack_sys::ssyevd_(jobz, uplo, n, a, lda, w, work, lwork, iwork, liwork, info)
    }
}

impl Syevd for f64 {
    unsafe fn syevd(
        jobz: *const c_char,
        uplo: *const c_char,
        n: *const c_int,
        a: *mut f64,
        lda: *const c_int,
        w: *mut f64,
        work: *mut f64,
        lwork: *const c_int,
        iwork: *mut c_int,
        liwork: *const c_int,
        info: *mut c_int,
    ) {
        lapack_sys::dsyevd_(jobz, uplo, n, a, lda, w, work, lwork, iwork, liwork, info)
    }
}

/// A reusable `?syevd` for n×n matrices.
#[derive(Clone, Debug)]
pub struct SymEigen<T> {
    n: usize,
    work: Vec<T>,
    iwork: Vec<c_int>,
    /// The eigenvalues of the last decomposition, ascending.
    pub values: Vec<T>,
}

impl<T: NgdReal> SymEigen<T> {
    pub fn new(n: usize) -> Self {
        // Workspace sizes of ?syevd with eigenvectors (LAPACK documentation):
        // lwork = 1 + 6n + 2n², liwork = 3 + 5n.
        SymEigen {
            n,
            work: vec![T::zero(); 1 + 6 * n + 2 * n * n],
            iwork: vec![0; 3 + 5 * n],
            values: vec![T::zero(); n],
        }
    }

    /// Z = U C Uᵀ for a symmetric Z stored row-major in `a` (n×n); only its upper triangle (row-major
    /// view) is read, as `torch.linalg.eigh(Z, UPLO='U')`. On return `values` holds C ascending and
    /// row j of `a` holds the eigenvector of `values[j]`: U[i][j] = a[j·n + i].
    ///
    /// # Errors
    /// LAPACK's `info` when it is not 0 (no convergence).
    pub fn decompose(&mut self, a: &mut [T]) -> Result<(), i32> {
        let n = self.n as c_int;
        assert!(a.len() >= self.n * self.n);
        let (lwork, liwork) = (self.work.len() as c_int, self.iwork.len() as c_int);
        let mut info: c_int = 0;
        // The row-major buffer read column-major is Zᵀ: its row-major upper triangle is LAPACK's
        // lower one, and LAPACK's column j (contiguous) is our row j.
        unsafe {
            T::syevd(
                b"V".as_ptr() as *const c_char,
                b"L".as_ptr() as *const c_char,
                &n,
                a.as_mut_ptr(),
                &n,
                self.values.as_mut_ptr(),
                self.work.as_mut_ptr(),
                &lwork,
                self.iwork.as_mut_ptr(),
                &liwork,
                &mut info,
            );
        }
        if info == 0 {
            Ok(())
        } else {
            Err(info)
        }
    }
}

/// The eigendecomposition of AᵀA for a `rows × cols` matrix A (row-major, f64): the squared singular
/// values of A, ascending, and the right singular vectors as the rows of the returned `cols × cols`
/// matrix (row j belongs to value j). Used where a small matrix's rank or best low-rank
/// approximation is needed (the numerical rank of a deep linear network's product, Eckart–Young).
///
/// # Errors
/// LAPACK's `info` when it does not converge.
pub fn gram_eigen(a: &[f64], rows: usize, cols: usize) -> Result<(Vec<f64>, Vec<f64>), i32> {
    let mut g = vec![0.0; cols * cols];
    for row in a[..rows * cols].chunks_exact(cols) {
        for i in 0..cols {
            for j in 0..cols {
                g[i * cols + j] += row[i] * row[j];
            }
        }
    }
    let mut eig = SymEigen::<f64>::new(cols);
    eig.decompose(&mut g)?;
    Ok((eig.values, g))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decomposes_a_symmetric_matrix() {
        let n = 7;
        let mut z = vec![0.0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                z[i * n + j] = ((i * j) as f64 * 0.3).sin() + ((i + j) as f64 * 0.2).cos();
            }
        }
        let orig = z.clone();
        let mut e = SymEigen::<f64>::new(n);
        e.decompose(&mut z).unwrap();
        assert!(e.values.windows(2).all(|w| w[0] <= w[1]));
        // Z u_j = c_j u_j with u_j = row j.
        for j in 0..n {
            let u = &z[j * n..(j + 1) * n];
            for i in 0..n {
                let zu: f64 = (0..n).map(|k| orig[i * n + k] * u[k]).sum();
                assert!((zu - e.values[j] * u[i]).abs() < 1e-12, "{j} {i}");
            }
        }
    }

    /// AᵀA's eigenvalues are A's squared singular values: a 3×2 matrix with orthogonal columns of
    /// norms 2 and 3 gives 4 and 9, with the unit vectors as eigenvectors.
    #[test]
    fn gram_eigen_gives_squared_singular_values() {
        let a = [2.0, 0.0, 0.0, 3.0, 0.0, 0.0];
        let (values, vectors) = gram_eigen(&a, 3, 2).unwrap();
        assert!((values[0] - 4.0).abs() < 1e-12 && (values[1] - 9.0).abs() < 1e-12);
        assert!((vectors[0].abs() - 1.0).abs() < 1e-12 && (vectors[3].abs() - 1.0).abs() < 1e-12);
    }
}
