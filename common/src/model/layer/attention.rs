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
//! The projections are gemms over the batch's rows; the per-head part (S, P, O and their adjoints
//! and R{·}) is the backend's fused attention operation ([`Backend::attention_forward`] and its
//! siblings), which reads Q, K, V from the rows of x·W_inᵀ + b_in and writes O by rows, so no head
//! is split out or merged back. The forward pass keeps its state ([`LayerOps::state_len`]): the rows
//! of [Q K V] `[B, seq, 3·dim]`, P `[B, heads, seq, seq]` and O `[B, seq, dim]`, which the backward
//! and R-passes read instead of recomputing; the R-forward leaves R{[Q K V]}, R{P} and R{O} in its
//! saved buffer for the R-backward. Per-sample gradients (which get no state) recompute one sample's
//! state at a time and run its backward pass. Not piecewise linear (the softmax and the products
//! Q·Kᵀ, P·V).

use super::{LayerOps, Pass, PerSample, RPass, Scope, Scratch};
use crate::device::{AttentionHeads, Backend};
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

/// The sizes of one pass: batch, sequence, model width, and the element counts N = B·seq·dim (one
/// of Q, K, V, O) and A = B·heads·seq² (the probabilities).
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    s: usize,
    d: usize,
    n: usize,
    a: usize,
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

/// The forward state of a batch, as views: the rows of [Q K V] `[B, seq, 3·dim]`, P
/// `[B, heads, seq, seq]`, O `[B, seq, dim]`.
#[derive(Clone, Copy)]
struct State<'a, T: Real, B: Backend> {
    qkv: B::View<'a, T>,
    p: B::View<'a, T>,
    o: B::View<'a, T>,
}

/// `st` (at least [`state_len`] long) cut into a [`State`].
fn state<B: Backend, T: Real>(st: B::View<'_, T>, m: Dims) -> State<'_, T, B> {
    let (n, a) = (m.n, m.a);
    State {
        qkv: B::slice(st, 0..3 * n),
        p: B::slice(st, 3 * n..3 * n + a),
        o: B::slice(st, 3 * n + a..4 * n + a),
    }
}

/// Elements of a [`State`]: 4N + A.
fn state_len(m: Dims) -> usize {
    4 * m.n + m.a
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
        let (s, d) = (self.seq, self.dim);
        Dims {
            b: batch,
            s,
            d,
            n: batch * s * d,
            a: batch * self.heads * s * s,
        }
    }

    fn heads(&self, m: Dims) -> AttentionHeads {
        AttentionHeads {
            batch: m.b,
            seq: m.s,
            heads: self.heads,
            head_dim: self.dim / self.heads,
            causal: self.causal,
        }
    }

    /// The span of the flat vector its tensors occupy.
    fn span(&self) -> Range<usize> {
        let end = self.out_b.as_ref().map_or(self.out_w.end, |r| r.end);
        self.in_w.start..end
    }

    /// Computes the forward state of `x` (`m.b` samples) into `st` ([`state_len`] long): the rows
    /// of [Q K V], then P and O by the backend's attention.
    fn forward_state<B: Backend, T: Real>(
        &self,
        be: &B,
        params: B::View<'_, T>,
        x: B::View<'_, T>,
        m: Dims,
        st: B::ViewMut<'_, T>,
    ) {
        let [mut qkv, p, o] = carve::<B, T, 3>(st, [3 * m.n, m.a, m.n]);
        be.gemm(
            false,
            true,
            m.b * m.s,
            3 * m.d,
            m.d,
            T::one(),
            B::slice(x, 0..m.n),
            B::slice(params, self.in_w.clone()),
            T::zero(),
            B::reborrow(&mut qkv),
        );
        if let Some(b) = &self.in_b {
            be.add_bias_rows(B::reborrow(&mut qkv), B::slice(params, b.clone()));
        }
        be.attention_forward(&self.heads(m), B::freeze(&qkv), p, o);
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
    /// per-sample row of the layer's span), ∂x into `dx`; `work` (4N) holds ∂O and ∂[Q K V].
    #[allow(clippy::too_many_arguments)]
    fn backward_core<B: Backend, T: Real>(
        &self,
        be: &B,
        params: B::View<'_, T>,
        x: B::View<'_, T>,
        dy: B::View<'_, T>,
        m: Dims,
        st: State<'_, T, B>,
        work: B::ViewMut<'_, T>,
        grad: Option<(B::ViewMut<'_, T>, usize)>,
        dx: Option<B::ViewMut<'_, T>>,
    ) {
        let (bs, d) = (m.b * m.s, m.d);
        let dy = B::slice(dy, 0..m.n);
        let x = B::slice(x, 0..m.n);
        let [mut dout, mut dqkv] = carve::<B, T, 2>(work, [m.n, 3 * m.n]);
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
                st.o,
                T::zero(),
                B::slice_mut(B::reborrow(gv), shift(&self.out_w, *off)),
            );
            if let Some(b) = &self.out_b {
                let mut gb = B::slice_mut(B::reborrow(gv), shift(b, *off));
                be.fill(B::reborrow(&mut gb), T::zero());
                be.add_column_sums(T::one(), dy, gb);
            }
        }
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
            B::reborrow(&mut dout),
        );
        be.attention_backward(
            &self.heads(m),
            st.qkv,
            st.p,
            B::freeze(&dout),
            B::reborrow(&mut dqkv),
        );
        let dqkv = B::freeze(&dqkv);
        if let Some((gv, off)) = grad.as_mut() {
            be.gemm(
                true,
                false,
                3 * d,
                d,
                bs,
                T::one(),
                dqkv,
                x,
                T::zero(),
                B::slice_mut(B::reborrow(gv), shift(&self.in_w, *off)),
            );
            if let Some(b) = &self.in_b {
                let mut gb = B::slice_mut(B::reborrow(gv), shift(b, *off));
                be.fill(B::reborrow(&mut gb), T::zero());
                be.add_column_sums(T::one(), dqkv, gb);
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
                dqkv,
                B::slice(params, self.in_w.clone()),
                T::zero(),
                B::slice_mut(dx, 0..m.n),
            );
        }
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
        // The R-backward's ∂O, R{∂O}, ∂[Q K V] and R{∂[Q K V]}; per-sample gradients need one
        // sample's state and its backward's ∂O and ∂[Q K V].
        let one = self.dims(1);
        (
            (8 * self.dims(batch).n).max(state_len(one) + 4 * one.n),
            0,
        )
    }
    fn index_len(&self, _batch: usize) -> usize {
        0
    }
    fn state_len(&self, batch: usize) -> usize {
        state_len(self.dims(batch))
    }
    fn saved_len(&self, batch: usize) -> usize {
        // R{[Q K V]}, R{P}, R{O}.
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
        kept: B::ViewMut<'_, T>,
        sc: &mut Scratch<T, B>,
    ) {
        let m = self.dims(batch);
        let be = &sc.backend;
        let mut st = B::slice_mut(kept, 0..state_len(m));
        self.forward_state(be, params, x, m, B::reborrow(&mut st));
        self.project_out(
            be,
            state::<B, T>(B::freeze(&st), m).o,
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
        backend.ensure_len(cols, 4 * m.n);
        self.backward_core(
            backend,
            pass.params,
            pass.x,
            dy,
            m,
            state::<B, T>(pass.state, m),
            B::view_mut(cols),
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
        let (bs, d) = (m.b * m.s, m.d);
        let be = &sc.backend;
        let st = state::<B, T>(pass.state, m);
        be.ensure_len(&mut saved[0], self.saved_len(pass.batch));
        let [mut rqkv, rp, mut ro] =
            carve::<B, T, 3>(B::view_mut(&mut saved[0]), [3 * m.n, m.a, m.n]);
        be.gemm(
            false,
            true,
            bs,
            3 * d,
            d,
            T::one(),
            B::slice(pass.x, 0..m.n),
            B::slice(v, self.in_w.clone()),
            T::zero(),
            B::reborrow(&mut rqkv),
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
                B::reborrow(&mut rqkv),
            );
        }
        if let Some(b) = &self.in_b {
            be.add_bias_rows(B::reborrow(&mut rqkv), B::slice(v, b.clone()));
        }
        be.attention_r_forward(
            &self.heads(m),
            st.qkv,
            st.p,
            B::freeze(&rqkv),
            rp,
            B::reborrow(&mut ro),
        );
        let mut ry = B::slice_mut(ry, 0..m.n);
        self.project_out(
            be,
            B::freeze(&ro),
            B::slice(pass.params, self.out_w.clone()),
            None,
            T::zero(),
            m,
            B::reborrow(&mut ry),
        );
        self.project_out(
            be,
            st.o,
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
        let (bs, d) = (m.b * m.s, m.d);
        let second_order = !r.gauss_newton;
        let Scratch {
            backend: be, cols, ..
        } = sc;
        be.ensure_len(cols, 8 * m.n);
        let [mut dout, mut rdout, mut dqkv, mut rdqkv] =
            carve::<B, T, 4>(B::view_mut(cols), [m.n, m.n, 3 * m.n, 3 * m.n]);
        let st = state::<B, T>(pass.state, m);
        let (dy, rdy) = (B::slice(r.dy, 0..m.n), B::slice(r.rdy, 0..m.n));
        let sv = B::view(&saved[0]);
        let (rqkv, rp, ro) = (
            B::slice(sv, 0..3 * m.n),
            B::slice(sv, 3 * m.n..3 * m.n + m.a),
            B::slice(sv, 3 * m.n + m.a..4 * m.n + m.a),
        );
        let w_out = B::slice(pass.params, self.out_w.clone());
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
                st.o,
                T::one(),
                B::reborrow(&mut hw),
            );
            if second_order {
                be.gemm(true, false, d, d, bs, r.alpha, dy, ro, T::one(), hw);
            }
        }
        if let Some(b) = &self.out_b {
            be.add_column_sums(r.alpha, rdy, B::slice_mut(B::reborrow(&mut hv), b.clone()));
        }
        // ∂O = δ·W_o, R{∂O} = R{δ}·W_o + [δ·V_o].
        be.gemm(
            false,
            false,
            bs,
            d,
            d,
            T::one(),
            rdy,
            w_out,
            T::zero(),
            B::reborrow(&mut rdout),
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
                w_out,
                T::zero(),
                B::reborrow(&mut dout),
            );
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
                B::reborrow(&mut rdout),
            );
        }
        // R{∂[Q K V]}, and ∂[Q K V] for the second-order terms.
        be.attention_r_backward(
            &self.heads(m),
            st.qkv,
            st.p,
            rqkv,
            rp,
            B::freeze(&rdout),
            second_order.then(|| (B::freeze(&dout), B::reborrow(&mut dqkv))),
            B::reborrow(&mut rdqkv),
        );
        let (dqkv, rdqkv) = (B::freeze(&dqkv), B::freeze(&rdqkv));
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
                rdqkv,
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
                    dqkv,
                    B::slice(rx, 0..m.n),
                    T::one(),
                    hw,
                );
            }
        }
        if let Some(b) = &self.in_b {
            be.add_column_sums(r.alpha, rdqkv, B::slice_mut(hv, b.clone()));
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
                rdqkv,
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
                    dqkv,
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
        // One sample at a time: its forward state, then its backward pass writes its gradient into
        // its row.
        let m = self.dims(1);
        let span = self.span();
        let f = self.in_features();
        let Scratch {
            backend: be, cols, ..
        } = sc;
        be.ensure_len(cols, state_len(m) + 4 * m.n);
        for n in 0..batch {
            let (mut st, work) = B::split_at_mut(B::view_mut(cols), state_len(m));
            let xn = B::slice(x, n * f..(n + 1) * f);
            self.forward_state(be, params, xn, m, B::reborrow(&mut st));
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
                state::<B, T>(B::freeze(&st), m),
                work,
                Some((B::reborrow(&mut row), span.start)),
                None,
            );
            be.scale(scale, row);
        }
    }
}
