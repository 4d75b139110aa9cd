//! Layers: one file per layer type, each implementing [`LayerOps`] — its forward and backward pass,
//! its R-operator (forward-mode derivative of both, for exact Hessian-vector products), its
//! per-sample gradients, its parameter tensors and whether it is piecewise linear.
//!
//! A network is a sequence of [`Layer`]s over one flat parameter vector (see [`super::ParamLayout`]);
//! layer `i` reads the output of layer `i − 1` (the input for `i = 0`). Activations are layers of
//! their own, and the loss is the network's last node ([`super::Loss`]).
//!
//! **Adding a layer type**: write a file here with a struct that implements [`LayerOps`] (every
//! method but the R-backward's optional cache is required, so nothing is silently skipped) and a
//! constructor that takes its tensors from a [`Scope`], and add `file: Type` to the `layer_types!`
//! list below. The tests in `tests.rs` (gradient against central differences in f64, R-operator
//! against a finite-difference Hessian, per-sample gradients against single-sample passes) take
//! every layer type through the same bodies, and fail until the new type appears in one of their
//! tiny networks.
//!
//! Notation (Pearlmutter 1994, "Fast exact multiplication by the Hessian"): a layer maps its input x
//! to y; δ = ∂L/∂y is the cotangent of its output; R{·} is the directional derivative d/dε at
//! ε = 0 of a quantity computed at θ + ε·v.

mod elementwise;
#[cfg(test)]
mod tests;

pub use elementwise::Elementwise;
pub use embedding::token_id;
pub use layer_norm::Epsilon;

use super::layout::{Init, ParamLayout, TensorSpec};
use crate::device::{Backend, CpuBackend};
use crate::Real;

/// The per-sample gradient route of a layer with parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PerSample {
    /// No parameters: nothing to contribute.
    None,
    /// gₙ = [δₙ·aₙᵀ, δₙ] (weight `[outputs, inputs]`, bias `[outputs]`) for input row aₙ and output
    /// cotangent δₙ, so the products have closed forms: G·Gᵀ = (A·Aᵀ + 1) ⊙ (Δ·Δᵀ),
    /// (G·v)ₙ = δₙᵀ·V·aₙ + δₙ·v_b, Gᵀ·c = [Δᵀ·diag(c)·A, Δᵀ·c] (Goodfellow 2015, "Efficient
    /// per-example gradient computations"). Tensors `weight`, `weight + 1` of the layout; without a
    /// bias (`bias: false`) gₙ = δₙ·aₙᵀ and the terms of the bias column drop out (A·Aᵀ ⊙ Δ·Δᵀ).
    OuterProduct {
        inputs: usize,
        outputs: usize,
        weight: usize,
        bias: bool,
    },
    /// The per-sample gradients are materialised by [`LayerOps::per_sample_gradients`].
    Materialise,
}

/// What a pass sees of one layer's forward state: the parameters (the whole flat vector), the
/// layer's input x and output y for `batch` samples, the indices its forward pass kept (the
/// max-pool winners) and the values it kept (a residual block's inner activations), as views of
/// backend `B`'s memory.
pub struct Pass<'a, T: Real, B: Backend = CpuBackend> {
    pub params: B::View<'a, T>,
    pub x: B::View<'a, T>,
    pub y: B::View<'a, T>,
    pub batch: usize,
    pub indices: B::View<'a, u32>,
    pub state: B::View<'a, T>,
}

impl<T: Real, B: Backend> Clone for Pass<'_, T, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T: Real, B: Backend> Copy for Pass<'_, T, B> {}

/// The direction and the R-forward's results that the R-backward of a layer needs.
pub struct RPass<'a, T: Real, B: Backend = CpuBackend> {
    /// v, the direction (full length P).
    pub v: B::View<'a, T>,
    /// R{x}; `None` when the input does not depend on θ (the first layer).
    pub rx: Option<B::View<'a, T>>,
    /// δ = ∂L/∂y from the ordinary backward pass.
    pub dy: B::View<'a, T>,
    /// R{δ}.
    pub rdy: B::View<'a, T>,
    /// The block of H·v is added times `alpha` (the chunk's share of the mean).
    pub alpha: T,
    /// Drop the terms in δ (the Gauss–Newton product Jᵀ·A·J·v instead of H·v).
    pub gauss_newton: bool,
    /// What [`LayerOps::r_prepare`] wrote for this forward state and δ, when the caller keeps it
    /// (an operator caching its chunks' passes); `None`: the layer recomputes what it needs.
    pub prepared: Option<B::View<'a, T>>,
}

impl<T: Real, B: Backend> Clone for RPass<'_, T, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T: Real, B: Backend> Copy for RPass<'_, T, B> {}

/// The backend a network runs on and the scratch buffers shared by all its layers: an im2col
/// matrix, room for two stacked convolution outputs in `[out_channels, batch·ho·wo]` layout, a
/// stacked weight pair (also LayerNorm's row buffers), and the inner chain's buffers of residual
/// blocks (grown on first use, on the same backend).
#[derive(Clone, Debug)]
pub struct Scratch<T: Real, B: Backend = CpuBackend> {
    pub backend: B,
    pub cols: B::Buffer<T>,
    pub conv: B::Buffer<T>,
    pub stack: B::Buffer<T>,
    pub nested: Option<Box<residual::Nested<T, B>>>,
}

impl<T: Real> Default for Scratch<T> {
    fn default() -> Self {
        Scratch::on(CpuBackend, &[], 0, false)
    }
}

impl<T: Real, B: Backend> Scratch<T, B> {
    /// Scratch on `backend` for the largest layer of `layers` at `batch` samples, lowered one sample
    /// at a time (`batched = false`: training) or the whole batch at once (the R-passes).
    pub fn on(backend: B, layers: &[Layer], batch: usize, batched: bool) -> Self {
        let (cols, conv) = layers
            .iter()
            .map(|l| l.scratch_len(batch, batched))
            .fold((0, 0), |(a, b), (c, d)| (a.max(c), b.max(d)));
        Scratch {
            cols: backend.zeros(cols),
            conv: backend.zeros(conv),
            stack: backend.zeros(0),
            nested: None,
            backend,
        }
    }
}

impl<T: Real> Scratch<T> {
    /// [`Scratch::on`] the CPU.
    pub fn for_layers(layers: &[Layer], batch: usize, batched: bool) -> Self {
        Scratch::on(CpuBackend, layers, batch, batched)
    }
}

/// One layer type. Every method is required but the pair [`LayerOps::prepared_len`] /
/// [`LayerOps::r_prepare`], a cache that only decides what the R-backward recomputes, and the pair
/// [`LayerOps::output_gate`] / [`LayerOps::backward_gated`], a fusion that only decides how the
/// backward pass computes the same values. The passes are generic over the [`Backend`] whose
/// memory they read and write (`B`) and the scalar type (`T`).
pub trait LayerOps {
    /// The PyTorch module it is (`Linear`, `Conv2d`, `ReLU`, …), for messages.
    fn kind(&self) -> &'static str;
    /// Features per sample going in.
    fn in_features(&self) -> usize;
    /// Features per sample coming out.
    fn out_features(&self) -> usize;
    /// Its parameter tensors (indices into the layout, consecutive, in `state_dict` order).
    fn tensors(&self) -> std::ops::Range<usize>;
    /// Whether the output is piecewise linear in the input and in each parameter (so the loss's
    /// Hessian has no second-derivative term on its diagonal and the exact trace applies).
    fn piecewise_linear(&self) -> bool;
    /// Scratch (im2col matrix, product buffer) lengths for `batch` samples, lowered one sample at a
    /// time or the whole batch at once.
    fn scratch_len(&self, batch: usize, batched: bool) -> (usize, usize);
    /// Indices kept from the forward pass for `batch` samples (max-pool winners).
    fn index_len(&self, batch: usize) -> usize;
    /// Values kept from the forward pass for `batch` samples, so that the later passes need not
    /// recompute them (a residual block's inner activations).
    fn state_len(&self, batch: usize) -> usize;
    /// The R-forward's saved buffers (the im2col matrices of x and R{x}) for `batch` samples.
    fn saved_len(&self, batch: usize) -> usize;
    /// FLOPs of the forward pass's matrix products for `batch` samples (2·m·n·k each; 0 for
    /// element-wise layers), for the benchmarks' compute floors.
    fn forward_flops(&self, batch: usize) -> f64;
    /// Whether the forward pass on a batch is, bit for bit, the forward pass of each sample in turn
    /// (its `indices` per sample `index_len(1)` long and relative to the sample). The network then
    /// runs a run of such layers one sample at a time, so that a sample's intermediate outputs stay
    /// in cache between them. False where batching changes the arithmetic (a matrix product over
    /// the batch).
    fn sample_wise(&self) -> bool;

    /// y ← layer(x) for `batch` samples; `indices` (`index_len(batch)` long) and `state`
    /// (`state_len(batch)` long) receive what the later passes read back as [`Pass::indices`] and
    /// [`Pass::state`].
    #[allow(clippy::too_many_arguments)]
    fn forward<B: Backend, T: Real>(
        &self,
        params: B::View<'_, T>,
        x: B::View<'_, T>,
        batch: usize,
        y: B::ViewMut<'_, T>,
        indices: B::ViewMut<'_, u32>,
        state: B::ViewMut<'_, T>,
        sc: &mut Scratch<T, B>,
    );

    /// Given δ = `dy`, writes the layer's parameter gradients into `grad` (full length P; written,
    /// not accumulated) when it is given and ∂L/∂x into `dx` when it is given.
    fn backward<B: Backend, T: Real>(
        &self,
        pass: &Pass<'_, T, B>,
        dy: B::View<'_, T>,
        grad: Option<B::ViewMut<'_, T>>,
        dx: Option<B::ViewMut<'_, T>>,
        sc: &mut Scratch<T, B>,
    );

    /// R-forward: R{y} from R{x} (`rx`, `None` for the first layer) and the direction `v`. Leaves
    /// in `saved` what the R-backward reuses.
    fn r_forward<B: Backend, T: Real>(
        &self,
        pass: &Pass<'_, T, B>,
        v: B::View<'_, T>,
        rx: Option<B::View<'_, T>>,
        ry: B::ViewMut<'_, T>,
        saved: &mut [B::Buffer<T>; 2],
        sc: &mut Scratch<T, B>,
    );

    /// R-backward: adds alpha × the layer's block of H·v (or G·v) into `hv` (full length P) and
    /// writes R{∂L/∂x} into `rdx` when it is given.
    fn r_backward<B: Backend, T: Real>(
        &self,
        pass: &Pass<'_, T, B>,
        r: &RPass<'_, T, B>,
        hv: B::ViewMut<'_, T>,
        rdx: Option<B::ViewMut<'_, T>>,
        saved: &[B::Buffer<T>; 2],
        sc: &mut Scratch<T, B>,
    );

    /// Values that its R-backward reads and that neither the forward nor the backward pass keeps,
    /// for `batch` samples: a residual block's inner cotangents (the backward keeps none) and what
    /// its inner layers prepare, GELU's φ″. A caller that repeats R-passes on one forward state
    /// (the Hessian operator's cached chunks) fills them once with [`LayerOps::r_prepare`] and
    /// hands them to every R-backward as [`RPass::prepared`]; without them the R-backward
    /// computes what it needs itself, to the same bits. Layers that need nothing keep the
    /// default, 0 (nothing is skipped by it: it only decides what is recomputed).
    fn prepared_len(&self, _batch: usize) -> usize {
        0
    }

    /// Writes the [`LayerOps::prepared_len`] values for the forward state `pass` and the output
    /// cotangent δ = `dy` into `out`. The default (nothing to prepare) writes nothing.
    fn r_prepare<B: Backend, T: Real>(
        &self,
        _pass: &Pass<'_, T, B>,
        _dy: B::View<'_, T>,
        _out: B::ViewMut<'_, T>,
        _sc: &mut Scratch<T, B>,
    ) {
    }

    /// Whether it is an activation whose backward is a gate on its own output y, ∂x = 1[y > 0] ⊙ δ
    /// (each element [`zero_unless_positive`]`(y, δ)`: ReLU), so that the layer after it may apply
    /// it where it writes its input gradient ([`LayerOps::backward_gated`]). Such an activation is
    /// piecewise linear and its other passes read nothing but y. The default: not one.
    fn output_gate(&self) -> bool {
        false
    }

    /// [`LayerOps::backward`] with ∂L/∂x written gated by the layer's own input x,
    /// `dx = zero_unless_positive(x, ∂L/∂x)` element by element: when x is the output of an
    /// activation with an [`LayerOps::output_gate`], `dx` is that activation's input gradient, to
    /// the same bits as this layer's backward followed by the activation's, with one pass over
    /// the activation's gradient fewer (the network then skips the activation's backward). Returns
    /// false, having written nothing, where the layer has no such pass (the default; the network
    /// then runs the two passes). Optional like [`LayerOps::r_prepare`]: it only decides how the
    /// same values are computed.
    fn backward_gated<B: Backend, T: Real>(
        &self,
        _pass: &Pass<'_, T, B>,
        _dy: B::View<'_, T>,
        _grad: Option<B::ViewMut<'_, T>>,
        _dx: B::ViewMut<'_, T>,
        _sc: &mut Scratch<T, B>,
    ) -> bool {
        false
    }

    /// How its per-sample gradients enter the per-sample products.
    fn per_sample(&self) -> PerSample;

    /// Per-sample gradients of the layer's parameters, times `scale`, for per-sample output
    /// cotangents `dy` at the parameters `params` (the whole flat vector; a composite layer
    /// recomputes its inner activations from them): row n of `rows` (stride `stride`) receives
    /// sample n's gradient over the layer's tensors in order. Layers without parameters write
    /// nothing.
    #[allow(clippy::too_many_arguments)]
    fn per_sample_gradients<B: Backend, T: Real>(
        &self,
        params: B::View<'_, T>,
        x: B::View<'_, T>,
        dy: B::View<'_, T>,
        batch: usize,
        scale: T,
        rows: B::ViewMut<'_, T>,
        stride: usize,
        sc: &mut Scratch<T, B>,
    );
}

/// Declares the layer types: the enum [`Layer`] with one variant per type and the [`LayerOps`]
/// implementation that dispatches to it. Adding a type is one name here.
macro_rules! layer_types {
    ($($file:ident: $ty:ident),* $(,)?) => {
        $(mod $file;
        pub use $file::$ty;)*

        /// The names of the layer types, in the order they are declared.
        pub const LAYER_TYPES: &[&str] = &[$(stringify!($ty)),*];

        impl Layer {
            /// The name of its type (one of [`LAYER_TYPES`]).
            pub fn type_name(&self) -> &'static str {
                match self { $(Layer::$ty(_) => stringify!($ty)),* }
            }
        }

        /// Any layer of a network.
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum Layer {
            $($ty($ty)),*
        }

        $(impl From<$ty> for Layer {
            fn from(l: $ty) -> Self {
                Layer::$ty(l)
            }
        })*

        impl LayerOps for Layer {
            fn kind(&self) -> &'static str {
                match self { $(Layer::$ty(l) => l.kind()),* }
            }
            fn in_features(&self) -> usize {
                match self { $(Layer::$ty(l) => l.in_features()),* }
            }
            fn out_features(&self) -> usize {
                match self { $(Layer::$ty(l) => l.out_features()),* }
            }
            fn tensors(&self) -> std::ops::Range<usize> {
                match self { $(Layer::$ty(l) => l.tensors()),* }
            }
            fn piecewise_linear(&self) -> bool {
                match self { $(Layer::$ty(l) => l.piecewise_linear()),* }
            }
            fn scratch_len(&self, batch: usize, batched: bool) -> (usize, usize) {
                match self { $(Layer::$ty(l) => l.scratch_len(batch, batched)),* }
            }
            fn index_len(&self, batch: usize) -> usize {
                match self { $(Layer::$ty(l) => l.index_len(batch)),* }
            }
            fn state_len(&self, batch: usize) -> usize {
                match self { $(Layer::$ty(l) => l.state_len(batch)),* }
            }
            fn saved_len(&self, batch: usize) -> usize {
                match self { $(Layer::$ty(l) => l.saved_len(batch)),* }
            }
            fn forward_flops(&self, batch: usize) -> f64 {
                match self { $(Layer::$ty(l) => l.forward_flops(batch)),* }
            }
            fn sample_wise(&self) -> bool {
                match self { $(Layer::$ty(l) => l.sample_wise()),* }
            }
            #[allow(clippy::too_many_arguments)]
            fn forward<B: Backend, T: Real>(
                &self,
                params: B::View<'_, T>,
                x: B::View<'_, T>,
                batch: usize,
                y: B::ViewMut<'_, T>,
                indices: B::ViewMut<'_, u32>,
                state: B::ViewMut<'_, T>,
                sc: &mut Scratch<T, B>,
            ) {
                match self { $(Layer::$ty(l) => l.forward(params, x, batch, y, indices, state, sc)),* }
            }
            fn backward<B: Backend, T: Real>(
                &self,
                pass: &Pass<'_, T, B>,
                dy: B::View<'_, T>,
                grad: Option<B::ViewMut<'_, T>>,
                dx: Option<B::ViewMut<'_, T>>,
                sc: &mut Scratch<T, B>,
            ) {
                match self { $(Layer::$ty(l) => l.backward(pass, dy, grad, dx, sc)),* }
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
                match self { $(Layer::$ty(l) => l.r_forward(pass, v, rx, ry, saved, sc)),* }
            }
            fn r_backward<B: Backend, T: Real>(
                &self,
                pass: &Pass<'_, T, B>,
                r: &RPass<'_, T, B>,
                hv: B::ViewMut<'_, T>,
                rdx: Option<B::ViewMut<'_, T>>,
                saved: &[B::Buffer<T>; 2],
                sc: &mut Scratch<T, B>,
            ) {
                match self { $(Layer::$ty(l) => l.r_backward(pass, r, hv, rdx, saved, sc)),* }
            }
            fn prepared_len(&self, batch: usize) -> usize {
                match self { $(Layer::$ty(l) => l.prepared_len(batch)),* }
            }
            fn r_prepare<B: Backend, T: Real>(
                &self,
                pass: &Pass<'_, T, B>,
                dy: B::View<'_, T>,
                out: B::ViewMut<'_, T>,
                sc: &mut Scratch<T, B>,
            ) {
                match self { $(Layer::$ty(l) => l.r_prepare(pass, dy, out, sc)),* }
            }
            fn output_gate(&self) -> bool {
                match self { $(Layer::$ty(l) => l.output_gate()),* }
            }
            fn backward_gated<B: Backend, T: Real>(
                &self,
                pass: &Pass<'_, T, B>,
                dy: B::View<'_, T>,
                grad: Option<B::ViewMut<'_, T>>,
                dx: B::ViewMut<'_, T>,
                sc: &mut Scratch<T, B>,
            ) -> bool {
                match self { $(Layer::$ty(l) => l.backward_gated(pass, dy, grad, dx, sc)),* }
            }
            fn per_sample(&self) -> PerSample {
                match self { $(Layer::$ty(l) => l.per_sample()),* }
            }
            #[allow(clippy::too_many_arguments)]
            fn per_sample_gradients<B: Backend, T: Real>(
                &self,
                params: B::View<'_, T>,
                x: B::View<'_, T>,
                dy: B::View<'_, T>,
                batch: usize,
                scale: T,
                rows: B::ViewMut<'_, T>,
                stride: usize,
                sc: &mut Scratch<T, B>,
            ) {
                match self {
                    $(Layer::$ty(l) => l.per_sample_gradients(params, x, dy, batch, scale, rows, stride, sc)),*
                }
            }
        }
    };
}

layer_types! {
    linear: Linear,
    conv2d: Conv2d,
    max_pool2d: MaxPool2d,
    relu: Relu,
    tanh: Tanh,
    gelu: Gelu,
    gelu_tanh: GeluTanh,
    sigmoid: Sigmoid,
    silu: Silu,
    layer_norm: LayerNorm,
    residual: Residual,
    avg_pool2d: AvgPool2d,
    embedding: Embedding,
    positional: Positional,
    attention: Attention,
    positions: Positions,
    monomial: Monomial,
}

/// Where a layer's tensors come from while a network is built: names are the path of modules down
/// to the tensor, as PyTorch's `state_dict` spells them (`conv1.0.weight`), so they are right by
/// construction (the idea of candle's `VarBuilder::pp`).
#[derive(Debug)]
pub struct Scope<'a> {
    tensors: &'a mut Vec<TensorSpec>,
    prefix: String,
}

impl<'a> Scope<'a> {
    /// The root scope, appending tensors to `tensors`.
    pub fn root(tensors: &'a mut Vec<TensorSpec>) -> Self {
        Scope {
            tensors,
            prefix: String::new(),
        }
    }

    /// The scope of a sub-module `name` (`pp("conv1")`, then `pp("0")` for its first element).
    pub fn pp(&mut self, name: impl std::fmt::Display) -> Scope<'_> {
        Scope {
            prefix: self.join(&name.to_string()),
            tensors: &mut *self.tensors,
        }
    }

    fn join(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// Adds the tensor `name` of `shape` and returns its index in the layout.
    ///
    /// **Panics** if the parameter count overflows a `usize` (sizes from untrusted input are checked
    /// first by [`super::Architecture::size`]).
    pub fn tensor(&mut self, name: &str, shape: Vec<usize>, init: Init) -> usize {
        let numel = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .expect("tensor size fits in usize");
        let offset = self.tensors.last().map_or(0, |t| {
            t.offset.checked_add(t.numel).expect("parameter count fits")
        });
        self.tensors.push(TensorSpec {
            name: self.join(name),
            shape,
            offset,
            numel,
            init,
        });
        self.tensors.len() - 1
    }

    /// The range of the flat vector that tensor `index` occupies.
    pub fn range(&self, index: usize) -> std::ops::Range<usize> {
        self.tensors[index].range()
    }
}

/// Builds a network's layers and layout from a definition written against [`Sequential`].
pub(crate) fn build(define: impl FnOnce(&mut Sequential<'_>)) -> (Vec<Layer>, ParamLayout) {
    let mut tensors = Vec::new();
    let mut layers = Vec::new();
    {
        let mut seq = Sequential {
            scope: Scope::root(&mut tensors),
            layers: &mut layers,
            next: 0,
        };
        define(&mut seq);
    }
    (layers, ParamLayout { tensors })
}

/// `nn.Sequential`: its modules are named by their index (`0`, `1`, …), parameter-free ones
/// included, as PyTorch counts them.
#[derive(Debug)]
pub struct Sequential<'a> {
    scope: Scope<'a>,
    layers: &'a mut Vec<Layer>,
    next: usize,
}

impl Sequential<'_> {
    /// Appends the module built by `make` under the next index; it may add one layer or several.
    pub fn push<L: Into<Layer>>(&mut self, make: impl FnOnce(&mut Scope<'_>) -> L) {
        let mut scope = self.scope.pp(self.next);
        let layer = make(&mut scope);
        self.layers.push(layer.into());
        self.next += 1;
    }

    /// A parameter-free module that needs no layer here (`nn.Flatten` of a flat input,
    /// `nn.Identity`): it takes an index.
    pub fn skip(&mut self) {
        self.next += 1;
    }

    /// A named sub-module that is itself a `Sequential` (`conv1 = nn.Sequential(conv, relu)`).
    pub fn sequential(&mut self, name: &str, define: impl FnOnce(&mut Sequential<'_>)) {
        let mut inner = Sequential {
            scope: self.scope.pp(name),
            layers: &mut *self.layers,
            next: 0,
        };
        define(&mut inner);
    }

    /// A residual block named `name` over `features` features: `Residual(nn.Sequential)` whose
    /// forward is `x + super().forward(x)`, its inner modules defined by `define` (named
    /// `name.0`, `name.1`, … as in any `Sequential`) and kept inside one [`Residual`] layer.
    pub fn residual(
        &mut self,
        name: &str,
        features: usize,
        define: impl FnOnce(&mut Sequential<'_>),
    ) {
        let mut inner = Vec::new();
        {
            let mut seq = Sequential {
                scope: self.scope.pp(name),
                layers: &mut inner,
                next: 0,
            };
            define(&mut seq);
        }
        let tensors = &*self.scope.tensors;
        let spans = inner
            .iter()
            .map(|l| {
                let t = l.tensors();
                if t.is_empty() {
                    0..0
                } else {
                    tensors[t.start].offset..tensors[t.end - 1].range().end
                }
            })
            .collect();
        self.layers
            .push(Residual::new(features, inner, spans).into());
    }

    /// A named module with parameters (`fc_1 = nn.Linear(…)`).
    pub fn named<L: Into<Layer>>(&mut self, name: &str, make: impl FnOnce(&mut Scope<'_>) -> L) {
        let mut scope = self.scope.pp(name);
        let layer = make(&mut scope);
        self.layers.push(layer.into());
    }

    /// A parameter-free layer that PyTorch's module does not count (a functional call such as
    /// `F.max_pool2d` in `forward`).
    pub fn functional<L: Into<Layer>>(&mut self, layer: L) {
        self.layers.push(layer.into());
    }
}

/// `d` where `y > 0`, else 0 (ReLU's forward with d = y, its backward with d = δ).
#[inline]
pub(crate) fn zero_unless_positive<T: Real>(y: T, d: T) -> T {
    // A select, not a branch: half the units are off in no predictable pattern.
    if y > T::zero() {
        d
    } else {
        T::zero()
    }
}
