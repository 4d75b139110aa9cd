//! Data from a safetensors file: any inputs, integer labels or float targets.
//!
//! The file holds tensors `x` `[n, …]` (float32, float64 or uint8) and `y` (`[n]` integer labels
//! for classification; `[n]` or `[n, k]` floats for regression), and optionally `x_test` and
//! `y_test` of the same kinds (the test split). One sample's shape is x's trailing dimensions:
//! `[f]` is taken as 1×1×f, `[h, w]` as 1×h×w, `[c, h, w]` as it is (an MLP takes their product,
//! a LeNet the image). Integer inputs of another dtype than uint8 (int64 as PyTorch stores token
//! ids; `datagen modular` writes them) are token ids in 0..2²⁴: read exactly as numbers, never
//! normalised, for a model whose first layer is an `embedding` (any other model refuses them,
//! [`crate::model::Network::check_input`]). Inputs are normalised per channel as torchvision's `ToTensor` + `Normalize`
//! would: uint8 values b as `(b/255 − mean)/std`, floats as `(x − mean)/std`; without
//! `--normalize`, mean 0 and std 1 (floats are used as they are, bytes as b/255).
//!
//! A file is checked before anything is allocated in proportion to what its header claims: it
//! must be a regular file of at most [`MAX_DATA_FILE_BYTES`], its header is parsed and validated by
//! the safetensors crate (offsets inside the file, sizes that match dtype × shape), and only then are
//! the tensors converted. Refused, naming the tensor and the file: a missing `x` or `y`, lengths
//! that disagree, a wrong dtype or rank, NaN or infinite values, negative labels or labels past
//! [`MAX_CLASSES`], a sample of more than three dimensions or of zero size.
//!
//! Streamed ([`load_data_file_streaming`]; past [`super::STREAM_ABOVE_BYTES`] or with `--stream`):
//! only the header (validated by the safetensors crate's `Metadata`, the data section exactly the
//! rest of the file) and the targets are read into memory; the inputs stay in the file
//! ([`super::stream`]), read once in chunks for the same checks and fingerprint, then row by row.
//!
//! The fingerprint that records carry is FNV-1a (64 bit) over each used tensor's name, dtype,
//! shape and bytes, so that it tells data sets apart whatever else the file's header holds.

use super::dataset::{DataFile, Dataset, Inputs, Source, Split, TargetData};
use super::stream::{Element, StreamedInputs, Streaming};
use crate::{Error, Result};
use safetensors::tensor::Metadata;
use safetensors::{Dtype, SafeTensors};
use std::borrow::Cow;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// The largest data file read (4 GiB): the whole file is held in memory while it is converted.
pub const MAX_DATA_FILE_BYTES: u64 = 1 << 32;

/// Token ids (integer inputs other than uint8) are below this, 2²⁴, so that f32 holds them exactly.
pub const MAX_TOKEN_ID: usize = 1 << 24;

/// The most classes integer labels may announce (a label of 10⁹ would ask for a model with that many
/// outputs).
pub const MAX_CLASSES: usize = 1 << 20;

/// `--normalize`: per channel (mean, std), or one pair for every channel.
#[derive(Clone, Debug, PartialEq)]
pub struct Normalize {
    pub means: Vec<f64>,
    pub stds: Vec<f64>,
}

impl Normalize {
    /// Parses `mean,std` (every channel) or `m₁,…,m_c,s₁,…,s_c` (c channels: the means, then the
    /// standard deviations, in the order of torchvision's `Normalize(mean, std)`).
    ///
    /// # Errors
    /// [`Error::Invalid`] for an odd count, a value that is not a finite number, or a std that is
    /// not positive.
    pub fn parse(s: &str) -> Result<Self> {
        let values: Vec<f64> = s
            .split(',')
            .map(|v| v.trim().parse::<f64>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::invalid(format!("--normalize {s}: {e}")))?;
        if values.is_empty() || !values.len().is_multiple_of(2) {
            return Err(Error::invalid(format!(
                "--normalize {s}: expected mean,std or the means then the stds of every channel (an even count)"
            )));
        }
        let c = values.len() / 2;
        let (means, stds) = (values[..c].to_vec(), values[c..].to_vec());
        if values.iter().any(|v| !v.is_finite()) || stds.iter().any(|&v| v <= 0.0) {
            return Err(Error::invalid(format!(
                "--normalize {s}: values must be finite and every std positive"
            )));
        }
        Ok(Normalize { means, stds })
    }

    /// The text [`Normalize::parse`] reads back (`m₁,…,s₁,…`), for records and metadata.
    pub fn to_text(&self) -> String {
        self.means
            .iter()
            .chain(&self.stds)
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// (mean, std) for each of `channels`.
    fn per_channel(&self, path: &Path, channels: usize) -> Result<Vec<(f64, f64)>> {
        match self.means.len() {
            1 => Ok(vec![(self.means[0], self.stds[0]); channels]),
            c if c == channels => Ok(self
                .means
                .iter()
                .copied()
                .zip(self.stds.iter().copied())
                .collect()),
            c => Err(Error::data(
                path,
                format!("--normalize gives {c} channels but the samples have {channels}"),
            )),
        }
    }
}

/// Loads `split` (x, y or x_test, y_test) of the data file at `path`, normalised by `normalize`.
///
/// # Errors
/// [`Error::Data`] naming the file (and the tensor) for every refusal in the module doc, and for a
/// test split the file does not hold.
pub fn load_data_file(path: &Path, split: Split, normalize: Option<&Normalize>) -> Result<Dataset> {
    load_data_file_split(path, split, normalize)?
        .ok_or_else(|| Error::data(path, "has no test split (tensors x_test and y_test)"))
}

/// [`load_data_file`], with `None` for a test split the file does not hold.
///
/// # Errors
/// As [`load_data_file`].
pub fn load_data_file_split(
    path: &Path,
    split: Split,
    normalize: Option<&Normalize>,
) -> Result<Option<Dataset>> {
    load_data_file_streaming(path, split, normalize, Streaming::Auto)
}

/// [`load_data_file_split`], reading the inputs from disk as they are used ([`super::stream`])
/// when `streaming` says so for the file's size; otherwise the whole file into memory.
///
/// # Errors
/// As [`load_data_file`]; a streamed file is refused for the same reasons with the same messages.
pub fn load_data_file_streaming(
    path: &Path,
    split: Split,
    normalize: Option<&Normalize>,
    streaming: Streaming,
) -> Result<Option<Dataset>> {
    let md = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if md.is_file() && streaming.streams(md.len()) {
        let src = open_streamed(path, md.len())?;
        return from_tensors(path, &src, split, normalize);
    }
    let bytes = read_bounded(path)?;
    data_from_bytes(path, &bytes, split, normalize)
}

/// [`load_data_file_split`] from the file's bytes in memory; `path` is only used in messages.
///
/// # Errors
/// As [`load_data_file`].
pub fn data_from_bytes(
    path: &Path,
    bytes: &[u8],
    split: Split,
    normalize: Option<&Normalize>,
) -> Result<Option<Dataset>> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| Error::data(path, format!("not a valid safetensors file: {e}")))?;
    from_tensors(path, &Tensors::Memory(st), split, normalize)
}

/// Where a data file's tensors are: its bytes in memory, or the file, read as needed (streamed:
/// the targets are read whole, the inputs row by row).
enum Tensors<'a> {
    Memory(SafeTensors<'a>),
    File {
        file: Arc<File>,
        /// The byte offset of the data section (after the header).
        data_start: u64,
        meta: Metadata,
    },
}

/// A tensor's dtype, shape and, unless it is a streamed input, bytes.
struct Tensor<'a> {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Cow<'a, [u8]>,
    /// The absolute file offset of the data (streamed only).
    offset: u64,
}

impl Tensor<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> &[u8] {
        &self.data
    }
}

impl Tensors<'_> {
    fn names(&self) -> Vec<String> {
        match self {
            Tensors::Memory(st) => st.names().into_iter().map(String::from).collect(),
            Tensors::File { meta, .. } => meta.tensors().into_keys().collect(),
        }
    }

    /// The tensor `name`; a streamed file's bytes are read only when `load` (targets), else left on
    /// disk (inputs).
    fn tensor(&self, path: &Path, name: &str, load: bool) -> Result<Tensor<'_>> {
        let missing = || Error::data(path, format!("tensor `{name}`: not found"));
        match self {
            Tensors::Memory(st) => {
                let t = st
                    .tensor(name)
                    .map_err(|e| Error::data(path, format!("tensor `{name}`: {e}")))?;
                Ok(Tensor {
                    dtype: t.dtype(),
                    shape: t.shape().to_vec(),
                    data: Cow::Borrowed(t.data()),
                    offset: 0,
                })
            }
            Tensors::File {
                file,
                data_start,
                meta,
            } => {
                let info = meta.info(name).ok_or_else(missing)?;
                let (start, end) = info.data_offsets;
                let offset = data_start + start as u64;
                let data = if load {
                    let len = end - start;
                    if len as u64 > MAX_DATA_FILE_BYTES {
                        return Err(Error::data(
                            path,
                            format!("tensor `{name}`: {len} bytes, more than the {MAX_DATA_FILE_BYTES} held in memory"),
                        ));
                    }
                    let mut buf = vec![0u8; len];
                    file.read_exact_at(&mut buf, offset)
                        .map_err(|e| Error::io(path, e))?;
                    Cow::Owned(buf)
                } else {
                    Cow::Borrowed(&[][..])
                };
                Ok(Tensor {
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    data,
                    offset,
                })
            }
        }
    }
}

/// Opens a data file to stream: reads and validates its header only (as the safetensors crate
/// does: at most 100 MB, offsets contiguous and matching dtype × shape, the data section exactly
/// the rest of the file).
fn open_streamed(path: &Path, len: u64) -> Result<Tensors<'static>> {
    let bad = |m: String| Error::data(path, format!("not a valid safetensors file: {m}"));
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut n = [0u8; 8];
    file.read_exact_at(&mut n, 0)
        .map_err(|_| bad("shorter than its header size".into()))?;
    let n = u64::from_le_bytes(n);
    if n > MAX_STREAMED_HEADER_BYTES || n.saturating_add(8) > len {
        return Err(bad(format!("header of {n} bytes in a file of {len}")));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact_at(&mut header, 8)
        .map_err(|e| Error::io(path, e))?;
    let meta: Metadata =
        serde_json::from_slice(&header).map_err(|e| bad(format!("header: {e}")))?;
    let end = meta
        .tensors()
        .values()
        .map(|t| t.data_offsets.1 as u64)
        .max()
        .unwrap_or(0);
    if 8 + n + end != len {
        return Err(bad(format!(
            "its header describes {} bytes but the file holds {len}",
            8 + n + end
        )));
    }
    Ok(Tensors::File {
        file: Arc::new(file),
        data_start: 8 + n,
        meta,
    })
}

/// The largest header of a streamed file (the safetensors crate's limit, 100 MB).
const MAX_STREAMED_HEADER_BYTES: u64 = 100_000_000;

/// The data set `split` from a file's tensors (in memory or streamed).
fn from_tensors(
    path: &Path,
    src: &Tensors<'_>,
    split: Split,
    normalize: Option<&Normalize>,
) -> Result<Option<Dataset>> {
    let streamed = matches!(src, Tensors::File { .. });
    let (xn, yn) = match split {
        Split::Train => ("x", "y"),
        Split::Test => ("x_test", "y_test"),
    };
    let names = src.names();
    let has = |n: &str| names.iter().any(|m| m == n);
    for n in ["x", "y"] {
        if !has(n) {
            return Err(Error::data(
                path,
                format!("tensor `{n}` is missing (a data file holds x [n, …] and y [n] or [n, k])"),
            ));
        }
    }
    if has("x_test") != has("y_test") {
        let (h, m) = if has("x_test") {
            ("x_test", "y_test")
        } else {
            ("y_test", "x_test")
        };
        return Err(Error::data(path, format!("tensor `{h}` without `{m}`")));
    }
    if split == Split::Test && !has(xn) {
        return Ok(None);
    }
    let x = src.tensor(path, xn, false)?;
    let y = src.tensor(path, yn, true)?;
    // The training tensors fix the sample shape and the kind of targets for both splits.
    let train_x = src.tensor(path, "x", false)?;
    let train_y = src.tensor(path, "y", true)?;
    let y_test = if has("y_test") {
        Some(src.tensor(path, "y_test", true)?)
    } else {
        None
    };
    let refuse = |name: &str, msg: String| Error::data(path, format!("tensor `{name}`: {msg}"));
    // The test targets are of the training targets' kind, whichever split is loaded (the classes
    // count both splits' labels).
    if let Some(yt) = &y_test {
        let kind = |d: Dtype| (is_float(d), is_integer(d));
        // (A y of neither kind is refused below, naming y.)
        let y_usable = kind(train_y.dtype()) != (false, false);
        if y_usable && kind(yt.dtype()) != kind(train_y.dtype()) {
            return Err(refuse(
                "y_test",
                format!("dtype {:?} but y is {:?}", yt.dtype(), train_y.dtype()),
            ));
        }
        // Labels per position: as many positions in both splits.
        let per_position =
            |t: &Tensor| is_integer(t.dtype()) && matches!(t.shape(), [_, p] if *p > 1);
        if (per_position(&train_y) || per_position(yt))
            && yt.shape().get(1..) != train_y.shape().get(1..)
        {
            return Err(refuse(
                "y_test",
                format!("shape {:?} but y is {:?}", yt.shape(), train_y.shape()),
            ));
        }
    }

    let n = *x
        .shape()
        .first()
        .ok_or_else(|| refuse(xn, "is a scalar; expected [n, …]".into()))?;
    if n == 0 {
        return Err(refuse(xn, "holds no samples".into()));
    }
    let shape = sample_shape(&x.shape()[1..]).map_err(|m| refuse(xn, m))?;
    if xn != "x" && train_x.shape().get(1..) != Some(&x.shape()[1..]) {
        return Err(refuse(
            xn,
            format!(
                "samples of shape {:?} but x's are {:?}",
                &x.shape()[1..],
                train_x.shape().get(1..).unwrap_or(&[])
            ),
        ));
    }
    if x.dtype() != train_x.dtype() {
        return Err(refuse(
            xn,
            format!("dtype {:?} but x is {:?}", x.dtype(), train_x.dtype()),
        ));
    }
    let mut token_ids = false;
    let mut fingerprint = Fnv::default();
    let hash_header = |h: &mut Fnv, name: &str, t: &Tensor| {
        h.write(name.as_bytes());
        h.write(format!("{:?}", t.dtype()).as_bytes());
        for d in t.shape() {
            h.write(&(*d as u64).to_le_bytes());
        }
    };
    hash_header(&mut fingerprint, xn, &x);
    let inputs = match x.dtype() {
        _ if streamed => {
            let (element, tokens) = match x.dtype() {
                Dtype::U8 => (Element::U8, false),
                Dtype::F32 => (Element::F32, false),
                Dtype::F64 => (Element::F64, false),
                d if is_integer(d) => (Element::Token(d), true),
                d => {
                    return Err(refuse(
                        xn,
                        format!(
                            "dtype {d:?}; inputs are float32, float64, uint8 or integer token ids"
                        ),
                    ))
                }
            };
            if tokens && normalize.is_some() {
                return Err(refuse(
                    xn,
                    format!(
                        "holds integer token ids ({:?}), which --normalize does not apply to",
                        x.dtype()
                    ),
                ));
            }
            token_ids = tokens;
            let Tensors::File { file, .. } = src else {
                unreachable!("streamed")
            };
            let rows = StreamedInputs::new(
                path,
                file.clone(),
                element,
                x.offset,
                shape.iter().product(),
                n,
            );
            // One pass over the file: the checks of the in-memory path, and the fingerprint.
            rows.for_each_chunk(|chunk, first| {
                if let Some((i, v)) = rows.first_bad(chunk, first, MAX_TOKEN_ID as i128) {
                    let what = if tokens {
                        format!("token id {v} at flat index {i} is out of range 0..{MAX_TOKEN_ID}")
                    } else {
                        format!("value {v} at flat index {i} is not finite")
                    };
                    return Err(refuse(xn, what));
                }
                fingerprint.write(chunk);
                Ok(())
            })?;
            Inputs::Streamed(rows)
        }
        Dtype::U8 => Inputs::Bytes(x.data().to_vec()),
        Dtype::F32 | Dtype::F64 => {
            let v = floats(x.dtype(), x.data());
            if let Some(i) = v.iter().position(|v| !v.is_finite()) {
                return Err(refuse(
                    xn,
                    format!("value {} at flat index {i} is not finite", v[i]),
                ));
            }
            Inputs::Floats(v)
        }
        // Integer inputs other than bytes are token ids (for an embedding): exact values, never
        // normalised, below 2²⁴ so that the f32 batches hold them exactly.
        d if is_integer(d) => {
            if normalize.is_some() {
                return Err(refuse(
                    xn,
                    format!("holds integer token ids ({d:?}), which --normalize does not apply to"),
                ));
            }
            let mut v = Vec::with_capacity(x.shape().iter().product());
            for (i, t) in integers(d, x.data()).enumerate() {
                if !(0..MAX_TOKEN_ID as i128).contains(&t) {
                    return Err(refuse(
                        xn,
                        format!("token id {t} at flat index {i} is out of range 0..{MAX_TOKEN_ID}"),
                    ));
                }
                v.push(t as f64);
            }
            token_ids = true;
            Inputs::Floats(v)
        }
        d => {
            return Err(refuse(
                xn,
                format!("dtype {d:?}; inputs are float32, float64, uint8 or integer token ids"),
            ))
        }
    };

    if y.shape().first() != Some(&n) {
        return Err(refuse(
            yn,
            format!("shape {:?} but {xn} holds {n} samples", y.shape()),
        ));
    }
    let float_y = is_float(train_y.dtype());
    if is_float(y.dtype()) != float_y {
        return Err(refuse(
            yn,
            format!("dtype {:?} but y is {:?}", y.dtype(), train_y.dtype()),
        ));
    }
    let (targets, classes) = if is_float(y.dtype()) {
        // [n, positions, k] (a per-position output [positions, k]) is a sample's positions·k
        // values in order: the mean squared error is the mean over all of them either way.
        let width = match y.shape() {
            [_] => 1,
            [_, k] if *k > 0 => *k,
            [_, s, k] if *s > 0 && *k > 0 => s.saturating_mul(*k),
            s => {
                return Err(refuse(
                    yn,
                    format!(
                        "shape {s:?}; float targets are [n], [n, k] or [n, positions, k] with k ≥ 1"
                    ),
                ))
            }
        };
        let train_width = train_y
            .shape()
            .get(1..)
            .unwrap_or(&[])
            .iter()
            .product::<usize>();
        if width != train_width {
            return Err(refuse(
                yn,
                format!("width {width} but y's is {train_width}"),
            ));
        }
        let values = floats(y.dtype(), y.data());
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(refuse(
                yn,
                format!("value {} at flat index {i} is not finite", values[i]),
            ));
        }
        (TargetData::Values { values, width }, width)
    } else if is_integer(y.dtype()) {
        // [n]: one label per sample; [n, positions]: one per position (cross-entropy averaged
        // over positions, for a per-position output [positions, classes]).
        let positions = match y.shape() {
            [_] => 1,
            [_, t] if *t > 1 => *t,
            s => {
                return Err(refuse(
                    yn,
                    format!(
                        "shape {s:?}; integer labels are [n], or [n, positions] with at least 2 positions (one per position)"
                    ),
                ))
            }
        };
        let train_positions = match train_y.shape() {
            [_, t] => *t,
            _ => 1,
        };
        if positions != train_positions {
            return Err(refuse(
                yn,
                format!(
                    "shape {:?} but y is {:?} (labels at {train_positions} position(s) per sample)",
                    y.shape(),
                    train_y.shape()
                ),
            ));
        }
        let labels = labels(y.dtype(), y.data()).map_err(|(i, v)| {
            let at = if positions > 1 {
                format!("sample {} position {}", i / positions, i % positions)
            } else {
                format!("index {i}")
            };
            refuse(
                yn,
                format!("label {v} at {at} is out of range 0..{MAX_CLASSES}"),
            )
        })?;
        // The classes are fixed by the training labels and the test labels together, so that both
        // splits give the model the same number of outputs.
        let mut max = 0;
        for t in [&train_y].into_iter().chain(y_test.as_ref()) {
            let l = labels_max(t.dtype(), t.data());
            max = max.max(l);
        }
        let classes = (max as usize + 1).max(2);
        if y.shape().len() == 2 {
            (TargetData::Tokens { labels, positions }, classes)
        } else {
            (TargetData::Labels(labels), classes)
        }
    } else {
        return Err(refuse(
            yn,
            format!(
                "dtype {:?}; targets are integer labels [n] or float32/float64 values [n] or [n, k]",
                y.dtype()
            ),
        ));
    };

    let default = Normalize {
        means: vec![0.0],
        stds: vec![1.0],
    };
    let normalisation = normalize.unwrap_or(&default).per_channel(path, shape[0])?;
    // FNV-1a over x's name, dtype, shape and bytes (hashed above as they were read when
    // streamed), then y's.
    let fingerprint = {
        let mut h = fingerprint;
        if !streamed {
            h.write(x.data());
        }
        hash_header(&mut h, yn, &y);
        h.write(y.data());
        format!("{:016x}", h.0)
    };
    Ok(Some(Dataset {
        source: Source::File(DataFile {
            path: path.to_path_buf(),
            fingerprint,
            normalize: normalize.cloned(),
            token_ids,
        }),
        split,
        folder: path.to_path_buf(),
        inputs,
        targets,
        shape,
        classes,
        normalisation,
    }))
}

/// The file's bytes, after checking that it is a regular file of at most [`MAX_DATA_FILE_BYTES`]
/// (a FIFO or device is refused unopened; the read stops at the limit if the file grows).
fn read_bounded(path: &Path) -> Result<Vec<u8>> {
    let md = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !md.is_file() {
        return Err(Error::data(
            path,
            "is not a regular file; a data file is a .safetensors file",
        ));
    }
    if md.len() > MAX_DATA_FILE_BYTES {
        return Err(Error::data(
            path,
            format!(
                "is {} bytes, more than the {MAX_DATA_FILE_BYTES} a data file may have",
                md.len()
            ),
        ));
    }
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut bytes = Vec::with_capacity(md.len() as usize);
    file.take(MAX_DATA_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > MAX_DATA_FILE_BYTES {
        return Err(Error::data(
            path,
            "grew past the data file limit while it was read",
        ));
    }
    Ok(bytes)
}

/// [c, h, w] from x's trailing dimensions.
fn sample_shape(dims: &[usize]) -> std::result::Result<[usize; 3], String> {
    let shape = match *dims {
        [] => return Err("is [n]; samples need at least one dimension ([n, f])".into()),
        [f] => [1, 1, f],
        [h, w] => [1, h, w],
        [c, h, w] => [c, h, w],
        _ => {
            return Err(format!(
                "samples of {} dimensions {dims:?}; at most 3 ([c, h, w])",
                dims.len()
            ))
        }
    };
    if shape.contains(&0) {
        return Err(format!("samples of shape {dims:?} hold no values"));
    }
    Ok(shape)
}

fn is_float(d: Dtype) -> bool {
    matches!(d, Dtype::F32 | Dtype::F64)
}

fn is_integer(d: Dtype) -> bool {
    matches!(
        d,
        Dtype::U8
            | Dtype::I8
            | Dtype::U16
            | Dtype::I16
            | Dtype::U32
            | Dtype::I32
            | Dtype::U64
            | Dtype::I64
    )
}

/// Little-endian float32 or float64 values as f64 (float32 exactly).
fn floats(d: Dtype, bytes: &[u8]) -> Vec<f64> {
    match d {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")) as f64)
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect(),
        _ => unreachable!("floats of a float dtype"),
    }
}

/// Integer labels as i128 values, one per element (little-endian).
fn integers(d: Dtype, bytes: &[u8]) -> impl Iterator<Item = i128> + '_ {
    let size = match d {
        Dtype::U8 | Dtype::I8 => 1,
        Dtype::U16 | Dtype::I16 => 2,
        Dtype::U32 | Dtype::I32 => 4,
        _ => 8,
    };
    let signed = matches!(d, Dtype::I8 | Dtype::I16 | Dtype::I32 | Dtype::I64);
    bytes.chunks_exact(size).map(move |c| {
        let mut b = [0u8; 16];
        b[..size].copy_from_slice(c);
        if signed && c[size - 1] & 0x80 != 0 {
            b[size..].fill(0xff);
        }
        i128::from_le_bytes(b)
    })
}

/// One little-endian integer of dtype `d` (its bytes) as i128.
pub(crate) fn integer_at(d: Dtype, bytes: &[u8]) -> i128 {
    integers(d, bytes).next().expect("one element")
}

/// The labels, or the first (index, value) out of 0..[`MAX_CLASSES`].
fn labels(d: Dtype, bytes: &[u8]) -> std::result::Result<Vec<u32>, (usize, i128)> {
    integers(d, bytes)
        .enumerate()
        .map(|(i, v)| {
            if (0..MAX_CLASSES as i128).contains(&v) {
                Ok(v as u32)
            } else {
                Err((i, v))
            }
        })
        .collect()
}

/// The largest label in range (out-of-range labels are refused by [`labels`] for the split loaded;
/// the other split's are refused when it is loaded).
fn labels_max(d: Dtype, bytes: &[u8]) -> u32 {
    integers(d, bytes)
        .filter(|v| (0..MAX_CLASSES as i128).contains(v))
        .max()
        .unwrap_or(0) as u32
}

/// FNV-1a, 64 bit (Fowler, Noll, Vo).
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Normaliser;
    use crate::model::TargetBuf;
    use safetensors::tensor::TensorView;
    use std::path::PathBuf;

    /// A tensor to write: name, dtype, shape, little-endian bytes.
    type Raw = (&'static str, Dtype, Vec<usize>, Vec<u8>);

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }
    fn f64s(v: &[f64]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }
    fn i64s(v: &[i64]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn write(name: &str, tensors: &[Raw]) -> PathBuf {
        let views: Vec<(&str, TensorView<'_>)> = tensors
            .iter()
            .map(|(n, d, s, b)| (*n, TensorView::new(*d, s.clone(), b).expect("view")))
            .collect();
        let bytes = safetensors::serialize(views, None).expect("serialize");
        write_bytes(name, &bytes)
    }

    fn write_bytes(name: &str, bytes: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ngd-slt-data-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(format!("{name}.safetensors"));
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// x: 4 samples of 2×1×3 (float32), y: labels 0..3 (int64), a test split of 2.
    fn classification() -> Vec<Raw> {
        let x: Vec<f32> = (0..24).map(|i| i as f32 * 0.5 - 3.0).collect();
        vec![
            ("x", Dtype::F32, vec![4, 2, 1, 3], f32s(&x)),
            ("y", Dtype::I64, vec![4], i64s(&[0, 2, 1, 2])),
            ("x_test", Dtype::F32, vec![2, 2, 1, 3], f32s(&x[..12])),
            ("y_test", Dtype::I64, vec![2], i64s(&[3, 0])),
        ]
    }

    /// The error of loading the file, the same whether it is read into memory or streamed.
    fn load_err(name: &str, tensors: &[Raw]) -> String {
        let path = write(name, tensors);
        let e = load_data_file(&path, Split::Train, None)
            .unwrap_err()
            .to_string();
        let streamed = load_data_file_streaming(&path, Split::Train, None, Streaming::Always)
            .unwrap_err()
            .to_string();
        assert_eq!(e, streamed, "in memory and streamed");
        e
    }

    /// A streamed data set is the in-memory one: the same fingerprint, sizes, targets, and every
    /// gathered batch bit for bit, in f32 and f64, for byte, float and token inputs, both splits,
    /// after truncation too; and its inputs are not held in memory.
    #[test]
    fn streamed_data_equal_the_in_memory_data() {
        let bytes: Vec<u8> = (0..5 * 2 * 2 * 3).map(|i| (i * 37 % 256) as u8).collect();
        let floats: Vec<f64> = (0..5 * 4).map(|i| (i as f64 * 0.37).sin() * 1e3).collect();
        let files: Vec<(&str, Vec<Raw>, Option<&str>)> = vec![
            ("s-cls", classification(), Some("1,-1,0.3,0.7")),
            (
                "s-bytes",
                vec![
                    ("x", Dtype::U8, vec![5, 2, 2, 3], bytes.clone()),
                    ("y", Dtype::I64, vec![5], i64s(&[0, 1, 2, 1, 0])),
                ],
                Some("0.1,0.2,0.3,0.4"),
            ),
            (
                "s-reg64",
                vec![
                    ("x", Dtype::F64, vec![5, 4], f64s(&floats)),
                    ("y", Dtype::F64, vec![5, 2], f64s(&floats[..10])),
                    ("x_test", Dtype::F64, vec![1, 4], f64s(&floats[..4])),
                    ("y_test", Dtype::F64, vec![1, 2], f64s(&floats[..2])),
                ],
                None,
            ),
            (
                "s-tokens",
                vec![
                    (
                        "x",
                        Dtype::I64,
                        vec![5, 3],
                        i64s(&[0, 1, 9, 2, 3, 9, 4, 5, 9, 6, 7, 9, 8, 0, 9]),
                    ),
                    ("y", Dtype::I64, vec![5], i64s(&[1, 5, 0, 4, 8])),
                ],
                None,
            ),
        ];
        for (name, tensors, norm) in files {
            let path = write(name, &tensors);
            let norm = norm.map(|n| Normalize::parse(n).unwrap());
            for split in [Split::Train, Split::Test] {
                let mem = load_data_file_split(&path, split, norm.as_ref()).unwrap();
                let st = load_data_file_streaming(&path, split, norm.as_ref(), Streaming::Always)
                    .unwrap();
                let (Some(mut mem), Some(mut st)) = (mem, st) else {
                    continue;
                };
                assert!(st.is_streamed() && !mem.is_streamed());
                assert!(
                    matches!(st.inputs, Inputs::Streamed(_)),
                    "{name}: nothing held"
                );
                assert_eq!(
                    (&mem.source, mem.len(), mem.classes, mem.shape, &mem.targets),
                    (&st.source, st.len(), st.classes, st.shape, &st.targets),
                    "{name}"
                );
                assert_eq!(mem.normalisation_text(), st.normalisation_text());
                for truncate in [false, true] {
                    if truncate {
                        mem.truncate(mem.len() - 1);
                        st.truncate(st.len() - 1);
                        assert_eq!(mem.len(), st.len());
                    }
                    let n = mem.len();
                    let idx: Vec<usize> = (0..n).rev().chain(0..n).collect();
                    let gather32 = |d: &Dataset| {
                        let mut x = vec![0f32; idx.len() * d.features()];
                        let mut y = d.target_buffer::<f32>(idx.len());
                        d.gather_batch(&d.normaliser::<f32>(), &idx, &mut x, &mut y)
                            .unwrap();
                        (x.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), y)
                    };
                    let gather64 = |d: &Dataset| {
                        let mut x = vec![0f64; n * d.features()];
                        let mut y = d.target_buffer::<f64>(n);
                        d.gather_range_batch(&d.normaliser::<f64>(), 0, n, &mut x, &mut y)
                            .unwrap();
                        (x.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), y)
                    };
                    assert_eq!(gather32(&mem), gather32(&st), "{name} f32");
                    assert_eq!(gather64(&mem), gather64(&st), "{name} f64");
                    assert_eq!(
                        mem.normalized::<f32>().unwrap(),
                        st.normalized::<f32>().unwrap(),
                        "{name}"
                    );
                }
            }
        }
    }

    /// A streamed file truncated while a tool uses it: every reader of its batches (the SGLD
    /// chains, L_init, the evaluation, the Hessian operator, reading it whole) returns an error
    /// naming the file; none panics.
    #[test]
    fn a_streamed_file_truncated_in_use_is_an_error_naming_it_not_a_panic() {
        use crate::curvature::HessianOperator;
        use crate::model::{Architecture, NetSpec, Network};
        use crate::sample::llc::init_loss;
        use crate::sample::{run_chains, InitLoss, NetworkPotential, SgldConfig};
        let p = write("truncated-in-use", &classification());
        let d = load_data_file_streaming(&p, Split::Train, None, Streaming::Always)
            .unwrap()
            .expect("a train split");
        let spec = serde_json::json!({"input": [2, 1, 3],
            "layers": [{"type": "flatten"}, {"type": "linear", "out": 4}]});
        let net = Network::new(Architecture::Spec(Box::new(
            NetSpec::from_json("t", &spec).unwrap(),
        )));
        let w: Vec<f32> = crate::model::initialise(&net, 1);
        let pot = NetworkPotential::new(&net, &d, 2).unwrap();
        let cfg = SgldConfig {
            step_size: 1e-4,
            nbeta: 10.0,
            localization: 100.0,
            weight_decay: 0.0,
            bounding_box: None,
            draws: 20,
            burn_in: 0,
            thin: 1,
            chains: 3,
            threads: 2,
            seed: 5,
        };
        // Readable: the chains run.
        assert_eq!(run_chains(&pot, &w, &cfg).unwrap().len(), 3);
        // Cut inside the first sample's inputs (the header stays readable).
        let header = 8 + u64::from_le_bytes(std::fs::read(&p).unwrap()[..8].try_into().unwrap());
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(header + 4)
            .unwrap();
        let name = p.display().to_string();
        let errors = [
            run_chains(&pot, &w, &cfg).err().map(|e| e.to_string()),
            init_loss(&pot, &w, InitLoss::Minibatches { count: 2 }, 1)
                .err()
                .map(|e| e.to_string()),
            net.evaluate(&w, &d, 2).err().map(|e| e.to_string()),
            HessianOperator::<f32>::from_dataset(&net, &w, &d, 4, 2, 1 << 20)
                .err()
                .map(|e| e.to_string()),
            d.normalized::<f32>().err().map(|e| e.to_string()),
        ];
        for (what, e) in [
            "chains",
            "L_init",
            "evaluate",
            "Hessian operator",
            "normalized",
        ]
        .iter()
        .zip(errors)
        {
            let e = e.unwrap_or_else(|| panic!("{what}: no error on a truncated file"));
            assert!(e.contains(&name), "{what}: {e}");
        }
    }

    #[test]
    fn a_classification_file_loads_with_its_shape_classes_and_normalisation() {
        let p = write("cls", &classification());
        let norm = Normalize::parse("1,-1,2,0.5").unwrap();
        let d = load_data_file(&p, Split::Train, Some(&norm)).unwrap();
        assert_eq!(d.len(), 4);
        assert_eq!(d.sample_shape(), [2, 1, 3]);
        // The test split's label 3 counts: both splits give the model 4 outputs.
        assert_eq!(d.classes, 4);
        assert!(!d.float_targets());
        let n: Normaliser<f64> = d.normaliser();
        let mut x = vec![0.0; 2 * 6];
        let mut y = d.target_buffer::<f64>(2);
        d.gather_batch(&n, &[3, 1], &mut x, &mut y).unwrap();
        // Sample 3 starts at flat index 18: channel 0 holds x = 18·0.5 − 3 = 6 → (6 − 1)/2; channel 1
        // (index 21) x = 7.5 → (7.5 + 1)/0.5.
        assert_eq!(x[0], (6.0 - 1.0) / 2.0);
        assert_eq!(x[3], (7.5 + 1.0) / 0.5);
        assert_eq!(y, TargetBuf::Labels(vec![2, 2]));
        let t = load_data_file(&p, Split::Test, None).unwrap();
        assert_eq!((t.len(), t.classes), (2, 4));
        assert_eq!(d.normalisation_text(), "x = (x - [1, -1])/[2, 0.5]");
    }

    /// Integer labels `[n, T]` are labels at every position (for a per-position output): gathered
    /// T per sample; the classes count both splits; float targets `[n, T, k]` are T·k values per
    /// sample, in order.
    #[test]
    fn labels_and_targets_per_position_load_with_their_positions() {
        let x: Vec<f64> = (0..6).map(|i| i as f64).collect();
        let p = write(
            "tokens",
            &[
                ("x", Dtype::F64, vec![3, 2], f64s(&x)),
                ("y", Dtype::I64, vec![3, 2], i64s(&[0, 1, 2, 3, 1, 1])),
                ("x_test", Dtype::F64, vec![1, 2], f64s(&x[..2])),
                ("y_test", Dtype::I64, vec![1, 2], i64s(&[5, 0])),
            ],
        );
        for streamed in [false, true] {
            let d = if streamed {
                load_data_file_streaming(&p, Split::Train, None, Streaming::Always)
                    .unwrap()
                    .unwrap()
            } else {
                load_data_file(&p, Split::Train, None).unwrap()
            };
            assert_eq!((d.len(), d.label_positions(), d.classes), (3, 2, 6));
            assert_eq!(d.labels_flat(), [0, 1, 2, 3, 1, 1]);
            assert_eq!(d.target_tensor_name(), "y");
            // (The inputs do not matter here: the gather of pre-normalised rows, whose targets
            // are gathered as every gather's.)
            let rows = vec![0f64; d.len() * d.features()];
            let mut xb = vec![0f64; 4];
            let mut y = d.target_buffer::<f64>(2);
            d.gather_normalized_batch(&rows, &[2, 0], &mut xb, &mut y);
            assert_eq!(
                y,
                TargetBuf::Tokens {
                    labels: vec![1, 1, 0, 1],
                    positions: 2
                }
            );
            assert_eq!(y.len(), 2);
            assert_eq!(
                y.view().range(1, 2),
                crate::model::Targets::Tokens {
                    labels: &[0, 1][..],
                    positions: 2
                }
            );
        }
        let t = load_data_file(&p, Split::Test, None).unwrap();
        assert_eq!((t.len(), t.label_positions(), t.classes), (1, 2, 6));
        assert_eq!(t.target_tensor_name(), "y_test");

        let p3 = write(
            "values3d",
            &[
                ("x", Dtype::F64, vec![3, 2], f64s(&x)),
                (
                    "y",
                    Dtype::F64,
                    vec![3, 2, 2],
                    f64s(&(0..12).map(|i| i as f64).collect::<Vec<_>>()),
                ),
            ],
        );
        let d = load_data_file(&p3, Split::Train, None).unwrap();
        assert_eq!((d.classes, d.label_positions()), (4, 1));
        let rows = vec![0f32; d.len() * d.features()];
        let mut xb = vec![0f32; 2];
        let mut y = d.target_buffer::<f32>(1);
        d.gather_normalized_batch(&rows, &[1], &mut xb, &mut y);
        assert_eq!(
            y.view(),
            crate::model::Targets::Values {
                values: &[4.0f32, 5.0, 6.0, 7.0][..],
                width: 4
            }
        );
    }

    #[test]
    fn float_targets_are_values_of_their_width_and_the_test_split_is_optional() {
        let x: Vec<f64> = (0..6).map(|i| i as f64).collect();
        let p = write(
            "reg",
            &[
                ("x", Dtype::F64, vec![3, 2], f64s(&x)),
                (
                    "y",
                    Dtype::F32,
                    vec![3, 2],
                    f32s(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
                ),
            ],
        );
        let d = load_data_file(&p, Split::Train, None).unwrap();
        assert_eq!((d.sample_shape(), d.classes), ([1, 1, 2], 2));
        assert!(d.float_targets());
        let mut xb = vec![0f32; 2];
        let mut y = d.target_buffer::<f32>(1);
        d.gather_batch(&d.normaliser(), &[2], &mut xb, &mut y)
            .unwrap();
        assert_eq!(xb, [4.0, 5.0]);
        assert_eq!(
            y.view(),
            crate::model::Targets::Values {
                values: &[5.0f32, 6.0][..],
                width: 2
            }
        );
        assert!(load_data_file_split(&p, Split::Test, None)
            .unwrap()
            .is_none());
        let e = load_data_file(&p, Split::Test, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("has no test split"), "{e}");
        // [n] floats are one target per sample.
        let p1 = write(
            "reg1",
            &[
                ("x", Dtype::F64, vec![3, 2], f64s(&x)),
                ("y", Dtype::F64, vec![3], f64s(&[1.0, 2.0, 3.0])),
            ],
        );
        assert_eq!(load_data_file(&p1, Split::Train, None).unwrap().classes, 1);
    }

    /// Integer inputs other than uint8 are token ids: exact, not normalised, marked as tokens.
    #[test]
    fn integer_inputs_are_token_ids_read_exactly() {
        let ids = [0i64, 113, 7, 16_777_215, 5, 0];
        let tensors: Vec<Raw> = vec![
            ("x", Dtype::I64, vec![2, 3], i64s(&ids)),
            ("y", Dtype::I64, vec![2], i64s(&[1, 0])),
        ];
        let path = write("tokens", &tensors);
        let d = load_data_file(&path, Split::Train, None).unwrap();
        assert!(d.token_ids());
        assert_eq!(d.shape, [1, 1, 3]);
        let mut x = vec![0f32; 6];
        let mut y = d.target_buffer::<f32>(2);
        d.gather_batch(&d.normaliser::<f32>(), &[1, 0], &mut x, &mut y)
            .unwrap();
        assert_eq!(x, [16_777_215.0, 5.0, 0.0, 0.0, 113.0, 7.0]);
        let float = write("floats", &classification());
        assert!(!load_data_file(&float, Split::Train, None)
            .unwrap()
            .token_ids());
        let norm = Normalize::parse("0.5,0.5").unwrap();
        let e = load_data_file(&path, Split::Train, Some(&norm))
            .unwrap_err()
            .to_string();
        assert!(e.contains("token ids") && e.contains("--normalize"), "{e}");
    }

    #[test]
    fn uint8_inputs_are_divided_by_255_as_to_tensor() {
        let p = write(
            "bytes",
            &[
                ("x", Dtype::U8, vec![2, 1, 1, 2], vec![0, 255, 51, 102]),
                ("y", Dtype::U8, vec![2], vec![1, 0]),
            ],
        );
        let d = load_data_file(
            &p,
            Split::Train,
            Some(&Normalize::parse("0.5,0.5").unwrap()),
        )
        .unwrap();
        let v: Vec<f32> = d.normalized().unwrap();
        let expect = |b: f32| (b / 255.0 - 0.5) / 0.5;
        assert_eq!(v, [expect(0.0), expect(255.0), expect(51.0), expect(102.0)]);
        assert_eq!(d.normalisation_text(), "x = (byte/255 - 0.5)/0.5");
    }

    #[test]
    fn the_fingerprint_tells_contents_apart() {
        let a = load_data_file(&write("fa", &classification()), Split::Train, None).unwrap();
        let b = load_data_file(&write("fb", &classification()), Split::Train, None).unwrap();
        let mut other = classification();
        other[1].3[0] = 1; // label 0 → 1
        let c = load_data_file(&write("fc", &other), Split::Train, None).unwrap();
        let fp = |d: &Dataset| match &d.source {
            Source::File(f) => f.fingerprint.clone(),
            Source::Idx(_) => unreachable!(),
        };
        assert_eq!(fp(&a), fp(&b));
        assert_ne!(fp(&a), fp(&c));
        assert_eq!(fp(&a).len(), 16);
    }

    /// Every refusal names the file and the tensor.
    #[test]
    fn bad_files_are_refused_naming_the_tensor() {
        let good = classification();
        let without = |n: &str| -> Vec<Raw> { good.iter().filter(|t| t.0 != n).cloned().collect() };
        let with = |i: usize, t: Raw| -> Vec<Raw> {
            let mut v = good.clone();
            v[i] = t;
            v
        };
        let cases: Vec<(&str, Vec<Raw>, &str)> =
            vec![
            ("no-x", without("x"), "tensor `x` is missing"),
            ("no-y", without("y"), "tensor `y` is missing"),
            (
                "half-test",
                without("y_test"),
                "tensor `x_test` without `y_test`",
            ),
            (
                "lengths",
                with(1, ("y", Dtype::I64, vec![3], i64s(&[0, 1, 1]))),
                "tensor `y`: shape [3] but x holds 4 samples",
            ),
            (
                "nan",
                with(
                    0,
                    ("x", Dtype::F32, vec![4, 2, 1, 3], f32s(&[f32::NAN; 24])),
                ),
                "tensor `x`: value NaN at flat index 0 is not finite",
            ),
            (
                "negative",
                with(1, ("y", Dtype::I64, vec![4], i64s(&[0, -1, 1, 1]))),
                "tensor `y`: label -1 at index 1 is out of range",
            ),
            (
                "negative-token",
                vec![
                    good[0].clone(),
                    ("y", Dtype::I64, vec![4, 2], i64s(&[0, 1, 1, 0, 2, -3, 1, 1])),
                ],
                "tensor `y`: label -3 at sample 2 position 1 is out of range",
            ),
            (
                "token-positions",
                vec![
                    good[0].clone(),
                    ("y", Dtype::I64, vec![4, 2], i64s(&[0; 8])),
                    good[2].clone(),
                    ("y_test", Dtype::I64, vec![2, 3], i64s(&[0; 6])),
                ],
                "tensor `y_test`: shape [2, 3] but y is [4, 2]",
            ),
            (
                "float-3d-zero",
                vec![good[0].clone(), ("y", Dtype::F32, vec![4, 0, 2], vec![])],
                "float targets are [n], [n, k] or [n, positions, k] with k ≥ 1",
            ),
            (
                "huge-label",
                with(1, ("y", Dtype::I64, vec![4], i64s(&[0, 1 << 40, 1, 1]))),
                "label 1099511627776 at index 1 is out of range 0..1048576",
            ),
            (
                "x-dtype",
                with(0, ("x", Dtype::BOOL, vec![4, 6], vec![0; 24])),
                "tensor `x`: dtype BOOL; inputs are float32, float64, uint8 or integer token ids",
            ),
            (
                "x-token-negative",
                with(
                    0,
                    (
                        "x",
                        Dtype::I64,
                        vec![4, 2],
                        i64s(&[0, 1, 2, 3, 4, -5, 6, 7]),
                    ),
                ),
                "tensor `x`: token id -5 at flat index 5 is out of range 0..16777216",
            ),
            (
                "x-token-large",
                with(
                    0,
                    ("x", Dtype::I32, vec![4, 1], {
                        let v: Vec<u8> = [0i32, 1, 1 << 24, 3]
                            .iter()
                            .flat_map(|t| t.to_le_bytes())
                            .collect();
                        v
                    }),
                ),
                "tensor `x`: token id 16777216 at flat index 2 is out of range",
            ),
            (
                "y-dtype",
                with(1, ("y", Dtype::BOOL, vec![4], vec![0; 4])),
                "tensor `y`: dtype BOOL; targets are integer labels",
            ),
            (
                "rank1",
                with(0, ("x", Dtype::F32, vec![4], f32s(&[0.0; 4]))),
                "tensor `x`: is [n]; samples need at least one dimension",
            ),
            (
                "rank5",
                with(0, ("x", Dtype::F32, vec![4, 1, 2, 1, 3], f32s(&[0.0; 24]))),
                "samples of 4 dimensions",
            ),
            (
                "empty",
                with(0, ("x", Dtype::F32, vec![0, 6], vec![])),
                "tensor `x`: holds no samples",
            ),
            (
                "labels-2d",
                with(1, ("y", Dtype::I64, vec![4, 1], i64s(&[0, 1, 1, 1]))),
                "integer labels are [n]",
            ),
            (
                "inf-y",
                vec![
                    good[0].clone(),
                    (
                        "y",
                        Dtype::F64,
                        vec![4],
                        f64s(&[0.0, f64::INFINITY, 1.0, 1.0]),
                    ),
                ],
                "tensor `y`: value inf at flat index 1 is not finite",
            ),
        ];
        for (name, tensors, expect) in cases {
            let e = load_err(name, &tensors);
            assert!(e.contains(expect) && e.contains(name), "{name}: {e}");
        }
        // The test split is checked against the training one when it is loaded.
        let mut shape = good.clone();
        shape[2] = ("x_test", Dtype::F32, vec![2, 6], f32s(&[0.0; 12]));
        let e = load_data_file(&write("test-shape", &shape), Split::Test, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tensor `x_test`: samples of shape [6] but x's are [2, 1, 3]"),
            "{e}"
        );
        let mut neg = good.clone();
        neg[3] = ("y_test", Dtype::I64, vec![2], i64s(&[0, -5]));
        let mut float_test = good.clone();
        float_test[3] = ("y_test", Dtype::F32, vec![2], f32s(&[0.5, 1.5]));
        let e = load_data_file(&write("test-float", &float_test), Split::Train, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("tensor `y_test`: dtype F32 but y is I64"), "{e}");
        let e = load_data_file(&write("test-neg", &neg), Split::Test, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("tensor `y_test`: label -5 at index 1"), "{e}");
        // A --normalize of another channel count.
        let e = load_data_file(
            &write("norm", &good),
            Split::Train,
            Some(&Normalize::parse("0,0,0,1,1,1").unwrap()),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("--normalize gives 3 channels but the samples have 2"),
            "{e}"
        );
    }

    /// Headers that claim more than the file holds, truncated bodies and garbage are one-line errors
    /// (the safetensors crate checks the header against the bytes read; nothing is allocated from a
    /// claimed size).
    #[test]
    fn hostile_headers_are_refused_without_allocating() {
        let mut huge = (u64::MAX / 2).to_le_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        let mut lying = Vec::new();
        let header = br#"{"x":{"dtype":"F32","shape":[1000000000000,1000000],"data_offsets":[0,4]},"y":{"dtype":"I64","shape":[1],"data_offsets":[4,12]}}"#;
        lying.extend_from_slice(&(header.len() as u64).to_le_bytes());
        lying.extend_from_slice(header);
        lying.extend_from_slice(&[0; 12]);
        let good = std::fs::read(write("good", &classification())).unwrap();
        for (name, bytes) in [
            ("huge-header", huge),
            ("lying-shape", lying),
            ("truncated", good[..good.len() - 5].to_vec()),
            ("garbage", b"not a safetensors file at all".to_vec()),
            ("tiny", vec![1, 2, 3]),
        ] {
            let path = write_bytes(name, &bytes);
            let e = load_data_file(&path, Split::Train, None)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("not a valid safetensors file") && e.contains(name),
                "{name}: {e}"
            );
            // Streamed: only the header is read, and it is refused as well.
            let e = load_data_file_streaming(&path, Split::Train, None, Streaming::Always)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("not a valid safetensors file") && e.contains(name),
                "streamed {name}: {e}"
            );
        }
        let e = load_data_file(Path::new("/dev/null"), Split::Train, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not a regular file"), "{e}");
    }

    /// Random corruptions of a valid file (bytes overwritten, inserted or cut anywhere, header
    /// included) are loaded or refused, never a panic: 3,000 seeded mutants, both splits.
    #[test]
    fn corrupted_files_never_panic() {
        let mut tensors = classification();
        tensors.push(("extra", Dtype::F64, vec![2], f64s(&[1.0, 2.0])));
        let views: Vec<(&str, TensorView<'_>)> = tensors
            .iter()
            .map(|(n, d, s, b)| (*n, TensorView::new(*d, s.clone(), b).expect("view")))
            .collect();
        let good = safetensors::serialize(views, None).expect("serialize");
        let mut rng = crate::rng::stream(17, crate::rng::Purpose::Probe, 0);
        let (mut loaded, mut refused) = (0, 0);
        for _ in 0..3000 {
            let mut b = good.clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(b.len() as u64) as usize;
                match rng.below(4) {
                    0 => b[at] = rng.below(256) as u8,
                    1 => b[at] ^= 1 << rng.below(8),
                    2 => b.truncate(at),
                    _ => b.insert(at, rng.below(256) as u8),
                }
                if b.is_empty() {
                    break;
                }
            }
            for split in [Split::Train, Split::Test] {
                match data_from_bytes(Path::new("mutant"), &b, split, None) {
                    Ok(_) => loaded += 1,
                    Err(e) => {
                        assert!(e.to_string().starts_with("mutant: "), "{e}");
                        refused += 1;
                    }
                }
            }
            // One mutant in ten also streamed from a file: loaded or refused, never a panic, and
            // loaded exactly when the in-memory reader loads it.
            if rng.below(10) == 0 {
                let path = write_bytes("mutant-streamed", &b);
                for split in [Split::Train, Split::Test] {
                    let mem = data_from_bytes(&path, &b, split, None);
                    let st = load_data_file_streaming(&path, split, None, Streaming::Always);
                    assert_eq!(mem.is_ok(), st.is_ok(), "{:?} vs {:?}", mem.err(), st.err());
                    if let (Ok(Some(m)), Ok(Some(s))) = (&mem, &st) {
                        assert_eq!((&m.source, &m.targets), (&s.source, &s.targets));
                    }
                }
            }
        }
        // Both outcomes occur (mutations in the tensor data mostly still load).
        assert!(
            loaded > 100 && refused > 100,
            "{loaded} loaded, {refused} refused"
        );
    }

    #[test]
    fn normalize_parses_pairs_and_refuses_nonsense() {
        assert_eq!(
            Normalize::parse("0.5,0.25").unwrap(),
            Normalize {
                means: vec![0.5],
                stds: vec![0.25]
            }
        );
        assert_eq!(Normalize::parse("1,2,3,4").unwrap().to_text(), "1,2,3,4");
        for bad in ["1", "1,2,3", "0,0", "0,-1", "a,b", "1,nan"] {
            assert!(Normalize::parse(bad).is_err(), "{bad}");
        }
    }
}
