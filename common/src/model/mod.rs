//! Models: architectures, the flat parameter vector and its named views, layers and initialisation.
//!
//! A model is a [`Network`]: an [`Architecture`] turned into a sequence of [`Layer`]s (one file per
//! layer type in `layer/`, each implementing [`LayerOps`]) ending in a [`Loss`], whose parameters
//! live in one flat, contiguous vector laid out as PyTorch's `state_dict` ([`ParamLayout`], names
//! built with the structure by [`Scope`]). Optimisers, samplers and curvature code work on that flat
//! vector.

mod arch;
mod init;
mod layer;
mod layout;
mod loss;
mod network;
mod per_sample;
mod size;
mod spec;

pub(crate) use arch::too_few_classes;
pub use arch::{
    Activation, Architecture, ModelSpec, LENET_MAX_DIM, LENET_MIN_SIDE, MAX_HIDDEN_LAYERS,
    MNIST_CLASSES, MNIST_INPUT,
};
pub use init::initialise;
pub(crate) use layer::zero_unless_positive;
pub use layer::{
    token_id, Attention, AvgPool2d, Conv2d, Elementwise, Embedding, Epsilon, Gelu, GeluTanh, Layer,
    LayerNorm, LayerOps, Linear, MaxPool2d, Pass, PerSample, Positional, RPass, Relu, Residual,
    Scope, Scratch, Sequential, Sigmoid, Silu, Tanh, LAYER_TYPES,
};
pub use layout::{Init, ParamLayout, TensorSpec};
pub use loss::{
    mean_squared_error, mse_fisher_variance, mse_hessian_root, mse_r_gradient,
    softmax_cross_entropy, HessianFactor, Loss, TargetBuf, Targets,
};
pub use network::{Evaluation, Network, Workspace};
pub use per_sample::PerSampleScratch;
pub use size::{
    check_fits_in_memory, format_bytes, group_digits, memory_limit, ModelSize, PARAMETER_COPIES,
};
pub use spec::{
    is_spec_path, transformer_preset, NetSpec, MAX_SPEC_BYTES, SPEC_LAYER_TYPES,
    TRANSFORMER_PRESETS,
};
