//! The flat parameter vector and its named tensors.

/// One tensor of the flat parameter vector: its PyTorch name, shape (PyTorch layout: `[out, in]` for
/// Linear, `[out, in, kh, kw]` for Conv2d), position and initialisation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
    pub numel: usize,
    pub init: Init,
}

/// How a tensor is initialised (see [`super::initialise`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Init {
    /// U(−b, b) with b = 1/√fan_in: PyTorch's default for `nn.Linear` and `nn.Conv2d`, weights
    /// (Kaiming-uniform with a = √5, gain·√(3/fan_in) = 1/√fan_in) and biases alike.
    UniformFanIn { fan_in: usize },
    /// Every element 1 (`nn.LayerNorm`'s weight); draws nothing from the stream.
    Ones,
    /// Every element 0 (`nn.LayerNorm`'s bias); draws nothing from the stream.
    Zeros,
    /// N(0, 1): `nn.Embedding`'s default (`init.normal_`).
    StandardNormal,
    /// U(−b, b) with b = √(6/(fan_in + fan_out)): `init.xavier_uniform_` (Glorot & Bengio 2010), what
    /// `nn.MultiheadAttention` draws its `in_proj_weight` from (fan_in = columns, fan_out = rows).
    XavierUniform { fan_in: usize, fan_out: usize },
}

impl Init {
    /// PyTorch's default for a layer whose weight has `fan_in` inputs per output.
    pub fn torch_default(fan_in: usize) -> Self {
        Init::UniformFanIn { fan_in }
    }
}

impl TensorSpec {
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.numel
    }
}

/// The tensors of a model in `state_dict` order; the flat vector concatenates them, each row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamLayout {
    pub tensors: Vec<TensorSpec>,
}

impl ParamLayout {
    /// Total number of parameters P.
    pub fn total(&self) -> usize {
        self.tensors.last().map_or(0, |t| t.offset + t.numel)
    }

    pub fn get(&self, name: &str) -> Option<&TensorSpec> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The named tensor's block of a flat vector.
    pub fn view<'a, T>(&self, flat: &'a [T], name: &str) -> Option<&'a [T]> {
        self.get(name).map(|t| &flat[t.range()])
    }

    pub fn names(&self) -> Vec<String> {
        self.tensors.iter().map(|t| t.name.clone()).collect()
    }
}
