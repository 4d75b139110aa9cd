//! [`CpuBackend`]: the [`Backend`] on the host. Buffers are `Vec`s and views are slices; the matrix
//! products are BLAS through [`super::cpu::gemm`], the convolution lowering is
//! [`super::cpu::im2col`] / [`super::cpu::col2im`], and the rest are the loops of `cpu_kernels.rs`.

use super::backend::{AttentionHeads, Backend, Element, SgdStep};
use super::{
    cpu, cpu_attention as attn, cpu_conv, cpu_kernels as k, cpu_sequence as seq, ConvGeometry,
};
use crate::model::{AvgPool2d, Elementwise, LayerNorm, MaxPool2d, Pass, RPass};
use crate::optim::AdamWConfig;
use crate::rng::NoiseSource;
use crate::sample::sgld::{StepCoefficients, UpdateSums};
use crate::Real;
use std::ops::Range;

/// The host: BLAS for the products, plain loops for the rest. A unit value; every instance is the
/// same.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuBackend;

impl Backend for CpuBackend {
    type Buffer<E: Element> = Vec<E>;
    type View<'a, E: Element>
        = &'a [E]
    where
        E: 'a;
    type ViewMut<'a, E: Element>
        = &'a mut [E]
    where
        E: 'a;

    fn name(&self) -> String {
        "cpu".to_string()
    }

    #[inline]
    fn zeros<E: Element>(&self, len: usize) -> Vec<E> {
        vec![E::default(); len]
    }
    #[inline]
    fn upload<E: Element>(&self, host: &[E]) -> Vec<E> {
        host.to_vec()
    }
    #[inline]
    fn download<E: Element>(&self, src: &[E], host: &mut [E]) {
        host.copy_from_slice(src);
    }
    #[inline]
    fn write<E: Element>(&self, host: &[E], dst: &mut [E]) {
        dst.copy_from_slice(host);
    }
    #[inline]
    fn host_mut<'a, E: Element>(dst: Self::ViewMut<'a, E>) -> Option<&'a mut [E]> {
        Some(dst)
    }
    #[inline]
    fn host<'a, E: Element>(src: Self::View<'a, E>) -> Option<&'a [E]> {
        Some(src)
    }
    #[inline]
    fn ensure_len<E: Element>(&self, buf: &mut Vec<E>, len: usize) {
        if buf.len() < len {
            buf.resize(len, E::default());
        }
    }
    #[inline(always)]
    fn buffer_len<E: Element>(buf: &Vec<E>) -> usize {
        buf.len()
    }
    #[inline(always)]
    fn len<E: Element>(v: &[E]) -> usize {
        v.len()
    }
    #[inline(always)]
    fn view<E: Element>(buf: &Vec<E>) -> &[E] {
        buf
    }
    #[inline(always)]
    fn view_mut<E: Element>(buf: &mut Vec<E>) -> &mut [E] {
        buf
    }
    #[inline(always)]
    fn slice<'a, E: Element>(v: Self::View<'a, E>, r: Range<usize>) -> Self::View<'a, E> {
        &v[r]
    }
    #[inline(always)]
    fn slice_mut<'a, E: Element>(v: Self::ViewMut<'a, E>, r: Range<usize>) -> Self::ViewMut<'a, E> {
        &mut v[r]
    }
    #[inline(always)]
    fn shorten<'b, 'a: 'b, E: Element>(v: Self::View<'a, E>) -> Self::View<'b, E> {
        v
    }
    #[inline(always)]
    fn reborrow<'b, E: Element>(v: &'b mut &mut [E]) -> &'b mut [E] {
        v
    }
    #[inline(always)]
    fn freeze<'b, E: Element>(v: &'b &mut [E]) -> &'b [E] {
        v
    }
    #[inline(always)]
    fn split_at_mut<'a, E: Element>(
        v: Self::ViewMut<'a, E>,
        mid: usize,
    ) -> (Self::ViewMut<'a, E>, Self::ViewMut<'a, E>) {
        v.split_at_mut(mid)
    }
    #[inline]
    fn copy<E: Element>(&self, src: &[E], dst: &mut [E]) {
        dst.copy_from_slice(src);
    }
    #[inline]
    fn fill<E: Element>(&self, dst: &mut [E], value: E) {
        dst.iter_mut().for_each(|v| *v = value);
    }

    #[inline]
    fn gemm<T: Real>(
        &self,
        trans_a: bool,
        trans_b: bool,
        m: usize,
        n: usize,
        kk: usize,
        alpha: T,
        a: &[T],
        b: &[T],
        beta: T,
        c: &mut [T],
    ) {
        cpu::gemm(trans_a, trans_b, m, n, kk, alpha, a, b, beta, c);
    }

    fn gemm_strided_batched<T: Real>(
        &self,
        trans_a: bool,
        trans_b: bool,
        m: usize,
        n: usize,
        kk: usize,
        alpha: T,
        a: &[T],
        b: &[T],
        beta: T,
        c: &mut [T],
        count: usize,
        (sa, sb, sc): (usize, usize, usize),
    ) {
        for i in 0..count {
            cpu::gemm(
                trans_a,
                trans_b,
                m,
                n,
                kk,
                alpha,
                &a[i * sa..],
                &b[i * sb..],
                beta,
                &mut c[i * sc..],
            );
        }
    }

    #[inline]
    fn im2col<T: Real>(&self, x: &[T], batch: usize, g: &ConvGeometry, cols: &mut [T]) {
        cpu::im2col(x, batch, g, cols);
    }
    #[inline]
    fn col2im<T: Real>(&self, dcols: &[T], batch: usize, g: &ConvGeometry, dx: &mut [T]) {
        cpu::col2im(dcols, batch, g, dx);
    }
    #[inline]
    fn to_channel_major<T: Real>(
        &self,
        src: &[T],
        batch: usize,
        channels: usize,
        plane: usize,
        dst: &mut [T],
    ) {
        k::to_channel_major(src, batch, channels, plane, dst);
    }
    #[inline]
    fn channel_major_to_nchw_add_bias<T: Real>(
        &self,
        src: &[T],
        bias: &[T],
        batch: usize,
        plane: usize,
        dst: &mut [T],
    ) {
        k::channel_major_to_nchw_add_bias(src, bias, batch, plane, dst);
    }

    #[inline]
    fn add_bias_rows<T: Real>(&self, y: &mut [T], bias: &[T]) {
        k::add_bias_rows(y, bias);
    }
    #[inline]
    fn add_bias_planes<T: Real>(&self, y: &mut [T], bias: &[T]) {
        k::add_bias_planes(y, bias);
    }
    #[inline]
    fn add_column_sums<T: Real>(&self, alpha: T, src: &[T], dst: &mut [T]) {
        k::add_column_sums(alpha, src, dst);
    }
    #[inline]
    fn row_sums<T: Real>(&self, alpha: T, src: &[T], accumulate: bool, dst: &mut [T]) {
        k::row_sums(alpha, src, accumulate, dst);
    }

    #[inline]
    fn activation_forward<T: Real, A: Elementwise>(&self, act: &A, x: &[T], y: &mut [T]) {
        k::activation_forward(act, x, y);
    }
    #[inline]
    fn activation_forward_keep<T: Real, A: Elementwise>(
        &self,
        act: &A,
        x: &[T],
        y: &mut [T],
        d: &mut [T],
    ) {
        k::activation_forward_keep(act, x, y, d);
    }
    #[inline]
    fn multiply<T: Real>(&self, a: &[T], b: &[T], out: &mut [T]) {
        k::multiply(a, b, out);
    }
    #[inline]
    fn activation_add_second_order<T: Real, A: Elementwise>(
        &self,
        act: &A,
        x: &[T],
        y: &[T],
        rx: &[T],
        dy: &[T],
        rdx: &mut [T],
    ) {
        k::activation_add_second_order(act, x, y, rx, dy, rdx);
    }
    #[inline]
    fn activation_second_derivative<T: Real, A: Elementwise>(
        &self,
        act: &A,
        x: &[T],
        y: &[T],
        out: &mut [T],
    ) {
        k::activation_second_derivative(act, x, y, out);
    }
    #[inline]
    fn add_triple_product<T: Real>(&self, a: &[T], b: &[T], c: &[T], out: &mut [T]) {
        k::add_triple_product(a, b, c, out);
    }
    #[inline]
    fn activation_backward<T: Real, A: Elementwise>(
        &self,
        act: &A,
        x: &[T],
        y: &[T],
        dy: &[T],
        dx: &mut [T],
    ) {
        k::activation_backward(act, x, y, dy, dx);
    }
    #[inline]
    fn activation_r_forward<T: Real, A: Elementwise>(
        &self,
        act: &A,
        x: &[T],
        y: &[T],
        rx: Option<&[T]>,
        ry: &mut [T],
    ) {
        k::activation_r_forward(act, x, y, rx, ry);
    }
    #[inline]
    fn activation_r_backward<T: Real, A: Elementwise>(
        &self,
        act: &A,
        x: &[T],
        y: &[T],
        rdy: &[T],
        second: Option<(&[T], &[T])>,
        rdx: &mut [T],
    ) {
        k::activation_r_backward(act, x, y, rdy, second, rdx);
    }

    #[inline]
    fn max_pool2d<T: Real>(
        &self,
        pool: &MaxPool2d,
        x: &[T],
        batch: usize,
        y: &mut [T],
        winners: &mut [u32],
    ) {
        k::max_pool2d(pool, x, batch, y, winners);
    }
    #[inline]
    fn max_pool2d_adjoint<T: Real>(
        &self,
        pool: &MaxPool2d,
        d: &[T],
        winners: &[u32],
        gate: Option<&[T]>,
        batch: usize,
        dx: &mut [T],
    ) {
        k::max_pool2d_adjoint(pool, d, winners, gate, batch, dx);
    }
    #[inline]
    fn gather<T: Real>(
        &self,
        x: &[T],
        winners: &[u32],
        inputs: usize,
        outputs: usize,
        y: &mut [T],
    ) {
        k::gather(x, winners, inputs, outputs, y);
    }

    #[inline]
    fn softmax_cross_entropy<T: Real>(
        &self,
        logits: &[T],
        labels: &[usize],
        classes: usize,
        scale: T,
        dlogits: Option<&mut [T]>,
    ) -> (f64, usize) {
        k::softmax_cross_entropy(logits, labels, classes, scale, dlogits)
    }
    #[inline]
    fn softmax_cross_entropy_r<T: Real>(
        &self,
        logits: &[T],
        rz: &[T],
        classes: usize,
        scale: T,
        rg: &mut [T],
    ) {
        k::softmax_cross_entropy_r(logits, rz, classes, scale, rg);
    }
    // The direct convolution: the kernels of `cpu_conv`.
    #[inline]
    fn conv2d_forward<T: Real>(
        &self,
        g: &ConvGeometry,
        out_channels: usize,
        w: &[T],
        bias: Option<&[T]>,
        x: &[T],
        batch: usize,
        accumulate: bool,
        y: &mut [T],
        work: &mut Vec<T>,
    ) {
        cpu_conv::conv2d_forward(g, out_channels, w, bias, x, batch, accumulate, y, work);
    }
    #[inline]
    fn conv2d_input_grad<T: Real>(
        &self,
        g: &ConvGeometry,
        out_channels: usize,
        w: &[T],
        dy: &[T],
        batch: usize,
        accumulate: bool,
        dx: &mut [T],
        work: &mut Vec<T>,
    ) {
        cpu_conv::conv2d_input_grad(g, out_channels, w, dy, batch, accumulate, dx, work);
    }
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn conv2d_input_grad_gated<T: Real>(
        &self,
        g: &ConvGeometry,
        out_channels: usize,
        w: &[T],
        dy: &[T],
        batch: usize,
        gate: &[T],
        dx: &mut [T],
        work: &mut Vec<T>,
    ) {
        cpu_conv::conv2d_input_grad_gated(g, out_channels, w, dy, batch, gate, dx, work);
    }
    #[inline]
    fn conv2d_weight_grad<T: Real>(
        &self,
        g: &ConvGeometry,
        out_channels: usize,
        x: &[T],
        dy: &[T],
        batch: usize,
        alpha: T,
        accumulate: bool,
        dw: &mut [T],
        work: &mut Vec<T>,
    ) {
        cpu_conv::conv2d_weight_grad(g, out_channels, x, dy, batch, alpha, accumulate, dw, work);
    }
    #[inline]
    fn conv2d_bias_grad<T: Real>(
        &self,
        dy: &[T],
        batch: usize,
        out_channels: usize,
        plane: usize,
        alpha: T,
        accumulate: bool,
        db: &mut [T],
    ) {
        cpu_conv::conv2d_bias_grad(dy, batch, out_channels, plane, alpha, accumulate, db);
    }
    // Average pooling's and LayerNorm's CPU kernels are host functions of their layer files (the
    // loops from before the backend existed, unchanged).
    #[inline]
    fn avg_pool2d<T: Real>(&self, pool: &AvgPool2d, x: &[T], planes: usize, y: &mut [T]) {
        pool.cpu_pool(x, planes, y);
    }
    #[inline]
    fn avg_pool2d_adjoint<T: Real>(&self, pool: &AvgPool2d, d: &[T], planes: usize, dx: &mut [T]) {
        pool.cpu_spread(d, planes, dx);
    }
    #[inline]
    fn layer_norm_forward<T: Real>(
        &self,
        ln: &LayerNorm,
        params: &[T],
        x: &[T],
        batch: usize,
        y: &mut [T],
    ) {
        k::vectorised(
            #[inline(always)]
            || ln.cpu_forward(params, x, batch, y),
        );
    }
    #[inline]
    fn layer_norm_backward<T: Real>(
        &self,
        ln: &LayerNorm,
        pass: &Pass<'_, T, Self>,
        dy: &[T],
        grad: Option<&mut [T]>,
        dx: Option<&mut [T]>,
        work: &mut [T],
    ) {
        k::vectorised(
            #[inline(always)]
            || ln.cpu_backward(pass, dy, grad, dx, work),
        );
    }
    #[inline]
    fn layer_norm_r_forward<T: Real>(
        &self,
        ln: &LayerNorm,
        pass: &Pass<'_, T, Self>,
        v: &[T],
        rx: Option<&[T]>,
        ry: &mut [T],
        work: &mut [T],
    ) {
        k::vectorised(
            #[inline(always)]
            || ln.cpu_r_forward(pass, v, rx, ry, work),
        );
    }
    #[inline]
    fn layer_norm_r_backward<T: Real>(
        &self,
        ln: &LayerNorm,
        pass: &Pass<'_, T, Self>,
        r: &RPass<'_, T, Self>,
        hv: &mut [T],
        rdx: Option<&mut [T]>,
        work: &mut [T],
    ) {
        k::vectorised(
            #[inline(always)]
            || ln.cpu_r_backward(pass, r, hv, rdx, work),
        );
    }
    #[inline]
    fn layer_norm_per_sample_gradients<T: Real>(
        &self,
        ln: &LayerNorm,
        x: &[T],
        dy: &[T],
        batch: usize,
        scale: T,
        rows: &mut [T],
        stride: usize,
        work: &mut [T],
    ) {
        ln.cpu_per_sample_gradients(x, dy, batch, scale, rows, stride, work);
    }
    #[inline]
    fn permute<T: Real>(&self, src: &[T], dims: &[usize], axes: &[usize], dst: &mut [T]) {
        seq::permute(src, dims, axes, dst);
    }
    #[inline]
    fn softmax_rows<T: Real>(&self, scores: &[T], width: usize, causal: bool, probs: &mut [T]) {
        seq::softmax_rows(scores, width, causal, probs);
    }
    #[inline]
    fn softmax_rows_jvp<T: Real>(
        &self,
        p: &[T],
        u: &[T],
        width: usize,
        second: Option<(&[T], &[T])>,
        out: &mut [T],
    ) {
        seq::softmax_rows_jvp(p, u, width, second, out);
    }
    #[inline]
    fn attention_forward<T: Real>(
        &self,
        g: &AttentionHeads,
        qkv: &[T],
        probs: &mut [T],
        o: &mut [T],
    ) {
        k::vectorised(|| attn::forward(g, qkv, probs, o));
    }
    #[inline]
    fn attention_backward<T: Real>(
        &self,
        g: &AttentionHeads,
        qkv: &[T],
        probs: &[T],
        dout: &[T],
        dqkv: &mut [T],
    ) {
        k::vectorised(|| attn::backward(g, qkv, probs, dout, dqkv));
    }
    #[inline]
    fn attention_r_forward<T: Real>(
        &self,
        g: &AttentionHeads,
        qkv: &[T],
        probs: &[T],
        rqkv: &[T],
        rprobs: &mut [T],
        ro: &mut [T],
    ) {
        k::vectorised(|| attn::r_forward(g, qkv, probs, rqkv, rprobs, ro));
    }
    #[inline]
    fn attention_r_backward<T: Real>(
        &self,
        g: &AttentionHeads,
        qkv: &[T],
        probs: &[T],
        rqkv: &[T],
        rprobs: &[T],
        rdout: &[T],
        second: Option<(&[T], &mut [T])>,
        rdqkv: &mut [T],
    ) {
        let second = second.map(|(dout, dqkv)| attn::SecondOrder { dout, dqkv });
        k::vectorised(|| attn::r_backward(g, qkv, probs, rqkv, rprobs, rdout, second, rdqkv));
    }
    #[inline]
    fn embedding_gather<T: Real>(&self, table: &[T], ids: &[T], dim: usize, y: &mut [T]) {
        seq::embedding_gather(table, ids, dim, y);
    }
    #[inline]
    fn embedding_scatter_add<T: Real>(
        &self,
        alpha: T,
        d: &[T],
        ids: &[T],
        dim: usize,
        table: &mut [T],
    ) {
        seq::embedding_scatter_add(alpha, d, ids, dim, table);
    }
    // The mean squared error's CPU kernels are the host functions of `model::loss` (host code
    // called through the backend, unchanged from before the backend existed).
    #[inline]
    fn mean_squared_error<T: Real>(
        &self,
        outputs: &[T],
        targets: &[T],
        k: usize,
        scale: T,
        doutputs: Option<&mut [T]>,
    ) -> f64 {
        crate::model::mean_squared_error(outputs, targets, k, scale, doutputs)
    }
    #[inline]
    fn mse_r_gradient<T: Real>(&self, rz: &[T], k: usize, scale: T, rg: &mut [T]) {
        crate::model::mse_r_gradient(rz, k, scale, rg);
    }

    #[inline]
    fn axpy<T: Real>(&self, alpha: T, x: &[T], y: &mut [T]) {
        for (o, &v) in y.iter_mut().zip(x) {
            *o += alpha * v;
        }
    }
    #[inline]
    fn scale<T: Real>(&self, alpha: T, x: &mut [T]) {
        x.iter_mut().for_each(|v| *v = alpha * *v);
    }
    #[inline]
    fn scaled_copy<T: Real>(&self, alpha: T, x: &[T], y: &mut [T]) {
        assert_eq!(x.len(), y.len(), "scaled_copy: lengths");
        for (o, &v) in y.iter_mut().zip(x) {
            *o = alpha * v;
        }
    }
    #[inline]
    fn divide<T: Real>(&self, d: T, x: &mut [T]) {
        x.iter_mut().for_each(|v| *v = *v / d);
    }
    #[inline]
    fn convert<S: Real, T: Real>(&self, src: &[S], dst: &mut [T]) {
        assert_eq!(src.len(), dst.len(), "convert: lengths");
        for (o, &v) in dst.iter_mut().zip(src) {
            *o = T::of_f64(v.as_f64());
        }
    }
    #[inline]
    fn dot<T: Real>(&self, x: &[T], y: &[T]) -> f64 {
        x.iter()
            .zip(y)
            .map(|(&a, &b)| a.as_f64() * b.as_f64())
            .sum()
    }
    #[inline]
    fn sum_squares<T: Real>(&self, x: &[T]) -> f64 {
        k::sum_squares(x)
    }
    #[inline]
    fn convert_dot_norms<S: Real, T: Real>(
        &self,
        src: &[S],
        dst: &mut [T],
        totals: &mut [f64; 2],
    ) -> (f64, f64, f64) {
        assert_eq!(src.len(), dst.len(), "convert_dot_norms: lengths");
        // Five serial f64 chains in one loop: each add waits for the previous one of its chain, so
        // the loop runs at the add latency whether it carries three chains or five.
        let (mut sd, mut ss, mut dd) = (0.0, 0.0, 0.0);
        let [mut old_total, mut new_total] = *totals;
        for (s, d) in src.iter().zip(dst.iter_mut()) {
            let (a, b) = (s.as_f64(), d.as_f64());
            let written = T::of_f64(a);
            let c = written.as_f64();
            sd += a * b;
            ss += a * a;
            dd += b * b;
            old_total += b * b;
            new_total += c * c;
            *d = written;
        }
        *totals = [old_total, new_total];
        (sd, ss, dd)
    }
    #[inline]
    fn sum<T: Real>(&self, x: &[T]) -> f64 {
        x.iter().map(|v| v.as_f64()).sum()
    }
    #[inline]
    fn outer<T: Real>(&self, alpha: T, x: &[T], y: &[T], out: &mut [T]) {
        for (row, &xi) in out.chunks_exact_mut(y.len()).zip(x) {
            let f = alpha * xi;
            for (o, &yj) in row.iter_mut().zip(y) {
                *o = f * yj;
            }
        }
    }
    #[inline]
    fn add_gram_hadamard<T: Real>(&self, alpha: T, c: T, a: &[T], d: &[T], y: &mut [T]) {
        for ((k, &aa), &dd) in y.iter_mut().zip(a).zip(d) {
            *k += alpha * (aa + c) * dd;
        }
    }

    #[inline]
    fn sgd_step(&self, params: &mut [f32], d: &[f32], buf: Option<&mut [f32]>, c: &SgdStep) {
        k::sgd_step(params, d, buf, c);
    }
    #[inline]
    fn sgd_first_momentum_step(&self, params: &mut [f32], d: &[f32], buf: &[f32], c: &SgdStep) {
        k::sgd_first_momentum_step(params, d, buf, c);
    }
    #[inline]
    fn sgld_update(
        &self,
        w: &mut [f32],
        step: &mut [f32],
        w_star: &[f32],
        grad: &[f32],
        noise: &mut NoiseSource,
        c: &StepCoefficients,
        bound: Option<f32>,
    ) -> UpdateSums {
        k::sgld_update(w, step, w_star, grad, noise, c, bound)
    }
    #[inline]
    fn fill_normal(&self, noise: &mut NoiseSource, out: &mut [f32]) {
        noise.fill(out);
    }
    #[inline]
    fn add_scaled_noise(&self, s: f64, z: &[f32], g: &mut [f32]) -> f64 {
        k::add_scaled_noise(s, z, g)
    }
    #[inline]
    fn adamw_step<T: Real>(
        &self,
        cfg: &AdamWConfig,
        step: u64,
        params: &mut [T],
        grad: &[T],
        m: &mut [T],
        v: &mut [T],
    ) {
        k::adamw_step(cfg, step, params, grad, m, v);
    }
}
