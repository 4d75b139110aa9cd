//! The backend trait: the operations the models, the curvature code, the optimisers and the samplers
//! are written over, and the memory they run on.
//!
//! # Design
//!
//! A backend owns its memory. Device memory cannot be a `&[T]` (dereferencing a CUDA pointer on the
//! host is undefined), so the trait has three generic associated types (the shape of burn's
//! `Backend::FloatTensorPrimitive`, candle's `BackendStorage` and cudarc's
//! `CudaSlice` / `CudaView<'a, T>` / `CudaViewMut<'a, T>`):
//!
//! - [`Backend::Buffer`]: owned memory of `len` elements (`Vec<T>` on the CPU, a device allocation
//!   on a GPU);
//! - [`Backend::View`]: a borrowed, read-only, contiguous range of a buffer (`&'a [T]` on the CPU),
//!   `Copy`, so it can be passed to several operations;
//! - [`Backend::ViewMut`]: a borrowed, writable, contiguous range (`&'a mut [T]` on the CPU).
//!
//! Views carry their lifetime, so the borrow checker guards device memory exactly as it guards
//! slices: an operation cannot read a buffer that another is writing. Ranges are taken with
//! [`Backend::slice`] / [`Backend::slice_mut`] and a mutable view is lent on with
//! [`Backend::reborrow`] (what `&mut *v` does for a slice). Code generic over `B: Backend` may only
//! use these and the operations below; it never indexes memory itself, which is what makes it run
//! unchanged on a device. Views rather than `(&Buffer, Range)` pairs because a layer receives parts of
//! larger buffers (one tensor of the flat parameter vector, one sample of a batch) and passes them on:
//! a view is that part, checked once where it is cut.
//!
//! Why the CPU types are plain slices: the CPU backend is today's code moved behind the trait, and its
//! monomorphised instances are the same loops over the same slices, with the same arithmetic in the
//! same order, so results stay identical to the bit and no hot path pays for the abstraction.
//! Host code that is CPU-only (the tools' drivers, the small dense linear algebra that stays on the
//! host: the r×r eigendecompositions of NGD, the B×B Cholesky of exact NGD's Woodbury solve) keeps
//! its slices and passes them as [`CpuBackend`](super::CpuBackend) views without a copy.
//!
//! Operations take `&self`: a device backend carries its context and stream there (the CPU backend
//! is a unit struct). What comes back to the host is returned by value (the loss sum, a dot
//! product, the SGLD step's sums); small host inputs (a batch's labels, the SGLD noise generator's
//! state) are passed as host values, which a device backend uploads into its own staging memory.
//! An operation's preconditions (lengths) are checked by slicing on the CPU: a violation is a bug
//! in the caller and panics, as a slice index does.
//!
//! Element-wise activations are passed as their [`Elementwise`] definition; the CPU evaluates its
//! scalar methods, and a device backend selects its kernel by [`Elementwise::module`].
//!
//! Where the backend lives: the layers' scratch (`Scratch<T, B>`), and with it the network's
//! `Workspace<T, B>` and the R-pass buffers, carry the backend value. The layers
//! (`LayerOps`), `Network::forward_on` / `loss_and_gradient_on` / `loss_sum_on` / `evaluate_on`,
//! `Loss::evaluate_on` / `r_gradient_on`, the R-pass, the Hessian operator
//! (`HessianOperator<T, B>`), the trace and eigenvalue estimators over it (`LinearOperator<B>`),
//! the SGLD chain driver (`run_chain`, on its `Potential::Backend`) and `NetworkPotential<B>` are
//! generic over it; the host-slice entry points (`Network::forward`, `loss_and_gradient`,
//! `HessianOperator::new`, `NetworkPotential::new`, the per-sample products) are these on
//! [`CpuBackend`](super::CpuBackend). The optimisers are generic too (`Optimizer<B>`: the
//! parameters, the gradient and the batch are `B` views, and SGD's momentum, AdamW's moments and
//! online NGD's factors live in `B` buffers; `optim::build_on`), as are the training loop
//! (`train::train_on`) and the exact Hessian trace; exact NGD's per-sample products are host
//! code, staged through host memory on a device.
//!
//! Tests: `backend_tests.rs` checks every operation against a plain host reference, written once
//! over `B: Backend` and instantiated for each backend compiled in.

use super::ConvGeometry;
use crate::model::{AvgPool2d, Elementwise, LayerNorm, MaxPool2d, Pass, RPass};
use crate::optim::AdamWConfig;
use crate::rng::NoiseSource;
use crate::sample::sgld::{StepCoefficients, UpdateSums};
use crate::Real;
use std::fmt::Debug;
use std::ops::Range;

/// What a backend buffer can hold: the two [`Real`] types and `u32` (the max-pool winners).
pub trait Element: Copy + Default + Debug + PartialEq + Send + Sync + 'static {}
impl Element for f32 {}
impl Element for f64 {}
impl Element for u32 {}

/// The momentum SGD update's scalars (PyTorch's `torch.optim.SGD`): learning rate, momentum μ,
/// 1 − dampening τ, Nesterov.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdStep {
    pub lr: f32,
    pub momentum: f32,
    pub one_minus_dampening: f32,
    pub nesterov: bool,
}

/// The shape of a multi-head attention pass (see [`Backend::attention_forward`]): `batch` samples
/// of `seq` tokens, `heads` heads of `head_dim` columns each, causal or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionHeads {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub causal: bool,
}

/// A place the numerics run, with its memory and its operations. See the module documentation.
pub trait Backend: Clone + Debug + Send + Sync + 'static {
    /// Owned memory of elements `E`.
    type Buffer<E: Element>: Clone + Debug + Send + Sync;
    /// A read-only contiguous range of a buffer.
    type View<'a, E: Element>: Copy
    where
        E: 'a;
    /// A writable contiguous range of a buffer.
    type ViewMut<'a, E: Element>
    where
        E: 'a;

    /// The device's name in messages (`cpu`, `cuda:0`).
    fn name(&self) -> String;

    // ---- memory --------------------------------------------------------------------------------

    /// A buffer of `len` zeros.
    fn zeros<E: Element>(&self, len: usize) -> Self::Buffer<E>;
    /// A buffer holding a copy of host memory.
    fn upload<E: Element>(&self, host: &[E]) -> Self::Buffer<E>;
    /// Copies a view into host memory of the same length.
    fn download<E: Element>(&self, src: Self::View<'_, E>, host: &mut [E]);
    /// Copies host memory into a view of the same length (an upload into an existing buffer: a
    /// chain's minibatch each step).
    fn write<E: Element>(&self, host: &[E], dst: Self::ViewMut<'_, E>);
    /// The view as host memory, where the backend's memory is the host's (the CPU), so that host
    /// code can fill it in place instead of through a staging copy and [`Backend::write`]; `None`
    /// for device memory.
    fn host_mut<'a, E: Element>(_dst: Self::ViewMut<'a, E>) -> Option<&'a mut [E]> {
        None
    }
    /// The read-only view as host memory where the backend's memory is the host's (the CPU), so
    /// that host code (exact NGD's per-sample products) can read it without a staging copy and
    /// [`Backend::download`]; `None` for device memory.
    fn host<'a, E: Element>(_src: Self::View<'a, E>) -> Option<&'a [E]> {
        None
    }
    /// Grows `buf` to at least `len` elements (new elements are zero; existing ones kept).
    fn ensure_len<E: Element>(&self, buf: &mut Self::Buffer<E>, len: usize);
    /// The number of elements of a buffer.
    fn buffer_len<E: Element>(buf: &Self::Buffer<E>) -> usize;
    /// The number of elements of a view.
    fn len<E: Element>(v: Self::View<'_, E>) -> usize;
    /// The whole buffer as a view.
    fn view<E: Element>(buf: &Self::Buffer<E>) -> Self::View<'_, E>;
    /// The whole buffer as a writable view.
    fn view_mut<E: Element>(buf: &mut Self::Buffer<E>) -> Self::ViewMut<'_, E>;
    /// Elements `r` of a view. **Panics** if `r` is out of range.
    fn slice<'a, E: Element>(v: Self::View<'a, E>, r: Range<usize>) -> Self::View<'a, E>;
    /// Elements `r` of a writable view. **Panics** if `r` is out of range.
    fn slice_mut<'a, E: Element>(v: Self::ViewMut<'a, E>, r: Range<usize>) -> Self::ViewMut<'a, E>;
    /// A view for a shorter lifetime (a slice's covariance, which a generic associated type does
    /// not have).
    fn shorten<'b, 'a: 'b, E: Element>(v: Self::View<'a, E>) -> Self::View<'b, E>;
    /// Lends a writable view for a shorter lifetime (`&mut *v` for a slice).
    fn reborrow<'b, E: Element>(v: &'b mut Self::ViewMut<'_, E>) -> Self::ViewMut<'b, E>;
    /// A writable view read only.
    fn freeze<'b, E: Element>(v: &'b Self::ViewMut<'_, E>) -> Self::View<'b, E>;
    /// Splits a writable view at `mid` into `[0, mid)` and `[mid, len)`.
    fn split_at_mut<'a, E: Element>(
        v: Self::ViewMut<'a, E>,
        mid: usize,
    ) -> (Self::ViewMut<'a, E>, Self::ViewMut<'a, E>);
    /// dst ← src (equal lengths).
    fn copy<E: Element>(&self, src: Self::View<'_, E>, dst: Self::ViewMut<'_, E>);
    /// dst ← value everywhere.
    fn fill<E: Element>(&self, dst: Self::ViewMut<'_, E>, value: E);

    // ---- matrix products -----------------------------------------------------------------------

    /// C ← α·op(A)·op(B) + β·C for row-major operands: op(A) is m×k (A stored k×m when `trans_a`),
    /// op(B) is k×n (B stored n×k when `trans_b`), C is m×n (BLAS `?gemm`).
    #[allow(clippy::too_many_arguments)]
    fn gemm<T: Real>(
        &self,
        trans_a: bool,
        trans_b: bool,
        m: usize,
        n: usize,
        k: usize,
        alpha: T,
        a: Self::View<'_, T>,
        b: Self::View<'_, T>,
        beta: T,
        c: Self::ViewMut<'_, T>,
    );

    /// `count` independent [`Backend::gemm`]s, product i on A + i·`strides.0`, B + i·`strides.1`,
    /// C + i·`strides.2` (cuBLAS `gemmStridedBatched`).
    #[allow(clippy::too_many_arguments)]
    fn gemm_strided_batched<T: Real>(
        &self,
        trans_a: bool,
        trans_b: bool,
        m: usize,
        n: usize,
        k: usize,
        alpha: T,
        a: Self::View<'_, T>,
        b: Self::View<'_, T>,
        beta: T,
        c: Self::ViewMut<'_, T>,
        count: usize,
        strides: (usize, usize, usize),
    );

    // ---- convolution lowering ------------------------------------------------------------------

    /// `im2col` over a batch (see [`super::cpu::im2col`]): `x` `[batch, C, H, W]` → `cols`
    /// `[C·k·k, batch·ho·wo]`, zero outside the image.
    fn im2col<T: Real>(
        &self,
        x: Self::View<'_, T>,
        batch: usize,
        g: &ConvGeometry,
        cols: Self::ViewMut<'_, T>,
    );
    /// The adjoint of [`Backend::im2col`], accumulated into `dx` (see [`super::cpu::col2im`]).
    fn col2im<T: Real>(
        &self,
        dcols: Self::View<'_, T>,
        batch: usize,
        g: &ConvGeometry,
        dx: Self::ViewMut<'_, T>,
    );
    /// `[batch, channels, plane]` → `[channels, batch·plane]` (NCHW to the convolution's gemm
    /// layout).
    fn to_channel_major<T: Real>(
        &self,
        src: Self::View<'_, T>,
        batch: usize,
        channels: usize,
        plane: usize,
        dst: Self::ViewMut<'_, T>,
    );
    /// dst `[batch, channels, plane]` ← src `[channels, batch·plane]` + bias `[channels]` (the
    /// inverse layout change with the bias added on the way).
    fn channel_major_to_nchw_add_bias<T: Real>(
        &self,
        src: Self::View<'_, T>,
        bias: Self::View<'_, T>,
        batch: usize,
        plane: usize,
        dst: Self::ViewMut<'_, T>,
    );

    // ---- direct convolution ----------------------------------------------------------------------

    /// The direct convolution (no lowering; see [`super::cpu_conv`] for the layout and the fixed
    /// summation order): y (+)= W ⋆ x (+ bias) for `batch` samples of `g`, W
    /// `[out_channels, C, k, k]`, added into `y` when `accumulate`, else written. `work` is scratch
    /// the operation grows as it needs.
    #[allow(clippy::too_many_arguments)]
    fn conv2d_forward<T: Real>(
        &self,
        g: &ConvGeometry,
        out_channels: usize,
        w: Self::View<'_, T>,
        bias: Option<Self::View<'_, T>>,
        x: Self::View<'_, T>,
        batch: usize,
        accumulate: bool,
        y: Self::ViewMut<'_, T>,
        work: &mut Self::Buffer<T>,
    );
    /// The input gradient dx (+)= W ⋆ᵀ dy, the adjoint of x ↦ W ⋆ x.
    #[allow(clippy::too_many_arguments)]
    fn conv2d_input_grad<T: Real>(
        &self,
        g: &ConvGeometry,
        out_channels: usize,
        w: Self::View<'_, T>,
        dy: Self::View<'_, T>,
        batch: usize,
        accumulate: bool,
        dx: Self::ViewMut<'_, T>,
        work: &mut Self::Buffer<T>,
    );
    /// The input gradient gated by `gate` (laid out as `dx`), written:
    /// dx = 1[gate > 0] ⊙ W ⋆ᵀ dy, each element `zero_unless_positive(gate, ·)` of
    /// [`Backend::conv2d_input_grad`]'s. With `gate` the output of a ReLU in front of the
    /// convolution, this is the ReLU's backward (∂x = 1[y > 0] ⊙ δ) fused into the write of the
    /// input gradient: the same bits as the two passes in turn.
    #[allow(clippy::too_many_arguments)]
    fn conv2d_input_grad_gated<T: Real>(
        &self,
        g: &ConvGeometry,
        out_channels: usize,
        w: Self::View<'_, T>,
        dy: Self::View<'_, T>,
        batch: usize,
        gate: Self::View<'_, T>,
        dx: Self::ViewMut<'_, T>,
        work: &mut Self::Buffer<T>,
    );
    /// The weight gradient dw (+)= α·Σₙ dyₙ ⋆ xₙ.
    #[allow(clippy::too_many_arguments)]
    fn conv2d_weight_grad<T: Real>(
        &self,
        g: &ConvGeometry,
        out_channels: usize,
        x: Self::View<'_, T>,
        dy: Self::View<'_, T>,
        batch: usize,
        alpha: T,
        accumulate: bool,
        dw: Self::ViewMut<'_, T>,
        work: &mut Self::Buffer<T>,
    );
    /// The bias gradient db[o] (+)= α·Σ dy over samples and the `plane` positions of channel o.
    #[allow(clippy::too_many_arguments)]
    fn conv2d_bias_grad<T: Real>(
        &self,
        dy: Self::View<'_, T>,
        batch: usize,
        out_channels: usize,
        plane: usize,
        alpha: T,
        accumulate: bool,
        db: Self::ViewMut<'_, T>,
    );

    // ---- bias, activations, pooling ------------------------------------------------------------

    /// `y[r, j] += b[j]` for every row r of the row-major `y` of width `b.len()`.
    fn add_bias_rows<T: Real>(&self, y: Self::ViewMut<'_, T>, bias: Self::View<'_, T>);
    /// `y[c, p] += b[c]` for `y` `[b.len(), plane]` (a convolution's bias over its output plane).
    fn add_bias_planes<T: Real>(&self, y: Self::ViewMut<'_, T>, bias: Self::View<'_, T>);
    /// `dst[j] += α·src[r, j]` for each row r in order (`src` row-major of width `dst.len()`): the
    /// bias gradient of a dense layer.
    fn add_column_sums<T: Real>(&self, alpha: T, src: Self::View<'_, T>, dst: Self::ViewMut<'_, T>);
    /// `dst[r] (+)= α·Σⱼ src[r, j]` (`src` `[dst.len(), width]`; the row sum formed first, from zero,
    /// left to right), added when `accumulate`, else written: a convolution's bias gradient.
    fn row_sums<T: Real>(
        &self,
        alpha: T,
        src: Self::View<'_, T>,
        accumulate: bool,
        dst: Self::ViewMut<'_, T>,
    );

    /// y = φ(x) element-wise.
    fn activation_forward<T: Real, A: Elementwise>(
        &self,
        act: &A,
        x: Self::View<'_, T>,
        y: Self::ViewMut<'_, T>,
    );
    /// y = φ(x) and d = φ′(x) element-wise, in one evaluation (for activations that keep their
    /// derivative, [`Elementwise::keeps_derivative`]).
    fn activation_forward_keep<T: Real, A: Elementwise>(
        &self,
        act: &A,
        x: Self::View<'_, T>,
        y: Self::ViewMut<'_, T>,
        d: Self::ViewMut<'_, T>,
    );
    /// out = a ⊙ b element-wise (a kept derivative applied to a cotangent or an R-input).
    fn multiply<T: Real>(
        &self,
        a: Self::View<'_, T>,
        b: Self::View<'_, T>,
        out: Self::ViewMut<'_, T>,
    );
    /// R{∂x} += φ″ ⊙ R{x} ⊙ δ element-wise (the second term of
    /// [`Backend::activation_r_backward`], after the first came from a kept φ′).
    fn activation_add_second_order<T: Real, A: Elementwise>(
        &self,
        act: &A,
        x: Self::View<'_, T>,
        y: Self::View<'_, T>,
        rx: Self::View<'_, T>,
        dy: Self::View<'_, T>,
        rdx: Self::ViewMut<'_, T>,
    );
    /// out = φ″(x) element-wise, for activations that keep it for the R-backward
    /// ([`Elementwise::keeps_second_derivative`]).
    fn activation_second_derivative<T: Real, A: Elementwise>(
        &self,
        act: &A,
        x: Self::View<'_, T>,
        y: Self::View<'_, T>,
        out: Self::ViewMut<'_, T>,
    );
    /// out += a ⊙ b ⊙ c element-wise, as (a·b)·c (a kept φ″ times R{x} times δ: the same bits as
    /// [`Backend::activation_add_second_order`] with the φ″ it would evaluate).
    fn add_triple_product<T: Real>(
        &self,
        a: Self::View<'_, T>,
        b: Self::View<'_, T>,
        c: Self::View<'_, T>,
        out: Self::ViewMut<'_, T>,
    );
    /// ∂x = φ′ ⊙ δ from the layer's input x, output y and δ = `dy`.
    fn activation_backward<T: Real, A: Elementwise>(
        &self,
        act: &A,
        x: Self::View<'_, T>,
        y: Self::View<'_, T>,
        dy: Self::View<'_, T>,
        dx: Self::ViewMut<'_, T>,
    );
    /// R{y} = φ′ ⊙ R{x} (0 when `rx` is `None`: the input does not depend on θ).
    fn activation_r_forward<T: Real, A: Elementwise>(
        &self,
        act: &A,
        x: Self::View<'_, T>,
        y: Self::View<'_, T>,
        rx: Option<Self::View<'_, T>>,
        ry: Self::ViewMut<'_, T>,
    );
    /// R{∂x} = φ′ ⊙ R{δ} + φ″ ⊙ R{x} ⊙ δ (Pearlmutter 1994), the second term only when `second`
    /// holds `(R{x}, δ)` (it is dropped for the Gauss–Newton product and when φ″ = 0).
    fn activation_r_backward<T: Real, A: Elementwise>(
        &self,
        act: &A,
        x: Self::View<'_, T>,
        y: Self::View<'_, T>,
        rdy: Self::View<'_, T>,
        second: Option<(Self::View<'_, T>, Self::View<'_, T>)>,
        rdx: Self::ViewMut<'_, T>,
    );

    /// Max-pooling of `x` `[batch, pool.channels, pool.height, pool.width]` with `pool.kernel`-wide
    /// windows `pool.stride` apart (floor mode: rows and columns past the last whole window are
    /// dropped); `winners` receives each output's arg-max as an index into its sample's input
    /// (`channels·height·width` per sample). In scan order a larger value or a NaN takes over, so
    /// the first maximum wins ties and the last NaN wins (PyTorch's CPU kernel).
    fn max_pool2d<T: Real>(
        &self,
        pool: &MaxPool2d,
        x: Self::View<'_, T>,
        batch: usize,
        y: Self::ViewMut<'_, T>,
        winners: Self::ViewMut<'_, u32>,
    );
    /// The adjoint of [`Backend::max_pool2d`] (and of [`Backend::gather`] by its winners) for
    /// `batch` samples: dx ← 0, then `dx[n, winner] += d[n, o]` for every output o of every sample
    /// n, in output order (on the CPU one channel plane at a time, zeroed and scattered into while
    /// it is in cache, since a window's winner lies in its own channel). With `gate` (the pool's
    /// output y) each term is
    /// `zero_unless_positive(y[n, o], d[n, o])`: where a ReLU is in front of the pool, its output at
    /// the winner is y[n, o], so this is the ReLU's backward ∂x = 1[x > 0] ⊙ δ (max is monotone:
    /// max-pool ∘ ReLU = ReLU ∘ max-pool) fused into the scatter, the same bits as the two passes.
    fn max_pool2d_adjoint<T: Real>(
        &self,
        pool: &MaxPool2d,
        d: Self::View<'_, T>,
        winners: Self::View<'_, u32>,
        gate: Option<Self::View<'_, T>>,
        batch: usize,
        dx: Self::ViewMut<'_, T>,
    );
    /// `y[n, o] ← x[n, winners[n, o]]`.
    fn gather<T: Real>(
        &self,
        x: Self::View<'_, T>,
        winners: Self::View<'_, u32>,
        inputs: usize,
        outputs: usize,
        y: Self::ViewMut<'_, T>,
    );

    /// Average pooling `y ← P·x` of `planes` planes of `pool`'s `height × width` (windows of
    /// `kernel`, `stride` apart, floor mode): each output the mean of its window (see
    /// [`AvgPool2d`]).
    fn avg_pool2d<T: Real>(
        &self,
        pool: &AvgPool2d,
        x: Self::View<'_, T>,
        planes: usize,
        y: Self::ViewMut<'_, T>,
    );
    /// Its adjoint `dx ← Pᵀ·d` (dx written: zeroed, then each window's d/kernel² spread over it).
    fn avg_pool2d_adjoint<T: Real>(
        &self,
        pool: &AvgPool2d,
        d: Self::View<'_, T>,
        planes: usize,
        dx: Self::ViewMut<'_, T>,
    );

    /// LayerNorm's forward pass y = γ ⊙ x̂ + β, x̂ = (x − μ)/√(σ² + ε) per row of `ln.dim` (see
    /// [`LayerNorm`] for every formula of the five `layer_norm_*` operations).
    fn layer_norm_forward<T: Real>(
        &self,
        ln: &LayerNorm,
        params: Self::View<'_, T>,
        x: Self::View<'_, T>,
        batch: usize,
        y: Self::ViewMut<'_, T>,
    );
    /// LayerNorm's backward pass: ∂γ, ∂β into `grad` (full length P, written) and ∂x into `dx`;
    /// `work` holds 2 rows of `ln.dim`.
    fn layer_norm_backward<T: Real>(
        &self,
        ln: &LayerNorm,
        pass: &Pass<'_, T, Self>,
        dy: Self::View<'_, T>,
        grad: Option<Self::ViewMut<'_, T>>,
        dx: Option<Self::ViewMut<'_, T>>,
        work: Self::ViewMut<'_, T>,
    );
    /// LayerNorm's R-forward R{y} = γ ⊙ R{x̂} + v_γ ⊙ x̂ + v_β; `work` holds 2 rows.
    fn layer_norm_r_forward<T: Real>(
        &self,
        ln: &LayerNorm,
        pass: &Pass<'_, T, Self>,
        v: Self::View<'_, T>,
        rx: Option<Self::View<'_, T>>,
        ry: Self::ViewMut<'_, T>,
        work: Self::ViewMut<'_, T>,
    );
    /// LayerNorm's R-backward: adds alpha × its block of H·v (or G·v) into `hv` and writes
    /// R{∂x} into `rdx`; `work` holds 5 rows.
    fn layer_norm_r_backward<T: Real>(
        &self,
        ln: &LayerNorm,
        pass: &Pass<'_, T, Self>,
        r: &RPass<'_, T, Self>,
        hv: Self::ViewMut<'_, T>,
        rdx: Option<Self::ViewMut<'_, T>>,
        work: Self::ViewMut<'_, T>,
    );
    /// LayerNorm's per-sample gradients [scale·Σ δ ⊙ x̂, scale·Σ δ] (rows of `stride`); `work`
    /// holds 1 row.
    #[allow(clippy::too_many_arguments)]
    fn layer_norm_per_sample_gradients<T: Real>(
        &self,
        ln: &LayerNorm,
        x: Self::View<'_, T>,
        dy: Self::View<'_, T>,
        batch: usize,
        scale: T,
        rows: Self::ViewMut<'_, T>,
        stride: usize,
        work: Self::ViewMut<'_, T>,
    );

    // ---- sequences: attention and tokens -------------------------------------------------------

    /// dst ← src with its axes permuted (`torch.permute(axes).contiguous()`): `src` row-major of
    /// shape `dims`, `dst` row-major of shape `[dims[axes[0]], dims[axes[1]], …]`, and
    /// dst[i₀, i₁, …] = src at the index whose axis `axes[k]` is iₖ. Splits the heads of an
    /// attention layer out of its rows and merges them back.
    fn permute<T: Real>(
        &self,
        src: Self::View<'_, T>,
        dims: &[usize],
        axes: &[usize],
        dst: Self::ViewMut<'_, T>,
    );
    /// Row-wise softmax p = softmax(s) of rows of `width` (`Σⱼ p = 1`, the maximum subtracted first);
    /// with `causal`, row r is a query at position i = r mod `width` and its entries j > i are −∞
    /// (p = 0): `F.softmax(s.masked_fill(mask, −inf), −1)` with the upper-triangular mask of
    /// `nn.Transformer.generate_square_subsequent_mask`.
    fn softmax_rows<T: Real>(
        &self,
        scores: Self::View<'_, T>,
        width: usize,
        causal: bool,
        probs: Self::ViewMut<'_, T>,
    );
    /// The softmax's Jacobian (symmetric) applied per row: out = p ⊙ (u − ⟨p, u⟩); with
    /// `second = (R{p}, δ)`, the derivative of that product along R{p} at fixed u = δ is added:
    /// out += R{p} ⊙ (δ − ⟨p, δ⟩) − p·⟨R{p}, δ⟩ (the R-backward of the softmax, Pearlmutter 1994).
    fn softmax_rows_jvp<T: Real>(
        &self,
        p: Self::View<'_, T>,
        u: Self::View<'_, T>,
        width: usize,
        second: Option<(Self::View<'_, T>, Self::View<'_, T>)>,
        out: Self::ViewMut<'_, T>,
    );
    /// The per-head core of multi-head self-attention for `g.batch` samples (Vaswani et al. 2017;
    /// PyTorch's `F.multi_head_attention_forward` between its two projections). `qkv` holds the rows
    /// of x·W_inᵀ + b_in, `[batch, seq, 3·dim]` with dim = heads·head_dim: Q in columns 0..dim, K in
    /// dim..2·dim, V in 2·dim..3·dim, head h in columns h·head_dim..(h + 1)·head_dim of each. Per
    /// sample and head, with c = 1/√head_dim: S = c·Q·Kᵀ, P = softmax(S) by rows (with `g.causal`,
    /// query i sees keys 0..=i and P is 0 after them), O = P·V. Writes P into `probs`
    /// `[batch, heads, seq, seq]` and O into `o` `[batch, seq, dim]` (head h in its columns).
    fn attention_forward<T: Real>(
        &self,
        g: &AttentionHeads,
        qkv: Self::View<'_, T>,
        probs: Self::ViewMut<'_, T>,
        o: Self::ViewMut<'_, T>,
    );
    /// The backward pass of [`Backend::attention_forward`] for ∂O = `dout` `[batch, seq, dim]`:
    /// ∂P = ∂O·Vᵀ, ∂V = Pᵀ·∂O, ∂S = P ⊙ (∂P − rowsum(P ⊙ ∂P)), ∂Q = c·∂S·K, ∂K = c·∂Sᵀ·Q, written
    /// into `dqkv` in the layout of `qkv`.
    fn attention_backward<T: Real>(
        &self,
        g: &AttentionHeads,
        qkv: Self::View<'_, T>,
        probs: Self::View<'_, T>,
        dout: Self::View<'_, T>,
        dqkv: Self::ViewMut<'_, T>,
    );
    /// The R-forward of [`Backend::attention_forward`] along R{[Q K V]} = `rqkv` (layout of `qkv`):
    /// R{S} = c·(R{Q}·Kᵀ + Q·R{K}ᵀ), R{P} = P ⊙ (R{S} − rowsum(P ⊙ R{S})) into `rprobs`,
    /// R{O} = R{P}·V + P·R{V} into `ro` (Pearlmutter 1994).
    fn attention_r_forward<T: Real>(
        &self,
        g: &AttentionHeads,
        qkv: Self::View<'_, T>,
        probs: Self::View<'_, T>,
        rqkv: Self::View<'_, T>,
        rprobs: Self::ViewMut<'_, T>,
        ro: Self::ViewMut<'_, T>,
    );
    /// The R-backward of [`Backend::attention_backward`] for R{∂O} = `rdout` into `rdqkv`:
    /// R{∂P} = R{∂O}·Vᵀ + [∂O·R{V}ᵀ], R{∂V} = Pᵀ·R{∂O} + [R{P}ᵀ·∂O],
    /// R{∂S} = J_P·R{∂P} + [R{P} ⊙ (∂P − rowsum(P ⊙ ∂P)) − P ⊙ rowsum(R{P} ⊙ ∂P)],
    /// R{∂Q} = c·(R{∂S}·K + [∂S·R{K}]), R{∂K} = c·(R{∂S}ᵀ·Q + [∂Sᵀ·R{Q}]). The bracketed terms (in
    /// ∂O) come only with `second = (∂O, ∂[Q K V])`, whose second view then receives
    /// [`Backend::attention_backward`]'s result for ∂O; without it they are dropped (the
    /// Gauss–Newton product).
    #[allow(clippy::too_many_arguments)]
    fn attention_r_backward<T: Real>(
        &self,
        g: &AttentionHeads,
        qkv: Self::View<'_, T>,
        probs: Self::View<'_, T>,
        rqkv: Self::View<'_, T>,
        rprobs: Self::View<'_, T>,
        rdout: Self::View<'_, T>,
        second: Option<(Self::View<'_, T>, Self::ViewMut<'_, T>)>,
        rdqkv: Self::ViewMut<'_, T>,
    );
    /// Embedding lookup `y[i, :] ← table[ids[i], :]` for rows of `dim` (`nn.Embedding`); the ids are
    /// integral floats in range (checked when the data set is loaded, see
    /// [`crate::model::Network::check_input`]). **Panics** on an id that is not.
    fn embedding_gather<T: Real>(
        &self,
        table: Self::View<'_, T>,
        ids: Self::View<'_, T>,
        dim: usize,
        y: Self::ViewMut<'_, T>,
    );
    /// Its adjoint: `table[ids[i], :] += α·d[i, :]` for every row i in order.
    fn embedding_scatter_add<T: Real>(
        &self,
        alpha: T,
        d: Self::View<'_, T>,
        ids: Self::View<'_, T>,
        dim: usize,
        table: Self::ViewMut<'_, T>,
    );

    // ---- the loss ------------------------------------------------------------------------------

    /// Softmax cross-entropy of each row of `logits` (`labels.len()` rows of `classes`):
    /// returns (`Σₙ logsumexp(zₙ) − zₙ[yₙ]` in f64, rows whose first arg-max is the label), and
    /// with `dlogits`, ∂/∂z = (softmax(zₙ) − onehot(yₙ))·`scale`. See
    /// [`crate::model::softmax_cross_entropy`].
    fn softmax_cross_entropy<T: Real>(
        &self,
        logits: Self::View<'_, T>,
        labels: &[usize],
        classes: usize,
        scale: T,
        dlogits: Option<Self::ViewMut<'_, T>>,
    ) -> (f64, usize);
    /// The R-operator of the cross-entropy's logit gradient: rg = scale·(diag(p) − p·pᵀ)·rz per
    /// row, p = softmax(z).
    fn softmax_cross_entropy_r<T: Real>(
        &self,
        logits: Self::View<'_, T>,
        rz: Self::View<'_, T>,
        classes: usize,
        scale: T,
        rg: Self::ViewMut<'_, T>,
    );

    /// The mean squared error's per-sample sum Σₙ (1/k)·‖zₙ − yₙ‖² in f64 for `outputs` and host
    /// `targets` of `batch × k` (`F.mse_loss` is it over B), and with `doutputs`,
    /// ∂ℓₙ/∂zₙ·`scale` = (2/k)·(zₙ − yₙ)·`scale`. See [`crate::model::mean_squared_error`].
    fn mean_squared_error<T: Real>(
        &self,
        outputs: Self::View<'_, T>,
        targets: &[T],
        k: usize,
        scale: T,
        doutputs: Option<Self::ViewMut<'_, T>>,
    ) -> f64;
    /// The R-operator of the mean squared error's output gradient: rg = (2/k)·`scale`·rz (the
    /// per-sample Hessian is (2/k)·I). See [`crate::model::mse_r_gradient`].
    fn mse_r_gradient<T: Real>(
        &self,
        rz: Self::View<'_, T>,
        k: usize,
        scale: T,
        rg: Self::ViewMut<'_, T>,
    );

    // ---- vectors -------------------------------------------------------------------------------

    /// y ← y + α·x.
    fn axpy<T: Real>(&self, alpha: T, x: Self::View<'_, T>, y: Self::ViewMut<'_, T>);
    /// x ← α·x.
    fn scale<T: Real>(&self, alpha: T, x: Self::ViewMut<'_, T>);
    /// y ← α·x (equal lengths): [`Backend::copy`] then [`Backend::scale`] in one pass, the same
    /// bits.
    fn scaled_copy<T: Real>(&self, alpha: T, x: Self::View<'_, T>, y: Self::ViewMut<'_, T>);
    /// x ← x / d (a true division, not x·(1/d), whose last bit can differ: normalising a vector to
    /// unit length in the Lanczos and Gram–Schmidt recurrences).
    fn divide<T: Real>(&self, d: T, x: Self::ViewMut<'_, T>);
    /// dst ← src converted element by element through f64 (`T::of_f64(s.as_f64())`: exact from
    /// f32 to f64, round-to-nearest from f64 to f32; a copy when both are the same type). The
    /// f64 vectors of the trace and eigenvalue estimators meet an f32 operator here.
    fn convert<S: Real, T: Real>(&self, src: Self::View<'_, S>, dst: Self::ViewMut<'_, T>);
    /// Σᵢ xᵢ·yᵢ, accumulated in f64 left to right.
    fn dot<T: Real>(&self, x: Self::View<'_, T>, y: Self::View<'_, T>) -> f64;
    /// Returns (Σᵢ sᵢ·dᵢ, Σᵢ sᵢ², Σᵢ dᵢ²) of `src` and the old values of `dst` (equal lengths,
    /// possibly different element types; each term widened to f64, each sum accumulated in f64 left
    /// to right), and writes dst ← src converted as [`Backend::convert`] does, in one pass: online
    /// NGD's direction handed back to the f32 gradient it replaces, with the cosine between the two.
    ///
    /// In the same pass it continues two running sums from the values passed in: `totals[0] += Σᵢ dᵢ²`
    /// (the old values) and `totals[1] += Σᵢ d′ᵢ²` (the converted values written, widened back to
    /// f64), term by term in f64. Called on the consecutive slices of one vector in order, the
    /// totals are that vector's sums left to right, the bits of [`Backend::dot`] over the whole
    /// vector: NGD's ‖g‖ and ‖d‖ for its step ratio without two more passes.
    fn convert_dot_norms<S: Real, T: Real>(
        &self,
        src: Self::View<'_, S>,
        dst: Self::ViewMut<'_, T>,
        totals: &mut [f64; 2],
    ) -> (f64, f64, f64);
    /// Σᵢ xᵢ, accumulated in f64 left to right.
    fn sum<T: Real>(&self, x: Self::View<'_, T>) -> f64;
    /// Σᵢ xᵢ² in f64 (‖x‖², the NGD preconditioner's norms). Each backend fixes its own summation
    /// order; the CPU's is eight lanes over the leading multiple of 8 (lane i mod 8), the lanes
    /// added in order, then the tail left to right (so that it vectorises).
    fn sum_squares<T: Real>(&self, x: Self::View<'_, T>) -> f64;
    /// `out[i, j] ← (α·x[i])·y[j]` for `out` `[x.len(), y.len()]`: a scaled outer product (a
    /// dense layer's per-sample weight gradient).
    fn outer<T: Real>(
        &self,
        alpha: T,
        x: Self::View<'_, T>,
        y: Self::View<'_, T>,
        out: Self::ViewMut<'_, T>,
    );
    /// y ← y + α·(a + c) ⊙ d, evaluated as (α·(a + c))·d: the Hadamard step of a dense layer's
    /// per-sample Gram (A·Aᵀ + c) ⊙ (Δ·Δᵀ) (Goodfellow 2015), c = 1 with a bias (its input is the
    /// constant 1) and 0 without.
    fn add_gram_hadamard<T: Real>(
        &self,
        alpha: T,
        c: T,
        a: Self::View<'_, T>,
        d: Self::View<'_, T>,
        y: Self::ViewMut<'_, T>,
    );

    // ---- optimisers and samplers ---------------------------------------------------------------

    /// One momentum-SGD step (PyTorch's `SGD`): buf ← μ·buf + (1 − τ)·d, then
    /// θ ← θ − lr·(d + μ·buf) (Nesterov) or θ ← θ − lr·buf; without momentum (`buf` None)
    /// θ ← θ − lr·d.
    fn sgd_step(
        &self,
        params: Self::ViewMut<'_, f32>,
        d: Self::View<'_, f32>,
        buf: Option<Self::ViewMut<'_, f32>>,
        c: &SgdStep,
    );
    /// θ ← θ − lr·(d + μ·b) (Nesterov) or θ ← θ − lr·b: momentum SGD's first step, whose buffer b is
    /// d itself.
    fn sgd_first_momentum_step(
        &self,
        params: Self::ViewMut<'_, f32>,
        d: Self::View<'_, f32>,
        buf: Self::View<'_, f32>,
        c: &SgdStep,
    );
    /// The fused SGLD step with its MALA sums (see [`crate::sample::sgld::update`]): drift
    /// h = (ε/2)(nβ·g + γ(w − w*) + δ·w), w ← clamp(w − h + √ε·ξ) with ξ drawn from `noise`,
    /// `step` ← the new w − the old w, and the inner products of [`UpdateSums`].
    #[allow(clippy::too_many_arguments)]
    fn sgld_update(
        &self,
        w: Self::ViewMut<'_, f32>,
        step: Self::ViewMut<'_, f32>,
        w_star: Self::View<'_, f32>,
        grad: Self::View<'_, f32>,
        noise: &mut NoiseSource,
        c: &StepCoefficients,
        bound: Option<f32>,
    ) -> UpdateSums;
    /// out ← standard normal variates, the next `out.len()` of `noise`'s sequence.
    fn fill_normal(&self, noise: &mut NoiseSource, out: Self::ViewMut<'_, f32>);
    /// g ← round_f32(g + s·z) with the sum formed in f64 (s·z in f64, z widened exactly), and
    /// returns Σᵢ (gᵢ′ − gᵢ)² of the rounded result in f64, left to right: `--direction-noise`'s
    /// ξ = s·z added to a gradient, and ‖ĝ − g‖² (see [`crate::optim::add_isotropic_noise`]).
    fn add_scaled_noise(&self, s: f64, z: Self::View<'_, f32>, g: Self::ViewMut<'_, f32>) -> f64;
    /// One AdamW step (`torch.optim.AdamW`, Loshchilov & Hutter 2019) on `params` with gradient
    /// `grad` and moments `m`, `v`, `step` t ≥ 1: θ ← θ·(1 − lr·wd); m ← m + (1 − β₁)(g − m);
    /// v ← v·β₂ + (1 − β₂)·g·g; θ ← θ − (lr/(1 − β₁ᵗ))·m/(√v/√(1 − β₂ᵗ) + ε), the scalars in f64
    /// rounded to `T` once and each element-wise operation rounded in `T` in PyTorch's order (see
    /// [`crate::optim::adamw_step`]).
    fn adamw_step<T: Real>(
        &self,
        cfg: &AdamWConfig,
        step: u64,
        params: Self::ViewMut<'_, T>,
        grad: Self::View<'_, T>,
        m: Self::ViewMut<'_, T>,
        v: Self::ViewMut<'_, T>,
    );
}
