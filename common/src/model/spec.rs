//! Models from a JSON spec (`--model net.json`; the format is documented in `docs/model-spec.md`):
//!
//! ```json
//! {"input": [1, 28, 28],
//!  "layers": [{"type": "flatten"},
//!             {"type": "linear", "out": 64},
//!             {"type": "relu"},
//!             {"type": "residual", "layers": [{"type": "layernorm"}, {"type": "linear", "out": 64}, {"type": "gelu"}]},
//!             {"type": "linear", "out": 10, "bias": false}],
//!  "loss": "cross_entropy"}
//! ```
//!
//! `input` is one sample's shape; each layer's input shape is the previous layer's output. The
//! names are PyTorch's `nn.Sequential` names: a layer is named by its index in its parent's list
//! unless it carries `"name"`, and nested names are joined by dots (`3.0.weight`), so a checkpoint
//! loads into the module [`NetSpec::torch_source`] prints with `load_state_dict(strict=True)`.
//!
//! Everything is checked while parsing, with checked arithmetic and before anything of the model's
//! size is allocated: unknown or missing fields, impossible shapes and names used twice are refused
//! with the JSON path of the problem (`layers[3].layers[0].out: missing`). The tensors' names and
//! shapes and the model's sizes ([`ModelSize`]) are computed here, so a checkpoint is validated
//! against a spec without building it.

use super::layer::{
    Attention, AvgPool2d, Conv2d, Embedding, Gelu, GeluTanh, Layer, LayerNorm, Linear, MaxPool2d,
    Monomial, Positional, Positions, Relu, Sequential, Sigmoid, Silu, Tanh,
};
use super::size::ModelSize;
use crate::device::cpu::ConvGeometry;
use crate::{Error, Result};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::Path;

/// The largest spec file read.
pub const MAX_SPEC_BYTES: u64 = 1 << 20;
/// The deepest nesting of `residual` / `sequential` blocks.
pub const MAX_SPEC_DEPTH: usize = 32;
/// The most features one sample may have at any layer (max-pool winners are kept as `u32`).
pub const MAX_SPEC_FEATURES: u64 = u32::MAX as u64;

/// The layer types a spec may use, as `"type"` spells them.
pub const SPEC_LAYER_TYPES: &[&str] = &[
    "linear",
    "conv2d",
    "maxpool2d",
    "avgpool2d",
    "flatten",
    "relu",
    "tanh",
    "gelu",
    "sigmoid",
    "silu",
    "identity",
    "layernorm",
    "monomial",
    "residual",
    "sequential",
    "embedding",
    "positional",
    "attention",
    "last",
    "positions",
];

/// The largest power of a `monomial` layer and the most parameters it may have.
pub const MAX_MONOMIAL_POWER: u64 = 64;
pub const MAX_MONOMIAL_PARAMS: usize = 64;

/// A validated model spec: its layers with their inferred input shapes, the tensors it defines and
/// its sizes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetSpec {
    name: String,
    source: Value,
    input: Vec<usize>,
    layers: Vec<LayerSpec>,
    /// The outputs per sample: `classes` for a flat output `[classes]`, `positions · classes` for a
    /// per-position output `[positions, classes]`.
    classes: usize,
    /// 1 for a flat output; the sequence length of a per-position output `[positions, classes]`,
    /// whose loss is the mean over positions (cross-entropy per token, see [`super::loss`]).
    positions: usize,
    /// The spec's `loss` (`cross_entropy` or `mse`), the tools' default when `--loss` is not given.
    loss: Option<String>,
    tensors: Vec<(String, Vec<usize>)>,
    size: ModelSize,
}

/// One layer of a spec: its name in its parent (index or `"name"`), its full dotted name, the
/// shape it takes, and what it is.
#[derive(Clone, Debug, PartialEq, Eq)]
struct LayerSpec {
    name: String,
    path: String,
    input: Vec<usize>,
    kind: Kind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    Linear {
        out: usize,
        bias: bool,
    },
    Conv2d {
        out: usize,
        kernel: usize,
        padding: usize,
        stride: usize,
        bias: bool,
    },
    MaxPool2d {
        kernel: usize,
        stride: usize,
    },
    AvgPool2d {
        kernel: usize,
        stride: usize,
    },
    Flatten,
    Identity,
    Act(Act),
    LayerNorm {
        eps_bits: u64,
        affine: bool,
    },
    Monomial {
        powers: Vec<u32>,
    },
    Residual(Vec<LayerSpec>),
    Sequential(Vec<LayerSpec>),
    Embedding {
        num: usize,
        dim: usize,
    },
    Positional,
    Attention {
        heads: usize,
        causal: bool,
        bias: bool,
    },
    Last,
    Positions {
        start: usize,
        step: usize,
        count: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Act {
    Relu,
    Tanh,
    Gelu,
    GeluTanh,
    Sigmoid,
    Silu,
}

impl Act {
    fn torch(self) -> &'static str {
        match self {
            Act::Relu => "nn.ReLU()",
            Act::Tanh => "nn.Tanh()",
            Act::Gelu => "nn.GELU()",
            Act::GeluTanh => "nn.GELU(approximate=\"tanh\")",
            Act::Sigmoid => "nn.Sigmoid()",
            Act::Silu => "nn.SiLU()",
        }
    }
    fn module(self) -> &'static str {
        match self {
            Act::Relu => "ReLU",
            Act::Tanh => "Tanh",
            Act::Gelu | Act::GeluTanh => "GELU",
            Act::Sigmoid => "Sigmoid",
            Act::Silu => "SiLU",
        }
    }
    fn layer(self, features: usize) -> Layer {
        match self {
            Act::Relu => Relu { features }.into(),
            Act::Tanh => Tanh { features }.into(),
            Act::Gelu => Gelu { features }.into(),
            Act::GeluTanh => GeluTanh { features }.into(),
            Act::Sigmoid => Sigmoid { features }.into(),
            Act::Silu => Silu { features }.into(),
        }
    }
}

/// The transformer presets, for modular addition with p = 113 (Nanda et al. 2023, "Progress measures
/// for grokking via mechanistic interpretability"; Power et al. 2022): sequences `[a, b, =]` of 3
/// tokens from a vocabulary of p + 1 (`=` is token p), p classes read at the last position; width
/// 128, 4 heads, MLP 512, pre-LayerNorm residual blocks, causal attention, a final LayerNorm.
/// `transformer_1l` has one block pair, `transformer_2l` two.
pub const TRANSFORMER_PRESETS: &[&str] = &["transformer_1l", "transformer_2l"];

/// The spec of a preset of [`TRANSFORMER_PRESETS`], `None` for another name.
pub fn transformer_preset(name: &str) -> Option<NetSpec> {
    let blocks = match name {
        "transformer_1l" => 1,
        "transformer_2l" => 2,
        _ => return None,
    };
    let (p, width, heads, mlp) = (113, 128, 4, 512);
    let mut layers = vec![
        serde_json::json!({"type": "embedding", "num": p + 1, "dim": width}),
        serde_json::json!({"type": "positional"}),
    ];
    for _ in 0..blocks {
        layers.push(serde_json::json!({"type": "residual", "layers": [
            {"type": "layernorm"}, {"type": "attention", "heads": heads, "causal": true}]}));
        layers.push(serde_json::json!({"type": "residual", "layers": [
            {"type": "layernorm"}, {"type": "linear", "out": mlp}, {"type": "gelu"},
            {"type": "linear", "out": width}]}));
    }
    layers.extend([
        serde_json::json!({"type": "layernorm"}),
        serde_json::json!({"type": "last"}),
        serde_json::json!({"type": "linear", "out": p}),
    ]);
    let v = serde_json::json!({"input": [3], "layers": layers, "loss": "cross_entropy"});
    Some(NetSpec::from_json(name, &v).expect("the presets are valid specs"))
}

/// Whether `--model` names a spec file rather than a preset: it ends in `.json` or contains a path
/// separator (no preset name does either).
pub fn is_spec_path(model: &str) -> bool {
    model.to_ascii_lowercase().ends_with(".json") || model.contains('/') || model.contains('\\')
}

fn shape_str(s: &[usize]) -> String {
    format!(
        "[{}]",
        s.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// What parsing accumulates: the tensors in `state_dict` order and the sizes.
#[derive(Default)]
struct Totals {
    tensors: Vec<(String, Vec<usize>)>,
    params: u64,
    activations: u64,
    scratch: u64,
}

impl Totals {
    fn add_params(&mut self, at: &str, n: u64) -> Result<()> {
        self.params = self.params.checked_add(n).ok_or_else(|| {
            Error::spec(
                at,
                "the model has more parameters than a 64-bit count holds",
            )
        })?;
        Ok(())
    }
    fn add_activations(&mut self, at: &str, n: u64) -> Result<()> {
        self.activations = self
            .activations
            .checked_add(n)
            .ok_or_else(|| Error::spec(at, "the model's activations overflow a 64-bit count"))?;
        Ok(())
    }
    fn tensor(&mut self, at: &str, path: &str, name: &str, shape: Vec<usize>) -> Result<()> {
        let n = shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
            .filter(|&n| usize::try_from(n).is_ok())
            .ok_or_else(|| {
                Error::spec(
                    at,
                    format!("tensor {name} of shape {} is too large", shape_str(&shape)),
                )
            })?;
        self.add_params(at, n)?;
        self.tensors.push((format!("{path}.{name}"), shape));
        Ok(())
    }
}

/// The features of a shape, checked against [`MAX_SPEC_FEATURES`].
fn features(at: &str, shape: &[usize]) -> Result<u64> {
    shape
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
        .filter(|&n| n <= MAX_SPEC_FEATURES)
        .ok_or_else(|| {
            Error::spec(
                at,
                format!(
                    "the shape {} has more than {MAX_SPEC_FEATURES} features per sample",
                    shape_str(shape)
                ),
            )
        })
}

/// The field `key` of a layer as an integer of at least `min` (`default` when absent, if any).
fn uint(
    obj: &Map<String, Value>,
    at: &str,
    key: &str,
    min: u64,
    default: Option<u64>,
) -> Result<usize> {
    let here = format!("{at}.{key}");
    let v = match obj.get(key) {
        None => default.ok_or_else(|| Error::spec(&here, "missing"))?,
        Some(v) => v
            .as_u64()
            .filter(|&n| n >= min)
            .ok_or_else(|| Error::spec(&here, format!("must be an integer ≥ {min}, got {v}")))?,
    };
    // The features check bounds every size that matters; this keeps the value a usize.
    usize::try_from(v).map_err(|_| Error::spec(&here, format!("{v} is too large")))
}

fn boolean(obj: &Map<String, Value>, at: &str, key: &str, default: bool) -> Result<bool> {
    match obj.get(key) {
        None => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(Error::spec(
            format!("{at}.{key}"),
            format!("must be true or false, got {v}"),
        )),
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Parses a list of layers at `at` taking `input`, under the dotted `prefix`; returns them, the
/// output shape and how many layers they build (flatten and identity build none).
fn parse_layers(
    v: &Value,
    at: &str,
    input: &[usize],
    prefix: &str,
    depth: usize,
    totals: &mut Totals,
) -> Result<(Vec<LayerSpec>, Vec<usize>, usize)> {
    if depth > MAX_SPEC_DEPTH {
        return Err(Error::spec(
            at,
            format!("blocks nested more than {MAX_SPEC_DEPTH} deep"),
        ));
    }
    let list = v
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| Error::spec(at, "must be a non-empty list of layers"))?;
    let mut names: HashMap<String, usize> = HashMap::new();
    for (i, l) in list.iter().enumerate() {
        let name = match l.get("name") {
            None => i.to_string(),
            Some(Value::String(s)) if !s.is_empty() && !s.contains('.') => s.clone(),
            Some(other) => {
                return Err(Error::spec(
                    format!("{at}[{i}].name"),
                    format!("must be a non-empty string without dots, got {other}"),
                ))
            }
        };
        if let Some(j) = names.insert(name.clone(), i) {
            return Err(Error::spec(
                format!("{at}[{i}].name"),
                format!("'{name}' is used twice (also by {at}[{j}])"),
            ));
        }
    }
    let mut shape = input.to_vec();
    let mut layers = Vec::with_capacity(list.len());
    let mut built = 0;
    for (i, l) in list.iter().enumerate() {
        let name = match l.get("name").and_then(Value::as_str) {
            Some(n) => n.to_string(),
            None => i.to_string(),
        };
        let path = join(prefix, &name);
        let here = format!("{at}[{i}]");
        if l.get("type").and_then(Value::as_str) == Some("embedding") && (depth > 0 || i > 0) {
            return Err(Error::spec(
                here,
                "an embedding reads token ids, so it must be the model's first layer",
            ));
        }
        let (layer, out, n) = parse_layer(l, &here, &shape, name, path, depth, totals)?;
        layers.push(layer);
        shape = out;
        built += n;
    }
    Ok((layers, shape, built))
}

/// The fields each type takes besides `type` and `name`.
fn fields_of(ty: &str) -> Option<&'static [&'static str]> {
    Some(match ty {
        "linear" => &["out", "bias"],
        "conv2d" => &["out", "kernel", "stride", "padding", "bias"],
        "maxpool2d" | "avgpool2d" => &["kernel", "stride"],
        "flatten" | "relu" | "tanh" | "sigmoid" | "silu" | "identity" => &[],
        "gelu" => &["approximate"],
        "layernorm" => &["eps", "affine"],
        "monomial" => &["powers"],
        "residual" | "sequential" => &["layers"],
        "embedding" => &["num", "dim"],
        "positional" | "last" => &[],
        "positions" => &["start", "step", "count"],
        "attention" => &["heads", "causal", "bias"],
        _ => return None,
    })
}

#[allow(clippy::too_many_arguments)]
fn parse_layer(
    v: &Value,
    at: &str,
    input: &[usize],
    name: String,
    path: String,
    depth: usize,
    totals: &mut Totals,
) -> Result<(LayerSpec, Vec<usize>, usize)> {
    let obj = v
        .as_object()
        .ok_or_else(|| Error::spec(at, format!("must be an object with a \"type\", got {v}")))?;
    let ty = match obj.get("type") {
        None => return Err(Error::spec(format!("{at}.type"), "missing")),
        Some(Value::String(t)) => t.as_str(),
        Some(other) => {
            return Err(Error::spec(
                format!("{at}.type"),
                format!("must be a string, got {other}"),
            ))
        }
    };
    let fields = fields_of(ty).ok_or_else(|| {
        Error::spec(
            format!("{at}.type"),
            format!(
                "unknown layer type '{ty}' (expected one of {})",
                SPEC_LAYER_TYPES.join(", ")
            ),
        )
    })?;
    if let Some(k) = obj
        .keys()
        .find(|k| *k != "type" && *k != "name" && !fields.contains(&k.as_str()))
    {
        let expected = if fields.is_empty() {
            "only type and name".to_string()
        } else {
            format!("{}, name", fields.join(", "))
        };
        return Err(Error::spec(
            format!("{at}.{k}"),
            format!("unknown field for {ty} (it takes {expected})"),
        ));
    }
    let f = features(at, input)?;
    let flat = |what: &str| -> Result<usize> {
        match input {
            [n] => Ok(*n),
            _ => Err(Error::spec(
                at,
                format!(
                    "{what} takes a flat input but gets {} (add a flatten before it)",
                    shape_str(input)
                ),
            )),
        }
    };
    let image = |what: &str| -> Result<[usize; 3]> {
        match input {
            [c, h, w] => Ok([*c, *h, *w]),
            _ => Err(Error::spec(
                at,
                format!(
                    "{what} takes [channels, height, width] but gets {}",
                    shape_str(input)
                ),
            )),
        }
    };
    let sequence = |what: &str| -> Result<[usize; 2]> {
        match input {
            [s, d] => Ok([*s, *d]),
            _ => Err(Error::spec(
                at,
                format!(
                    "{what} takes a sequence [positions, dim] but gets {}",
                    shape_str(input)
                ),
            )),
        }
    };
    let act = |a: Act| Ok((Kind::Act(a), input.to_vec()));
    let (kind, out) = match ty {
        "linear" => {
            // A flat input, or each position of a sequence (the last axis, as nn.Linear maps it).
            let (fan_in, positions) = match input {
                [s, d] => (*d, Some(*s)),
                _ => (flat("linear")?, None),
            };
            let out = uint(obj, at, "out", 1, None)?;
            let bias = boolean(obj, at, "bias", true)?;
            totals.tensor(at, &path, "weight", vec![out, fan_in])?;
            if bias {
                totals.tensor(at, &path, "bias", vec![out])?;
            }
            let shape = match positions {
                Some(s) => vec![s, out],
                None => vec![out],
            };
            (Kind::Linear { out, bias }, shape)
        }
        "embedding" => {
            let seq = match input {
                [s] => *s,
                _ => {
                    return Err(Error::spec(
                        at,
                        format!(
                            "embedding takes a sequence of token ids [positions] but gets {}",
                            shape_str(input)
                        ),
                    ))
                }
            };
            let num = uint(obj, at, "num", 1, None)?;
            let dim = uint(obj, at, "dim", 1, None)?;
            totals.tensor(at, &path, "weight", vec![num, dim])?;
            (Kind::Embedding { num, dim }, vec![seq, dim])
        }
        "positional" => {
            let [s, d] = sequence("positional")?;
            totals.tensor(at, &path, "weight", vec![s, d])?;
            (Kind::Positional, vec![s, d])
        }
        "attention" => {
            let [s, d] = sequence("attention")?;
            let heads = uint(obj, at, "heads", 1, None)?;
            if !d.is_multiple_of(heads) {
                return Err(Error::spec(
                    format!("{at}.heads"),
                    format!("{heads} heads do not divide the width {d}"),
                ));
            }
            let causal = boolean(obj, at, "causal", false)?;
            let bias = boolean(obj, at, "bias", true)?;
            totals.tensor(at, &path, "in_proj_weight", vec![3 * d, d])?;
            if bias {
                totals.tensor(at, &path, "in_proj_bias", vec![3 * d])?;
            }
            totals.tensor(at, &path, "out_proj.weight", vec![d, d])?;
            if bias {
                totals.tensor(at, &path, "out_proj.bias", vec![d])?;
            }
            // One sample's share of the passes' scratch (the R-backward's ∂O, R{∂O}, ∂[Q K V] and
            // R{∂[Q K V]}: 8·s·d) and of the forward state it keeps ([Q K V], O and P:
            // 4·s·d + heads·s²).
            let block = (s as u64)
                .checked_mul(d as u64)
                .and_then(|sd| sd.checked_mul(12))
                .and_then(|a| {
                    (heads as u64)
                        .checked_mul(s as u64)?
                        .checked_mul(s as u64)?
                        .checked_add(a)
                })
                .ok_or_else(|| Error::spec(at, "the attention's scratch overflows"))?;
            totals.scratch = totals.scratch.max(block);
            (
                Kind::Attention {
                    heads,
                    causal,
                    bias,
                },
                vec![s, d],
            )
        }
        "last" => {
            let [_, d] = sequence("last")?;
            (Kind::Last, vec![d])
        }
        "positions" => {
            // PyTorch's x[:, start::step], cut to `count` positions when given.
            let [s, d] = sequence("positions")?;
            let start = uint(obj, at, "start", 0, Some(0))?;
            let step = uint(obj, at, "step", 1, Some(1))?;
            if start >= s {
                return Err(Error::spec(
                    format!("{at}.start"),
                    format!(
                        "position {start} is past the input {} (positions 0 to {})",
                        shape_str(input),
                        s - 1
                    ),
                ));
            }
            let available = Positions::available(s, start, step);
            let count = match obj.get("count") {
                None => available,
                Some(_) => {
                    let count = uint(obj, at, "count", 1, None)?;
                    if count > available {
                        return Err(Error::spec(
                            format!("{at}.count"),
                            format!(
                                "{count} positions from {start} in steps of {step} do not fit the \
                                 input {} (x[:, {start}::{step}] has {available})",
                                shape_str(input)
                            ),
                        ));
                    }
                    count
                }
            };
            (Kind::Positions { start, step, count }, vec![count, d])
        }
        "conv2d" => {
            let [c, h, w] = image("conv2d")?;
            let out = uint(obj, at, "out", 1, None)?;
            let kernel = uint(obj, at, "kernel", 1, None)?;
            let padding = uint(obj, at, "padding", 0, Some(0))?;
            let stride = uint(obj, at, "stride", 1, Some(1))?;
            let bias = boolean(obj, at, "bias", true)?;
            // PyTorch's ⌊(side + 2·padding − kernel)/stride⌋ + 1, refused where the kernel does not
            // fit the padded input.
            let side = |s: usize| {
                Some(
                    s.checked_add(padding.checked_mul(2)?)?
                        .checked_sub(kernel)?
                        / stride
                        + 1,
                )
            };
            let (Some(ho), Some(wo)) = (side(h), side(w)) else {
                return Err(Error::spec(
                    at,
                    format!(
                        "a {kernel}×{kernel} kernel with padding {padding} does not fit the \
                         {h}×{w} input {}",
                        shape_str(input)
                    ),
                ));
            };
            totals.tensor(at, &path, "weight", vec![out, c, kernel, kernel])?;
            if bias {
                totals.tensor(at, &path, "bias", vec![out])?;
            }
            let out_shape = vec![out, ho, wo];
            features(at, &out_shape)?;
            // One sample's im2col matrix: (c·k²) × (ho·wo).
            let cols = [c, kernel, kernel, ho, wo]
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
                .ok_or_else(|| Error::spec(at, "the convolution's im2col matrix overflows"))?;
            totals.scratch = totals.scratch.max(cols);
            (
                Kind::Conv2d {
                    out,
                    kernel,
                    padding,
                    stride,
                    bias,
                },
                out_shape,
            )
        }
        "maxpool2d" => {
            let [c, h, w] = image("maxpool2d")?;
            let kernel = uint(obj, at, "kernel", 1, None)?;
            let stride = uint(obj, at, "stride", 1, Some(kernel as u64))?;
            if kernel > h || kernel > w {
                return Err(Error::spec(
                    at,
                    format!(
                        "a {kernel}×{kernel} pooling does not fit the input {}",
                        shape_str(input)
                    ),
                ));
            }
            let side = |s: usize| (s - kernel) / stride + 1;
            (
                Kind::MaxPool2d { kernel, stride },
                vec![c, side(h), side(w)],
            )
        }
        "avgpool2d" => {
            let [c, h, w] = image("avgpool2d")?;
            let kernel = uint(obj, at, "kernel", 1, None)?;
            let stride = uint(obj, at, "stride", 1, Some(kernel as u64))?;
            if kernel > h || kernel > w {
                return Err(Error::spec(
                    at,
                    format!(
                        "a {kernel}×{kernel} pooling does not fit the input {}",
                        shape_str(input)
                    ),
                ));
            }
            let side = |s: usize| (s - kernel) / stride + 1;
            (
                Kind::AvgPool2d { kernel, stride },
                vec![c, side(h), side(w)],
            )
        }
        "flatten" => (Kind::Flatten, vec![f as usize]),
        "identity" => (Kind::Identity, input.to_vec()),
        "relu" => act(Act::Relu)?,
        "tanh" => act(Act::Tanh)?,
        "sigmoid" => act(Act::Sigmoid)?,
        "silu" => act(Act::Silu)?,
        "gelu" => match obj.get("approximate") {
            None => act(Act::Gelu)?,
            Some(Value::String(s)) if s == "none" => act(Act::Gelu)?,
            Some(Value::String(s)) if s == "tanh" => act(Act::GeluTanh)?,
            Some(other) => {
                return Err(Error::spec(
                    format!("{at}.approximate"),
                    format!("must be \"none\" or \"tanh\", got {other}"),
                ))
            }
        },
        "layernorm" => {
            let eps = match obj.get("eps") {
                None => 1e-5,
                Some(v) => v
                    .as_f64()
                    .filter(|e| e.is_finite() && *e > 0.0)
                    .ok_or_else(|| {
                        Error::spec(
                            format!("{at}.eps"),
                            format!("must be a positive number, got {v}"),
                        )
                    })?,
            };
            let affine = boolean(obj, at, "affine", true)?;
            let dim = *input.last().expect("shapes are not empty");
            if affine {
                totals.tensor(at, &path, "weight", vec![dim])?;
                totals.tensor(at, &path, "bias", vec![dim])?;
            }
            (
                Kind::LayerNorm {
                    eps_bits: eps.to_bits(),
                    affine,
                },
                input.to_vec(),
            )
        }
        "monomial" => {
            let at_powers = format!("{at}.powers");
            let bad = |got: &Value| {
                Error::spec(
                    &at_powers,
                    format!(
                        "must be a list of 1 to {MAX_MONOMIAL_PARAMS} integers from 0 to \
                         {MAX_MONOMIAL_POWER}, got {got}"
                    ),
                )
            };
            let list = obj
                .get("powers")
                .ok_or_else(|| Error::spec(&at_powers, "missing"))?;
            let powers: Vec<u32> = match list.as_array() {
                Some(a) if (1..=MAX_MONOMIAL_PARAMS).contains(&a.len()) => a
                    .iter()
                    .map(|k| {
                        k.as_u64()
                            .filter(|&k| k <= MAX_MONOMIAL_POWER)
                            .map(|k| k as u32)
                    })
                    .collect::<Option<_>>()
                    .ok_or_else(|| bad(list))?,
                _ => return Err(bad(list)),
            };
            totals.tensor(at, &path, "weights", vec![powers.len()])?;
            (Kind::Monomial { powers }, input.to_vec())
        }
        "residual" | "sequential" => {
            let list = obj
                .get("layers")
                .ok_or_else(|| Error::spec(format!("{at}.layers"), "missing"))?;
            let inner_at = format!("{at}.layers");
            let (inner, out, built) =
                parse_layers(list, &inner_at, input, &path, depth + 1, totals)?;
            if ty == "sequential" {
                return Ok((
                    LayerSpec {
                        name,
                        path,
                        input: input.to_vec(),
                        kind: Kind::Sequential(inner),
                    },
                    out,
                    built,
                ));
            }
            if out != input {
                return Err(Error::spec(
                    at,
                    format!(
                        "the block's output {} differs from its input {} (x + f(x) needs the same \
                         shape)",
                        shape_str(&out),
                        shape_str(input)
                    ),
                ));
            }
            if built == 0 {
                return Err(Error::spec(
                    inner_at,
                    "a residual block needs a layer other than identity or flatten",
                ));
            }
            (Kind::Residual(inner), out)
        }
        _ => unreachable!("fields_of knows the type"),
    };
    let builds = !matches!(kind, Kind::Flatten | Kind::Identity);
    if builds {
        let out_features = features(at, &out)?;
        totals.add_activations(at, out_features)?;
    }
    Ok((
        LayerSpec {
            name,
            path,
            input: input.to_vec(),
            kind,
        },
        out,
        usize::from(builds),
    ))
}

impl NetSpec {
    /// Reads and validates the spec file at `path` (its stem names the model).
    ///
    /// # Errors
    /// [`Error::Io`] when it cannot be read, [`Error::Spec`] (naming the file) when it is not JSON,
    /// larger than [`MAX_SPEC_BYTES`], or malformed.
    pub fn load(path: &Path) -> Result<NetSpec> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if !meta.is_file() || meta.len() > MAX_SPEC_BYTES {
            return Err(Error::spec(
                path.display().to_string(),
                format!("not a regular file of at most {MAX_SPEC_BYTES} bytes"),
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::spec(path.display().to_string(), format!("not valid JSON: {e}")))?;
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("spec")
            .to_string();
        NetSpec::from_json(&name, &v)
    }

    /// Validates the spec `v` (see the module documentation) under the label `name`.
    ///
    /// # Errors
    /// [`Error::Spec`] with the JSON path of the first problem.
    pub fn from_json(name: &str, v: &Value) -> Result<NetSpec> {
        let obj = v
            .as_object()
            .ok_or_else(|| Error::spec("spec", "must be a JSON object with input and layers"))?;
        if let Some(k) = obj
            .keys()
            .find(|k| !["input", "layers", "loss"].contains(&k.as_str()))
        {
            return Err(Error::spec(
                k.as_str(),
                "unknown field (a spec has input, layers and loss)",
            ));
        }
        let input: Vec<usize> = match obj.get("input") {
            None => return Err(Error::spec("input", "missing")),
            Some(Value::Array(a)) if (1..=3).contains(&a.len()) => a
                .iter()
                .map(|d| {
                    d.as_u64()
                        .filter(|&d| d >= 1)
                        .and_then(|d| usize::try_from(d).ok())
                })
                .collect::<Option<_>>()
                .ok_or_else(|| {
                    Error::spec(
                        "input",
                        format!("sizes must be integers ≥ 1, got {}", obj["input"]),
                    )
                })?,
            Some(other) => {
                return Err(Error::spec(
                    "input",
                    format!(
                    "must be one sample's shape, 1 to 3 sizes ([784] or [1, 28, 28]), got {other}"
                ),
                ))
            }
        };
        features("input", &input)?;
        let loss = match obj.get("loss") {
            None => None,
            Some(Value::String(s)) if s == "cross_entropy" || s == "mse" => Some(s.clone()),
            Some(other) => {
                return Err(Error::spec(
                    "loss",
                    format!("must be \"cross_entropy\" or \"mse\", got {other}"),
                ))
            }
        };
        let list = obj
            .get("layers")
            .ok_or_else(|| Error::spec("layers", "missing"))?;
        let mut totals = Totals::default();
        let (layers, out, built) = parse_layers(list, "layers", &input, "", 0, &mut totals)?;
        if built == 0 {
            return Err(Error::spec(
                "layers",
                "no layer computes anything (only flatten and identity)",
            ));
        }
        // Cross-entropy needs [classes] or [positions, classes] with at least two classes; the
        // mean squared error [k] or [positions, k] with k ≥ 1. Without a `loss` the tools choose it
        // from the targets, and refuse one output with cross-entropy then.
        let least = if loss.as_deref() == Some("cross_entropy") {
            2
        } else {
            1
        };
        let (positions, per_position) = match out[..] {
            [c] if c >= least => (1, c),
            [s, c] if c >= least => (s, c),
            _ => {
                let needs = if least == 2 {
                    "cross-entropy needs [classes] or [positions, classes] with at least 2 classes"
                } else {
                    "the loss needs a flat output [k] or one per position [positions, k]"
                };
                return Err(Error::spec(
                    "layers",
                    format!("the model's output is {}, but {needs}", shape_str(&out)),
                ));
            }
        };
        // (The features check bounds the product.)
        let classes = positions * per_position;
        let size = ModelSize {
            params: totals.params,
            tensors: totals.tensors.len() as u64,
            activations: totals.activations,
            scratch: totals.scratch,
        };
        Ok(NetSpec {
            name: name.to_string(),
            source: v.clone(),
            input,
            layers,
            classes,
            positions,
            loss,
            tensors: totals.tensors,
            size,
        })
    }

    /// The model's label (the file's stem).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The spec as written (what checkpoints and records carry).
    pub fn source(&self) -> &Value {
        &self.source
    }
    /// One sample's shape.
    pub fn input(&self) -> &[usize] {
        &self.input
    }
    pub fn input_features(&self) -> usize {
        self.input.iter().product()
    }
    /// The outputs per sample (`positions · classes` for a per-position output).
    pub fn classes(&self) -> usize {
        self.classes
    }
    /// The positions of a per-position output `[positions, classes]`; 1 for a flat output.
    pub fn positions(&self) -> usize {
        self.positions
    }
    /// The spec's `loss`, if it names one.
    pub fn loss(&self) -> Option<&str> {
        self.loss.as_deref()
    }
    pub fn size(&self) -> ModelSize {
        self.size
    }
    /// Tensor names and shapes in `state_dict` order.
    pub fn tensors(&self) -> &[(String, Vec<usize>)] {
        &self.tensors
    }

    /// The first layer (depth first) that is not piecewise linear: its dotted name and module.
    pub fn first_curved_layer(&self) -> Option<(String, &'static str)> {
        fn walk(layers: &[LayerSpec]) -> Option<(String, &'static str)> {
            layers.iter().find_map(|l| match &l.kind {
                Kind::Act(a) if *a != Act::Relu => Some((l.path.clone(), a.module())),
                Kind::LayerNorm { .. } => Some((l.path.clone(), "LayerNorm")),
                Kind::Attention { .. } => Some((l.path.clone(), "MultiheadAttention")),
                Kind::Monomial { powers } if powers.iter().any(|&k| k > 1) => {
                    Some((l.path.clone(), "Monomial"))
                }
                Kind::Residual(inner) | Kind::Sequential(inner) => walk(inner),
                _ => None,
            })
        }
        walk(&self.layers)
    }

    /// Defines the layers with `seq` (names by construction, as `nn.Sequential`'s).
    pub(crate) fn define(&self, seq: &mut Sequential<'_>) {
        define(seq, &self.layers);
    }

    /// The PyTorch source of the module (float32 by default; `.double()` for float64): an
    /// `nn.Sequential` of `OrderedDict`s with the spec's names, and the `Residual` class.
    pub fn torch_source(&self) -> String {
        let mut body = String::new();
        torch_list(&mut body, "nn.Sequential", &self.layers, 1);
        fn uses(layers: &[LayerSpec], kind: &dyn Fn(&Kind) -> bool) -> bool {
            layers.iter().any(|l| match &l.kind {
                Kind::Residual(inner) | Kind::Sequential(inner) => uses(inner, kind),
                k => kind(k),
            })
        }
        let sequence = uses(&self.layers, &|k| {
            matches!(
                k,
                Kind::Embedding { .. }
                    | Kind::Positional
                    | Kind::Attention { .. }
                    | Kind::Last
                    | Kind::Positions { .. }
            )
        });
        let positions = if uses(&self.layers, &|k| matches!(k, Kind::Positions { .. })) {
            TORCH_POSITIONS_CLASS
        } else {
            ""
        };
        let modules = if sequence {
            format!("{TORCH_SEQUENCE_CLASSES}{positions}")
        } else {
            String::new()
        };
        // devinterp's Polynomial test model, under our name and with the same state_dict.
        let monomial = if uses(&self.layers, &|k| matches!(k, Kind::Monomial { .. })) {
            "class Monomial(nn.Module):\n\
             \x20   \"\"\"y = x * prod(weights ** powers) (devinterp's Polynomial).\"\"\"\n\
             \n\
             \x20   def __init__(self, powers):\n\
             \x20       super().__init__()\n\
             \x20       self.powers = list(powers)\n\
             \x20       self.weights = nn.Parameter(torch.zeros(len(self.powers)))\n\
             \n\
             \x20   def forward(self, x):\n\
             \x20       p = torch.ones((), dtype=self.weights.dtype)\n\
             \x20       for w, k in zip(self.weights, self.powers):\n\
             \x20           p = p * w**k\n\
             \x20       return x * p\n\
             \n\
             \n"
        } else {
            ""
        };
        let import = if sequence || !monomial.is_empty() {
            "import torch\n"
        } else {
            ""
        };
        format!(
            "# The PyTorch module of the model spec '{name}' (input {input}, {classes} outputs).\n\
             # Its state_dict names are those of our checkpoints:\n\
             #   from safetensors.torch import load_file\n\
             #   model = build(); model.load_state_dict(load_file(\"run/final.safetensors\"), strict=True)\n\
             from collections import OrderedDict\n\
             \n\
             {import}from torch import nn\n\
             \n\
             \n\
             {monomial}class Residual(nn.Sequential):\n\
             \x20   \"\"\"y = x + f(x), f its modules in order.\"\"\"\n\
             \n\
             \x20   def forward(self, x):\n\
             \x20       return x + super().forward(x)\n\
             \n\
             \n\
             {modules}def build():\n\
             \x20   return {body}\n",
            name = self.name,
            input = shape_str(&self.input),
            classes = if self.positions > 1 {
                format!(
                    "{} = {}",
                    self.classes,
                    shape_str(&[self.positions, self.classes / self.positions])
                )
            } else {
                self.classes.to_string()
            },
        )
    }
}

/// The modules of the sequence layers that PyTorch does not have as such: token ids stored as
/// floats, a learned positional embedding, self-attention called on one input, the last position.
const TORCH_SEQUENCE_CLASSES: &str = r#"class Embedding(nn.Embedding):
    """nn.Embedding on token ids stored as floats."""

    def forward(self, x):
        return super().forward(x.long())


class Positional(nn.Module):
    """y = x + weight, a learned [positions, dim] embedding (N(0, 1) as nn.Embedding's)."""

    def __init__(self, positions, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(positions, dim))

    def forward(self, x):
        return x + self.weight


class SelfAttention(nn.MultiheadAttention):
    """Self-attention on [batch, positions, dim]; causal: position i attends to 0..i only."""

    def __init__(self, dim, heads, causal=False, bias=True):
        super().__init__(dim, heads, bias=bias, batch_first=True)
        self.causal = causal

    def forward(self, x):
        n = x.shape[1]
        mask = None
        if self.causal:
            mask = torch.triu(torch.ones(n, n, dtype=torch.bool, device=x.device), 1)
        return super().forward(x, x, x, attn_mask=mask, need_weights=False)[0]


class Last(nn.Module):
    """The last position: [batch, positions, dim] -> [batch, dim]."""

    def forward(self, x):
        return x[:, -1]


"#;

/// The module of the `positions` layer, printed only where a spec uses one (so the modules printed
/// for other specs stay as they were).
const TORCH_POSITIONS_CLASS: &str = r#"class Positions(nn.Module):
    """x[:, start::step][:, :count]: [batch, positions, dim] -> [batch, count, dim]."""

    def __init__(self, start, step, count):
        super().__init__()
        self.start, self.step, self.count = start, step, count

    def forward(self, x):
        return x[:, self.start::self.step][:, :self.count]


"#;

fn define(seq: &mut Sequential<'_>, layers: &[LayerSpec]) {
    for l in layers {
        let f: usize = l.input.iter().product();
        match &l.kind {
            Kind::Linear { out, bias } => match l.input[..] {
                [s, d] => seq.named(&l.name, |sc| Linear::per_position(sc, s, d, *out, *bias)),
                _ => seq.named(&l.name, |s| Linear::with_bias(s, f, *out, *bias)),
            },
            Kind::Embedding { num, dim } => {
                seq.named(&l.name, |s| Embedding::new(s, *num, *dim, l.input[0]));
            }
            Kind::Positional => {
                seq.named(&l.name, |s| Positional::new(s, l.input[0], l.input[1]));
            }
            Kind::Attention {
                heads,
                causal,
                bias,
            } => seq.named(&l.name, |s| {
                Attention::new(s, l.input[0], l.input[1], *heads, *causal, *bias)
            }),
            Kind::Last => seq.functional(Positions::last(l.input[0], l.input[1])),
            Kind::Positions { start, step, count } => seq.functional(Positions {
                seq: l.input[0],
                dim: l.input[1],
                start: *start,
                step: *step,
                count: *count,
            }),
            Kind::Conv2d {
                out,
                kernel,
                padding,
                stride,
                bias,
            } => {
                let g = ConvGeometry {
                    channels: l.input[0],
                    height: l.input[1],
                    width: l.input[2],
                    kernel: *kernel,
                    padding: *padding,
                    stride: *stride,
                };
                seq.named(&l.name, |s| Conv2d::with_bias(s, g, *out, *bias));
            }
            Kind::MaxPool2d { kernel, stride } => seq.functional(MaxPool2d {
                channels: l.input[0],
                height: l.input[1],
                width: l.input[2],
                kernel: *kernel,
                stride: *stride,
            }),
            Kind::AvgPool2d { kernel, stride } => seq.functional(AvgPool2d {
                channels: l.input[0],
                height: l.input[1],
                width: l.input[2],
                kernel: *kernel,
                stride: *stride,
            }),
            Kind::Flatten | Kind::Identity => {}
            Kind::Act(a) => seq.functional(a.layer(f)),
            Kind::LayerNorm { eps_bits, affine } => {
                let dim = *l.input.last().expect("not empty");
                let eps = f64::from_bits(*eps_bits);
                seq.named(&l.name, |s| LayerNorm::new(s, f, dim, eps, *affine));
            }
            Kind::Monomial { powers } => {
                seq.named(&l.name, |s| Monomial::new(s, f, powers.clone()));
            }
            Kind::Residual(inner) => seq.residual(&l.name, f, |r| define(r, inner)),
            Kind::Sequential(inner) => seq.sequential(&l.name, |q| define(q, inner)),
        }
    }
}

/// Appends `ctor(OrderedDict([...]))` for `layers`, indented `level` steps inside.
fn torch_list(out: &mut String, ctor: &str, layers: &[LayerSpec], level: usize) {
    let pad = "    ".repeat(level + 1);
    out.push_str(ctor);
    out.push_str("(OrderedDict([\n");
    for l in layers {
        out.push_str(&pad);
        out.push_str(&format!("(\"{}\", ", l.name));
        match &l.kind {
            Kind::Linear { out: o, bias } => {
                let tail = if *bias { "" } else { ", bias=False" };
                let fan_in = l.input.last().expect("not empty");
                out.push_str(&format!("nn.Linear({fan_in}, {o}{tail})"));
            }
            Kind::Embedding { num, dim } => out.push_str(&format!("Embedding({num}, {dim})")),
            Kind::Positional => {
                out.push_str(&format!("Positional({}, {})", l.input[0], l.input[1]))
            }
            Kind::Attention {
                heads,
                causal,
                bias,
            } => out.push_str(&format!(
                "SelfAttention({}, {heads}, causal={}, bias={})",
                l.input[1],
                if *causal { "True" } else { "False" },
                if *bias { "True" } else { "False" },
            )),
            Kind::Last => out.push_str("Last()"),
            Kind::Positions { start, step, count } => out.push_str(&format!(
                "Positions(start={start}, step={step}, count={count})"
            )),
            Kind::Conv2d {
                out: o,
                kernel,
                padding,
                stride,
                bias,
            } => {
                let step = if *stride == 1 {
                    String::new()
                } else {
                    format!("stride={stride}, ")
                };
                let tail = if *bias { "" } else { ", bias=False" };
                out.push_str(&format!(
                    "nn.Conv2d({}, {o}, {kernel}, {step}padding={padding}{tail})",
                    l.input[0]
                ))
            }
            Kind::MaxPool2d { kernel, stride } if stride == kernel => {
                out.push_str(&format!("nn.MaxPool2d({kernel})"))
            }
            Kind::MaxPool2d { kernel, stride } => {
                out.push_str(&format!("nn.MaxPool2d({kernel}, stride={stride})"))
            }
            Kind::AvgPool2d { kernel, stride } => {
                out.push_str(&format!("nn.AvgPool2d({kernel}, stride={stride})"))
            }
            Kind::Flatten => out.push_str("nn.Flatten()"),
            Kind::Identity => out.push_str("nn.Identity()"),
            Kind::Act(a) => out.push_str(a.torch()),
            Kind::LayerNorm { eps_bits, affine } => out.push_str(&format!(
                "nn.LayerNorm({}, eps={:?}, elementwise_affine={})",
                l.input.last().expect("not empty"),
                f64::from_bits(*eps_bits),
                if *affine { "True" } else { "False" }
            )),
            Kind::Monomial { powers } => out.push_str(&format!("Monomial({powers:?})")),
            Kind::Residual(inner) => torch_list(out, "Residual", inner, level + 1),
            Kind::Sequential(inner) => torch_list(out, "nn.Sequential", inner, level + 1),
        }
        out.push_str("),\n");
    }
    out.push_str(&"    ".repeat(level));
    out.push_str("]))");
}

#[cfg(test)]
mod tests;
