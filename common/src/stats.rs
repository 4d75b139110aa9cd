//! Summary statistics and Welch's t-test for comparing optimisers across seeds.

use statrs::distribution::{ContinuousCDF, StudentsT};

/// Sample mean.
pub fn mean(x: &[f64]) -> f64 {
    x.iter().sum::<f64>() / x.len() as f64
}

/// Sample standard deviation with Bessel's correction, s = √(Σ(xᵢ − x̄)² / (n − 1)); NaN for n < 2.
pub fn sample_sd(x: &[f64]) -> f64 {
    if x.len() < 2 {
        return f64::NAN;
    }
    let m = mean(x);
    (x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (x.len() - 1) as f64).sqrt()
}

/// The result of Welch's unequal-variances t-test.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Welch {
    /// t = (x̄_b − x̄_a) / √(s_a²/n_a + s_b²/n_b).
    pub t: f64,
    /// Welch–Satterthwaite degrees of freedom
    /// ν = (s_a²/n_a + s_b²/n_b)² / [(s_a²/n_a)²/(n_a − 1) + (s_b²/n_b)²/(n_b − 1)].
    pub df: f64,
    /// Two-sided p-value 2·F_ν(−|t|) (= 2·(1 − F_ν(|t|)), evaluated in the tail so that small p do
    /// not round to 0), F_ν the Student-t CDF (statrs).
    pub p_two_sided: f64,
}

/// Welch's t-test of b against a (Welch 1947; as `scipy.stats.ttest_ind(b, a, equal_var=False)`).
/// Returns `None` when either sample has fewer than 2 values or both variances are zero.
pub fn welch_t_test(a: &[f64], b: &[f64]) -> Option<Welch> {
    if a.len() < 2 || b.len() < 2 {
        return None;
    }
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let (va, vb) = (sample_sd(a).powi(2) / na, sample_sd(b).powi(2) / nb);
    let se = (va + vb).sqrt();
    if se == 0.0 {
        return None;
    }
    let t = (mean(b) - mean(a)) / se;
    let df = (va + vb).powi(2) / (va * va / (na - 1.0) + vb * vb / (nb - 1.0));
    let dist = StudentsT::new(0.0, 1.0, df).ok()?;
    let p = 2.0 * dist.cdf(-t.abs());
    Some(Welch {
        t,
        df,
        p_two_sided: p.clamp(0.0, 1.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn welch_matches_scipy() {
        // scipy.stats.ttest_ind(b, a, equal_var=False) for these samples (SciPy, run once):
        // statistic 2.441716033102905, df 7.565861795509857, pvalue 0.042128939574102006.
        let a = [1.0, 2.0, 3.0, 4.0, 5.0];
        let b = [3.5, 4.0, 6.0, 7.5, 8.0];
        let w = welch_t_test(&a, &b).unwrap();
        // Independent check of t and df by hand: means 3 and 5.8, variances 2.5 and 4.075.
        let t = 2.8 / (2.5f64 / 5.0 + 4.075 / 5.0).sqrt();
        let df = (0.5f64 + 0.815).powi(2) / (0.25 / 4.0 + 0.815f64.powi(2) / 4.0);
        assert!((w.t - t).abs() < 1e-12);
        assert!((w.df - df).abs() < 1e-12);
        assert!((w.t - 2.441_716_033_102_905).abs() < 1e-12);
        assert!((w.df - 7.565_861_795_509_857).abs() < 1e-9);
        // The Student-t CDF is evaluated through the regularised incomplete beta function (statrs).
        assert!(
            (w.p_two_sided - 0.042_128_939_574_102).abs() < 1e-9,
            "{}",
            w.p_two_sided
        );
    }

    #[test]
    fn small_p_values_do_not_round_to_zero() {
        // n = 2 and 2 with equal variances: ν = 2, where F(t) = 1/2 + t/(2·√(2 + t²)), so
        // p = 1 − t/√(2 + t²) = 2/(√(2 + t²)·(√(2 + t²) + t)) (the stable form).
        let c = 1e9 * 0.5f64.sqrt();
        let w = welch_t_test(&[0.0, 1.0], &[c, c + 1.0]).unwrap();
        assert!((w.df - 2.0).abs() < 1e-9, "{}", w.df);
        let r = (2.0 + w.t * w.t).sqrt();
        let want = 2.0 / (r * (r + w.t));
        assert!(want < 1e-17);
        assert!(
            (w.p_two_sided - want).abs() < 1e-6 * want,
            "{} vs {want}",
            w.p_two_sided
        );
    }

    #[test]
    fn sd_and_degenerate_cases() {
        assert!(
            (sample_sd(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]) - 2.138_089_935).abs() < 1e-9
        );
        assert!(welch_t_test(&[1.0], &[2.0, 3.0]).is_none());
        assert!(welch_t_test(&[1.0, 1.0], &[1.0, 1.0]).is_none());
    }
}
