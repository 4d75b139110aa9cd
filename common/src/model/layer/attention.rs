//! Multi-head self-attention on a sequence, PyTorch's `nn.MultiheadAttention(dim, heads, bias,
//! batch_first=True)` called as `mha(x, x, x, attn_mask=mask, need_weights=False)[0]` (Vaswani et
//! al. 2017, "Attention is all you need"), its tensors named as PyTorch's: `in_proj_weight`
//! `[3·dim, dim]`, `in_proj_bias` `[3·dim]`, `out_proj.weight` `[dim, dim]`, `out_proj.bias` `[dim]`.
//!
//! For one sample x `[seq, dim]`, with d = dim / heads per head and c = 1/√d:
//!
//! [Q K V] = x·W_inᵀ + b_in, split by columns into q, k, v and each into `heads` blocks of d;
//! per head Sₕ = c·Qₕ·Kₕᵀ, Pₕ = softmax(Sₕ) by rows (with `causal`, entries j > i are −∞: the
//! query at i sees keys 0..=i), Oₕ = Pₕ·Vₕ; O = [O₁ … O_heads] by columns; y = O·W_oᵀ + b_o.
//!
//! Backward (δ = ∂L/∂y): ∂W_o = δᵀ·O, ∂b_o = Σ δ, ∂O = δ·W_o; per head ∂Pₕ = ∂Oₕ·Vₕᵀ,
//! ∂Vₕ = Pₕᵀ·∂Oₕ, ∂Sₕ = Pₕ ⊙ (∂Pₕ − rowsum(Pₕ ⊙ ∂Pₕ)) (the softmax's Jacobian), ∂Qₕ = c·∂Sₕ·Kₕ,
//! ∂Kₕ = c·∂Sₕᵀ·Qₕ; then ∂W_in = ∂[Q K V]ᵀ·x, ∂b_in = Σ ∂[Q K V], ∂x = ∂[Q K V]·W_in.
//!
//! R-forward: R{[Q K V]} = x·V_inᵀ + R{x}·W_inᵀ + v_b, R{S} = c·(R{Q}·Kᵀ + Q·R{K}ᵀ),
//! R{P} = J_P·R{S}, R{O} = R{P}·V + P·R{V}, R{y} = R{O}·W_oᵀ + O·V_oᵀ + v_bo.
//!
//! R-backward (Pearlmutter 1994), each line the R{·} of the backward's, the bracketed terms the
//! ones in δ, dropped for the Gauss–Newton product:
//! (H·v)_Wo = R{δ}ᵀ·O + [δᵀ·R{O}], (H·v)_bo = Σ R{δ}, R{∂O} = R{δ}·W_o + [δ·V_o],
//! R{∂P} = R{∂O}·Vᵀ + [∂O·R{V}ᵀ], R{∂V} = Pᵀ·R{∂O} + [R{P}ᵀ·∂O],
//! R{∂S} = J_P·R{∂P} + [R{P} ⊙ (∂P − rowsum(P ⊙ ∂P)) − P ⊙ rowsum(R{P} ⊙ ∂P)],
//! R{∂Q} = c·(R{∂S}·K + [∂S·R{K}]), R{∂K} = c·(R{∂S}ᵀ·Q + [∂Sᵀ·R{Q}]),
//! (H·v)_Win = R{∂[QKV]}ᵀ·x + [∂[QKV]ᵀ·R{x}], (H·v)_bin = Σ R{∂[QKV]},
//! R{∂x} = R{∂[QKV]}·W_in + [∂[QKV]·V_in].
//!
//! The heads are split out with the backend's `permute` (`[B, seq, 3, heads, d]` →
//! `[3, B, heads, seq, d]`), so that each of Q·Kᵀ, P·V and their adjoints is one strided batched
//! gemm over the B·heads blocks. Nothing is kept between passes: each pass recomputes the forward
//! state from x in the scratch (`cols`), and the R-forward leaves R{[Q K V]}, R{P} and R{O} in its
//! saved buffer for the R-backward. Per-sample gradients are materialised by the backward pass of
//! one sample at a time. Not piecewise linear (the softmax and the products Q·Kᵀ, P·V).

use super::{LayerOps, Pass, PerSample, RPass, Scope, Scratch};
use crate::device::Backend;
use crate::model::layout::Init;
use crate::Real;
use std::ops::Range;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attention {
    pub seq: usize,
    pub dim: usize,
    pub heads: usize,
    pub causal: bool,
    /// Index of `in_proj_weight` in the layout; the other tensors follow it.
    pub first: usize,
    in_w: Range<usize>,
    in_b: Option<Range<usize>>,
    out_w: Range<usize>,
    out_b: Option<Range<usize>>,
}

/// The sizes of one pass: batch, sequence, model and head widths, heads, and the element counts
/// N = B·seq·dim (one of Q, K, V, O) and A = B·heads·seq² (the scores).
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    s: usize,
    d: usize,
    h: usize,
    hd: usize,
    n: usize,
    a: usize,
}

/// The forward state of a batch: x·W_inᵀ + b_in `[B, seq, 3·dim]`, the same as
/// `[3, B, heads, seq, d]`, the scores, P, O per head `[B, heads, seq, d]` and O `[B, seq, dim]`.
struct State<'a, T: Real, B: Backend> {
    rows3: B::ViewMut<'a, T>,
    qkv: B::ViewMut<'a, T>,
    scores: B::ViewMut<'a, T>,
    p: B::ViewMut<'a, T>,
    o: B::ViewMut<'a, T>,
    o2: B::ViewMut<'a, T>,
}

/// The cotangents of the forward state: ∂O `[B, seq, dim]` and per head, ∂P, ∂S, ∂[Q K V] per head
/// and by rows.
struct Grads<'a, T: Real, B: Backend> {
    do2: B::ViewMut<'a, T>,
    dout: B::ViewMut<'a, T>,
    dp: B::ViewMut<'a, T>,
    ds: B::ViewMut<'a, T>,
    dqkv: B::ViewMut<'a, T>,
    drows3: B::ViewMut<'a, T>,
}

/// Cuts `v` into consecutive views of `lens`. **Panics** if it is shorter than their sum.
fn carve<'a, B: Backend, T: Real, const K: usize>(
    v: B::ViewMut<'a, T>,
    lens: [usize; K],
) -> [B::ViewMut<'a, T>; K] {
    let mut out = Vec::with_capacity(K);
    let mut rest = v;
    for len in lens {
        let (a, b) = B::split_at_mut(rest, len);
        out.push(a);
        rest = b;
    }
    match out.try_into() {
        Ok(a) => a,
        Err(_) => unreachable!("K views"),
    }
}

fn state<B: Backend, T: Real>(v: B::ViewMut<'_, T>, m: Dims) -> State<'_, T, B> {
    let [rows3, qkv, scores, p, o, o2] =
        carve::<B, T, 6>(v, [3 * m.n, 3 * m.n, m.a, m.a, m.n, m.n]);
    State {
        rows3,
        qkv,
        scores,
        p,
        o,
        o2,
    }
}

fn grads<B: Backend, T: Real>(v: B::ViewMut<'_, T>, m: Dims) -> Grads<'_, T, B> {
    let [do2, dout, dp, ds, dqkv, drows3] =
        carve::<B, T, 6>(v, [m.n, m.n, m.a, m.a, 3 * m.n, 3 * m.n]);
    Grads {
        do2,
        dout,
        dp,
        ds,
        dqkv,
        drows3,
    }
}

/// The i-th of the three blocks of n (Q, K, V) of `w`.
fn part<B: Backend, T: Real>(w: B::View<'_, T>, i: usize, n: usize) -> B::View<'_, T> {
    B::slice(w, i * n..(i + 1) * n)
}

/// Elements of a [`State`] or a [`Grads`]: 8N + 2A.
fn block_len(m: Dims) -> usize {
    8 * m.n + 2 * m.a
}

impl Attention {
    /// `nn.MultiheadAttention(dim, heads, bias=bias)`'s tensors in `scope` with PyTorch's
    /// initialisation (`in_proj_weight` Xavier-uniform, `out_proj.weight` as `nn.Linear`'s, biases
    /// 0), for sequences of `seq`. **Panics** unless `heads` divides `dim` (the spec checks it).
    pub fn new(
        scope: &mut Scope<'_>,
        seq: usize,
        dim: usize,
        heads: usize,
        causal: bool,
        bias: bool,
    ) -> Self {
        assert!(heads >= 1 && dim.is_multiple_of(heads), "heads must divide dim");
        let first = scope.tensor(
            "in_proj_weight",
            vec![3 * dim, dim],
            Init::XavierUniform {
                fan_in: dim,
                fan_out: 3 * dim,
            },
        );
        let in_w = scope.range(first);
        let in_b = bias.then(|| {
            let t = scope.tensor("in_proj_bias", vec![3 * dim], Init::Zeros);
            scope.range(t)
        });
        let mut out = scope.pp("out_proj");
        let t = out.tensor("weight", vec![dim, dim], Init::torch_default(dim));
        let out_w = out.range(t);
        let out_b = bias.then(|| {
            let t = out.tensor("bias", vec![dim], Init::Zeros);
            out.range(t)
        });
        Attention {
            seq,
            dim,
            heads,
            causal,
            first,
            in_w,
            in_b,
            out_w,
            out_b,
        }
    }

    /// Whether it has the biases.
    pub fn has_bias(&self) -> bool {
        self.in_b.is_some()
    }

    fn dims(&self, batch: usize) -> Dims {
        let (s, d, h) = (self.seq, self.dim, self.heads);
        Dims {
            b: batch,
            s,
            d,
            h,
            hd: d / h,
            n: batch * s * d,
            a: batch * h * s * s,
        }
    }

    /// The span of the flat vector its tensors occupy.
    fn span(&self) -> Range<usize> {
        let end = self
            .out_b
            .as_ref()
            .map_or(self.out_w.end, |r| r.end);
        self.in_w.start..end
    }

    fn scale<T: Real>(m: Dims) -> T {
        T::of_f64(1.0 / (m.hd as f64).sqrt())
    }

    /// Computes the forward state of `x` (`m.b` samples) into `st`.
    fn forward_state<B: Backend, T: Real>(
        &self,
        be: &B,
        params: B::View<'_, T>,
        x: B::View<'_, T>,
        m: Dims,
        st: &mut State<'_, T, B>,
    ) {
        let (bs, d, s, hd, bh) = (m.b * m.s, m.d, m.s, m.hd, m.b * m.h);
        let c = Self::scale::<T>(m);
        let w_in = B::slice(params, self.in_w.clone());
        let x = B::slice(x, 0..m.n);
        be.gemm(
            false,
            true,
            bs,
            3 * d,
            d,
            T::one(),
            x,
            w_in,
            T::zero(),
            B::reborrow(&mut st.rows3),
        );
        if let Some(b) = &self.in_b {
            be.add_bias_rows(B::reborrow(&mut st.rows3), B::slice(params, b.clone()));
        }
        be.permute(
            B::freeze(&st.rows3),
            &[m.b, s, 3, m.h, hd],
            &[2, 0, 3, 1, 4],
            B::reborrow(&mut st.qkv),
        );
        let qkv = B::freeze(&st.qkv);
        let (q, k, v) = (
            B::slice(qkv, 0..m.n),
            B::slice(qkv, m.n..2 * m.n),
            B::slice(qkv, 2 * m.n..3 * m.n),
        );
        let (sd, ss) = (s * hd, s * s);
        be.gemm_strided_batched(
            false,
            true,
            s,
            s,
            hd,
            c,
            q,
            k,
            T::zero(),
            B::reborrow(&mut st.scores),
            bh,
            (sd, sd, ss),
        );
        be.softmax_rows(
            B::freeze(&st.scores),
            s,
            self.causal,
            B::reborrow(&mut st.p),
        );
        be.gemm_strided_batched(
            false,
            false,
            s,
            hd,
            s,
            T::one(),
            B::freeze(&st.p),
            v,
            T::zero(),
            B::reborrow(&mut st.o),
            bh,
            (ss, sd, sd),
        );
        be.permute(
            B::freeze(&st.o),
            &[m.b, m.h, s, hd],
            &[0, 2, 1, 3],
            B::reborrow(&mut st.o2),
        );
    }

    /// y ← O·W_oᵀ + b_o (from `w`, `b`: the parameters or the direction), `beta` times y added.
    #[allow(clippy::too_many_arguments)]
    fn project_out<B: Backend, T: Real>(
        &self,
        be: &B,
        src: B::View<'_, T>,
        w: B::View<'_, T>,
        b: Option<B::View<'_, T>>,
        beta: T,
        m: Dims,
        mut y: B::ViewMut<'_, T>,
    ) {
        let d = m.d;
        be.gemm(
            false,
            true,
            m.b * m.s,
            d,
            d,
            T::one(),
            src,
            w,
            beta,
            B::reborrow(&mut y),
        );
        if let Some(b) = b {
            be.add_bias_rows(y, b);
        }
    }

    /// The backward pass through the state `st` for δ = `dy`: the gradients of its tensors into
    /// `grad` (a view whose element 0 is flat index `grad_offset`: the full vector, or a
    /// per-sample row of the layer's span), ∂x into `dx`, the intermediate cotangents in `g`.
    #[allow(clippy::too_many_arguments)]
    fn backward_core<B: Backend, T: Real>(
        &self,
        be: &B,
        params: B::View<'_, T>,
        x: B::View<'_, T>,
        dy: B::View<'_, T>,
        m: Dims,
        st: &State<'_, T, B>,
        g: &mut Grads<'_, T, B>,
        grad: Option<(B::ViewMut<'_, T>, usize)>,
        dx: Option<B::ViewMut<'_, T>>,
    ) {
        let (bs, d) = (m.b * m.s, m.d);
        let c = Self::scale::<T>(m);
        let dy = B::slice(dy, 0..m.n);
        let x = B::slice(x, 0..m.n);
        let shift = |r: &Range<usize>, off: usize| r.start - off..r.end - off;
        let mut grad = grad;
        if let Some((gv, off)) = grad.as_mut() {
            be.gemm(
                true,
                false,
                d,
                d,
                bs,
                T::one(),
                dy,
                B::freeze(&st.o2),
                T::zero(),
                B::slice_mut(B::reborrow(gv), shift(&self.out_w, *off)),
            );
            if let Some(b) = &self.out_b {
                let mut gb = B::slice_mut(B::reborrow(gv), shift(b, *off));
                be.fill(B::reborrow(&mut gb), T::zero());
                be.add_column_sums(T::one(), dy, gb);
            }
        }
        self.delta_chain(be, params, dy, m, st, g, c);
        if let Some((gv, off)) = grad.as_mut() {
            let drows3 = B::freeze(&g.drows3);
            be.gemm(
                true,
                false,
                3 * d,
                d,
                bs,
                T::one(),
                drows3,
                x,
                T::zero(),
                B::slice_mut(B::reborrow(gv), shift(&self.in_w, *off)),
            );
            if let Some(b) = &self.in_b {
                let mut gb = B::slice_mut(B::reborrow(gv), shift(b, *off));
                be.fill(B::reborrow(&mut gb), T::zero());
                be.add_column_sums(T::one(), drows3, gb);
            }
        }
        if let Some(dx) = dx {
            be.gemm(
                false,
                false,
                bs,
                d,
                3 * d,
                T::one(),
                B::freeze(&g.drows3),
                B::slice(params, self.in_w.clone()),
                T::zero(),
                B::slice_mut(dx, 0..m.n),
            );
        }
    }

    /// From δ = `dy` to ∂[Q K V] by rows (`g.drows3`), through ∂O, ∂P, ∂S.
    #[allow(clippy::too_many_arguments)]
    fn delta_chain<B: Backend, T: Real>(
        &self,
        be: &B,
        params: B::View<'_, T>,
        dy: B::View<'_, T>,
        m: Dims,
        st: &State<'_, T, B>,
        g: &mut Grads<'_, T, B>,
        c: T,
    ) {
        let (bs, d, s, hd, bh) = (m.b * m.s, m.d, m.s, m.hd, m.b * m.h);
        let (sd, ss) = (s * hd, s * s);
        be.gemm(
            false,
            false,
            bs,
            d,
            d,
            T::one(),
            dy,
            B::slice(params, self.out_w.clone()),
            T::zero(),
            B::reborrow(&mut g.do2),
        );
        be.permute(
            B::freeze(&g.do2),
            &[m.b, s, m.h, hd],
            &[0, 2, 1, 3],
            B::reborrow(&mut g.dout),
        );
        let qkv = B::freeze(&st.qkv);
        let (q, k, v) = (
            B::slice(qkv, 0..m.n),
            B::slice(qkv, m.n..2 * m.n),
            B::slice(qkv, 2 * m.n..3 * m.n),
        );
        let p = B::freeze(&st.p);
        let dout = B::freeze(&g.dout);
        be.gemm_strided_batched(
            false,
            true,
            s,
            s,
            hd,
            T::one(),
            dout,
            v,
            T::zero(),
            B::reborrow(&mut g.dp),
            bh,
            (sd, sd, ss),
        );
        {
        let (mut dq, rest) = B::split_at_mut(B::reborrow(&mut g.dqkv), m.n);
        let (mut dk, mut dv) = B::split_at_mut(rest, m.n);
        be.gemm_strided_batched(
            true,
            false,
            s,
            hd,
            s,
            T::one(),
            p,
            dout,
            T::zero(),
            B::reborrow(&mut dv),
            bh,
            (ss, sd, sd),
        );
        be.softmax_rows_jvp(p, B::freeze(&g.dp), s, None, B::reborrow(&mut g.ds));
        let ds = B::freeze(&g.ds);
        be.gemm_strided_batched(
            false,
            false,
            s,
            hd,
            s,
            c,
            ds,
            k,
            T::zero(),
            B::reborrow(&mut dq),
            bh,
            (ss, sd, sd),
        );
        be.gemm_strided_batched(
            true,
            false,
            s,
            hd,
            s,
            c,
            ds,
            q,
            T::zero(),
            B::reborrow(&mut dk),
            bh,
            (ss, sd, sd),
        );
        }
        be.permute(
            B::freeze(&g.dqkv),
            &[3, m.b, m.h, s, hd],
            &[1, 3, 0, 2, 4],
            B::reborrow(&mut g.drows3),
        );
    }
}

impl LayerOps for Attention {
    fn kind(&self) -> &'static str {
        "MultiheadAttention"
    }
    fn in_features(&self) -> usize {
        self.seq * self.dim
    }
    fn out_features(&self) -> usize {
        self.seq * self.dim
    }
    fn tensors(&self) -> Range<usize> {
        let n = if self.in_b.is_some() { 4 } else { 2 };
        self.first..self.first + n
    }
    fn piecewise_linear(&self) -> bool {
        false
    }
    fn scratch_len(&self, batch: usize, _batched: bool) -> (usize, usize) {
        // The R-backward's: the state, the cotangents and their R{·}.
        (3 * block_len(self.dims(batch)), 0)
    }
    fn index_len(&self, _batch: usize) -> usize {
        0
    }
    fn state_len(&self, _batch: usize) -> usize {
        0
    }
    fn saved_len(&self, batch: usize) -> usize {
        let m = self.dims(batch);
        4 * m.n + m.a
    }
    fn forward_flops(&self, batch: usize) -> f64 {
        let m = self.dims(batch);
        let (bs, d, s) = ((m.b * m.s) as f64, m.d as f64, m.s as f64);
        // The projections in (3d outputs) and out (d), then Q·Kᵀ and P·V (s·s·d each per sample).
        2.0 * bs * d * 4.0 * d + 2.0 * 2.0 * bs * s * d
    }
    fn sample_wise(&self) -> bool {
        false
    }

    fn forward<B: Backend, T: Real>(
        &self,
        params: B::View<'_, T>,
        x: B::View<'_, T>,
        batch: usize,
        y: B::ViewMut<'_, T>,
        _indices: B::ViewMut<'_, u32>,
        _state: B::ViewMut<'_, T>,
        sc: &mut Scratch<T, B>,
    ) {
        let m = self.dims(batch);
        let Scratch { backend, cols, .. } = sc;
        backend.ensure_len(cols, block_len(m));
        let mut st = state::<B, T>(B::view_mut(cols), m);
        self.forward_state(backend, params, x, m, &mut st);
        self.project_out(
            backend,
            B::freeze(&st.o2),
            B::slice(params, self.out_w.clone()),
            self.out_b.as_ref().map(|b| B::slice(params, b.clone())),
            T::zero(),
            m,
            B::slice_mut(y, 0..m.n),
        );
    }

    fn backward<B: Backend, T: Real>(
        &self,
        pass: &Pass<'_, T, B>,
        dy: B::View<'_, T>,
        grad: Option<B::ViewMut<'_, T>>,
        dx: Option<B::ViewMut<'_, T>>,
        sc: &mut Scratch<T, B>,
    ) {
        let m = self.dims(pass.batch);
        let Scratch { backend, cols, .. } = sc;
        backend.ensure_len(cols, 2 * block_len(m));
        let (a, b) = B::split_at_mut(B::view_mut(cols), block_len(m));
        let (mut st, mut g) = (state::<B, T>(a, m), grads::<B, T>(b, m));
        self.forward_state(backend, pass.params, pass.x, m, &mut st);
        self.backward_core(
            backend,
            pass.params,
            pass.x,
            dy,
            m,
            &st,
            &mut g,
            grad.map(|g| (g, 0)),
            dx,
        );
    }

    fn r_forward<B: Backend, T: Real>(
        &self,
        pass: &Pass<'_, T, B>,
        v: B::View<'_, T>,
        rx: Option<B::View<'_, T>>,
        ry: B::ViewMut<'_, T>,
        saved: &mut [B::Buffer<T>; 2],
        sc: &mut Scratch<T, B>,
    ) {
        let m = self.dims(pass.batch);
        let (bs, d, s, hd, bh) = (m.b * m.s, m.d, m.s, m.hd, m.b * m.h);
        let (sd, ss) = (s * hd, s * s);
        let c = Self::scale::<T>(m);
        let Scratch { backend: be, cols, .. } = sc;
        be.ensure_len(cols, 2 * block_len(m));
        be.ensure_len(&mut saved[0], self.saved_len(pass.batch));
        let (a, b) = B::split_at_mut(B::view_mut(cols), block_len(m));
        let mut st = state::<B, T>(a, m);
        self.forward_state(be, pass.params, pass.x, m, &mut st);
        let [mut rrows3, mut rs, mut ro, _] = carve::<B, T, 4>(b, [3 * m.n, m.a, m.n, 0]);
        let [mut rqkv, mut rp, mut ro2] =
            carve::<B, T, 3>(B::view_mut(&mut saved[0]), [3 * m.n, m.a, m.n]);
        let x = B::slice(pass.x, 0..m.n);
        be.gemm(
            false,
            true,
            bs,
            3 * d,
            d,
            T::one(),
            x,
            B::slice(v, self.in_w.clone()),
            T::zero(),
            B::reborrow(&mut rrows3),
        );
        if let Some(rx) = rx {
            be.gemm(
                false,
                true,
                bs,
                3 * d,
                d,
                T::one(),
                B::slice(rx, 0..m.n),
                B::slice(pass.params, self.in_w.clone()),
                T::one(),
                B::reborrow(&mut rrows3),
            );
        }
        if let Some(b) = &self.in_b {
            be.add_bias_rows(B::reborrow(&mut rrows3), B::slice(v, b.clone()));
        }
        be.permute(
            B::freeze(&rrows3),
            &[m.b, s, 3, m.h, hd],
            &[2, 0, 3, 1, 4],
            B::reborrow(&mut rqkv),
        );
        let (qkv, rqkv_v) = (B::freeze(&st.qkv), B::freeze(&rqkv));
        let part = |w, i: usize| part::<B, T>(w, i, m.n);
        let (q, k, val) = (part(qkv, 0), part(qkv, 1), part(qkv, 2));
        let (rq, rk, rv) = (part(rqkv_v, 0), part(rqkv_v, 1), part(rqkv_v, 2));
        be.gemm_strided_batched(
            false,
            true,
            s,
            s,
            hd,
            c,
            rq,
            k,
            T::zero(),
            B::reborrow(&mut rs),
            bh,
            (sd, sd, ss),
        );
        be.gemm_strided_batched(
            false,
            true,
            s,
            s,
            hd,
            c,
            q,
            rk,
            T::one(),
            B::reborrow(&mut rs),
            bh,
            (sd, sd, ss),
        );
        let p = B::freeze(&st.p);
        be.softmax_rows_jvp(p, B::freeze(&rs), s, None, B::reborrow(&mut rp));
        be.gemm_strided_batched(
            false,
            false,
            s,
            hd,
            s,
            T::one(),
            B::freeze(&rp),
            val,
            T::zero(),
            B::reborrow(&mut ro),
            bh,
            (ss, sd, sd),
        );
        be.gemm_strided_batched(
            false,
            false,
            s,
            hd,
            s,
            T::one(),
            p,
            rv,
            T::one(),
            B::reborrow(&mut ro),
            bh,
            (ss, sd, sd),
        );
        be.permute(
            B::freeze(&ro),
            &[m.b, m.h, s, hd],
            &[0, 2, 1, 3],
            B::reborrow(&mut ro2),
        );
        let mut ry = B::slice_mut(ry, 0..m.n);
        self.project_out(
            be,
            B::freeze(&ro2),
            B::slice(pass.params, self.out_w.clone()),
            None,
            T::zero(),
            m,
            B::reborrow(&mut ry),
        );
        self.project_out(
            be,
            B::freeze(&st.o2),
            B::slice(v, self.out_w.clone()),
            self.out_b.as_ref().map(|b| B::slice(v, b.clone())),
            T::one(),
            m,
            ry,
        );
    }

    fn r_backward<B: Backend, T: Real>(
        &self,
        pass: &Pass<'_, T, B>,
        r: &RPass<'_, T, B>,
        mut hv: B::ViewMut<'_, T>,
        rdx: Option<B::ViewMut<'_, T>>,
        saved: &[B::Buffer<T>; 2],
        sc: &mut Scratch<T, B>,
    ) {
        let m = self.dims(pass.batch);
        let (bs, d, s, hd, bh) = (m.b * m.s, m.d, m.s, m.hd, m.b * m.h);
        let (sd, ss) = (s * hd, s * s);
        let c = Self::scale::<T>(m);
        let second_order = !r.gauss_newton;
        let Scratch { backend: be, cols, .. } = sc;
        be.ensure_len(cols, 3 * block_len(m));
        let [a, b, rest] = carve::<B, T, 3>(
            B::view_mut(cols),
            [block_len(m), block_len(m), block_len(m)],
        );
        let (mut st, mut g, mut rg) = (
            state::<B, T>(a, m),
            grads::<B, T>(b, m),
            grads::<B, T>(rest, m),
        );
        self.forward_state(be, pass.params, pass.x, m, &mut st);
        let (dy, rdy) = (B::slice(r.dy, 0..m.n), B::slice(r.rdy, 0..m.n));
        if second_order {
            self.delta_chain(be, pass.params, dy, m, &st, &mut g, c);
        }
        let sv = B::view(&saved[0]);
        let (rqkv, rp, ro2) = (
            B::slice(sv, 0..3 * m.n),
            B::slice(sv, 3 * m.n..3 * m.n + m.a),
            B::slice(sv, 3 * m.n + m.a..4 * m.n + m.a),
        );
        let part = |w, i: usize| part::<B, T>(w, i, m.n);
        let (rq, rk, rv) = (part(rqkv, 0), part(rqkv, 1), part(rqkv, 2));
        let qkv = B::freeze(&st.qkv);
        let (q, k, val) = (part(qkv, 0), part(qkv, 1), part(qkv, 2));
        let p = B::freeze(&st.p);
        // (H·v)_Wo, (H·v)_bo.
        {
            let mut hw = B::slice_mut(B::reborrow(&mut hv), self.out_w.clone());
            be.gemm(
                true,
                false,
                d,
                d,
                bs,
                r.alpha,
                rdy,
                B::freeze(&st.o2),
                T::one(),
                B::reborrow(&mut hw),
            );
            if second_order {
                be.gemm(true, false, d, d, bs, r.alpha, dy, ro2, T::one(), hw);
            }
        }
        if let Some(b) = &self.out_b {
            be.add_column_sums(r.alpha, rdy, B::slice_mut(B::reborrow(&mut hv), b.clone()));
        }
        // R{∂O}, per head.
        be.gemm(
            false,
            false,
            bs,
            d,
            d,
            T::one(),
            rdy,
            B::slice(pass.params, self.out_w.clone()),
            T::zero(),
            B::reborrow(&mut rg.do2),
        );
        if second_order {
            be.gemm(
                false,
                false,
                bs,
                d,
                d,
                T::one(),
                dy,
                B::slice(r.v, self.out_w.clone()),
                T::one(),
                B::reborrow(&mut rg.do2),
            );
        }
        be.permute(
            B::freeze(&rg.do2),
            &[m.b, s, m.h, hd],
            &[0, 2, 1, 3],
            B::reborrow(&mut rg.dout),
        );
        let rdout = B::freeze(&rg.dout);
        // R{∂P} = R{∂O}·Vᵀ + [∂O·R{V}ᵀ].
        be.gemm_strided_batched(
            false,
            true,
            s,
            s,
            hd,
            T::one(),
            rdout,
            val,
            T::zero(),
            B::reborrow(&mut rg.dp),
            bh,
            (sd, sd, ss),
        );
        if second_order {
            be.gemm_strided_batched(
                false,
                true,
                s,
                s,
                hd,
                T::one(),
                B::freeze(&g.dout),
                rv,
                T::one(),
                B::reborrow(&mut rg.dp),
                bh,
                (sd, sd, ss),
            );
        }
        {
        let (mut rdq, tail) = B::split_at_mut(B::reborrow(&mut rg.dqkv), m.n);
        let (mut rdk, mut rdv) = B::split_at_mut(tail, m.n);
        // R{∂V} = Pᵀ·R{∂O} + [R{P}ᵀ·∂O].
        be.gemm_strided_batched(
            true,
            false,
            s,
            hd,
            s,
            T::one(),
            p,
            rdout,
            T::zero(),
            B::reborrow(&mut rdv),
            bh,
            (ss, sd, sd),
        );
        if second_order {
            be.gemm_strided_batched(
                true,
                false,
                s,
                hd,
                s,
                T::one(),
                rp,
                B::freeze(&g.dout),
                T::one(),
                B::reborrow(&mut rdv),
                bh,
                (ss, sd, sd),
            );
        }
        // R{∂S}.
        let second = second_order.then(|| (rp, B::freeze(&g.dp)));
        be.softmax_rows_jvp(p, B::freeze(&rg.dp), s, second, B::reborrow(&mut rg.ds));
        let rds = B::freeze(&rg.ds);
        // R{∂Q} = c·(R{∂S}·K + [∂S·R{K}]), R{∂K} = c·(R{∂S}ᵀ·Q + [∂Sᵀ·R{Q}]).
        be.gemm_strided_batched(
            false,
            false,
            s,
            hd,
            s,
            c,
            rds,
            k,
            T::zero(),
            B::reborrow(&mut rdq),
            bh,
            (ss, sd, sd),
        );
        be.gemm_strided_batched(
            true,
            false,
            s,
            hd,
            s,
            c,
            rds,
            q,
            T::zero(),
            B::reborrow(&mut rdk),
            bh,
            (ss, sd, sd),
        );
        if second_order {
            let ds = B::freeze(&g.ds);
            be.gemm_strided_batched(
                false,
                false,
                s,
                hd,
                s,
                c,
                ds,
                rk,
                T::one(),
                B::reborrow(&mut rdq),
                bh,
                (ss, sd, sd),
            );
            be.gemm_strided_batched(
                true,
                false,
                s,
                hd,
                s,
                c,
                ds,
                rq,
                T::one(),
                B::reborrow(&mut rdk),
                bh,
                (ss, sd, sd),
            );
        }
        }
        be.permute(
            B::freeze(&rg.dqkv),
            &[3, m.b, m.h, s, hd],
            &[1, 3, 0, 2, 4],
            B::reborrow(&mut rg.drows3),
        );
        let rdrows3 = B::freeze(&rg.drows3);
        // (H·v)_Win, (H·v)_bin.
        {
            let mut hw = B::slice_mut(B::reborrow(&mut hv), self.in_w.clone());
            be.gemm(
                true,
                false,
                3 * d,
                d,
                bs,
                r.alpha,
                rdrows3,
                B::slice(pass.x, 0..m.n),
                T::one(),
                B::reborrow(&mut hw),
            );
            if let (Some(rx), true) = (r.rx, second_order) {
                be.gemm(
                    true,
                    false,
                    3 * d,
                    d,
                    bs,
                    r.alpha,
                    B::freeze(&g.drows3),
                    B::slice(rx, 0..m.n),
                    T::one(),
                    hw,
                );
            }
        }
        if let Some(b) = &self.in_b {
            be.add_column_sums(r.alpha, rdrows3, B::slice_mut(hv, b.clone()));
        }
        if let Some(rdx) = rdx {
            let mut rdx = B::slice_mut(rdx, 0..m.n);
            be.gemm(
                false,
                false,
                bs,
                d,
                3 * d,
                T::one(),
                rdrows3,
                B::slice(pass.params, self.in_w.clone()),
                T::zero(),
                B::reborrow(&mut rdx),
            );
            if second_order {
                be.gemm(
                    false,
                    false,
                    bs,
                    d,
                    3 * d,
                    T::one(),
                    B::freeze(&g.drows3),
                    B::slice(r.v, self.in_w.clone()),
                    T::one(),
                    rdx,
                );
            }
        }
    }

    fn per_sample(&self) -> PerSample {
        PerSample::Materialise
    }

    fn per_sample_gradients<B: Backend, T: Real>(
        &self,
        params: B::View<'_, T>,
        x: B::View<'_, T>,
        dy: B::View<'_, T>,
        batch: usize,
        scale: T,
        mut rows: B::ViewMut<'_, T>,
        stride: usize,
        sc: &mut Scratch<T, B>,
    ) {
        // One sample at a time: its backward pass writes its gradient into its row.
        let m = self.dims(1);
        let span = self.span();
        let f = self.in_features();
        let Scratch { backend: be, cols, .. } = sc;
        be.ensure_len(cols, 2 * block_len(m));
        for n in 0..batch {
            let (a, b) = B::split_at_mut(B::view_mut(cols), block_len(m));
            let (mut st, mut g) = (state::<B, T>(a, m), grads::<B, T>(b, m));
            let xn = B::slice(x, n * f..(n + 1) * f);
            self.forward_state(be, params, xn, m, &mut st);
            let mut row = B::slice_mut(
                B::reborrow(&mut rows),
                n * stride..n * stride + span.len(),
            );
            self.backward_core(
                be,
                params,
                xn,
                B::slice(dy, n * f..(n + 1) * f),
                m,
                &st,
                &mut g,
                Some((B::reborrow(&mut row), span.start)),
                None,
            );
            be.scale(scale, row);
        }
    }
}
