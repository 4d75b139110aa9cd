//! Checkpoints: one safetensors file of f32 parameters under PyTorch names, with `__metadata__` that
//! describes everything needed to rebuild and interpret the model; optimiser state goes to a sidecar
//! `<checkpoint>.optim.safetensors` so that the model file stays loadable by PyTorch with
//! `load_state_dict(strict=True)`.
//!
//! Checkpoints made elsewhere load too: their tensors, taken in `param_order` (when the metadata has
//! it) or in natural name order (`1.weight` < `3.weight` < `10.weight`; weight before bias), must form
//! the expected chain of shapes. F32, F64, F16 and BF16 are accepted and converted to f32.
//!
//! Nothing in a file is trusted before it is checked: only regular files of at most
//! [`MAX_CHECKPOINT_BYTES`] are read, and the model named by the metadata (or `--model`) is compared
//! with the file's tensors (count, names' order, shapes) one tensor at a time before anything of the
//! model's size is built, so parameters are only allocated for tensors whose bytes are in the file.

use super::atomic::atomic_write;
use crate::model::{Activation, Architecture, ModelSpec, NetSpec, Network, MNIST_INPUT};
use crate::{Error, Result};
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use serde_json::{Map, Value};
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The largest checkpoint or optimiser sidecar read: 1 GiB, 268 million f32 parameters, far beyond
/// the models these tools train (the paper's are under 300,000), and small enough that reading one
/// cannot exhaust a machine's memory.
pub const MAX_CHECKPOINT_BYTES: u64 = 1 << 30;

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
        md.insert(
            "param_order".into(),
            Value::from(layout.names()).to_string(),
        );
        md.insert("num_params".into(), layout.total().to_string());
        md.insert("dtype".into(), "float32".into());
        md.insert("torch_module".into(), self.network.arch.torch_definition());
        Ok(encode_f32_safetensors(&tensors, &md))
    }

    /// Writes the checkpoint atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        atomic_write(path, &self.to_bytes()?)
    }

    /// Loads a checkpoint. The architecture is `model` when given (exactly, or an MLP / LeNet whose
    /// sizes are the file's), else the metadata's `arch` (ours, or a name such as `mlp_1x128` /
    /// `lenet`), else inferred from the tensor shapes.
    ///
    /// # Errors
    /// [`Error::Checkpoint`] naming the file: not a regular file or over [`MAX_CHECKPOINT_BYTES`],
    /// truncated or corrupt safetensors, unknown model in the metadata, unsupported dtype, tensors that
    /// do not fit the model (count or shape), an empty layer or an output of fewer than two classes.
    pub fn load(path: &Path, model: Option<&ModelSpec>) -> Result<Checkpoint> {
        Self::load_for_loss(path, model, None)
    }

    /// [`Checkpoint::load`] of a model measured with `loss` (`--loss`) when given, else with the
    /// loss its metadata records, else cross-entropy: the mean squared error takes a model of one
    /// output (a checkpoint written elsewhere records no loss).
    ///
    /// # Errors
    /// As [`Checkpoint::load`].
    pub fn load_for_loss(
        path: &Path,
        model: Option<&ModelSpec>,
        loss: Option<crate::model::Loss>,
    ) -> Result<Checkpoint> {
        let bytes = read_checkpoint_file(path)?;
        Self::from_bytes_for_loss(path, &bytes, model, loss)
    }

    /// [`Checkpoint::load`] from bytes in memory; `path` is only used in messages.
    pub fn from_bytes(path: &Path, bytes: &[u8], model: Option<&ModelSpec>) -> Result<Checkpoint> {
        Self::from_bytes_for_loss(path, bytes, model, None)
    }

    /// [`Checkpoint::load_for_loss`] from bytes in memory.
    pub fn from_bytes_for_loss(
        path: &Path,
        bytes: &[u8],
        model: Option<&ModelSpec>,
        loss: Option<crate::model::Loss>,
    ) -> Result<Checkpoint> {
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
                Ok(
                    v @ (Value::Object(_) | Value::Array(_) | Value::Number(_) | Value::Bool(_)),
                ) => v,
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
        let views: Vec<safetensors::tensor::TensorView> = ordered
            .iter()
            .map(|n| st.tensor(n))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| meta_err(path, format!("cannot read tensor: {e}")))?;
        let shapes: Vec<Vec<usize>> = views.iter().map(|v| v.shape().to_vec()).collect();
        // An empty layer (a zero width) would make every later size zero and divide by it.
        for (name, shape) in ordered.iter().zip(&shapes) {
            if shape.contains(&0) {
                return Err(meta_err(
                    path,
                    format!(
                        "tensor {name} has shape {shape:?}, an empty layer (every layer needs at \
                         least one unit and one input)"
                    ),
                ));
            }
        }

        let arch = choose_architecture(path, model, &meta, &shapes)?;
        // A spec model's tensors are matched by name, in whatever order the file lists them.
        let (ordered, views, shapes) = match &arch {
            Architecture::Spec(spec) => {
                let order = match_spec_tensors(path, spec, &ordered, &shapes)?;
                let ordered: Vec<String> = order.iter().map(|&j| ordered[j].clone()).collect();
                let views: Vec<safetensors::tensor::TensorView> = ordered
                    .iter()
                    .map(|n| st.tensor(n))
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|e| meta_err(path, format!("cannot read tensor: {e}")))?;
                let shapes = order.iter().map(|&j| shapes[j].clone()).collect();
                (ordered, views, shapes)
            }
            _ => {
                check_tensors_fit(path, &arch, &ordered, &shapes)?;
                (ordered, views, shapes)
            }
        };
        // A model measured with the mean squared error (`loss`, else its metadata's) may have one
        // output; with cross-entropy (or no record of the loss) it needs two.
        let loss = loss.unwrap_or(match meta.get("loss").and_then(Value::as_str) {
            Some("mse") => crate::model::Loss::MeanSquaredError,
            _ => crate::model::Loss::SoftmaxCrossEntropy,
        });
        if let Some(why) = crate::model::too_few_classes(arch.classes_per_position(), loss) {
            // The output layer's weight, when the file's tensors are weight/bias pairs.
            let culprit = ordered
                .len()
                .checked_sub(2)
                .map(|i| format!("tensor {} has shape {:?}: ", ordered[i], shapes[i]))
                .unwrap_or_default();
            return Err(meta_err(path, format!("{culprit}{why}")));
        }
        arch.size_for(loss)
            .map_err(|e| meta_err(path, e.to_string()))?;
        for (name, view) in ordered.iter().zip(&views) {
            dtype_width(view.dtype()).map_err(|m| meta_err(path, format!("tensor {name}: {m}")))?;
        }

        // Every tensor matches the model, so the parameters below are the file's tensors: their
        // count is bounded by the bytes present.
        let network = Network::new(arch);
        let layout = &network.layout;
        let mut params = vec![0f32; layout.total()];
        for ((spec, name), view) in layout.tensors.iter().zip(&ordered).zip(&views) {
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

/// The model of a checkpoint: `model` (exactly, or the MLP / LeNet its shapes describe), else the
/// metadata's `arch`, else inferred from the shapes.
fn choose_architecture(
    path: &Path,
    model: Option<&ModelSpec>,
    meta: &Map<String, Value>,
    shapes: &[Vec<usize>],
) -> Result<Architecture> {
    // The activation the metadata records: in our `arch` object, or a plain `activation` key.
    let meta_activation = || -> Result<Option<Activation>> {
        let named = match meta.get("arch") {
            Some(Value::Object(a)) => a.get("activation"),
            _ => None,
        }
        .or_else(|| meta.get("activation"));
        match named {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Activation::parse)
                .transpose()
                .map_err(|e| meta_err(path, format!("metadata activation: {e}"))),
        }
    };
    match model {
        Some(ModelSpec::Exact(a)) => Ok(a.clone()),
        Some(ModelSpec::Mlp { activation }) => {
            let inferred = infer_architecture(shapes).map_err(|m| meta_err(path, m))?;
            match inferred {
                Architecture::Mlp {
                    input,
                    hidden,
                    classes,
                    ..
                } => Ok(Architecture::Mlp {
                    input,
                    hidden,
                    classes,
                    activation: match activation {
                        Some(a) => *a,
                        None => meta_activation()?.unwrap_or(Activation::Relu),
                    },
                }),
                other => Err(meta_err(
                    path,
                    format!(
                        "--model mlp, but the tensors are those of {} (not a chain of Linear layers)",
                        other.name()
                    ),
                )),
            }
        }
        Some(ModelSpec::LeNet) => match infer_architecture(shapes) {
            Ok(a @ Architecture::LeNet { .. }) => Ok(a),
            Ok(other) => Err(meta_err(
                path,
                format!(
                    "--model lenet, but the tensors are those of {} (no convolutions)",
                    other.name()
                ),
            )),
            Err(m) => Err(meta_err(path, m)),
        },
        None => match meta.get("arch") {
            Some(v @ Value::Object(_)) => Architecture::from_json(v)
                .map_err(|e| meta_err(path, format!("metadata names an unknown model: {e}"))),
            Some(Value::String(name)) => {
                let act = meta_activation()?.unwrap_or(Activation::Relu);
                Architecture::parse(name, &[], act, 2).map_err(|e| {
                    meta_err(
                        path,
                        format!("metadata arch: {e} (pass --model to say which model it is)"),
                    )
                })
            }
            _ => infer_architecture(shapes).map_err(|m| meta_err(path, m)),
        },
    }
}

/// Checks the file's tensors (in mapping order) against `arch`'s, one at a time and before anything
/// of the model's size exists: the count first (computed, not built), then each shape.
fn check_tensors_fit(
    path: &Path,
    arch: &Architecture,
    ordered: &[String],
    shapes: &[Vec<usize>],
) -> Result<()> {
    if arch.tensor_count() != Some(ordered.len()) {
        let expected = match arch.tensor_count() {
            Some(n) if n <= 16 => {
                let names: Vec<String> = (0..n)
                    .filter_map(|i| arch.tensor_spec(i).map(|(name, _)| name))
                    .collect();
                format!("{n} ({})", names.join(", "))
            }
            Some(n) => n.to_string(),
            None => "more than fit in a 64-bit count".to_string(),
        };
        return Err(meta_err(
            path,
            format!(
                "{} tensor{} in the file but model {} has {expected}",
                ordered.len(),
                if ordered.len() == 1 { "" } else { "s" },
                arch_label(arch),
            ),
        ));
    }
    for (i, (name, shape)) in ordered.iter().zip(shapes).enumerate() {
        let (spec_name, spec_shape) = arch.tensor_spec(i).expect("i < tensor_count");
        if *shape != spec_shape {
            return Err(meta_err(
                path,
                format!(
                    "tensor {name} has shape {shape:?} but model {} expects {spec_shape:?} for {spec_name}",
                    arch_label(arch),
                ),
            ));
        }
    }
    Ok(())
}

/// The most differences listed when a file does not match a spec model.
const MAX_LISTED_DIFFERENCES: usize = 20;

/// Matches a file's tensors with a spec model's by name: returns, for each of the model's tensors in
/// `state_dict` order, its index among the file's. Every tensor the model lacks or does not expect,
/// and every shape that differs, is listed (up to [`MAX_LISTED_DIFFERENCES`]).
fn match_spec_tensors(
    path: &Path,
    spec: &NetSpec,
    names: &[String],
    shapes: &[Vec<usize>],
) -> Result<Vec<usize>> {
    let index: HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let mut problems = Vec::new();
    let mut order = Vec::with_capacity(spec.tensors().len());
    for (name, shape) in spec.tensors() {
        match index.get(name.as_str()) {
            None => problems.push(format!("{name} {shape:?} is missing")),
            Some(&j) => {
                if shapes[j] != *shape {
                    problems.push(format!("{name} is {:?}, expected {shape:?}", shapes[j]));
                }
                order.push(j);
            }
        }
    }
    let expected: std::collections::HashSet<&str> =
        spec.tensors().iter().map(|(n, _)| n.as_str()).collect();
    for (name, shape) in names.iter().zip(shapes) {
        if !expected.contains(name.as_str()) {
            problems.push(format!("{name} {shape:?} is not in the model"));
        }
    }
    if problems.is_empty() {
        return Ok(order);
    }
    let more = problems.len().saturating_sub(MAX_LISTED_DIFFERENCES);
    problems.truncate(MAX_LISTED_DIFFERENCES);
    Err(meta_err(
        path,
        format!(
            "the tensors do not match model {}: {}{}",
            spec.name(),
            problems.join("; "),
            if more > 0 {
                format!("; and {more} more")
            } else {
                String::new()
            }
        ),
    ))
}

/// The model's name for messages, summarised when it would list thousands of widths.
fn arch_label(arch: &Architecture) -> String {
    match arch {
        Architecture::Mlp { hidden, .. }
            if hidden.len() > 8 && hidden.iter().any(|&w| w != hidden[0]) =>
        {
            format!("mlp with {} hidden layers", hidden.len())
        }
        _ => arch.name(),
    }
}

/// Reads a checkpoint (or sidecar) file after checking that it is a regular file of at most
/// [`MAX_CHECKPOINT_BYTES`]: a directory, FIFO or device (`/dev/zero`) is refused before it is
/// opened, and the read stops at the limit even if the file grows meanwhile.
pub fn read_checkpoint_file(path: &Path) -> Result<Vec<u8>> {
    read_limited(path, "checkpoint")
}

/// [`read_checkpoint_file`] for a file described as `what` in messages.
fn read_limited(path: &Path, what: &str) -> Result<Vec<u8>> {
    let len = require_regular_file(path, what)?;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // Opened what was checked (not something swapped in since).
    let opened = file.metadata().map_err(|e| Error::io(path, e))?;
    if !opened.is_file() {
        return Err(meta_err(path, "is not a regular file"));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(MAX_CHECKPOINT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > MAX_CHECKPOINT_BYTES {
        return Err(too_large(path, bytes.len() as u64, what));
    }
    Ok(bytes)
}

/// Fails with one line unless `path` is a regular file of at most [`MAX_CHECKPOINT_BYTES`]; returns
/// its size. Checks metadata only (a FIFO is not opened, so this never blocks).
pub fn require_checkpoint_file(path: &Path) -> Result<u64> {
    require_regular_file(path, "checkpoint")
}

fn require_regular_file(path: &Path, what: &str) -> Result<u64> {
    let a = article(what);
    let md = match std::fs::metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(meta_err(path, format!("no such {what} file")))
        }
        Err(e) => return Err(Error::io(path, e)),
    };
    if md.is_dir() {
        return Err(meta_err(
            path,
            format!("is a directory, not {a} {what} file"),
        ));
    }
    if !md.is_file() {
        return Err(meta_err(
            path,
            format!(
                "is not a regular file (a FIFO, device or socket); {a} {what} is read from a regular file only"
            ),
        ));
    }
    if md.len() > MAX_CHECKPOINT_BYTES {
        return Err(too_large(path, md.len(), what));
    }
    Ok(md.len())
}

fn too_large(path: &Path, len: u64, what: &str) -> Error {
    meta_err(
        path,
        format!(
            "is {len} bytes, more than the {} {} {what} may have",
            crate::model::format_bytes(MAX_CHECKPOINT_BYTES),
            article(what)
        ),
    )
}

fn article(noun: &str) -> &'static str {
    if noun.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// Encodes f32 tensors as a safetensors file, deterministically: the header lists `__metadata__` with
/// its keys sorted, then the tensors in the given order with contiguous `data_offsets`, padded with
/// spaces to a multiple of 8 bytes (as the reference implementation does). The `safetensors` crate's
/// own serialiser writes the metadata in hash-map order, which would make identical runs produce
/// different bytes.
pub fn encode_f32_safetensors(
    tensors: &[(String, Vec<usize>, &[f32])],
    meta: &BTreeMap<String, String>,
) -> Vec<u8> {
    let mut header = Map::new();
    if !meta.is_empty() {
        let m: Map<String, Value> = meta
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.clone())))
            .collect();
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
    while !h.len().is_multiple_of(8) {
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
    let width = dtype_width(dtype)?;
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

/// Bytes per element of the dtypes read (F32, F64, F16, BF16).
fn dtype_width(dtype: Dtype) -> std::result::Result<usize, String> {
    match dtype {
        Dtype::F32 => Ok(4),
        Dtype::F64 => Ok(8),
        Dtype::F16 | Dtype::BF16 => Ok(2),
        other => Err(format!(
            "unsupported dtype {other:?} (expected F32, F64, F16 or BF16)"
        )),
    }
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
    if !shapes.len().is_multiple_of(2) {
        return Err(format!(
            "cannot infer the model: {} tensors do not form weight/bias pairs (pass --model)",
            shapes.len()
        ));
    }
    let pairs: Vec<(&Vec<usize>, &Vec<usize>)> = shapes.chunks(2).map(|c| (&c[0], &c[1])).collect();
    if pairs.iter().all(|(w, b)| w.len() == 2 && b.len() == 1) {
        let mut hidden = Vec::new();
        for (i, (w, b)) in pairs.iter().enumerate() {
            if b[0] != w[0] {
                return Err(format!(
                    "cannot infer the model: bias {i} does not match its weight"
                ));
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
        // Channels from conv1's weight, classes from the last Linear's; a square input of the
        // smallest side whose flattened features fc_1 takes (28 for the paper's 256), else 28×28
        // (the tensor check that follows then names the mismatch).
        let channels = pairs[0].0.get(1).copied().unwrap_or(1);
        let classes = pairs.last().expect("pairs").0[0];
        let flat = pairs.get(convs).and_then(|(w, _)| w.get(1)).copied();
        let side = flat
            .filter(|f| f % 16 == 0)
            .map(|f| f / 16)
            .and_then(|q| {
                let d = (q as f64).sqrt().round() as usize;
                (d >= 1 && d.checked_mul(d) == Some(q)).then(|| d.checked_mul(4)?.checked_add(12))
            })
            .flatten()
            .unwrap_or(MNIST_INPUT[1]);
        let arch = Architecture::lenet(convs - 2).for_data([channels, side, side], classes);
        return Ok(arch);
    }
    Err("cannot infer the model from the tensor shapes (pass --model)".to_string())
}

/// An optimiser's resumable state, as its sidecar stores it: named flat f32 tensors (f64 values are
/// stored bit-exactly as pairs of f32 words by the optimisers that keep them).
pub type OptimizerState = BTreeMap<String, Vec<f32>>;

/// `<checkpoint>.optim.safetensors`.
pub fn optimizer_sidecar_path(checkpoint: &Path) -> PathBuf {
    let mut s = checkpoint.as_os_str().to_os_string();
    s.push(".optim.safetensors");
    PathBuf::from(s)
}

/// Writes optimiser state (named flat f32 tensors) and its metadata atomically.
pub fn save_optimizer_state(
    path: &Path,
    state: &OptimizerState,
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
    let out = encode_f32_safetensors(&tensors, &md);
    atomic_write(path, &out)
}

/// Reads an optimiser sidecar: its tensors and metadata.
pub fn load_optimizer_state(path: &Path) -> Result<(OptimizerState, Map<String, Value>)> {
    let bytes = read_limited(path, "optimiser sidecar")?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| meta_err(path, format!("not a valid safetensors file: {e}")))?;
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| meta_err(path, format!("not a valid safetensors file: {e}")))?;
    let mut state = BTreeMap::new();
    for (name, view) in st.tensors() {
        dtype_width(view.dtype()).map_err(|m| meta_err(path, format!("tensor {name}: {m}")))?;
        // safetensors has checked that the shape's elements are the bytes present.
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
    use crate::model::ModelSpec;

    #[test]
    fn natural_order_sorts_layers_numerically() {
        let mut v = vec![
            "10.bias",
            "3.weight",
            "1.bias",
            "10.weight",
            "1.weight",
            "3.bias",
        ];
        v.sort_by(|a, b| natural_order(a, b));
        assert_eq!(
            v,
            [
                "1.weight",
                "1.bias",
                "3.weight",
                "3.bias",
                "10.weight",
                "10.bias"
            ]
        );
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
        // The paper's LeNet, and LeNets built for other images (square, of the smallest side whose
        // fc_1 input their shapes give: 32 and 33 both give 16·5·5).
        for lenet in [
            Architecture::lenet(2),
            Architecture::lenet(1).for_data([3, 32, 32], 5),
            Architecture::lenet(0).for_data([2, 16, 16], 3),
        ] {
            let shapes: Vec<Vec<usize>> = lenet
                .layout()
                .tensors
                .iter()
                .map(|t| t.shape.clone())
                .collect();
            assert_eq!(infer_architecture(&shapes).unwrap(), lenet);
        }
    }

    /// A file of one 1-element tensor whose metadata `arch` is `arch` (about 110 bytes).
    fn tiny_file(arch: &str) -> Vec<u8> {
        let mut md = BTreeMap::new();
        md.insert("arch".to_string(), arch.to_string());
        encode_f32_safetensors(&[("a".to_string(), vec![1], &[0.5f32][..])], &md)
    }

    /// A file with the given tensors (values 0.01) and no metadata, as PyTorch writes one.
    fn file_with(shapes: &[(&str, Vec<usize>)]) -> Vec<u8> {
        let data: Vec<Vec<f32>> = shapes
            .iter()
            .map(|(_, s)| vec![0.01; s.iter().product()])
            .collect();
        let tensors: Vec<(String, Vec<usize>, &[f32])> = shapes
            .iter()
            .zip(&data)
            .map(|((n, s), d)| (n.to_string(), s.clone(), &d[..]))
            .collect();
        encode_f32_safetensors(&tensors, &BTreeMap::new())
    }

    fn load_err(bytes: &[u8], model: Option<&ModelSpec>) -> String {
        Checkpoint::from_bytes(Path::new("ck.safetensors"), bytes, model)
            .unwrap_err()
            .to_string()
    }

    /// The model named in the metadata (or by --model) is checked against the file before any of it
    /// is built: before the fix each of these aborted (allocation failure) or panicked (capacity
    /// overflow).
    #[test]
    fn huge_models_in_metadata_are_refused_before_allocating() {
        for (arch, count) in [
            ("lenet_k4000000000", "has 8000000010"),
            (
                "mlp_1x99999999999",
                "has 4 (1.weight, 1.bias, 3.weight, 3.bias)",
            ),
            ("mlp_1x4611686018427387904", "has 4"),
            (r#"{"kind":"mlp","hidden":[99999999999]}"#, "has 4"),
            (r#"{"kind":"mlp","hidden":[4611686018427387904]}"#, "has 4"),
            (
                r#"{"kind":"mlp","input":4611686018427387904,"hidden":[],"classes":4611686018427387904}"#,
                "has 2",
            ),
            (
                r#"{"kind":"lenet","extra_layers":18446744073709551615}"#,
                "more than fit",
            ),
        ] {
            let bytes = tiny_file(arch);
            assert!(bytes.len() < 200);
            let e = load_err(&bytes, None);
            assert!(
                e.contains("ck.safetensors: 1 tensor in the file but model"),
                "{e}"
            );
            assert!(e.contains(count), "{arch}: {e}");
        }
        let e = load_err(&tiny_file("mlp_4000000000x1"), None);
        assert!(
            e.contains("4000000000 hidden layers (at most 10000)"),
            "{e}"
        );
        // The same models given as --model, on a real checkpoint's four tensors.
        let ok = file_with(&[
            ("1.weight", vec![3, 784]),
            ("1.bias", vec![3]),
            ("3.weight", vec![10, 3]),
            ("3.bias", vec![10]),
        ]);
        let wide = ModelSpec::Exact(Architecture::mlp(vec![99_999_999_999], Activation::Relu));
        let e = load_err(&ok, Some(&wide));
        assert!(
            e.contains("tensor 1.weight has shape [3, 784] but model mlp_1x99999999999 expects [99999999999, 784]"),
            "{e}"
        );
        let deep = ModelSpec::Exact(Architecture::lenet(4_000_000_000));
        assert!(load_err(&ok, Some(&deep))
            .contains("4 tensors in the file but model lenet_k4000000000 has 8000000010"));
    }

    /// Before the fix a zero width panicked in the layers (`chunk size must be non-zero`) and one class
    /// indexed past the logits.
    #[test]
    fn empty_layers_and_single_class_outputs_are_refused() {
        let zero = file_with(&[
            ("1.weight", vec![0, 784]),
            ("1.bias", vec![0]),
            ("3.weight", vec![10, 0]),
            ("3.bias", vec![10]),
        ]);
        let e = load_err(&zero, None);
        assert!(
            e.contains("tensor 1.weight has shape [0, 784], an empty layer"),
            "{e}"
        );
        let one = file_with(&[
            ("1.weight", vec![4, 784]),
            ("1.bias", vec![4]),
            ("3.weight", vec![1, 4]),
            ("3.bias", vec![1]),
        ]);
        let e = load_err(&one, None);
        assert!(
            e.contains("tensor 3.weight has shape [1, 4]: the output layer has 1 class (cross-entropy needs at least 2"),
            "{e}"
        );
        // Metadata claiming a zero width for non-empty tensors: a shape mismatch.
        let mut md = BTreeMap::new();
        md.insert("arch".to_string(), "mlp_1x0".to_string());
        let w = vec![0.0f32; 4 * 784];
        let lied = encode_f32_safetensors(
            &[
                ("1.weight".into(), vec![4, 784], &w[..]),
                ("1.bias".into(), vec![4], &w[..4]),
                ("3.weight".into(), vec![10, 4], &w[..40]),
                ("3.bias".into(), vec![10], &w[..10]),
            ],
            &md,
        );
        assert!(load_err(&lied, None).contains("expects [0, 784]"));
    }

    /// `--model mlp` means the MLP the shapes describe (with the metadata's activation), as omitting
    /// --model does; `--model lenet` takes the extra layers from the file.
    #[test]
    fn family_specs_take_sizes_from_the_file() {
        let net = Network::new(Architecture::mlp(vec![64, 64], Activation::Tanh));
        let ck = Checkpoint {
            params: vec![0.01; net.num_params()],
            network: net.clone(),
            meta: Map::new(),
            source_names: vec![],
        };
        let bytes = ck.to_bytes().unwrap();
        let p = Path::new("x");
        let inferred = Checkpoint::from_bytes(p, &bytes, None).unwrap();
        let mlp =
            Checkpoint::from_bytes(p, &bytes, Some(&ModelSpec::Mlp { activation: None })).unwrap();
        assert_eq!(inferred.network, net);
        assert_eq!(mlp.network, net);
        let relu = Checkpoint::from_bytes(
            p,
            &bytes,
            Some(&ModelSpec::Mlp {
                activation: Some(Activation::Relu),
            }),
        )
        .unwrap();
        assert_eq!(
            relu.network.arch,
            Architecture::mlp(vec![64, 64], Activation::Relu)
        );
        assert!(load_err(&bytes, Some(&ModelSpec::LeNet))
            .contains("--model lenet, but the tensors are those of mlp_2x64"));

        let lenet = Network::new(Architecture::lenet(0));
        let ck = Checkpoint {
            params: vec![0.01; lenet.num_params()],
            network: lenet.clone(),
            meta: Map::new(),
            source_names: vec![],
        };
        let bytes = ck.to_bytes().unwrap();
        let back = Checkpoint::from_bytes(p, &bytes, Some(&ModelSpec::LeNet)).unwrap();
        assert_eq!(back.network, lenet);
        assert!(load_err(&bytes, Some(&ModelSpec::Mlp { activation: None }))
            .contains("--model mlp, but the tensors are those of lenet_k0"));
    }

    #[test]
    fn only_regular_files_of_bounded_size_are_read() {
        let dir = std::env::temp_dir().join(format!("ckpt-read-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = Checkpoint::load(&dir, None).unwrap_err().to_string();
        assert!(e.ends_with("is a directory, not a checkpoint file"), "{e}");
        let e = load_optimizer_state(&dir).unwrap_err().to_string();
        assert!(
            e.ends_with("is a directory, not an optimiser sidecar file"),
            "{e}"
        );
        let e = Checkpoint::load(Path::new("/dev/zero"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/dev/zero: is not a regular file"), "{e}");
        let e = Checkpoint::load(&dir.join("missing"), None)
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("no such checkpoint file"), "{e}");
        let fifo = dir.join("fifo");
        if std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .is_ok_and(|s| s.success())
        {
            // Refused from its metadata, without opening it (which would block).
            let e = Checkpoint::load(&fifo, None).unwrap_err().to_string();
            assert!(e.contains("is not a regular file (a FIFO"), "{e}");
            let e = load_optimizer_state(&fifo).unwrap_err().to_string();
            assert!(e.contains("is not a regular file"), "{e}");
        }
        // A sparse file one byte over the limit is refused without reading it.
        let big = dir.join("big.safetensors");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(MAX_CHECKPOINT_BYTES + 1)
            .unwrap();
        let e = Checkpoint::load(&big, None).unwrap_err().to_string();
        assert!(
            e.contains("is 1073741825 bytes, more than the 1.0 GiB a checkpoint may have"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    /// A spec model's tensors are matched by name: a PyTorch `state_dict` file (no metadata, names
    /// in any order, `fc` sorting after `block`) loads, each tensor in its place; a file that does
    /// not match lists every difference.
    #[test]
    fn spec_models_match_tensors_by_name() {
        let spec = serde_json::json!({"input": [3], "layers": [
            {"type": "linear", "out": 4, "name": "fc"},
            {"type": "residual", "name": "block", "layers": [{"type": "layernorm"}, {"type": "relu"}]},
            {"type": "linear", "out": 2, "bias": false}]});
        let arch = Architecture::Spec(Box::new(NetSpec::from_json("named", &spec).unwrap()));
        let exact = ModelSpec::Exact(arch);
        let tensors = [
            ("block.0.bias", vec![4]),
            ("2.weight", vec![2, 4]),
            ("fc.bias", vec![4]),
            ("block.0.weight", vec![4]),
            ("fc.weight", vec![4, 3]),
        ];
        let data: Vec<Vec<f32>> = (0..tensors.len())
            .map(|i| {
                let n: usize = tensors[i].1.iter().product();
                (0..n).map(|k| (10 * i + k) as f32).collect()
            })
            .collect();
        let named: Vec<(String, Vec<usize>, &[f32])> = tensors
            .iter()
            .zip(&data)
            .map(|((n, s), d)| (n.to_string(), s.clone(), &d[..]))
            .collect();
        let bytes = encode_f32_safetensors(&named, &BTreeMap::new());
        let p = Path::new("torch.safetensors");
        let ck = Checkpoint::from_bytes(p, &bytes, Some(&exact)).unwrap();
        let layout = &ck.network.layout;
        assert_eq!(
            layout.names(),
            [
                "fc.weight",
                "fc.bias",
                "block.0.weight",
                "block.0.bias",
                "2.weight"
            ]
        );
        for (i, (name, _)) in tensors.iter().enumerate() {
            assert_eq!(
                layout.view(&ck.params, name).unwrap(),
                &data[i][..],
                "{name}"
            );
        }
        // Without --model the metadata is needed; with it, every difference is listed.
        let bad = file_with(&[
            ("fc.weight", vec![4, 5]),
            ("fc.bias", vec![4]),
            ("block.0.weight", vec![4]),
            ("2.weight", vec![2, 4]),
            ("2.bias", vec![2]),
        ]);
        let e = load_err(&bad, Some(&exact));
        for want in [
            "the tensors do not match model named",
            "fc.weight is [4, 5], expected [4, 3]",
            "block.0.bias [4] is missing",
            "2.bias [2] is not in the model",
        ] {
            assert!(e.contains(want), "{want}: {e}");
        }
    }
}
