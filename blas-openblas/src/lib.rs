//! OpenBLAS as the BLAS provider of the tools (Debian's `libopenblas`, linked through `openblas-src`
//! with `system`).
//!
//! The library `common` is provider-neutral: it calls CBLAS through `cblas-sys` and ndarray, and
//! sets the thread count through the hook [`set_threads`] is registered with
//! (`common::device::cpu::register_blas_threads`). Only the binaries, benchmarks and tests choose a
//! provider, by depending on a crate like this one; another provider (MKL, BLIS, Accelerate) is
//! another such crate.

extern crate openblas_src;

use std::os::raw::c_int;

extern "C" {
    fn openblas_set_num_threads(num_threads: c_int);
}

/// Sets the number of threads OpenBLAS uses for each call (at least 1).
pub fn set_threads(n: usize) {
    let n = n.clamp(1, c_int::MAX as usize) as c_int;
    // SAFETY: a plain C call into the linked OpenBLAS with a positive int.
    unsafe { openblas_set_num_threads(n) }
}

#[cfg(test)]
mod tests {
    use super::*;

    extern "C" {
        fn openblas_get_num_threads() -> c_int;
    }

    #[test]
    fn sets_the_thread_count() {
        // SAFETY (all calls): plain C calls into the linked OpenBLAS.
        let default = unsafe { openblas_get_num_threads() };
        set_threads(1);
        assert_eq!(unsafe { openblas_get_num_threads() }, 1);
        set_threads(default as usize);
        assert_eq!(unsafe { openblas_get_num_threads() }, default);
        set_threads(0);
        assert_eq!(unsafe { openblas_get_num_threads() }, 1);
    }
}
