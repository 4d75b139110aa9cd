//! Checkpoints: one safetensors file of f32 parameters under PyTorch names, with `__metadata__` that
//! describes everything needed to rebuild and interpret the model; optimiser state goes to a sidecar
//! `<checkpoint>.optim.safetensors` so that the model file stays loadable by PyTorch with
//! `load_state_dict(strict=True)`.
//!
//! Checkpoints made elsewhere load too: their tensors, taken in `param_order` (when the metadata has
//! it) or in natural name order (`1.weight` < `3.weight` < `10.weight`; weight before bias), must form
//! the expected chain of shapes. F32, F64, F16 and BF16 are accepted and converted to f32.

use super::atomic::atomic_write;
use crate::model::{Activation, Architecture, Network};
use crate::{Error, Result};
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use serde_json::{Map, Value};
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// A model checkpoint in memory.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    pub network: Network,
    /// Flat parameters in the network's layout.
    pub params: Vec<f32>,
    /// Everything else the file says (dataset, optimiser, seed, epoch, step, run, …), as JSON values.
    pub meta: Map<String, Value>,
    /// The tensor names in the file, in the order mapped onto the layout (differs from the layout's
    /// names for checkpoints made elsewhere).
    pub source_names: Vec<String>,
}

fn meta_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::checkpoint(path, msg)
}

impl Checkpoint {
    /// The data set named in the metadata, if any.
    pub fn dataset(&self) -> Option<&str> {
        self.meta.get("dataset").and_then(Value::as_str)
    }

    /// Fails with the first non-finite parameter, naming its tensor and index.
    pub fn check_finite(&self, path: &Path) -> Result<()> {
        for t in &self.network.layout.tensors {
            if let Some(i) = self.params[t.range()].iter().position(|v| !v.is_finite()) {
                return Err(meta_err(
                    path,
                    format!(
                        "parameter {}[{i}] is {} (the checkpoint holds non-finite values)",
                        t.name,
                        self.params[t.offset + i]
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Serialises to safetensors bytes: tensors under the layout's names, metadata as strings
    /// (JSON-encoded where not a plain string), plus `format = pt`, `arch` and `param_order`.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let layout = &self.network.layout;
        let tensors: Vec<(String, Vec<usize>, &[f32])> = layout
            .tensors
            .iter()
            .map(|t| (t.name.clone(), t.shape.clone(), &self.params[t.range()]))
            .collect();
        let mut md: BTreeMap<String, String> = BTreeMap::new();
        for (k, v) in &self.meta {
            md.insert(
                k.clone(),
                match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                },
            );
        }
        md.insert("format".into(), "pt".into());
        md.insert("arch".into(), self.network.arch.to_json().to_string());
        md.insert("param_order".into(), Value::from(layout.names()).to_string());
        md.insert("num_params".into(), layout.total().to_string());
        md.insert("dtype".into(), "float32".into());
        md.insert("torch_module".into(), self.network.arch.torch_definition());
        Ok(encode_safetensors(&tensors, &md))
    }

    /// Writes the checkpoint atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        atomic_write(path, &self.to_bytes()?)
    }

    /// Loads a checkpoint. The architecture is `model` when given, else the metadata's `arch` (ours, or
    /// a name such as `mlp_1x128` / `lenet`), else inferred from the tensor shapes.
    ///
    /// # Errors
    /// [`Error::Checkpoint`] naming the file: truncated or corrupt safetensors, unknown model in the
    /// metadata, unsupported dtype, or tensors that do not fit the model (count or shape).
    pub fn load(path: &Path, model: Option<&Architecture>) -> Result<Checkpoint> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(path, &bytes, model)
    }

    /// [`Checkpoint::load`] from bytes in memory; `path` is only used in messages.
    pub fn from_bytes(path: &Path, bytes: &[u8], model: Option<&Architecture>) -> Result<Checkpoint> {
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| meta_err(path, format!("not a valid safetensors file: {e}")))?;
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| meta_err(path, format!("not a valid safetensors file: {e}")))?;
        let raw_meta: HashMap<String, String> = header.metadata().clone().unwrap_or_default();

        // Metadata values that are JSON are kept as JSON.
        let mut meta = Map::new();
        let mut keys: Vec<_> = raw_meta.keys().cloned().collect();
        keys.sort();
        for k in keys {
            let s = &raw_meta[&k];
            let v = match serde_json::from_str::<Value>(s) {
                Ok(v @ (Value::Object(_) | Value::Array(_) | Value::Number(_) | Value::Bool(_))) => {
                    v
                }
                _ => Value::String(s.clone()),
            };
            meta.insert(k, v);
        }

        // Tensor order: param_order from the metadata, else natural order.
        let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
        if names.is_empty() {
            return Err(meta_err(path, "the file holds no tensors"));
        }
        let ordered = match meta.get("param_order").and_then(Value::as_array) {
            Some(order) => {
                let order: Vec<String> = order
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect();
                let mut a = order.clone();
                a.sort();
                names.sort();
                if a != names {
                    return Err(meta_err(
                        path,
                        "metadata param_order does not list exactly the tensors in the file",
                    ));
                }
                order
            }
            None => {
                names.sort_by(|a, b| natural_order(a, b));
                names
            }
        };
        let shapes: Vec<Vec<usize>> = ordered
            .iter()
            .map(|n| st.tensor(n).map(|t| t.shape().to_vec()))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| meta_err(path, format!("cannot read tensor: {e}")))?;

        let arch = match model {
            Some(a) => a.clone(),
            None => match meta.get("arch") {
                Some(Value::Object(_)) => Architecture::from_json(&meta["arch"]).map_err(|e| {
                    meta_err(path, format!("metadata names an unknown model: {e}"))
                })?,
                Some(Value::String(name)) => {
                    let act = meta
                        .get("activation")
                        .and_then(Value::as_str)
                        .map(Activation::parse)
                        .transpose()?
                        .unwrap_or(Activation::Relu);
                    Architecture::parse(name, &[], act, 2).map_err(|_| {
                        meta_err(
                            path,
                            format!(
                                "metadata names an unknown model '{name}' (pass --model to say which it is)"
                            ),
                        )
                    })?
                }
                _ => infer_architecture(&shapes).map_err(|m| meta_err(path, m))?,
            },
        };
        let network = Network::new(arch);
        let layout = &network.layout;
        if layout.tensors.len() != ordered.len() {
            return Err(meta_err(
                path,
                format!(
                    "{} tensors in the file but model {} has {} ({})",
                    ordered.len(),
                    network.arch.name(),
                    layout.tensors.len(),
                    layout.names().join(", ")
                ),
            ));
        }
        let mut params = vec![0f32; layout.total()];
        for ((spec, name), shape) in layout.tensors.iter().zip(&ordered).zip(&shapes) {
            if *shape != spec.shape {
                return Err(meta_err(
                    path,
                    format!(
                        "tensor {name} has shape {shape:?} but model {} expects {:?} for {}",
                        network.arch.name(),
                        spec.shape,
                        spec.name
                    ),
                ));
            }
            let view = st
                .tensor(name)
                .map_err(|e| meta_err(path, format!("cannot read tensor {name}: {e}")))?;
            decode_into(view.dtype(), view.data(), &mut params[spec.range()])
                .map_err(|m| meta_err(path, format!("tensor {name}: {m}")))?;
        }
        Ok(Checkpoint {
            network,
            params,
            meta,
            source_names: ordered,
        })
    }
}

/// Encodes f32 tensors as a safetensors file, deterministically: the header lists `__metadata__` with
/// its keys sorted, then the tensors in the given order with contiguous `data_offsets`, padded with
/// spaces to a multiple of 8 bytes (as the reference implementation does). The `safetensors` crate's
/// own serialiser writes the metadata in hash-map order, which would make identical runs produce
/// different bytes.
fn encode_safetensors(tensors: &[(String, Vec<usize>, &[f32])], meta: &BTreeMap<String, String>) -> Vec<u8> {
    let mut header = Map::new();
    if !meta.is_empty() {
        let m: Map<String, Value> = meta.iter().map(|(k, v)| (k.clone(), Value::from(v.clone()))).collect();
        header.insert("__metadata__".into(), Value::Object(m));
    }
    let mut offset = 0usize;
    for (name, shape, data) in tensors {
        let end = offset + 4 * data.len();
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut h = Value::Object(header).to_string().into_bytes();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + offset);
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    for (_, _, data) in tensors {
        for v in data.iter() {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

/// Converts little-endian tensor bytes to f32.
fn decode_into(dtype: Dtype, data: &[u8], out: &mut [f32]) -> std::result::Result<(), String> {
    let width = match dtype {
        Dtype::F32 => 4,
        Dtype::F64 => 8,
        Dtype::F16 | Dtype::BF16 => 2,
        other => {
            return Err(format!(
                "unsupported dtype {other:?} (expected F32, F64, F16 or BF16)"
            ))
        }
    };
    if data.len() != out.len() * width {
        return Err(format!(
            "{} bytes for {} elements of {dtype:?}",
            data.len(),
            out.len()
        ));
    }
    for (o, c) in out.iter_mut().zip(data.chunks_exact(width)) {
        *o = match dtype {
            Dtype::F32 => f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
            Dtype::F64 => f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32,
            Dtype::F16 => half::f16::from_le_bytes([c[0], c[1]]).to_f32(),
            Dtype::BF16 => half::bf16::from_le_bytes([c[0], c[1]]).to_f32(),
            _ => unreachable!(),
        };
    }
    Ok(())
}

/// Orders tensor names naturally: dot-separated segments compared numerically when both are numbers,
/// else as text; within one prefix `weight` comes before `bias` (PyTorch's registration order).
pub fn natural_order(a: &str, b: &str) -> Ordering {
    fn rank(last: &str) -> u8 {
        match last {
            "weight" => 0,
            "bias" => 1,
            _ => 2,
        }
    }
    let (pa, la) = a.rsplit_once('.').unwrap_or(("", a));
    let (pb, lb) = b.rsplit_once('.').unwrap_or(("", b));
    let mut sa = pa.split('.');
    let mut sb = pb.split('.');
    loop {
        match (sa.next(), sb.next()) {
            (None, None) => break,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let o = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(i), Ok(j)) => i.cmp(&j),
                    _ => x.cmp(y),
                };
                if o != Ordering::Equal {
                    return o;
                }
            }
        }
    }
    rank(la).cmp(&rank(lb)).then_with(|| la.cmp(lb))
}

/// Infers the architecture from the ordered tensor shapes: a chain of 2-D weights (with 1-D biases) is
/// a ReLU MLP; 4-D conv weights followed by three Linear layers are the paper's LeNet.
fn infer_architecture(shapes: &[Vec<usize>]) -> std::result::Result<Architecture, String> {
    if shapes.len() % 2 != 0 {
        return Err(format!(
            "cannot infer the model: {} tensors do not form weight/bias pairs (pass --model)",
            shapes.len()
        ));
    }
    let pairs: Vec<(&Vec<usize>, &Vec<usize>)> =
        shapes.chunks(2).map(|c| (&c[0], &c[1])).collect();
    if pairs.iter().all(|(w, b)| w.len() == 2 && b.len() == 1) {
        let mut hidden = Vec::new();
        for (i, (w, b)) in pairs.iter().enumerate() {
            if b[0] != w[0] {
                return Err(format!("cannot infer the model: bias {i} does not match its weight"));
            }
            if i > 0 && pairs[i - 1].0[0] != w[1] {
                return Err(format!(
                    "cannot infer the model: layer {i} takes {} inputs but the previous layer has {} outputs",
                    w[1],
                    pairs[i - 1].0[0]
                ));
            }
            if i + 1 < pairs.len() {
                hidden.push(w[0]);
            }
        }
        return Ok(Architecture::Mlp {
            input: pairs[0].0[1],
            hidden,
            classes: pairs.last().expect("pairs").0[0],
            activation: Activation::Relu,
        });
    }
    let convs = pairs.iter().take_while(|(w, _)| w.len() == 4).count();
    if convs >= 2 {
        let arch = Architecture::LeNet {
            extra_layers: convs - 2,
        };
        return Ok(arch);
    }
    Err("cannot infer the model from the tensor shapes (pass --model)".to_string())
}

/// `<checkpoint>.optim.safetensors`.
pub fn optimizer_sidecar_path(checkpoint: &Path) -> PathBuf {
    let mut s = checkpoint.as_os_str().to_os_string();
    s.push(".optim.safetensors");
    PathBuf::from(s)
}

/// Writes optimiser state (named flat f32 tensors) and its metadata atomically.
pub fn save_optimizer_state(
    path: &Path,
    state: &BTreeMap<String, Vec<f32>>,
    meta: &Map<String, Value>,
) -> Result<()> {
    let tensors: Vec<(String, Vec<usize>, &[f32])> = state
        .iter()
        .map(|(k, v)| (k.clone(), vec![v.len()], &v[..]))
        .collect();
    let md: BTreeMap<String, String> = meta
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                match v {
                    Value::String(s) => s.clone(),
                    o => o.to_string(),
                },
            )
        })
        .collect();
    let out = encode_safetensors(&tensors, &md);
    atomic_write(path, &out)
}

/// Reads an optimiser sidecar: its tensors and metadata.
pub fn load_optimizer_state(
    path: &Path,
) -> Result<(BTreeMap<String, Vec<f32>>, Map<String, Value>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| meta_err(path, format!("not a valid safetensors file: {e}")))?;
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| meta_err(path, format!("not a valid safetensors file: {e}")))?;
    let mut state = BTreeMap::new();
    for (name, view) in st.tensors() {
        let n: usize = view.shape().iter().product();
        let mut v = vec![0f32; n];
        decode_into(view.dtype(), view.data(), &mut v)
            .map_err(|m| meta_err(path, format!("tensor {name}: {m}")))?;
        state.insert(name, v);
    }
    let meta = header
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| {
            let val = serde_json::from_str::<Value>(&v).unwrap_or(Value::String(v));
            (k, val)
        })
        .collect();
    Ok((state, meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order_sorts_layers_numerically() {
        let mut v = vec!["10.bias", "3.weight", "1.bias", "10.weight", "1.weight", "3.bias"];
        v.sort_by(|a, b| natural_order(a, b));
        assert_eq!(v, ["1.weight", "1.bias", "3.weight", "3.bias", "10.weight", "10.bias"]);
        let mut w = vec!["fc2.weight", "fc1.bias", "fc1.weight", "fc2.bias"];
        w.sort_by(|a, b| natural_order(a, b));
        assert_eq!(w, ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]);
    }

    #[test]
    fn round_trip_keeps_params_and_metadata() {
        let net = Network::new(Architecture::mlp(vec![3], Activation::Tanh));
        let params: Vec<f32> = (0..net.num_params()).map(|i| i as f32 * 0.5).collect();
        let mut meta = Map::new();
        meta.insert("dataset".into(), Value::from("mnist"));
        meta.insert("epoch".into(), Value::from(3));
        let ck = Checkpoint {
            network: net.clone(),
            params: params.clone(),
            meta,
            source_names: vec![],
        };
        let bytes = ck.to_bytes().unwrap();
        let back = Checkpoint::from_bytes(Path::new("x"), &bytes, None).unwrap();
        assert_eq!(back.network, net);
        assert_eq!(back.params, params);
        assert_eq!(back.meta["epoch"], Value::from(3));
        assert_eq!(back.dataset(), Some("mnist"));
    }

    #[test]
    fn infers_mlp_and_lenet() {
        let mlp = infer_architecture(&[vec![64, 784], vec![64], vec![10, 64], vec![10]]).unwrap();
        assert_eq!(mlp, Architecture::mlp(vec![64], Activation::Relu));
        let lenet = Architecture::LeNet { extra_layers: 2 };
        let shapes: Vec<Vec<usize>> = lenet.layout().tensors.iter().map(|t| t.shape.clone()).collect();
        assert_eq!(infer_architecture(&shapes).unwrap(), lenet);
    }
}
