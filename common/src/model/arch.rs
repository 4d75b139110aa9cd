//! Architectures: the paper's MLPs and LeNet, described well enough to rebuild them from metadata.

use super::layers::Layer;
use super::layout::{ParamLayout, TensorSpec};
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
    /// x (a deep linear network).
    Identity,
}

impl Activation {
    pub fn name(self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::Tanh => "tanh",
            Activation::Identity => "identity",
        }
    }
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "relu" => Ok(Activation::Relu),
            "tanh" => Ok(Activation::Tanh),
            "identity" | "linear" | "none" => Ok(Activation::Identity),
            _ => Err(Error::invalid(format!(
                "unknown activation '{s}' (expected relu, tanh or identity)"
            ))),
        }
    }
    /// The PyTorch module that implements it (for the README's loading recipe).
    pub fn torch_module(self) -> &'static str {
        match self {
            Activation::Relu => "nn.ReLU()",
            Activation::Tanh => "nn.Tanh()",
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
    /// The paper's LeNet (its `architectures.LeNet(extra_layers=k)`): conv 1→6 5×5, ReLU; k × (conv
    /// 6→6 5×5 padding 2, ReLU); max-pool 2; conv 6→16 5×5, ReLU; max-pool 2; flatten (c,h,w);
    /// Linear 256→120, ReLU; 120→84, ReLU; 84→10. Input 1×28×28.
    LeNet { extra_layers: usize },
}

const LENET_IMAGE: usize = 28;

impl Architecture {
    /// An MLP for 28×28 images and 10 classes.
    pub fn mlp(hidden: Vec<usize>, activation: Activation) -> Self {
        Architecture::Mlp {
            input: 784,
            hidden,
            classes: 10,
            activation,
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
            Architecture::LeNet { extra_layers: 2 } => "lenet".to_string(),
            Architecture::LeNet { extra_layers } => format!("lenet_k{extra_layers}"),
        }
    }

    /// Number of input features per sample (pixels).
    pub fn input_features(&self) -> usize {
        match self {
            Architecture::Mlp { input, .. } => *input,
            Architecture::LeNet { .. } => LENET_IMAGE * LENET_IMAGE,
        }
    }

    pub fn classes(&self) -> usize {
        match self {
            Architecture::Mlp { classes, .. } => *classes,
            Architecture::LeNet { .. } => 10,
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
            Architecture::LeNet { extra_layers } => json!({
                "kind": "lenet",
                "name": self.name(),
                "extra_layers": extra_layers,
                "input": [1, LENET_IMAGE, LENET_IMAGE],
                "classes": 10,
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
                    v.get("activation").and_then(Value::as_str).unwrap_or("relu"),
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
            "lenet" => Ok(Architecture::LeNet {
                extra_layers: v.get("extra_layers").and_then(Value::as_u64).unwrap_or(2) as usize,
            }),
            other => Err(Error::invalid(format!(
                "unknown model kind '{other}' (expected mlp or lenet)"
            ))),
        }
    }

    /// Parses a model given on the command line or in foreign metadata: `mlp` (with `hidden` and
    /// `activation`), `lenet`, or a name like `mlp_1x128`, `mlp_2x256_tanh`, `mlp_128-64`, `lenet_k3`.
    pub fn parse(model: &str, hidden: &[usize], activation: Activation, extra: usize) -> Result<Self> {
        let m = model.to_ascii_lowercase();
        if m == "mlp" {
            return Ok(Architecture::mlp(hidden.to_vec(), activation));
        }
        if m == "lenet" {
            return Ok(Architecture::LeNet {
                extra_layers: extra,
            });
        }
        if let Some(k) = m.strip_prefix("lenet_k") {
            let extra_layers = k
                .parse()
                .map_err(|_| Error::invalid(format!("unknown model '{model}'")))?;
            return Ok(Architecture::LeNet { extra_layers });
        }
        if let Some(rest) = m.strip_prefix("mlp_") {
            let mut parts = rest.splitn(2, '_');
            let widths = parts.next().unwrap_or("");
            let act = match parts.next() {
                Some(a) => Activation::parse(a)?,
                None => activation,
            };
            let hidden: Option<Vec<usize>> = if let Some((l, w)) = widths.split_once('x') {
                match (l.parse::<usize>(), w.parse::<usize>()) {
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
            "unknown model '{model}' (expected mlp, lenet, or a name like mlp_1x128, mlp_128-64, lenet_k2)"
        )))
    }

    /// The layers, in forward order.
    pub fn layers(&self) -> Vec<Layer> {
        match self {
            Architecture::Mlp {
                input,
                hidden,
                classes,
                activation,
            } => {
                let mut layers = Vec::new();
                let mut fan_in = *input;
                for (l, &w) in hidden.iter().enumerate() {
                    layers.push(Layer::Linear {
                        inputs: fan_in,
                        outputs: w,
                        tensor: 2 * l,
                        activation: *activation,
                    });
                    fan_in = w;
                }
                layers.push(Layer::Linear {
                    inputs: fan_in,
                    outputs: *classes,
                    tensor: 2 * hidden.len(),
                    activation: Activation::Identity,
                });
                layers
            }
            Architecture::LeNet { extra_layers } => {
                let relu = Activation::Relu;
                let mut layers = vec![Layer::Conv2d {
                    in_channels: 1,
                    out_channels: 6,
                    kernel: 5,
                    padding: 0,
                    height: 28,
                    width: 28,
                    tensor: 0,
                    activation: relu,
                }];
                for e in 0..*extra_layers {
                    layers.push(Layer::Conv2d {
                        in_channels: 6,
                        out_channels: 6,
                        kernel: 5,
                        padding: 2,
                        height: 24,
                        width: 24,
                        tensor: 2 + 2 * e,
                        activation: relu,
                    });
                }
                let t = 2 + 2 * extra_layers;
                layers.push(Layer::MaxPool2 {
                    channels: 6,
                    height: 24,
                    width: 24,
                });
                layers.push(Layer::Conv2d {
                    in_channels: 6,
                    out_channels: 16,
                    kernel: 5,
                    padding: 0,
                    height: 12,
                    width: 12,
                    tensor: t,
                    activation: relu,
                });
                layers.push(Layer::MaxPool2 {
                    channels: 16,
                    height: 8,
                    width: 8,
                });
                let fcs = [(256, 120, relu), (120, 84, relu), (84, 10, Activation::Identity)];
                for (i, (inputs, outputs, activation)) in fcs.into_iter().enumerate() {
                    layers.push(Layer::Linear {
                        inputs,
                        outputs,
                        tensor: t + 2 + 2 * i,
                        activation,
                    });
                }
                layers
            }
        }
    }

    /// Tensor names and shapes in `state_dict` order.
    pub fn layout(&self) -> ParamLayout {
        let mut specs: Vec<(String, Vec<usize>)> = Vec::new();
        match self {
            Architecture::Mlp { .. } => {
                for (l, layer) in self.layers().iter().enumerate() {
                    if let Layer::Linear {
                        inputs, outputs, ..
                    } = layer
                    {
                        let idx = 1 + 2 * l;
                        specs.push((format!("{idx}.weight"), vec![*outputs, *inputs]));
                        specs.push((format!("{idx}.bias"), vec![*outputs]));
                    }
                }
            }
            Architecture::LeNet { extra_layers } => {
                let mut conv_names = vec!["conv1.0".to_string()];
                conv_names.extend((0..*extra_layers).map(|e| format!("extra.{e}.0")));
                conv_names.push("conv2.0".to_string());
                let mut convs = conv_names.into_iter();
                let mut fcs = ["fc_1", "fc_2", "fc_3"].into_iter();
                for layer in self.layers() {
                    match layer {
                        Layer::Conv2d {
                            in_channels,
                            out_channels,
                            kernel,
                            ..
                        } => {
                            let n = convs.next().expect("conv name");
                            specs.push((
                                format!("{n}.weight"),
                                vec![out_channels, in_channels, kernel, kernel],
                            ));
                            specs.push((format!("{n}.bias"), vec![out_channels]));
                        }
                        Layer::Linear {
                            inputs, outputs, ..
                        } => {
                            let n = fcs.next().expect("fc name");
                            specs.push((format!("{n}.weight"), vec![outputs, inputs]));
                            specs.push((format!("{n}.bias"), vec![outputs]));
                        }
                        Layer::MaxPool2 { .. } => {}
                    }
                }
            }
        }
        let mut offset = 0;
        let tensors = specs
            .into_iter()
            .map(|(name, shape)| {
                let numel = shape.iter().product();
                let t = TensorSpec {
                    name,
                    shape,
                    offset,
                    numel,
                };
                offset += numel;
                t
            })
            .collect();
        ParamLayout { tensors }
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
            Architecture::LeNet { extra_layers } => format!("LeNet(extra_layers={extra_layers})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_match_the_paper() {
        assert_eq!(Architecture::LeNet { extra_layers: 2 }.layout().total(), 46_238);
        let mlp = Architecture::mlp(vec![128], Activation::Relu);
        assert_eq!(mlp.layout().total(), 101_770);
        let names: Vec<_> = mlp.layout().tensors.iter().map(|t| t.name.clone()).collect();
        assert_eq!(names, ["1.weight", "1.bias", "3.weight", "3.bias"]);
    }

    #[test]
    fn names_round_trip() {
        for a in [
            Architecture::mlp(vec![128], Activation::Relu),
            Architecture::mlp(vec![256, 256], Activation::Relu),
            Architecture::mlp(vec![128, 64], Activation::Tanh),
            Architecture::mlp(vec![64], Activation::Identity),
            Architecture::LeNet { extra_layers: 2 },
            Architecture::LeNet { extra_layers: 0 },
        ] {
            assert_eq!(Architecture::parse(&a.name(), &[], Activation::Relu, 2).unwrap(), a);
            assert_eq!(Architecture::from_json(&a.to_json()).unwrap(), a);
        }
    }
}
