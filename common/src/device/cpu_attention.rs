//! The CPU backend's attention kernels: the per-head core of multi-head self-attention (scores,
//! softmax, the weighted values) and its backward, R-forward and R-backward passes, each one fused
//! loop per (sample, head) that reads Q, K, V straight from the rows of x·W_inᵀ + b_in and writes
//! the head's columns of O, so that no head is split out or merged back and no small matrix product
//! is a library call. A head's products are tiny (sequence × sequence × head width: 3×3×32 for the
//! modular-addition transformers), where a gemm call costs more than its arithmetic; here the
//! head-width loops are dot products in eight lanes and axpys, both of which vectorise. The formulas
//! are on [`Backend::attention_forward`](super::Backend::attention_forward) and its siblings, and
//! on [`crate::model::Attention`].
//!
//! The backend runs them compiled for AVX-512 or AVX2 where the processor has it
//! (`cpu_kernels::vectorised`: the same operations in the same order, so the same bits).
//!
//! Summation orders (fixed, independent of the batch, so a batch's numbers are each sample's): a
//! dot product over the head width in 8 lanes (lane e mod 8), the lanes added in order, then the
//! tail; a sum over keys j or queries i in increasing order.

use super::AttentionHeads;
use crate::Real;

/// Σₑ a[e]·b[e] in 8 lanes (lane e mod 8 over the leading multiple of 8), the lanes added in order,
/// then the tail left to right.
#[inline(always)]
fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut lanes = [T::zero(); 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (at, bt) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    let mut s = lanes.iter().fold(T::zero(), |s, &l| s + l);
    for (&x, &y) in at.iter().zip(bt) {
        s += x * y;
    }
    s
}

/// y ← y + α·x.
#[inline(always)]
fn axpy<T: Real>(alpha: T, x: &[T], y: &mut [T]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += alpha * x;
    }
}

/// The geometry of one pass: where the (sample, head) blocks lie.
#[derive(Clone, Copy)]
struct Layout {
    s: usize,
    d: usize,
    hd: usize,
    h: usize,
    causal: bool,
}

impl Layout {
    fn of(g: &AttentionHeads) -> Self {
        Layout {
            s: g.seq,
            d: g.heads * g.head_dim,
            hd: g.head_dim,
            h: g.heads,
            causal: g.causal,
        }
    }
    /// Keys that query i sees.
    #[inline(always)]
    fn live(&self, i: usize) -> usize {
        if self.causal {
            i + 1
        } else {
            self.s
        }
    }
    /// Offset of token i's row of Q (t = 0), K (1) or V (2) of head `head` in sample b's rows of
    /// `[seq, 3·dim]`.
    #[inline(always)]
    fn qkv(&self, b: usize, i: usize, t: usize, head: usize) -> usize {
        (b * self.s + i) * 3 * self.d + t * self.d + head * self.hd
    }
    /// Offset of token i's columns of head `head` in rows of `[seq, dim]`.
    #[inline(always)]
    fn out(&self, b: usize, i: usize, head: usize) -> usize {
        (b * self.s + i) * self.d + head * self.hd
    }
    /// Offset of row i of the (b, head) block of `[batch, heads, seq, seq]`.
    #[inline(always)]
    fn prob(&self, b: usize, head: usize, i: usize) -> usize {
        ((b * self.h + head) * self.s + i) * self.s
    }
    fn scale<T: Real>(&self) -> T {
        T::of_f64(1.0 / (self.hd as f64).sqrt())
    }
}

/// The row slice `[at, at + len)`.
#[inline(always)]
fn row<T>(x: &[T], at: usize, len: usize) -> &[T] {
    &x[at..at + len]
}

/// p ← softmax(s) over the first `live` entries (the maximum subtracted first), 0 after them: the
/// arithmetic of `cpu_sequence::softmax_rows`.
#[inline(always)]
fn softmax_row<T: Real>(s: &[T], live: usize, p: &mut [T]) {
    let max = s[..live].iter().copied().fold(T::neg_infinity(), T::max);
    let mut sum = T::zero();
    for (o, &v) in p[..live].iter_mut().zip(&s[..live]) {
        *o = (v - max).exp();
        sum += *o;
    }
    let inv = T::one() / sum;
    p[..live].iter_mut().for_each(|o| *o *= inv);
    p[live..].iter_mut().for_each(|o| *o = T::zero());
}

/// out ← p ⊙ (u − ⟨p, u⟩) over the first `live` entries (the softmax's Jacobian applied to u).
#[inline(always)]
fn softmax_jvp_row<T: Real>(p: &[T], u: &[T], live: usize, out: &mut [T]) {
    let pu: T = p[..live]
        .iter()
        .zip(&u[..live])
        .fold(T::zero(), |s, (&a, &b)| s + a * b);
    for ((o, &pv), &uv) in out[..live].iter_mut().zip(&p[..live]).zip(&u[..live]) {
        *o = pv * (uv - pu);
    }
}

#[inline(always)]
pub(super) fn forward<T: Real>(g: &AttentionHeads, qkv: &[T], probs: &mut [T], o: &mut [T]) {
    let l = Layout::of(g);
    let (s, hd) = (l.s, l.hd);
    let c = l.scale::<T>();
    let mut scores = vec![T::zero(); s];
    for b in 0..g.batch {
        for head in 0..l.h {
            for i in 0..s {
                let live = l.live(i);
                let q = row(qkv, l.qkv(b, i, 0, head), hd);
                for (j, sc) in scores[..live].iter_mut().enumerate() {
                    *sc = c * dot(q, row(qkv, l.qkv(b, j, 1, head), hd));
                }
                let pr = &mut probs[l.prob(b, head, i)..][..s];
                softmax_row(&scores, live, pr);
                let oi = &mut o[l.out(b, i, head)..][..hd];
                oi.iter_mut().for_each(|v| *v = T::zero());
                for (j, &pij) in pr[..live].iter().enumerate() {
                    axpy(pij, row(qkv, l.qkv(b, j, 2, head), hd), oi);
                }
            }
        }
    }
}

/// Zeroes the K and V rows of the (b, head) block of `dqkv` (they accumulate over the queries).
fn zero_kv<T: Real>(l: &Layout, b: usize, head: usize, dqkv: &mut [T]) {
    for j in 0..l.s {
        for t in 1..3 {
            dqkv[l.qkv(b, j, t, head)..][..l.hd]
                .iter_mut()
                .for_each(|v| *v = T::zero());
        }
    }
}

/// One query's share of ∂[Q K V] from its score cotangents `ds` (already times c) and its
/// probabilities times ∂O: ∂qᵢ ← Σⱼ dsⱼ·kⱼ, ∂kⱼ += dsⱼ·qᵢ, ∂vⱼ += pᵢⱼ·∂oᵢ.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn scatter_query<T: Real>(
    l: &Layout,
    b: usize,
    head: usize,
    i: usize,
    qkv: &[T],
    ds: &[T],
    p: &[T],
    doi: &[T],
    dqkv: &mut [T],
) {
    let (live, hd) = (l.live(i), l.hd);
    let at = l.qkv(b, i, 0, head);
    dqkv[at..at + hd].iter_mut().for_each(|v| *v = T::zero());
    for (j, &w) in ds[..live].iter().enumerate() {
        axpy(
            w,
            row(qkv, l.qkv(b, j, 1, head), hd),
            &mut dqkv[at..at + hd],
        );
    }
    let q = row(qkv, at, hd);
    for j in 0..live {
        axpy(ds[j], q, &mut dqkv[l.qkv(b, j, 1, head)..][..hd]);
        axpy(p[j], doi, &mut dqkv[l.qkv(b, j, 2, head)..][..hd]);
    }
}

#[inline(always)]
pub(super) fn backward<T: Real>(
    g: &AttentionHeads,
    qkv: &[T],
    probs: &[T],
    dout: &[T],
    dqkv: &mut [T],
) {
    let l = Layout::of(g);
    let (s, hd) = (l.s, l.hd);
    let c = l.scale::<T>();
    let (mut dp, mut ds) = (vec![T::zero(); s], vec![T::zero(); s]);
    for b in 0..g.batch {
        for head in 0..l.h {
            zero_kv(&l, b, head, dqkv);
            for i in 0..s {
                let live = l.live(i);
                let doi = row(dout, l.out(b, i, head), hd);
                for (j, v) in dp[..live].iter_mut().enumerate() {
                    *v = dot(doi, row(qkv, l.qkv(b, j, 2, head), hd));
                }
                let pr = row(probs, l.prob(b, head, i), s);
                softmax_jvp_row(pr, &dp, live, &mut ds);
                ds[..live].iter_mut().for_each(|v| *v = c * *v);
                scatter_query(&l, b, head, i, qkv, &ds, pr, doi, dqkv);
            }
        }
    }
}

#[inline(always)]
pub(super) fn r_forward<T: Real>(
    g: &AttentionHeads,
    qkv: &[T],
    probs: &[T],
    rqkv: &[T],
    rprobs: &mut [T],
    ro: &mut [T],
) {
    let l = Layout::of(g);
    let (s, hd) = (l.s, l.hd);
    let c = l.scale::<T>();
    let mut rs = vec![T::zero(); s];
    for b in 0..g.batch {
        for head in 0..l.h {
            for i in 0..s {
                let live = l.live(i);
                let (q, rq) = (
                    row(qkv, l.qkv(b, i, 0, head), hd),
                    row(rqkv, l.qkv(b, i, 0, head), hd),
                );
                for (j, v) in rs[..live].iter_mut().enumerate() {
                    let at = l.qkv(b, j, 1, head);
                    *v = c * (dot(rq, row(qkv, at, hd)) + dot(q, row(rqkv, at, hd)));
                }
                let pr = row(probs, l.prob(b, head, i), s);
                let rpr = &mut rprobs[l.prob(b, head, i)..][..s];
                softmax_jvp_row(pr, &rs, live, rpr);
                rpr[live..].iter_mut().for_each(|v| *v = T::zero());
                let roi = &mut ro[l.out(b, i, head)..][..hd];
                roi.iter_mut().for_each(|v| *v = T::zero());
                for j in 0..live {
                    let at = l.qkv(b, j, 2, head);
                    axpy(rpr[j], row(qkv, at, hd), roi);
                    axpy(pr[j], row(rqkv, at, hd), roi);
                }
            }
        }
    }
}

/// What the R-backward's second-order terms read and write: ∂O `[batch, seq, dim]`, and ∂[Q K V]
/// (written, in the layout of `qkv`).
pub(super) struct SecondOrder<'a, T> {
    pub dout: &'a [T],
    pub dqkv: &'a mut [T],
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn r_backward<T: Real>(
    g: &AttentionHeads,
    qkv: &[T],
    probs: &[T],
    rqkv: &[T],
    rprobs: &[T],
    rdout: &[T],
    mut second: Option<SecondOrder<'_, T>>,
    rdqkv: &mut [T],
) {
    let l = Layout::of(g);
    let (s, hd) = (l.s, l.hd);
    let c = l.scale::<T>();
    let [mut dp, mut ds, mut rdp, mut rds] = std::array::from_fn(|_| vec![T::zero(); s]);
    for b in 0..g.batch {
        for head in 0..l.h {
            zero_kv(&l, b, head, rdqkv);
            if let Some(so) = second.as_mut() {
                zero_kv(&l, b, head, so.dqkv);
            }
            for i in 0..s {
                let live = l.live(i);
                let pr = row(probs, l.prob(b, head, i), s);
                let rpr = row(rprobs, l.prob(b, head, i), s);
                let rdoi = row(rdout, l.out(b, i, head), hd);
                // R{∂P}ᵢⱼ = R{∂o}ᵢ·vⱼ + [∂oᵢ·R{v}ⱼ], and ∂Pᵢⱼ = ∂oᵢ·vⱼ for the bracketed terms.
                for (j, v) in rdp[..live].iter_mut().enumerate() {
                    *v = dot(rdoi, row(qkv, l.qkv(b, j, 2, head), hd));
                }
                let at_q = l.qkv(b, i, 0, head);
                let doi = second
                    .as_ref()
                    .map(|so| row(so.dout, l.out(b, i, head), hd));
                if let Some(doi) = doi {
                    for j in 0..live {
                        let at_v = l.qkv(b, j, 2, head);
                        dp[j] = dot(doi, row(qkv, at_v, hd));
                        rdp[j] += dot(doi, row(rqkv, at_v, hd));
                    }
                }
                // R{∂S} = J_P·R{∂P} + [R{P} ⊙ (∂P − ⟨P, ∂P⟩) − P·⟨R{P}, ∂P⟩].
                softmax_jvp_row(pr, &rdp, live, &mut rds);
                let rdq = &mut rdqkv[at_q..at_q + hd];
                rdq.iter_mut().for_each(|v| *v = T::zero());
                if let (Some(doi), Some(so)) = (doi, second.as_mut()) {
                    let (mut pd, mut rpd) = (T::zero(), T::zero());
                    for j in 0..live {
                        pd += pr[j] * dp[j];
                        rpd += rpr[j] * dp[j];
                    }
                    for j in 0..live {
                        rds[j] += rpr[j] * (dp[j] - pd) - pr[j] * rpd;
                    }
                    softmax_jvp_row(pr, &dp, live, &mut ds);
                    ds[..live].iter_mut().for_each(|v| *v = c * *v);
                    // ∂[Q K V] itself, and the bracketed terms of R{∂[Q K V]}: c·∂S·R{K},
                    // c·∂Sᵀ·R{Q}, R{P}ᵀ·∂O.
                    scatter_query(&l, b, head, i, qkv, &ds, pr, doi, so.dqkv);
                    for (j, &w) in ds[..live].iter().enumerate() {
                        axpy(w, row(rqkv, l.qkv(b, j, 1, head), hd), rdq);
                    }
                    let rq = row(rqkv, at_q, hd);
                    for j in 0..live {
                        axpy(ds[j], rq, &mut rdqkv[l.qkv(b, j, 1, head)..][..hd]);
                        axpy(rpr[j], doi, &mut rdqkv[l.qkv(b, j, 2, head)..][..hd]);
                    }
                }
                rds[..live].iter_mut().for_each(|v| *v = c * *v);
                // R{∂q}ᵢ += Σⱼ R{∂S}ᵢⱼ·kⱼ, R{∂k}ⱼ += R{∂S}ᵢⱼ·qᵢ, R{∂v}ⱼ += Pᵢⱼ·R{∂o}ᵢ.
                for (j, &w) in rds[..live].iter().enumerate() {
                    axpy(
                        w,
                        row(qkv, l.qkv(b, j, 1, head), hd),
                        &mut rdqkv[at_q..at_q + hd],
                    );
                }
                let q = row(qkv, at_q, hd);
                for j in 0..live {
                    axpy(rds[j], q, &mut rdqkv[l.qkv(b, j, 1, head)..][..hd]);
                    axpy(pr[j], rdoi, &mut rdqkv[l.qkv(b, j, 2, head)..][..hd]);
                }
            }
        }
    }
}
