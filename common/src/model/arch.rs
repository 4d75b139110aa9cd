//! Architectures: the paper's MLPs and LeNet, described well enough to rebuild them from metadata.

use super::layer::{
    self, Conv2d, Gelu, Layer, LayerOps, Linear, MaxPool2d, Relu, Scope, Sequential, Tanh,
};
use super::layout::ParamLayout;
use super::size::ModelSize;
use super::spec::{is_spec_path, transformer_preset, NetSpec};
use crate::device::cpu::ConvGeometry;
use crate::{Error, Result};
use serde_json::{json, Value};

/// The element-wise nonlinearity after each hidden layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// max(x, 0); piecewise linear, so the Hessian of the loss has no second-derivative term on its
    /// diagonal.
    Relu,
    /// tanh(x).
    Tanh,
    /// x·Φ(x), PyTorch's exact `nn.GELU()`.
    Gelu,
    /// x (a deep linear network).
    Identity,
}

impl Activation {
    pub fn name(self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::Tanh => "tanh",
            Activation::Gelu => "gelu",
            Activation::Identity => "identity",
        }
    }
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "relu" => Ok(Activation::Relu),
            "tanh" => Ok(Activation::Tanh),
            "gelu" => Ok(Activation::Gelu),
            "identity" | "linear" | "none" => Ok(Activation::Identity),
            _ => Err(Error::invalid(format!(
                "unknown activation '{s}' (expected relu, tanh, gelu or identity)"
            ))),
        }
    }
    /// The PyTorch module that implements it (for the README's loading recipe).
    pub fn torch_module(self) -> &'static str {
        match self {
            Activation::Relu => "nn.ReLU()",
            Activation::Tanh => "nn.Tanh()",
            Activation::Gelu => "nn.GELU()",
            Activation::Identity => "nn.Identity()",
        }
    }
}

/// A model family and its sizes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// `nn.Sequential(Flatten, Linear, act, Linear, act, …, Linear)`; tensors `1.weight`, `1.bias`,
    /// `3.weight`, … (the Sequential indices).
    Mlp {
        input: usize,
        hidden: Vec<usize>,
        classes: usize,
        activation: Activation,
    },
    /// The paper's LeNet (its `architectures.LeNet(extra_layers=k)`), built for an input of
    /// `input` = [channels, height, width] and `classes` outputs: conv c→6 5×5, ReLU; k × (conv
    /// 6→6 5×5 padding 2, ReLU); max-pool 2; conv 6→16 5×5, ReLU; max-pool 2; flatten (c,h,w);
    /// Linear 16·h′·w′→120, ReLU; 120→84, ReLU; 84→classes, with h′ = ⌊(⌊(h−4)/2⌋−4)/2⌋ (the
    /// paper's: 1×28×28, 256 → 120, 10 classes).
    LeNet {
        extra_layers: usize,
        input: [usize; 3],
        classes: usize,
    },
    /// A model from a JSON spec (`--model net.json`; see [`NetSpec`] and `docs/model-spec.md`),
    /// validated, its tensors and sizes known without building it.
    Spec(Box<NetSpec>),
}

/// One MNIST or Fashion-MNIST image: 1 channel, 28×28 (the paper's models' input).
pub const MNIST_INPUT: [usize; 3] = [1, 28, 28];
/// MNIST's and Fashion-MNIST's classes.
pub const MNIST_CLASSES: usize = 10;
/// The smallest image side a LeNet takes (two 5×5 convolutions and two poolings leave 1 pixel).
pub const LENET_MIN_SIDE: usize = 16;
/// The largest image side or channel count a LeNet takes here (so that its sizes are computed
/// without overflow; the memory check refuses what would not fit long before).
pub const LENET_MAX_DIM: usize = 1 << 16;

/// A LeNet's spatial sides after conv1 (and the extra convolutions), the first pooling, conv2 and
/// the second pooling, for an input side of `side` (at least [`LENET_MIN_SIDE`]; a smaller side,
/// which [`Architecture::size`] refuses, is taken as that minimum).
fn lenet_sides(side: usize) -> [usize; 4] {
    let a = side.max(LENET_MIN_SIDE) - 4;
    let b = a / 2;
    let c = b - 4;
    [a, b, c, c / 2]
}

/// The features fc_1 takes for an h×w input, 16·h′·w′ (saturating: a side from hostile metadata
/// gives a width no file holds).
fn lenet_flat(h: usize, w: usize) -> usize {
    16usize
        .saturating_mul(lenet_sides(h)[3])
        .saturating_mul(lenet_sides(w)[3])
}

/// The most hidden layers an MLP may have (a name such as `mlp_4000000000x1` is refused before its
/// list of widths is built).
pub const MAX_HIDDEN_LAYERS: usize = 10_000;

impl Architecture {
    /// An MLP for 28×28 images and 10 classes (the paper's; [`Architecture::for_data`] builds it for
    /// another data set).
    pub fn mlp(hidden: Vec<usize>, activation: Activation) -> Self {
        Architecture::Mlp {
            input: MNIST_INPUT.iter().product(),
            hidden,
            classes: MNIST_CLASSES,
            activation,
        }
    }

    /// The paper's LeNet with `extra_layers` extra convolutions, for 1×28×28 images and 10 classes
    /// ([`Architecture::for_data`] builds it for another data set).
    pub fn lenet(extra_layers: usize) -> Self {
        Architecture::LeNet {
            extra_layers,
            input: MNIST_INPUT,
            classes: MNIST_CLASSES,
        }
    }

    /// The same model built for samples of shape `input` ([channels, height, width]; an MLP takes
    /// their product as its features) and `classes` outputs, as a data set provides them.
    pub fn for_data(self, input: [usize; 3], classes: usize) -> Self {
        match self {
            Architecture::Mlp {
                hidden, activation, ..
            } => Architecture::Mlp {
                input: input.iter().product(),
                hidden,
                classes,
                activation,
            },
            Architecture::LeNet { extra_layers, .. } => Architecture::LeNet {
                extra_layers,
                input,
                classes,
            },
            // A spec fixes its input shape and outputs; Network::check_input compares them.
            spec @ Architecture::Spec(_) => spec,
        }
    }

    /// A short name: `mlp_1x128`, `mlp_2x256`, `mlp_128-64`, `mlp_1x128_tanh`, `lenet`, `lenet_k3`.
    pub fn name(&self) -> String {
        match self {
            Architecture::Mlp {
                hidden, activation, ..
            } => {
                let widths = if hidden.is_empty() {
                    "0".to_string()
                } else if hidden.iter().all(|&w| w == hidden[0]) {
                    format!("{}x{}", hidden.len(), hidden[0])
                } else {
                    hidden
                        .iter()
                        .map(|w| w.to_string())
                        .collect::<Vec<_>>()
                        .join("-")
                };
                match activation {
                    Activation::Relu => format!("mlp_{widths}"),
                    a => format!("mlp_{widths}_{}", a.name()),
                }
            }
            Architecture::LeNet {
                extra_layers: 2, ..
            } => "lenet".to_string(),
            Architecture::LeNet { extra_layers, .. } => format!("lenet_k{extra_layers}"),
            Architecture::Spec(spec) => spec.name().to_string(),
        }
    }

    /// Number of input features per sample (pixels).
    pub fn input_features(&self) -> usize {
        match self {
            Architecture::Mlp { input, .. } => *input,
            Architecture::LeNet { input, .. } => input.iter().fold(1, |a, &d| a.saturating_mul(d)),
            Architecture::Spec(spec) => spec.input_features(),
        }
    }

    /// The sample shape [channels, height, width] a convolutional model is built for; `None` for
    /// an MLP, which takes any shape of its number of features.
    pub fn input_shape(&self) -> Option<[usize; 3]> {
        match self {
            Architecture::Mlp { .. } => None,
            Architecture::LeNet { input, .. } => Some(*input),
            Architecture::Spec(spec) => match spec.input() {
                [c, h, w] => Some([*c, *h, *w]),
                _ => None,
            },
        }
    }

    /// The outputs per sample (for a per-position output `[positions, classes]`, their product).
    pub fn classes(&self) -> usize {
        match self {
            Architecture::Mlp { classes, .. } => *classes,
            Architecture::LeNet { classes, .. } => *classes,
            Architecture::Spec(spec) => spec.classes(),
        }
    }

    /// The positions of a per-position output `[positions, classes]` (a transformer without
    /// `last`), whose loss is the mean over positions; 1 for a flat output.
    pub fn positions(&self) -> usize {
        match self {
            Architecture::Spec(spec) => spec.positions(),
            _ => 1,
        }
    }

    /// The classes at each position: `classes() / positions()`.
    pub fn classes_per_position(&self) -> usize {
        self.classes() / self.positions().max(1)
    }

    /// A spec model's spec as written (what analysis records carry as `model_spec`); `None` for
    /// the presets.
    pub fn spec_source(&self) -> Option<&Value> {
        match self {
            Architecture::Spec(spec) => Some(spec.source()),
            _ => None,
        }
    }

    /// The description stored in checkpoint metadata and records.
    pub fn to_json(&self) -> Value {
        match self {
            Architecture::Mlp {
                input,
                hidden,
                classes,
                activation,
            } => json!({
                "kind": "mlp",
                "name": self.name(),
                "input": input,
                "hidden": hidden,
                "classes": classes,
                "activation": activation.name(),
            }),
            Architecture::LeNet {
                extra_layers,
                input,
                classes,
            } => json!({
                "kind": "lenet",
                "name": self.name(),
                "extra_layers": extra_layers,
                "input": input,
                "classes": classes,
            }),
            Architecture::Spec(spec) => json!({
                "kind": "spec",
                "name": spec.name(),
                "spec": spec.source(),
            }),
        }
    }

    /// Parses [`Architecture::to_json`]'s output.
    pub fn from_json(v: &Value) -> Result<Self> {
        let kind = v.get("kind").and_then(Value::as_str).unwrap_or("");
        match kind {
            "mlp" => {
                let hidden = v
                    .get("hidden")
                    .and_then(Value::as_array)
                    .ok_or_else(|| Error::invalid("mlp description lacks 'hidden'"))?
                    .iter()
                    .map(|w| {
                        w.as_u64()
                            .map(|w| w as usize)
                            .ok_or_else(|| Error::invalid("hidden widths must be integers"))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let activation = Activation::parse(
                    v.get("activation")
                        .and_then(Value::as_str)
                        .unwrap_or("relu"),
                )?;
                let input = v.get("input").and_then(Value::as_u64).unwrap_or(784) as usize;
                let classes = v.get("classes").and_then(Value::as_u64).unwrap_or(10) as usize;
                Ok(Architecture::Mlp {
                    input,
                    hidden,
                    classes,
                    activation,
                })
            }
            "lenet" => {
                let input = match v.get("input") {
                    None => MNIST_INPUT,
                    Some(shape) => shape
                        .as_array()
                        .filter(|a| a.len() == 3)
                        .and_then(|a| {
                            let d: Option<Vec<usize>> =
                                a.iter().map(|d| d.as_u64().map(|d| d as usize)).collect();
                            d.map(|d| [d[0], d[1], d[2]])
                        })
                        .ok_or_else(|| {
                            Error::invalid(format!(
                                "lenet description: 'input' must be [channels, height, width], got {shape}"
                            ))
                        })?,
                };
                let classes = v
                    .get("classes")
                    .and_then(Value::as_u64)
                    .unwrap_or(MNIST_CLASSES as u64) as usize;
                Ok(Architecture::LeNet {
                    extra_layers: v.get("extra_layers").and_then(Value::as_u64).unwrap_or(2)
                        as usize,
                    input,
                    classes,
                })
            }
            "spec" => {
                let name = v.get("name").and_then(Value::as_str).unwrap_or("spec");
                let spec = v
                    .get("spec")
                    .ok_or_else(|| Error::invalid("spec description lacks 'spec'"))?;
                Ok(Architecture::Spec(Box::new(NetSpec::from_json(
                    name, spec,
                )?)))
            }
            other => Err(Error::invalid(format!(
                "unknown model kind '{other}' (expected mlp, lenet or spec)"
            ))),
        }
    }

    /// Parses a model given on the command line or in foreign metadata: `mlp` (with `hidden` and
    /// `activation`), `lenet`, a name like `mlp_1x128`, `mlp_2x256_tanh`, `mlp_128-64`, `lenet_k3`,
    /// or the path of a JSON spec (ending in `.json` or containing a `/`; [`NetSpec::load`]).
    pub fn parse(
        model: &str,
        hidden: &[usize],
        activation: Activation,
        extra: usize,
    ) -> Result<Self> {
        if is_spec_path(model) {
            let spec = NetSpec::load(std::path::Path::new(model))?;
            return Ok(Architecture::Spec(Box::new(spec)));
        }
        let m = model.to_ascii_lowercase();
        if let Some(spec) = transformer_preset(&m) {
            return Ok(Architecture::Spec(Box::new(spec)));
        }
        if m == "mlp" {
            return Ok(Architecture::mlp(hidden.to_vec(), activation));
        }
        if m == "lenet" {
            return Ok(Architecture::lenet(extra));
        }
        if let Some(k) = m.strip_prefix("lenet_k") {
            let extra_layers = k
                .parse()
                .map_err(|_| Error::invalid(format!("unknown model '{model}'")))?;
            return Ok(Architecture::lenet(extra_layers));
        }
        if let Some(rest) = m.strip_prefix("mlp_") {
            let mut parts = rest.splitn(2, '_');
            let widths = parts.next().unwrap_or("");
            let act = match parts.next() {
                Some(a) => Activation::parse(a)?,
                None => activation,
            };
            let hidden: Option<Vec<usize>> = if widths == "0" {
                // What `name` writes for an MLP without hidden layers.
                Some(Vec::new())
            } else if let Some((l, w)) = widths.split_once('x') {
                match (l.parse::<usize>(), w.parse::<usize>()) {
                    (Ok(l), _) if l > MAX_HIDDEN_LAYERS => {
                        return Err(Error::invalid(format!(
                            "model '{model}' has {l} hidden layers (at most {MAX_HIDDEN_LAYERS})"
                        )))
                    }
                    (Ok(l), Ok(w)) => Some(vec![w; l]),
                    _ => None,
                }
            } else {
                widths.split('-').map(|w| w.parse().ok()).collect()
            };
            if let Some(hidden) = hidden {
                return Ok(Architecture::mlp(hidden, act));
            }
        }
        Err(Error::invalid(format!(
            "unknown model '{model}' (expected mlp, lenet, transformer_1l, transformer_2l, or a name like mlp_1x128, mlp_128-64, lenet_k2)"
        )))
    }

    /// The layers in forward order and the parameter layout, built by the model's definition as
    /// PyTorch's modules (so the tensor names are its `state_dict` names by construction).
    pub fn build(&self) -> (Vec<Layer>, ParamLayout) {
        match self {
            Architecture::Mlp {
                input,
                hidden,
                classes,
                activation,
            } => layer::build(|seq| {
                // nn.Sequential(Flatten, Linear, act, Linear, act, …, Linear).
                seq.skip();
                let mut fan_in = *input;
                for &w in hidden {
                    seq.push(|s| Linear::new(s, fan_in, w));
                    match activation {
                        Activation::Relu => seq.push(|_| Relu { features: w }),
                        Activation::Tanh => seq.push(|_| Tanh { features: w }),
                        Activation::Gelu => seq.push(|_| Gelu { features: w }),
                        Activation::Identity => seq.skip(),
                    }
                    fan_in = w;
                }
                seq.push(|s| Linear::new(s, fan_in, *classes));
            }),
            Architecture::LeNet {
                extra_layers,
                input: [c, height, width],
                classes,
            } => layer::build(|seq| {
                // The paper's `architectures.LeNet`: conv1 = Sequential(Conv2d, ReLU), extra =
                // ModuleList of Sequential(Conv2d, ReLU), conv2 = Sequential(Conv2d, ReLU), fc_1..3;
                // max-pools and the last ReLUs are functional calls in its forward.
                let conv = |channels, (height, width), kernel, padding, out: usize| {
                    move |s: &mut Scope<'_>| {
                        let g = ConvGeometry {
                            channels,
                            height,
                            width,
                            kernel,
                            padding,
                            stride: 1,
                        };
                        Conv2d::new(s, g, out)
                    }
                };
                let conv_relu =
                    |seq: &mut Sequential<'_>, channels, (h, w), kernel, padding, out| {
                        seq.push(conv(channels, (h, w), kernel, padding, out));
                        let side = |x: usize| x + 2 * padding + 1 - kernel;
                        seq.push(|_| Relu {
                            features: out * side(h) * side(w),
                        });
                    };
                let (hs, ws) = (lenet_sides(*height), lenet_sides(*width));
                seq.sequential("conv1", |s| conv_relu(s, *c, (*height, *width), 5, 0, 6));
                seq.sequential("extra", |s| {
                    for e in 0..*extra_layers {
                        s.sequential(&e.to_string(), |t| conv_relu(t, 6, (hs[0], ws[0]), 5, 2, 6));
                    }
                });
                seq.functional(MaxPool2d::two_by_two(6, hs[0], ws[0]));
                seq.sequential("conv2", |s| conv_relu(s, 6, (hs[1], ws[1]), 5, 0, 16));
                seq.functional(MaxPool2d::two_by_two(16, hs[2], ws[2]));
                seq.named("fc_1", |s| Linear::new(s, lenet_flat(*height, *width), 120));
                seq.functional(Relu { features: 120 });
                seq.named("fc_2", |s| Linear::new(s, 120, 84));
                seq.functional(Relu { features: 84 });
                seq.named("fc_3", |s| Linear::new(s, 84, *classes));
            }),
            Architecture::Spec(spec) => layer::build(|seq| spec.define(seq)),
        }
    }

    /// The number of named tensors (a weight and a bias per Linear or Conv2d layer); `None` when it
    /// does not fit in a `usize`. Computed without building anything.
    pub fn tensor_count(&self) -> Option<usize> {
        match self {
            Architecture::Mlp { hidden, .. } => hidden.len().checked_add(1)?.checked_mul(2),
            Architecture::LeNet { extra_layers, .. } => extra_layers.checked_add(5)?.checked_mul(2),
            Architecture::Spec(spec) => Some(spec.tensors().len()),
        }
    }

    /// The name and shape of tensor `i` in `state_dict` order, computed on its own (so a checkpoint's
    /// tensors can be checked against a model one at a time, before anything of the model's size is
    /// allocated); `None` past the last tensor.
    pub fn tensor_spec(&self, i: usize) -> Option<(String, Vec<usize>)> {
        if i >= self.tensor_count()? {
            return None;
        }
        if let Architecture::Spec(spec) = self {
            return spec.tensors().get(i).cloned();
        }
        let (pair, is_bias) = (i / 2, i % 2 == 1);
        let (name, weight) = match self {
            Architecture::Mlp {
                input,
                hidden,
                classes,
                ..
            } => {
                let inputs = if pair == 0 { *input } else { hidden[pair - 1] };
                let outputs = hidden.get(pair).copied().unwrap_or(*classes);
                (format!("{}", 1 + 2 * pair), vec![outputs, inputs])
            }
            Architecture::LeNet {
                extra_layers,
                input: [c, h, w],
                classes,
            } => {
                let k = *extra_layers;
                match pair {
                    0 => ("conv1.0".to_string(), vec![6, *c, 5, 5]),
                    p if p <= k => (format!("extra.{}.0", p - 1), vec![6, 6, 5, 5]),
                    p if p == k + 1 => ("conv2.0".to_string(), vec![16, 6, 5, 5]),
                    p => {
                        let (name, shape) = [
                            ("fc_1", vec![120, lenet_flat(*h, *w)]),
                            ("fc_2", vec![84, 120]),
                            ("fc_3", vec![*classes, 84]),
                        ]
                        .into_iter()
                        .nth(p - k - 2)?;
                        (name.to_string(), shape)
                    }
                }
            }
            Architecture::Spec(_) => unreachable!("answered above"),
        };
        Some(if is_bias {
            (format!("{name}.bias"), vec![weight[0]])
        } else {
            (format!("{name}.weight"), weight)
        })
    }

    /// Tensor names and shapes in `state_dict` order.
    ///
    /// **Panics** if the parameter count overflows a `usize`; sizes from an untrusted source are
    /// checked first with [`Architecture::size`].
    pub fn layout(&self) -> ParamLayout {
        self.build().1
    }

    /// Checks that the sizes make a usable model and computes them ([`ModelSize`]) with checked
    /// arithmetic, without building layers, layout or workspace; call it before [`Network::new`]
    /// on sizes from a checkpoint's metadata or a flag.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a layer of width 0, an input of 0 features, an output of fewer than 2
    /// classes under cross-entropy — the spec's named loss, else cross-entropy — (cross-entropy over
    /// one class is 0 for every input: there is nothing to train or measure), more than [`MAX_HIDDEN_LAYERS`] hidden layers, or sizes that overflow 64 bits.
    ///
    /// [`Network::new`]: super::Network::new
    pub fn size(&self) -> Result<ModelSize> {
        let loss = self
            .named_loss()
            .and_then(|name| super::Loss::parse(name).ok())
            .unwrap_or(super::Loss::SoftmaxCrossEntropy);
        self.size_for(loss)
    }

    /// The loss the model's description names (a spec's `loss`), the default when neither `--loss`
    /// nor a checkpoint's metadata gives one.
    pub fn named_loss(&self) -> Option<&str> {
        match self {
            Architecture::Spec(spec) => spec.loss(),
            _ => None,
        }
    }

    /// [`Architecture::size`] for a model trained with `loss`: the mean squared error takes a single
    /// output (a scalar regression), cross-entropy at least two.
    ///
    /// # Errors
    /// As [`Architecture::size`].
    pub fn size_for(&self, loss: super::Loss) -> Result<ModelSize> {
        let overflow = || {
            Error::invalid(format!(
                "model {} has more parameters than a 64-bit count holds",
                self.short_name()
            ))
        };
        if let Some(why) = too_few_classes(self.classes_per_position(), loss) {
            return Err(Error::invalid(why));
        }
        let tensors = self.tensor_count().ok_or_else(overflow)? as u64;
        match self {
            Architecture::Mlp {
                input,
                hidden,
                activation,
                ..
            } => {
                if *input == 0 {
                    return Err(Error::invalid(
                        "the model's input has 0 features (at least 1 is needed)",
                    ));
                }
                if let Some(l) = hidden.iter().position(|&w| w == 0) {
                    return Err(Error::invalid(format!(
                        "hidden layer {} has width 0 (every layer needs at least one unit)",
                        l + 1
                    )));
                }
                if hidden.len() > MAX_HIDDEN_LAYERS {
                    return Err(Error::invalid(format!(
                        "{} hidden layers (at most {MAX_HIDDEN_LAYERS})",
                        hidden.len()
                    )));
                }
                let (mut params, mut activations) = (0u64, 0u64);
                for i in (0..tensors as usize).step_by(2) {
                    let (_, w) = self.tensor_spec(i).expect("i < tensor_count");
                    let (outputs, inputs) = (w[0] as u64, w[1] as u64);
                    params = inputs
                        .checked_add(1)
                        .and_then(|fan_in| fan_in.checked_mul(outputs))
                        .and_then(|p| p.checked_add(params))
                        .ok_or_else(overflow)?;
                    // The Linear's output, and the activation layer's after a hidden one.
                    let hidden_layer = i + 2 < tensors as usize;
                    let copies = if hidden_layer && *activation != Activation::Identity {
                        2
                    } else {
                        1
                    };
                    activations = outputs
                        .checked_mul(copies)
                        .and_then(|o| o.checked_add(activations))
                        .ok_or_else(overflow)?;
                }
                Ok(ModelSize {
                    params,
                    tensors,
                    activations,
                    scratch: 0,
                })
            }
            Architecture::LeNet {
                extra_layers,
                input,
                classes,
            } => {
                let [c, h, w] = *input;
                if c == 0 || c > LENET_MAX_DIM {
                    return Err(Error::invalid(format!(
                        "the LeNet's input has {c} channels (1 to {LENET_MAX_DIM})"
                    )));
                }
                if h.min(w) < LENET_MIN_SIDE || h.max(w) > LENET_MAX_DIM {
                    return Err(Error::invalid(format!(
                        "the LeNet's input is {h}×{w} pixels: each side must be {LENET_MIN_SIDE} to \
                         {LENET_MAX_DIM} (two 5×5 convolutions and two 2×2 poolings)"
                    )));
                }
                if *classes > LENET_MAX_DIM {
                    return Err(Error::invalid(format!(
                        "the LeNet's output has {classes} classes (at most {LENET_MAX_DIM})"
                    )));
                }
                // Each extra layer adds the same conv (parameters and one 6×h′×w′ output), so the
                // sizes are those of the LeNet without extra layers plus k times one layer's.
                let k = *extra_layers as u64;
                let base = lenet_size(0, *input, *classes);
                let one = lenet_size(1, *input, *classes);
                let grow = |b: u64, o: u64| {
                    (o - b)
                        .checked_mul(k)
                        .and_then(|e| e.checked_add(b))
                        .ok_or_else(overflow)
                };
                Ok(ModelSize {
                    params: grow(base.params, one.params)?,
                    tensors,
                    activations: grow(base.activations, one.activations)?,
                    scratch: if k == 0 { base.scratch } else { one.scratch },
                })
            }
            // Checked when the spec was parsed.
            Architecture::Spec(spec) => Ok(spec.size()),
        }
    }

    /// The name, or a summary of it for an MLP with too many widths to list.
    fn short_name(&self) -> String {
        match self {
            Architecture::Mlp { hidden, .. } if hidden.len() > 8 => {
                format!("mlp with {} hidden layers", hidden.len())
            }
            _ => self.name(),
        }
    }

    /// The PyTorch module that loads this model's checkpoints with `load_state_dict(strict=True)`.
    pub fn torch_definition(&self) -> String {
        match self {
            Architecture::Mlp {
                input,
                hidden,
                classes,
                activation,
            } => {
                let mut parts = vec!["nn.Flatten()".to_string()];
                let mut fan_in = *input;
                for &w in hidden {
                    parts.push(format!("nn.Linear({fan_in}, {w})"));
                    parts.push(activation.torch_module().to_string());
                    fan_in = w;
                }
                parts.push(format!("nn.Linear({fan_in}, {classes})"));
                format!("nn.Sequential({})", parts.join(", "))
            }
            Architecture::LeNet {
                extra_layers,
                input,
                classes,
            } if *input == MNIST_INPUT && *classes == MNIST_CLASSES => {
                format!("LeNet(extra_layers={extra_layers})")
            }
            Architecture::LeNet {
                extra_layers,
                input: [c, h, w],
                classes,
            } => format!(
                "LeNet(extra_layers={extra_layers}) with conv1 = nn.Sequential(nn.Conv2d({c}, 6, 5), \
                 nn.ReLU()), fc_1 = nn.Linear({}, 120) and fc_3 = nn.Linear(84, {classes}) (input \
                 {c}×{h}×{w})",
                lenet_flat(*h, *w)
            ),
            Architecture::Spec(spec) => spec.torch_source(),
        }
    }
}

/// Why an output of `classes` classes is refused, if it is: cross-entropy needs at least two (over
/// one class softmax is 1 and the loss 0 for every input, so training and every measurement of the
/// loss landscape would be degenerate); the mean squared error at least one output.
pub(crate) fn too_few_classes(classes: usize, loss: super::Loss) -> Option<String> {
    if loss == super::Loss::MeanSquaredError {
        return (classes == 0).then(|| "the output layer has 0 outputs".to_string());
    }
    (classes < 2).then(|| {
        format!(
            "the output layer has {classes} class{} (cross-entropy needs at least 2: over one class \
             the loss is 0 for every input, so there is nothing to train or measure)",
            if classes == 1 { "" } else { "es" }
        )
    })
}

/// The sizes of a small LeNet, from its layers (to extrapolate to any number of extra layers).
fn lenet_size(extra_layers: usize, input: [usize; 3], classes: usize) -> ModelSize {
    let arch = Architecture::LeNet {
        extra_layers,
        input,
        classes,
    };
    let (layers, layout) = arch.build();
    ModelSize {
        params: layout.total() as u64,
        tensors: arch.tensor_count().expect("small") as u64,
        activations: layers.iter().map(|l| l.out_features() as u64).sum(),
        scratch: layers
            .iter()
            .map(|l| l.scratch_len(1, false).0 as u64)
            .max()
            .unwrap_or(0),
    }
}

/// What `--model` says about a checkpoint's model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSpec {
    /// This architecture exactly (`mlp_2x64`, `mlp_128-64_tanh`, `lenet_k3`): a checkpoint must hold
    /// its tensors.
    Exact(Architecture),
    /// An MLP whose input, hidden widths and classes are the checkpoint's tensor shapes (`mlp`,
    /// `mlp_tanh`); its activation is the one named, else the checkpoint metadata's, else ReLU.
    Mlp { activation: Option<Activation> },
    /// The LeNet with as many extra conv layers as the checkpoint holds (`lenet`).
    LeNet,
}

impl ModelSpec {
    /// Parses `--model`: `mlp`, `mlp_<activation>`, `lenet`, or an exact name (see
    /// [`Architecture::parse`]), whose sizes are checked ([`Architecture::size`]).
    pub fn parse(model: &str) -> Result<Self> {
        if is_spec_path(model) {
            return Ok(ModelSpec::Exact(Architecture::parse(
                model,
                &[],
                Activation::Relu,
                2,
            )?));
        }
        let m = model.to_ascii_lowercase();
        if m == "mlp" {
            return Ok(ModelSpec::Mlp { activation: None });
        }
        if m == "lenet" {
            return Ok(ModelSpec::LeNet);
        }
        if let Some(a) = m
            .strip_prefix("mlp_")
            .and_then(|a| Activation::parse(a).ok())
        {
            return Ok(ModelSpec::Mlp {
                activation: Some(a),
            });
        }
        let arch = Architecture::parse(model, &[], Activation::Relu, 2)?;
        // The loss is not known yet (`--loss`, the data's targets): the output count is checked
        // against it where it is (`size_for`); here only what no loss allows (0 outputs, widths 0,
        // overflow).
        arch.size_for(super::Loss::MeanSquaredError)?;
        Ok(ModelSpec::Exact(arch))
    }
}

impl From<Architecture> for ModelSpec {
    fn from(a: Architecture) -> Self {
        ModelSpec::Exact(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_match_the_paper() {
        assert_eq!(Architecture::lenet(2).layout().total(), 46_238);
        let mlp = Architecture::mlp(vec![128], Activation::Relu);
        assert_eq!(mlp.layout().total(), 101_770);
        let names: Vec<_> = mlp
            .layout()
            .tensors
            .iter()
            .map(|t| t.name.clone())
            .collect();
        assert_eq!(names, ["1.weight", "1.bias", "3.weight", "3.bias"]);
    }

    #[test]
    fn names_round_trip() {
        for a in [
            Architecture::mlp(vec![128], Activation::Relu),
            Architecture::mlp(vec![256, 256], Activation::Relu),
            Architecture::mlp(vec![128, 64], Activation::Tanh),
            Architecture::mlp(vec![32, 16], Activation::Gelu),
            Architecture::mlp(vec![64], Activation::Identity),
            Architecture::lenet(2),
            Architecture::lenet(0),
        ] {
            assert_eq!(
                Architecture::parse(&a.name(), &[], Activation::Relu, 2).unwrap(),
                a
            );
            assert_eq!(Architecture::from_json(&a.to_json()).unwrap(), a);
        }
    }

    /// The shapes computed one tensor at a time are those of the layers built (an independent
    /// derivation), under PyTorch's names.
    #[test]
    fn tensor_specs_match_the_layers() {
        for a in [
            Architecture::mlp(vec![128], Activation::Relu),
            Architecture::mlp(vec![7, 5, 3], Activation::Tanh),
            Architecture::mlp(vec![], Activation::Relu),
            Architecture::lenet(0),
            Architecture::lenet(1),
            Architecture::lenet(3),
            Architecture::lenet(1).for_data([3, 32, 32], 5),
            Architecture::lenet(0).for_data([2, 17, 23], 4),
            Architecture::mlp(vec![9], Activation::Relu).for_data([3, 4, 5], 7),
        ] {
            let layout = a.layout();
            assert_eq!(Some(layout.tensors.len()), a.tensor_count());
            assert_eq!(a.tensor_spec(layout.tensors.len()), None);
            for (i, t) in layout.tensors.iter().enumerate() {
                let (name, shape) = a.tensor_spec(i).unwrap();
                assert_eq!((&t.name, &t.shape), (&name, &shape), "{}", a.name());
            }
        }
        let names = Architecture::lenet(1).layout().names();
        assert_eq!(
            names,
            [
                "conv1.0.weight",
                "conv1.0.bias",
                "extra.0.0.weight",
                "extra.0.0.bias",
                "conv2.0.weight",
                "conv2.0.bias",
                "fc_1.weight",
                "fc_1.bias",
                "fc_2.weight",
                "fc_2.bias",
                "fc_3.weight",
                "fc_3.bias"
            ]
        );
    }

    /// `size` computes what building the model would give, without building it.
    #[test]
    fn size_matches_the_built_model() {
        for a in [
            Architecture::mlp(vec![128], Activation::Relu),
            Architecture::mlp(vec![7, 5, 3], Activation::Tanh),
            Architecture::mlp(vec![], Activation::Identity),
            Architecture::lenet(0),
            Architecture::lenet(1),
            Architecture::lenet(2),
            Architecture::lenet(5),
            Architecture::lenet(2).for_data([3, 32, 32], 5),
            Architecture::lenet(3).for_data([2, 17, 23], 4),
        ] {
            let s = a.size().unwrap();
            let (layers, _) = a.build();
            assert_eq!(s.params, a.layout().total() as u64, "{}", a.name());
            assert_eq!(s.tensors, a.layout().tensors.len() as u64);
            assert_eq!(
                s.activations,
                layers.iter().map(|l| l.out_features() as u64).sum::<u64>()
            );
            assert_eq!(
                s.scratch,
                layers
                    .iter()
                    .map(|l| l.scratch_len(1, false).0 as u64)
                    .max()
                    .unwrap()
            );
        }
    }

    /// Built for a data set's shape: the paper's names, the shapes that shape implies (fc_1 takes
    /// 16·h′·w′ features with PyTorch's floor pooling), and a description that round-trips.
    #[test]
    fn lenet_is_built_for_the_data_shape() {
        let a = Architecture::lenet(2).for_data([3, 32, 32], 5);
        let shapes: Vec<(String, Vec<usize>)> = a
            .layout()
            .tensors
            .iter()
            .map(|t| (t.name.clone(), t.shape.clone()))
            .collect();
        assert_eq!(shapes[0], ("conv1.0.weight".into(), vec![6, 3, 5, 5]));
        // 32 → 28 → 14 → 10 → 5.
        assert_eq!(shapes[8], ("fc_1.weight".into(), vec![120, 400]));
        assert_eq!(shapes[12], ("fc_3.weight".into(), vec![5, 84]));
        assert_eq!(a.input_features(), 3 * 32 * 32);
        assert_eq!(a.classes(), 5);
        assert_eq!(a.input_shape(), Some([3, 32, 32]));
        assert_eq!(Architecture::from_json(&a.to_json()).unwrap(), a);
        // Odd sides floor as F.max_pool2d does: 17 → 13 → 6 → 2 → 1, 23 → 19 → 9 → 5 → 2.
        let odd = Architecture::lenet(0).for_data([1, 17, 23], 10);
        assert_eq!(odd.layout().tensors[4].shape, vec![120, 32]);
        // The paper's model is the default.
        assert_eq!(
            Architecture::lenet(2).for_data(MNIST_INPUT, MNIST_CLASSES),
            Architecture::lenet(2)
        );
        assert_eq!(
            Architecture::lenet(2).layout().tensors[8].shape,
            vec![120, 256]
        );
        let mlp = Architecture::mlp(vec![64], Activation::Relu).for_data([3, 32, 32], 100);
        assert_eq!((mlp.input_features(), mlp.classes()), (3072, 100));
        assert_eq!(mlp.input_shape(), None);
    }

    #[test]
    fn lenet_inputs_too_small_or_malformed_are_refused() {
        let err = |a: Architecture| a.size().unwrap_err().to_string();
        let small = Architecture::lenet(2).for_data([1, 15, 28], 10);
        assert!(err(small).contains("15×28 pixels: each side must be 16 to 65536"));
        assert!(err(Architecture::lenet(2).for_data([0, 28, 28], 10)).contains("0 channels"));
        assert!(err(Architecture::lenet(2).for_data([1, 28, usize::MAX], 10)).contains("65536"));
        assert!(err(Architecture::lenet(2).for_data([1, 28, 28], 1)).contains("1 class"));
        let bad = serde_json::json!({"kind": "lenet", "input": [28, 28]});
        let e = Architecture::from_json(&bad).unwrap_err().to_string();
        assert!(
            e.contains("'input' must be [channels, height, width]"),
            "{e}"
        );
    }

    /// Widths of 0, one class, and sizes past 64 bits are refused by arithmetic alone: nothing of
    /// the model's size is allocated (a 4·10⁹-layer LeNet or a 2⁶² width would abort this test).
    #[test]
    fn size_refuses_degenerate_and_huge_models() {
        let err = |a: Architecture| a.size().unwrap_err().to_string();
        assert!(err(Architecture::mlp(vec![0], Activation::Relu))
            .contains("hidden layer 1 has width 0"));
        assert!(err(Architecture::mlp(vec![64, 0], Activation::Relu))
            .contains("hidden layer 2 has width 0"));
        let one_class = Architecture::Mlp {
            input: 784,
            hidden: vec![4],
            classes: 1,
            activation: Activation::Relu,
        };
        assert!(err(one_class).contains("1 class (cross-entropy needs at least 2"));
        let no_input = Architecture::Mlp {
            input: 0,
            hidden: vec![4],
            classes: 10,
            activation: Activation::Relu,
        };
        assert!(err(no_input).contains("0 features"));
        assert!(err(Architecture::mlp(vec![1 << 62], Activation::Relu)).contains("64-bit"));
        assert!(err(Architecture::lenet(usize::MAX)).contains("64-bit"));
        assert_eq!(Architecture::lenet(usize::MAX).tensor_count(), None);
        // Large but countable: sized, not built.
        let big = Architecture::lenet(4_000_000_000);
        assert_eq!(big.tensor_count(), Some(8_000_000_010));
        assert_eq!(big.size().unwrap().params, 46_238 + 3_999_999_998 * 906);
        let wide = Architecture::mlp(vec![99_999_999_999], Activation::Relu);
        assert_eq!(wide.size().unwrap().params, 99_999_999_999 * 795 + 10);
    }

    #[test]
    fn names_with_too_many_layers_are_refused_before_listing_them() {
        let e = Architecture::parse("mlp_4000000000x1", &[], Activation::Relu, 2).unwrap_err();
        assert!(
            e.to_string()
                .contains("4000000000 hidden layers (at most 10000)"),
            "{e}"
        );
        // `name` writes mlp_0 for an MLP without hidden layers, and it parses back.
        let none = Architecture::mlp(vec![], Activation::Relu);
        assert_eq!(none.name(), "mlp_0");
        assert_eq!(
            Architecture::parse("mlp_0", &[], Activation::Relu, 2).unwrap(),
            none
        );
    }

    #[test]
    fn model_specs_parse_families_and_exact_names() {
        assert_eq!(
            ModelSpec::parse("mlp").unwrap(),
            ModelSpec::Mlp { activation: None }
        );
        assert_eq!(
            ModelSpec::parse("MLP_tanh").unwrap(),
            ModelSpec::Mlp {
                activation: Some(Activation::Tanh)
            }
        );
        assert_eq!(ModelSpec::parse("lenet").unwrap(), ModelSpec::LeNet);
        assert_eq!(
            ModelSpec::parse("mlp_2x64").unwrap(),
            ModelSpec::Exact(Architecture::mlp(vec![64, 64], Activation::Relu))
        );
        assert_eq!(
            ModelSpec::parse("lenet_k3").unwrap(),
            ModelSpec::Exact(Architecture::lenet(3))
        );
        assert!(ModelSpec::parse("mlp_1x0")
            .unwrap_err()
            .to_string()
            .contains("width 0"));
        assert!(ModelSpec::parse("resnet").is_err());
    }
}
