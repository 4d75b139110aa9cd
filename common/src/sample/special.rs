//! Special functions the diagnostics need: the normal CDF and its inverse.

/// Φ(x), the standard normal CDF, through [`erfc`].
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * erfc(-x / std::f64::consts::SQRT_2)
}

/// The complementary error function, fractional error < 1.2e-7 everywhere (Numerical Recipes
/// `erfcc`, after Chebyshev fitting).
pub fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// Φ⁻¹(p) for p in (0, 1): Acklam's rational approximation (relative error < 1.15e-9). Used for the rank normalisation of R-hat (Vehtari et al. 2021).
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    let lo = 0.02425;
    if p < lo {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if p <= 1.0 - lo {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        let q = (-2.0 * (1.0 - p).ln()).sqrt();
        -(((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdf_and_quantile_match_tabulated_values() {
        // Φ(1.96) = 0.9750021048517795, Φ(−3) = 0.0013498980316301, Φ(0) = 0.5 (tables / mpmath).
        assert!((normal_cdf(1.96) - 0.975_002_104_851_779_5).abs() < 2e-7);
        assert!((normal_cdf(-3.0) - 0.001_349_898_031_630_1).abs() < 1e-9);
        // erfc(0) carries the approximation error 3e-8 (fractional bound 1.2e-7).
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-7);
        // Φ⁻¹(0.975) = 1.959963984540054, Φ⁻¹(0.001) = −3.090232306167814.
        assert!((normal_quantile(0.975) - 1.959_963_984_540_054).abs() < 1e-8);
        assert!((normal_quantile(0.001) + 3.090_232_306_167_814).abs() < 1e-8);
        for p in [1e-6, 0.01, 0.3, 0.5, 0.8, 0.999] {
            // erfc's relative error 1.2e-7 bounds the round trip by ~1.2e-7 · min(p, 1 − p).
            assert!((normal_cdf(normal_quantile(p)) - p).abs() < 2e-7 * p.min(1.0 - p) + 1e-12);
        }
    }
}
