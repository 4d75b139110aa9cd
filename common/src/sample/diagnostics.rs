//! Convergence diagnostics of loss traces: rank-normalised split R-hat and bulk effective sample size
//! (Vehtari, Gelman, Simpson, Carpenter & Bürkner 2021, "Rank-normalization, folding, and
//! localization: an improved R-hat for assessing convergence of MCMC", Bayesian Analysis 16(2)), and a
//! per-chain stationarity test (Geweke 1992) with autocorrelation-aware standard errors.

use super::special::normal_quantile;

/// Rank-normalised split R-hat: the maximum of the bulk R-hat (on rank-normalised split chains) and
/// the tail R-hat (on the rank-normalised |θ − median θ|), Vehtari et al. 2021, eq. (4)–(6).
///
/// Each chain (all of equal length N ≥ 4) is split into halves; with M halves of length N' the classic
/// R̂ = √(var⁺/W), W = mean within-half variance, var⁺ = (N'−1)/N'·W + B/N', B/N' = variance of the
/// half means. Returns NaN when there are fewer than 4 draws per chain.
pub fn split_rhat(chains: &[&[f64]]) -> f64 {
    let Some(halves) = split_halves(chains) else {
        return f64::NAN;
    };
    let bulk = classic_rhat(&rank_normalise(&halves));
    let all: Vec<f64> = halves.iter().flatten().copied().collect();
    let med = median(&all);
    let folded: Vec<Vec<f64>> = halves
        .iter()
        .map(|h| h.iter().map(|x| (x - med).abs()).collect())
        .collect();
    let tail = classic_rhat(&rank_normalise(&folded));
    bulk.max(tail)
}

/// Bulk effective sample size: the multi-chain ESS (Vehtari et al. 2021, eq. (10)–(11); BDA3 §11.5)
/// of the rank-normalised split chains, with Geyer's initial monotone sequence truncation.
pub fn ess_bulk(chains: &[&[f64]]) -> f64 {
    let Some(halves) = split_halves(chains) else {
        return f64::NAN;
    };
    multi_chain_ess(&rank_normalise(&halves))
}

/// ESS of one chain (no splitting, no rank normalisation), for standard errors of its mean.
pub fn ess_single(chain: &[f64]) -> f64 {
    if chain.len() < 4 {
        return chain.len() as f64;
    }
    multi_chain_ess(&[chain.to_vec()])
}

/// Geweke's convergence z-score of one chain: the mean of its first 10% against the mean of its last
/// 50%, each standard error from its own ESS: z = (ā − b̄)/√(s_a²/ESS_a + s_b²/ESS_b). |z| > 3 (two-sided
/// p < 0.003 for a stationary chain) says the trace is still trending.
pub fn geweke_z(chain: &[f64]) -> f64 {
    let n = chain.len();
    if n < 20 {
        return f64::NAN;
    }
    mean_difference_z(&chain[..n / 10], &chain[n - n / 2..])
}

/// z = (ā − b̄)/√(s_a²/ESS_a + s_b²/ESS_b) of two stretches of one chain, each standard error from its
/// own ESS (as [`geweke_z`]); 0 when both are constant and equal, +∞ when constant and different.
/// Each stretch needs at least 2 values.
pub fn mean_difference_z(a: &[f64], b: &[f64]) -> f64 {
    let se2 = |s: &[f64]| {
        let m = mean(s);
        let var = s.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (s.len() - 1) as f64;
        var / ess_single(s).max(1.0)
    };
    let denom = (se2(a) + se2(b)).sqrt();
    if denom == 0.0 {
        return if mean(a) == mean(b) {
            0.0
        } else {
            f64::INFINITY
        };
    }
    (mean(a) - mean(b)) / denom
}

/// The threshold on |z| above which [`geweke_z`] calls a trace non-stationary.
pub const GEWEKE_LIMIT: f64 = 3.0;
/// The R-hat above which chains are said not to agree (Vehtari et al. 2021 recommend 1.01; devinterp
/// users commonly accept 1.05, which the issue asks for).
pub const RHAT_LIMIT: f64 = 1.05;
/// The mean MALA acceptance below which the step size is called too large.
pub const ACCEPTANCE_LIMIT: f64 = 0.5;
/// The relative growth of the mean ‖w_t − w*‖ from the third to the last quarter of the draws above
/// which (with z > [`GEWEKE_LIMIT`]) a chain is said to be still moving away from w*. A chain
/// diffusing freely (‖w − w*‖ ∝ √t) grows 18% between those quarters; a settled one 0 ± noise.
pub const DRIFT_LIMIT: f64 = 0.05;
/// The mean fraction of coordinates on the bounding box above which a chain is said to press
/// against it (the box, not the posterior, then shapes the draws).
pub const BOX_CONTACT_LIMIT: f64 = 0.01;

pub(crate) fn mean(x: &[f64]) -> f64 {
    x.iter().sum::<f64>() / x.len() as f64
}

fn median(x: &[f64]) -> f64 {
    let mut s = x.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    }
}

fn split_halves(chains: &[&[f64]]) -> Option<Vec<Vec<f64>>> {
    let n = chains.iter().map(|c| c.len()).min()?;
    if n < 4 || chains.iter().any(|c| c.len() != n) {
        return None;
    }
    let half = n / 2;
    Some(
        chains
            .iter()
            .flat_map(|c| [c[..half].to_vec(), c[n - half..].to_vec()])
            .collect(),
    )
}

/// z = Φ⁻¹((r − 3/8)/(S + 1/4)) with r the average rank among all S values (Blom's offset).
fn rank_normalise(chains: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let all: Vec<(f64, usize, usize)> = chains
        .iter()
        .enumerate()
        .flat_map(|(c, v)| v.iter().enumerate().map(move |(i, &x)| (x, c, i)))
        .collect();
    let s = all.len();
    let mut order: Vec<usize> = (0..s).collect();
    order.sort_by(|&a, &b| all[a].0.total_cmp(&all[b].0));
    let mut z: Vec<Vec<f64>> = chains.iter().map(|c| vec![0.0; c.len()]).collect();
    let mut i = 0;
    while i < s {
        let mut j = i;
        while j + 1 < s && all[order[j + 1]].0 == all[order[i]].0 {
            j += 1;
        }
        let rank = 0.5 * ((i + 1) + (j + 1)) as f64;
        let value = normal_quantile((rank - 0.375) / (s as f64 + 0.25));
        for &k in &order[i..=j] {
            z[all[k].1][all[k].2] = value;
        }
        i = j + 1;
    }
    z
}

fn classic_rhat(chains: &[Vec<f64>]) -> f64 {
    let m = chains.len() as f64;
    let n = chains[0].len() as f64;
    let means: Vec<f64> = chains.iter().map(|c| mean(c)).collect();
    let w = chains
        .iter()
        .zip(&means)
        .map(|(c, mu)| c.iter().map(|x| (x - mu).powi(2)).sum::<f64>() / (n - 1.0))
        .sum::<f64>()
        / m;
    let grand = mean(&means);
    let b_over_n = if m > 1.0 {
        means.iter().map(|x| (x - grand).powi(2)).sum::<f64>() / (m - 1.0)
    } else {
        0.0
    };
    let var_plus = (n - 1.0) / n * w + b_over_n;
    if w == 0.0 {
        return if var_plus == 0.0 { 1.0 } else { f64::INFINITY };
    }
    (var_plus / w).sqrt()
}

/// Autocovariances γ_t = (1/N) Σ_{i<N−t} (x_i − x̄)(x_{i+t} − x̄) for every lag t < N, through the
/// FFT (Wiener–Khinchin: zero-pad to a power of two ≥ 2N, |X|², inverse transform), O(N log N).
fn autocovariance(x: &[f64]) -> Vec<f64> {
    let n = x.len();
    let mu = mean(x);
    let size = (2 * n).next_power_of_two();
    let mut re = vec![0.0; size];
    let mut im = vec![0.0; size];
    for (r, v) in re.iter_mut().zip(x) {
        *r = v - mu;
    }
    fft(&mut re, &mut im, false);
    for (r, i) in re.iter_mut().zip(im.iter_mut()) {
        *r = *r * *r + *i * *i;
        *i = 0.0;
    }
    fft(&mut re, &mut im, true);
    re.truncate(n);
    for v in re.iter_mut() {
        *v /= (size * n) as f64;
    }
    re
}

/// In-place iterative radix-2 Cooley–Tukey FFT (unnormalised; `inverse` flips the sign of the
/// exponent). The length must be a power of two.
fn fft(re: &mut [f64], im: &mut [f64], inverse: bool) {
    let n = re.len();
    let mut j = 0;
    for i in 1..n {
        let mut bit = n >> 1;
        while j & bit != 0 {
            j ^= bit;
            bit >>= 1;
        }
        j |= bit;
        if i < j {
            re.swap(i, j);
            im.swap(i, j);
        }
    }
    let sign = if inverse { 1.0 } else { -1.0 };
    let mut len = 2;
    while len <= n {
        let angle = sign * 2.0 * std::f64::consts::PI / len as f64;
        let (wr, wi) = (angle.cos(), angle.sin());
        for start in (0..n).step_by(len) {
            let (mut cr, mut ci) = (1.0, 0.0);
            for k in 0..len / 2 {
                let (a, b) = (start + k, start + k + len / 2);
                let tr = re[b] * cr - im[b] * ci;
                let ti = re[b] * ci + im[b] * cr;
                re[b] = re[a] - tr;
                im[b] = im[a] - ti;
                re[a] += tr;
                im[a] += ti;
                let next = cr * wr - ci * wi;
                ci = cr * wi + ci * wr;
                cr = next;
            }
        }
        len <<= 1;
    }
}

/// Multi-chain ESS with Geyer's initial positive and monotone sequences (as Stan's
/// `compute_effective_sample_size`): ρ̂_t = 1 − (W − mean_j γ_{j,t})/var⁺, τ = −1 + 2 Σ_k P̂_k with
/// P̂_k = ρ̂_{2k} + ρ̂_{2k+1} summed while positive and made non-increasing; ESS = M·N/τ, at most
/// M·N·log₁₀(M·N).
fn multi_chain_ess(chains: &[Vec<f64>]) -> f64 {
    let m = chains.len();
    let n = chains[0].len();
    if n < 4 {
        return f64::NAN;
    }
    let acov: Vec<Vec<f64>> = chains.iter().map(|c| autocovariance(c)).collect();
    let nf = n as f64;
    let chain_var: Vec<f64> = acov.iter().map(|a| a[0] * nf / (nf - 1.0)).collect();
    let w = mean(&chain_var);
    let means: Vec<f64> = chains.iter().map(|c| mean(c)).collect();
    let mut var_plus = w * (nf - 1.0) / nf;
    if m > 1 {
        let g = mean(&means);
        var_plus += means.iter().map(|x| (x - g).powi(2)).sum::<f64>() / (m as f64 - 1.0);
    }
    if var_plus <= 0.0 || !var_plus.is_finite() {
        return f64::NAN;
    }
    let rho = |t: usize| 1.0 - (w - acov.iter().map(|a| a[t]).sum::<f64>() / m as f64) / var_plus;
    let mut sum_pairs = 0.0;
    let mut prev_pair = f64::INFINITY;
    let mut t = 0;
    while t + 1 < n {
        let mut pair = rho(t) + rho(t + 1);
        if pair <= 0.0 {
            break;
        }
        pair = pair.min(prev_pair);
        sum_pairs += pair;
        prev_pair = pair;
        t += 2;
    }
    let total = (m * n) as f64;
    let tau = (-1.0 + 2.0 * sum_pairs).max(1.0 / total.log10().max(1.0));
    (total / tau).min(total * total.log10().max(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{stream, Purpose};

    fn ar1(seed: u64, n: usize, phi: f64, shift: f64) -> Vec<f64> {
        let mut r = stream(seed, Purpose::Chain, 0);
        let mut x = 0.0;
        (0..n)
            .map(|_| {
                x = phi * x + (1.0 - phi * phi).sqrt() * r.normal();
                x + shift
            })
            .collect()
    }

    #[test]
    fn iid_chains_have_rhat_one_and_full_ess() {
        let c: Vec<Vec<f64>> = (0..4).map(|s| ar1(s, 2000, 0.0, 0.0)).collect();
        let refs: Vec<&[f64]> = c.iter().map(|v| v.as_slice()).collect();
        let r = split_rhat(&refs);
        // For independent draws R̂ − 1 = O(1/N): 1.01 is Vehtari et al.'s threshold.
        assert!(r < 1.01, "rhat {r}");
        let ess = ess_bulk(&refs);
        // 8000 independent draws: ESS ≈ 8000 with relative sd ~ a few %.
        assert!((ess - 8000.0).abs() < 0.15 * 8000.0, "ess {ess}");
    }

    #[test]
    fn ar1_ess_matches_theory() {
        // AR(1) with φ: τ = (1 + φ)/(1 − φ) = 3 for φ = 0.5, so ESS ≈ N/3.
        let c: Vec<Vec<f64>> = (0..4).map(|s| ar1(10 + s, 5000, 0.5, 0.0)).collect();
        let refs: Vec<&[f64]> = c.iter().map(|v| v.as_slice()).collect();
        let ess = ess_bulk(&refs);
        let expect = 20000.0 / 3.0;
        assert!(
            (ess - expect).abs() < 0.15 * expect,
            "ess {ess} vs {expect}"
        );
    }

    #[test]
    fn shifted_chain_is_flagged() {
        let mut c: Vec<Vec<f64>> = (0..3).map(|s| ar1(20 + s, 1000, 0.3, 0.0)).collect();
        c.push(ar1(30, 1000, 0.3, 1.0));
        let refs: Vec<&[f64]> = c.iter().map(|v| v.as_slice()).collect();
        assert!(split_rhat(&refs) > RHAT_LIMIT);
    }

    #[test]
    fn fft_autocovariance_matches_the_direct_sum() {
        let x = ar1(50, 37, 0.6, 0.3);
        let fast = autocovariance(&x);
        let mu = mean(&x);
        for t in 0..x.len() {
            let direct: f64 = (0..x.len() - t)
                .map(|i| (x[i] - mu) * (x[i + t] - mu))
                .sum::<f64>()
                / x.len() as f64;
            assert!((fast[t] - direct).abs() < 1e-12, "lag {t}");
        }
    }

    #[test]
    fn geweke_flags_a_trend_only() {
        let flat = ar1(40, 2000, 0.5, 0.0);
        assert!(geweke_z(&flat).abs() < GEWEKE_LIMIT, "{}", geweke_z(&flat));
        let trend: Vec<f64> = flat
            .iter()
            .enumerate()
            .map(|(i, x)| x + 2.0 * i as f64 / 2000.0)
            .collect();
        assert!(
            geweke_z(&trend).abs() > GEWEKE_LIMIT,
            "{}",
            geweke_z(&trend)
        );
        // A split R-hat also sees the drift between halves.
        let t2: Vec<f64> = ar1(41, 2000, 0.5, 0.0)
            .iter()
            .enumerate()
            .map(|(i, x)| x + 2.0 * i as f64 / 2000.0)
            .collect();
        assert!(split_rhat(&[&trend, &t2]) > RHAT_LIMIT);
    }
}
