//! The CPU backend's sequence kernels: the axis permutation that splits and merges attention heads,
//! the row-wise (causal) softmax and its Jacobian products, and the embedding lookup and its
//! adjoint. Each is documented on its [`Backend`](super::Backend) method.

use crate::model::token_id;
use crate::Real;

pub(super) fn permute<T: Real>(src: &[T], dims: &[usize], axes: &[usize], dst: &mut [T]) {
    let rank = dims.len();
    assert_eq!(
        axes.len(),
        rank,
        "permute: {} axes for {rank} dims",
        axes.len()
    );
    let total: usize = dims.iter().product();
    // The source strides, read in the destination's axis order.
    let mut strides = vec![1usize; rank];
    for k in (0..rank.saturating_sub(1)).rev() {
        strides[k] = strides[k + 1] * dims[k + 1];
    }
    let out_dims: Vec<usize> = axes.iter().map(|&a| dims[a]).collect();
    let out_strides: Vec<usize> = axes.iter().map(|&a| strides[a]).collect();
    let (src, dst) = (&src[..total], &mut dst[..total]);
    if total == 0 {
        return;
    }
    // Walk the destination in order with an odometer over its index; the innermost axis is a
    // strided copy.
    let inner = out_dims[rank - 1];
    let inner_stride = out_strides[rank - 1];
    let mut index = vec![0usize; rank];
    let mut offset = 0usize;
    for row in dst.chunks_exact_mut(inner) {
        for (j, d) in row.iter_mut().enumerate() {
            *d = src[offset + j * inner_stride];
        }
        // Advance the odometer over the outer axes.
        let mut k = rank - 1;
        while k > 0 {
            k -= 1;
            index[k] += 1;
            offset += out_strides[k];
            if index[k] < out_dims[k] {
                break;
            }
            offset -= out_strides[k] * out_dims[k];
            index[k] = 0;
        }
    }
}

pub(super) fn softmax_rows<T: Real>(scores: &[T], width: usize, causal: bool, probs: &mut [T]) {
    let n = probs.len() / width.max(1) * width;
    for (r, (s, p)) in scores[..n]
        .chunks_exact(width)
        .zip(probs[..n].chunks_exact_mut(width))
        .enumerate()
    {
        // Entries past `live` are masked (causal: keys after the query's position).
        let live = if causal { r % width + 1 } else { width };
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
}

pub(super) fn softmax_rows_jvp<T: Real>(
    p: &[T],
    u: &[T],
    width: usize,
    second: Option<(&[T], &[T])>,
    out: &mut [T],
) {
    let n = out.len() / width.max(1) * width;
    for (r, (o, (pr, ur))) in out[..n]
        .chunks_exact_mut(width)
        .zip(p[..n].chunks_exact(width).zip(u[..n].chunks_exact(width)))
        .enumerate()
    {
        let pu: T = pr.iter().zip(ur).map(|(&a, &b)| a * b).sum();
        for ((o, &pv), &uv) in o.iter_mut().zip(pr).zip(ur) {
            *o = pv * (uv - pu);
        }
        if let Some((rp, d)) = second {
            let (rp, d) = (
                &rp[r * width..(r + 1) * width],
                &d[r * width..(r + 1) * width],
            );
            let pd: T = pr.iter().zip(d).map(|(&a, &b)| a * b).sum();
            let rpd: T = rp.iter().zip(d).map(|(&a, &b)| a * b).sum();
            for (((o, &pv), &rv), &dv) in o.iter_mut().zip(pr).zip(rp).zip(d) {
                *o += rv * (dv - pd) - pv * rpd;
            }
        }
    }
}

/// Row of the table for id `v`. **Panics** on an id out of range or not integral (data sets are
/// checked when they are loaded).
#[inline]
fn row_of<T: Real>(v: T, rows: usize) -> usize {
    token_id(v.as_f64(), rows).unwrap_or_else(|| {
        panic!("token id {v} is not an integer in 0..{rows} (data sets are checked when loaded)")
    })
}

pub(super) fn embedding_gather<T: Real>(table: &[T], ids: &[T], dim: usize, y: &mut [T]) {
    let rows = table.len() / dim.max(1);
    for (&id, out) in ids.iter().zip(y.chunks_exact_mut(dim)) {
        let t = row_of(id, rows);
        out.copy_from_slice(&table[t * dim..(t + 1) * dim]);
    }
}

pub(super) fn embedding_scatter_add<T: Real>(
    alpha: T,
    d: &[T],
    ids: &[T],
    dim: usize,
    table: &mut [T],
) {
    let rows = table.len() / dim.max(1);
    for (&id, dr) in ids.iter().zip(d.chunks_exact(dim)) {
        let t = row_of(id, rows);
        for (o, &v) in table[t * dim..(t + 1) * dim].iter_mut().zip(dr) {
            *o += alpha * v;
        }
    }
}
