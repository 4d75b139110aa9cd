//! MNIST and Fashion-MNIST as the paper uses them.

use super::idx::{read_idx, IDX_MAGIC_IMAGES, IDX_MAGIC_LABELS};
use crate::model::TargetBuf;
use crate::{Error, Real, Result};
use std::path::{Path, PathBuf};

/// Which data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatasetKind {
    Mnist,
    FashionMnist,
}

/// Training or test split. The test split is the paper's validation set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    fn file_prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "train" => Ok(Split::Train),
            "test" => Ok(Split::Test),
            _ => Err(Error::invalid(format!(
                "unknown split '{s}' (expected train or test)"
            ))),
        }
    }
}

impl DatasetKind {
    /// The name used on the command line, in records and in checkpoint metadata.
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Mnist => "mnist",
            DatasetKind::FashionMnist => "fashion-mnist",
        }
    }

    /// Parses `mnist` or `fashion-mnist` (also `fashion`, `fashion_mnist`, `fashionmnist`).
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "mnist" => Ok(DatasetKind::Mnist),
            "fashion-mnist" | "fashion" | "fashion_mnist" | "fashionmnist" => {
                Ok(DatasetKind::FashionMnist)
            }
            _ => Err(Error::invalid(format!(
                "unknown dataset '{s}' (expected mnist or fashion-mnist)"
            ))),
        }
    }

    /// The name in prose: `MNIST`, `Fashion-MNIST`.
    pub fn title(self) -> &'static str {
        match self {
            DatasetKind::Mnist => "MNIST",
            DatasetKind::FashionMnist => "Fashion-MNIST",
        }
    }

    /// The paper's normalisation `x = (b/255 − mean)/std`: MNIST (0.1307, 0.3081), Fashion-MNIST
    /// (0.5, 0.5), as torchvision's `ToTensor` followed by `Normalize`.
    pub fn normalisation(self) -> (f64, f64) {
        match self {
            DatasetKind::Mnist => (0.1307, 0.3081),
            DatasetKind::FashionMnist => (0.5, 0.5),
        }
    }

    /// A description of the normalisation for records and metadata.
    pub fn normalisation_text(self) -> String {
        let (m, s) = self.normalisation();
        format!("x = (pixel/255 - {m})/{s}")
    }

    /// The folder under `data/` that `make data` fills.
    pub fn default_folder(self) -> &'static str {
        match self {
            DatasetKind::Mnist => "mnist",
            DatasetKind::FashionMnist => "fashion-mnist",
        }
    }

    /// torchvision's folder name (`<root>/<name>/raw`).
    fn torchvision_folder(self) -> &'static str {
        match self {
            DatasetKind::Mnist => "MNIST",
            DatasetKind::FashionMnist => "FashionMNIST",
        }
    }

    /// The folders searched for the IDX files, in order: `dir`, `dir/<mnist|fashion-mnist>`,
    /// `dir/raw`, `dir/<MNIST|FashionMNIST>/raw` (torchvision's layout, as it is on disk).
    pub fn candidate_folders(self, dir: &Path) -> Vec<PathBuf> {
        vec![
            dir.to_path_buf(),
            dir.join(self.default_folder()),
            dir.join("raw"),
            dir.join(self.torchvision_folder()).join("raw"),
        ]
    }
}

/// Where a data set came from: an IDX data set (MNIST, Fashion-MNIST) or a data file
/// ([`super::file`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    Idx(DatasetKind),
    File(DataFile),
}

/// A data file and the fingerprint of its tensors ([`super::file::load_data_file`]).
#[derive(Clone, Debug, PartialEq)]
pub struct DataFile {
    pub path: PathBuf,
    /// FNV-1a 64 of the used tensors' names, dtypes, shapes and bytes, as 16 hex digits.
    pub fingerprint: String,
    /// `--normalize`, if given.
    pub normalize: Option<super::Normalize>,
    /// `x` holds integer token ids (read exactly, for an embedding layer), not numbers.
    pub token_ids: bool,
}

/// One sample's inputs for all samples, `len × features`, as stored.
#[derive(Clone, Debug, PartialEq)]
pub enum Inputs {
    /// Bytes, normalised as `(b/255 − mean)/std` per channel (IDX images, uint8 files).
    Bytes(Vec<u8>),
    /// Floats (float32 values are exact in f64), normalised as `(x − mean)/std` per channel.
    Floats(Vec<f64>),
    /// Read from the data file row by row as batches are gathered ([`super::stream`]); normalised
    /// as the in-memory kinds it stores.
    Streamed(super::stream::StreamedInputs),
}

/// All samples' targets.
#[derive(Clone, Debug, PartialEq)]
pub enum TargetData {
    /// Class labels in 0..classes.
    Labels(Vec<u32>),
    /// Class labels in 0..classes at every position of a sequence, `len × positions`, row-major
    /// (`y` `[n, positions]`): the targets of cross-entropy averaged over positions.
    Tokens { labels: Vec<u32>, positions: usize },
    /// Float targets, `len × width`, row-major.
    Values { values: Vec<f64>, width: usize },
}

/// A data set split held in memory as stored; batches are normalised as they are gathered.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub source: Source,
    pub split: Split,
    /// The folder the IDX files were read from, or the data file (for messages).
    pub folder: PathBuf,
    pub inputs: Inputs,
    pub targets: TargetData,
    /// One sample's shape, [channels, height, width].
    pub shape: [usize; 3],
    /// Classes (labels; per position for labels at every position), or the targets' width (float
    /// targets, all positions' values for `[n, positions, k]`): the outputs the model needs.
    pub classes: usize,
    /// Per channel (mean, std) of the normalisation (one pair for every IDX image).
    pub normalisation: Vec<(f64, f64)>,
}

/// How a batch's inputs are normalised in `T`: a table of the 256 normalised byte values per channel,
/// or per channel the mean and std of `(x − mean)/std`; `plane` = features per channel.
#[derive(Clone, Debug)]
pub enum Normaliser<T> {
    Table { tables: Vec<[T; 256]>, plane: usize },
    Affine { channels: Vec<(T, T)>, plane: usize },
}

/// The published files, known by a fingerprint of their first records, so that a file of the other data
/// set (or split) is refused by name whatever folder it sits in.
///
/// The fingerprint is FNV-1a (64 bit) of the first [`FINGERPRINT_RECORDS`] records' bytes (images or
/// labels, after the IDX header), taken from the files `data/SHA256SUMS` lists (`make data` verifies
/// their SHA-256 when it fetches them). It depends on the decompressed bytes only, so the plain and the
/// gzip files (torchvision's `raw/` folders hold both) match alike, and so does any subset that keeps the
/// files' first records in order (the test fixture `tests/fixtures/mnist-small`). Hashing 32 records
/// costs nothing beside reading the file; a file that matches no entry (another subset, synthetic data)
/// is taken as what `--dataset` says.
struct KnownFile {
    kind: DatasetKind,
    split: Split,
    labels: bool,
    fingerprint: u64,
}

/// Records hashed by [`KnownFile`]'s fingerprint.
const FINGERPRINT_RECORDS: usize = 32;

const KNOWN_FILES: [KnownFile; 8] = [
    KnownFile {
        kind: DatasetKind::Mnist,
        split: Split::Train,
        labels: false,
        fingerprint: 0xb988_5daf_d198_b5ef,
    },
    KnownFile {
        kind: DatasetKind::Mnist,
        split: Split::Train,
        labels: true,
        fingerprint: 0x2550_6b3e_cea7_dfcf,
    },
    KnownFile {
        kind: DatasetKind::Mnist,
        split: Split::Test,
        labels: false,
        fingerprint: 0xab36_105f_f5d8_4911,
    },
    KnownFile {
        kind: DatasetKind::Mnist,
        split: Split::Test,
        labels: true,
        fingerprint: 0xc078_54ad_e2df_53f7,
    },
    KnownFile {
        kind: DatasetKind::FashionMnist,
        split: Split::Train,
        labels: false,
        fingerprint: 0xabf5_bd3c_c02e_6471,
    },
    KnownFile {
        kind: DatasetKind::FashionMnist,
        split: Split::Train,
        labels: true,
        fingerprint: 0xc6f1_b03c_7c2a_96b5,
    },
    KnownFile {
        kind: DatasetKind::FashionMnist,
        split: Split::Test,
        labels: false,
        fingerprint: 0x5ff4_ecbb_0586_4ac7,
    },
    KnownFile {
        kind: DatasetKind::FashionMnist,
        split: Split::Test,
        labels: true,
        fingerprint: 0xe368_98c5_9422_ba89,
    },
];

/// FNV-1a, 64 bit (Fowler, Noll, Vo).
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The published file that `data` (IDX body of records of `record_len` bytes) starts like, if any.
fn identify(data: &[u8], record_len: usize, labels: bool) -> Option<(DatasetKind, Split)> {
    let n = FINGERPRINT_RECORDS.checked_mul(record_len)?;
    let expected_len = if labels { 1 } else { 28 * 28 };
    if record_len != expected_len || data.len() < n {
        return None;
    }
    let fp = fnv1a64(&data[..n]);
    KNOWN_FILES
        .iter()
        .find(|k| k.labels == labels && k.fingerprint == fp)
        .map(|k| (k.kind, k.split))
}

/// Refuses a file that is a published file of another data set or split than asked for.
fn check_identity(
    path: &Path,
    kind: DatasetKind,
    split: Split,
    data: &[u8],
    record_len: usize,
    labels: bool,
) -> Result<()> {
    let Some((is_kind, is_split)) = identify(data, record_len, labels) else {
        return Ok(());
    };
    if (is_kind, is_split) == (kind, split) {
        return Ok(());
    }
    let what = if labels { "labels" } else { "images" };
    let wanted = format!("{} {} {what}", kind.title(), split.name());
    let found = format!("{} {} {what}", is_kind.title(), is_split.name());
    let hint = if is_kind != kind {
        format!(
            "pass --dataset {} or a --data-dir holding {}",
            is_kind.name(),
            kind.name()
        )
    } else {
        "the folder's files are mixed up".to_string()
    };
    Err(Error::data(
        path,
        format!("this file holds the {found} (its first records are the published file's), not the {wanted}; {hint}"),
    ))
}

fn find_file(folder: &Path, stem: &str) -> Option<PathBuf> {
    [stem.to_string(), format!("{stem}.gz")]
        .into_iter()
        .map(|n| folder.join(n))
        .find(|p| p.is_file())
}

impl Dataset {
    /// Loads a split of `kind` from `data_dir` (see [`DatasetKind::candidate_folders`]).
    ///
    /// # Errors
    /// [`Error::Data`] if no folder holds the files (the message says how to fetch them), or if a file
    /// is malformed, has labels outside 0..10, or image and label counts differ.
    pub fn load(kind: DatasetKind, data_dir: &Path, split: Split) -> Result<Self> {
        let images_stem = format!("{}-images-idx3-ubyte", split.file_prefix());
        let labels_stem = format!("{}-labels-idx1-ubyte", split.file_prefix());
        let folders = kind.candidate_folders(data_dir);
        let found = folders.iter().find_map(|f| {
            Some((
                f.clone(),
                find_file(f, &images_stem)?,
                find_file(f, &labels_stem)?,
            ))
        });
        let Some((folder, images_path, labels_path)) = found else {
            return Err(Error::data(
                data_dir,
                format!(
                    "{} {} files not found ({images_stem}[.gz] and {labels_stem}[.gz] in {}); run `make data` to fetch them, or pass --data-dir",
                    kind.name(),
                    split.name(),
                    folders
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        };
        let images = read_idx(&images_path, IDX_MAGIC_IMAGES)?;
        let labels = read_idx(&labels_path, IDX_MAGIC_LABELS)?;
        if images.dims.len() != 3 {
            return Err(Error::data(&images_path, "images must have 3 dimensions"));
        }
        let (n, rows, cols) = (images.dims[0], images.dims[1], images.dims[2]);
        if labels.dims[0] != n {
            return Err(Error::data(
                &labels_path,
                format!(
                    "{} labels but {} has {n} images",
                    labels.dims[0],
                    images_path.display()
                ),
            ));
        }
        let features = rows
            .checked_mul(cols)
            .ok_or_else(|| Error::data(&images_path, "image size overflows"))?;
        check_identity(&images_path, kind, split, &images.data, features, false)?;
        check_identity(&labels_path, kind, split, &labels.data, 1, true)?;
        let classes = 10;
        if let Some((i, &l)) = labels
            .data
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= classes)
        {
            return Err(Error::data(
                &labels_path,
                format!("label {l} at index {i} is out of range 0..{classes}"),
            ));
        }
        Ok(Dataset {
            source: Source::Idx(kind),
            split,
            folder,
            inputs: Inputs::Bytes(images.data),
            targets: TargetData::Labels(labels.data.iter().map(|&l| l as u32).collect()),
            shape: [1, rows, cols],
            classes,
            normalisation: vec![kind.normalisation()],
        })
    }

    /// Builds a data set from bytes already in memory (tests, synthetic data).
    pub fn from_parts(
        kind: DatasetKind,
        split: Split,
        images: Vec<u8>,
        labels: Vec<u8>,
        rows: usize,
        cols: usize,
    ) -> Self {
        assert_eq!(images.len(), labels.len() * rows * cols);
        Dataset {
            source: Source::Idx(kind),
            split,
            folder: PathBuf::new(),
            inputs: Inputs::Bytes(images),
            targets: TargetData::Labels(labels.iter().map(|&l| l as u32).collect()),
            shape: [1, rows, cols],
            classes: 10,
            normalisation: vec![kind.normalisation()],
        }
    }

    /// The IDX data set, if it is one.
    pub fn kind(&self) -> Option<DatasetKind> {
        match &self.source {
            Source::Idx(k) => Some(*k),
            Source::File(_) => None,
        }
    }

    /// A name for messages: `mnist`, `fashion-mnist`, or the data file.
    pub fn name(&self) -> String {
        match &self.source {
            Source::Idx(k) => k.name().to_string(),
            Source::File(f) => f.path.display().to_string(),
        }
    }

    /// What a resumed run compares: `mnist`, `fashion-mnist`, or `file:<fingerprint>`.
    pub fn identity(&self) -> String {
        match &self.source {
            Source::Idx(k) => k.name().to_string(),
            Source::File(f) => format!("file:{}", f.fingerprint),
        }
    }

    /// The fields that say which data (and loss) a record or checkpoint is of: the IDX data sets'
    /// `dataset` (and, with the default cross-entropy, nothing else: records as before data files
    /// existed); a data file's `data_file`, `data_fingerprint`, `data_normalize` (the
    /// `--normalize` text, or null) and `loss`.
    pub fn record_fields(&self, loss: crate::model::Loss) -> Vec<(String, serde_json::Value)> {
        use serde_json::Value;
        match &self.source {
            Source::Idx(kind) if loss == crate::model::Loss::SoftmaxCrossEntropy => {
                vec![("dataset".into(), Value::from(kind.name()))]
            }
            Source::Idx(kind) => vec![
                ("dataset".into(), Value::from(kind.name())),
                ("loss".into(), Value::from(loss.name())),
            ],
            Source::File(f) => vec![
                (
                    "data_file".into(),
                    Value::from(f.path.display().to_string()),
                ),
                (
                    "data_fingerprint".into(),
                    Value::from(f.fingerprint.clone()),
                ),
                (
                    "data_normalize".into(),
                    f.normalize.as_ref().map(|n| n.to_text()).into(),
                ),
                ("loss".into(), Value::from(loss.name())),
            ]
            .into_iter()
            // Labels at every position: the loss is averaged over them, the accuracy per token.
            .chain(
                (self.label_positions() > 1)
                    .then(|| ("loss_positions".into(), Value::from(self.label_positions()))),
            )
            .collect(),
        }
    }

    /// Whether the inputs are integer token ids (a data file's integer `x`, for an `embedding`),
    /// not numbers.
    pub fn token_ids(&self) -> bool {
        matches!(&self.source, Source::File(f) if f.token_ids)
    }

    /// Whether the targets are floats (regression) rather than class labels.
    pub fn float_targets(&self) -> bool {
        matches!(self.targets, TargetData::Values { .. })
    }

    /// The normalisation in words, for records and metadata: the IDX data sets' as before
    /// ([`DatasetKind::normalisation_text`]); for a file per channel, e.g.
    /// `x = (x - 0.5)/0.25` or `x = (byte/255 - [0.4, 0.5])/[0.2, 0.3]`, or `none`.
    pub fn normalisation_text(&self) -> String {
        if let Source::Idx(k) = &self.source {
            return k.normalisation_text();
        }
        let bytes = self.byte_inputs();
        let x = if bytes { "byte/255" } else { "x" };
        let identity = self
            .normalisation
            .iter()
            .all(|&(m, s)| m == 0.0 && s == 1.0);
        if identity {
            return if bytes {
                "x = byte/255".into()
            } else {
                "none".into()
            };
        }
        let list = |f: fn(&(f64, f64)) -> f64| {
            let v: Vec<String> = self
                .normalisation
                .iter()
                .map(|p| f(p).to_string())
                .collect();
            if v.len() == 1 {
                v[0].clone()
            } else {
                format!("[{}]", v.join(", "))
            }
        };
        format!("x = ({x} - {})/{}", list(|p| p.0), list(|p| p.1))
    }

    /// Whether the stored inputs are bytes (normalised through a table).
    fn byte_inputs(&self) -> bool {
        match &self.inputs {
            Inputs::Bytes(_) => true,
            Inputs::Floats(_) => false,
            Inputs::Streamed(s) => s.is_bytes(),
        }
    }

    /// Whether the inputs are streamed from disk rather than held in memory.
    pub fn is_streamed(&self) -> bool {
        matches!(self.inputs, Inputs::Streamed(_))
    }

    pub fn len(&self) -> usize {
        match &self.targets {
            TargetData::Labels(l) => l.len(),
            TargetData::Tokens { labels, positions } => labels.len() / (*positions).max(1),
            TargetData::Values { values, width } => values.len() / (*width).max(1),
        }
    }

    /// Labels per sample: the positions of labels `[n, positions]`, else 1.
    pub fn label_positions(&self) -> usize {
        match &self.targets {
            TargetData::Tokens { positions, .. } => *positions,
            _ => 1,
        }
    }

    /// Every label in order (`len × label_positions`); empty for float targets.
    pub fn labels_flat(&self) -> &[u32] {
        match &self.targets {
            TargetData::Labels(l) | TargetData::Tokens { labels: l, .. } => l,
            TargetData::Values { .. } => &[],
        }
    }

    /// The name of the targets in messages: a data file's tensor (`y`, `y_test`), an IDX data
    /// set's labels file.
    pub fn target_tensor_name(&self) -> String {
        match (&self.source, self.split) {
            (Source::File(_), Split::Train) => "y".into(),
            (Source::File(_), Split::Test) => "y_test".into(),
            (Source::Idx(_), split) => format!("{} labels", split.name()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Values per sample (pixels for images).
    pub fn features(&self) -> usize {
        self.shape.iter().product()
    }

    /// One sample's shape, [channels, height, width] (the IDX images have one channel).
    pub fn sample_shape(&self) -> [usize; 3] {
        self.shape
    }

    /// Keeps the first `n` samples in file order.
    pub fn truncate(&mut self, n: usize) {
        let n = n.min(self.len());
        let f = self.features();
        match &mut self.inputs {
            Inputs::Bytes(b) => b.truncate(n * f),
            Inputs::Floats(v) => v.truncate(n * f),
            Inputs::Streamed(s) => s.truncate(n),
        }
        match &mut self.targets {
            TargetData::Labels(l) => l.truncate(n),
            TargetData::Tokens { labels, positions } => labels.truncate(n * *positions),
            TargetData::Values { values, width } => values.truncate(n * *width),
        }
    }

    /// The byte inputs (IDX images, uint8 files).
    ///
    /// **Panics** for float inputs.
    fn bytes(&self) -> &[u8] {
        match &self.inputs {
            Inputs::Bytes(b) => b,
            Inputs::Floats(_) | Inputs::Streamed(_) => {
                panic!(
                    "{}: only in-memory byte inputs have a byte table",
                    self.name()
                )
            }
        }
    }

    /// The labels.
    ///
    /// **Panics** for float targets.
    fn labels(&self) -> &[u32] {
        match &self.targets {
            TargetData::Labels(l) => l,
            TargetData::Tokens { .. } | TargetData::Values { .. } => {
                panic!("{}: not one label per sample", self.name())
            }
        }
    }

    /// The 256 normalised values `(b/255 − mean)/std` of the first channel, each operation rounded
    /// in `T` (for `f32` this is bit-identical to torchvision's `ToTensor` + `Normalize`; for `f64`
    /// it is the float64 formula). For byte inputs of one channel with labels (the IDX data sets),
    /// with [`Dataset::gather`] and [`Dataset::gather_range`].
    pub fn normalisation_table<T: Real>(&self) -> [T; 256] {
        byte_table(self.normalisation[0])
    }

    /// How batches are normalised in `T` ([`Dataset::gather_batch`]).
    pub fn normaliser<T: Real>(&self) -> Normaliser<T> {
        let plane = self.shape[1] * self.shape[2];
        match self.byte_inputs() {
            true => Normaliser::Table {
                tables: self.normalisation.iter().map(|&p| byte_table(p)).collect(),
                plane,
            },
            false => Normaliser::Affine {
                channels: self
                    .normalisation
                    .iter()
                    .map(|&(m, s)| (T::of_f64(m), T::of_f64(s)))
                    .collect(),
                plane,
            },
        }
    }

    /// Targets buffer for `batch` samples of this data set.
    pub fn target_buffer<T: Real>(&self, batch: usize) -> TargetBuf<T> {
        match &self.targets {
            TargetData::Labels(_) => TargetBuf::Labels(vec![0; batch]),
            TargetData::Tokens { positions, .. } => TargetBuf::Tokens {
                labels: vec![0; batch * positions],
                positions: *positions,
            },
            TargetData::Values { width, .. } => TargetBuf::Values {
                values: vec![T::zero(); batch * width],
                width: *width,
            },
        }
    }

    /// Sample `i`'s normalised inputs into `dst` (`features` long).
    fn normalise_row<T: Real>(&self, norm: &Normaliser<T>, i: usize, dst: &mut [T]) {
        let f = self.features();
        match (norm, &self.inputs) {
            (Normaliser::Table { tables, .. }, Inputs::Bytes(b)) if tables.len() == 1 => {
                let table = &tables[0];
                for (d, &v) in dst.iter_mut().zip(&b[i * f..(i + 1) * f]) {
                    *d = table[v as usize];
                }
            }
            // One channel's plane at a time (no division per element to find the channel).
            (Normaliser::Table { tables, plane }, Inputs::Bytes(b)) => {
                assert_eq!(
                    tables.len() * plane,
                    f,
                    "{}: normaliser's channels",
                    self.name()
                );
                let planes = dst[..f]
                    .chunks_mut((*plane).max(1))
                    .zip(b[i * f..(i + 1) * f].chunks((*plane).max(1)));
                for ((d, src), table) in planes.zip(tables) {
                    for (d, &v) in d.iter_mut().zip(src) {
                        *d = table[v as usize];
                    }
                }
            }
            (Normaliser::Affine { channels, plane }, Inputs::Floats(x)) => {
                assert_eq!(
                    channels.len() * plane,
                    f,
                    "{}: normaliser's channels",
                    self.name()
                );
                let planes = dst[..f]
                    .chunks_mut((*plane).max(1))
                    .zip(x[i * f..(i + 1) * f].chunks((*plane).max(1)));
                for ((d, src), &(m, s)) in planes.zip(channels) {
                    for (d, &v) in d.iter_mut().zip(src) {
                        *d = (T::of_f64(v) - m) / s;
                    }
                }
            }
            _ => panic!("{}: normaliser of another data set", self.name()),
        }
    }

    /// Sample `i`'s targets into slot `k` of `y`.
    fn target_into<T: Real>(&self, i: usize, k: usize, y: &mut TargetBuf<T>) {
        match (&self.targets, y) {
            (TargetData::Labels(l), TargetBuf::Labels(y)) => y[k] = l[i] as usize,
            (TargetData::Tokens { labels, positions }, TargetBuf::Tokens { labels: y, .. }) => {
                let t = *positions;
                for (d, &l) in y[k * t..(k + 1) * t]
                    .iter_mut()
                    .zip(&labels[i * t..(i + 1) * t])
                {
                    *d = l as usize;
                }
            }
            (TargetData::Values { values, width }, TargetBuf::Values { values: y, .. }) => {
                let w = *width;
                for (d, &v) in y[k * w..(k + 1) * w]
                    .iter_mut()
                    .zip(&values[i * w..(i + 1) * w])
                {
                    *d = T::of_f64(v);
                }
            }
            _ => panic!("{}: target buffer of another kind", self.name()),
        }
    }

    /// Gathers samples `indices` into `x` (`indices.len() × features`, normalised by `norm`, from
    /// [`Dataset::normaliser`]) and their targets into `y` (from [`Dataset::target_buffer`]). For
    /// the IDX data sets the same values as [`Dataset::gather`]. In-memory data never fail.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file and the sample, when a streamed file can no longer be read
    /// (truncated or removed while in use).
    pub fn gather_batch<T: Real>(
        &self,
        norm: &Normaliser<T>,
        indices: &[usize],
        x: &mut [T],
        y: &mut TargetBuf<T>,
    ) -> Result<()> {
        let f = self.features();
        if let Inputs::Streamed(s) = &self.inputs {
            let mut raw = s.row_buffer();
            for (k, &i) in indices.iter().enumerate() {
                s.read_row(i, &mut raw)?;
                s.normalise(norm, &raw, &mut x[k * f..(k + 1) * f]);
                self.target_into(i, k, y);
            }
            return Ok(());
        }
        if matches!(self.inputs, Inputs::Bytes(_)) {
            self.prefetch(indices);
        }
        for (k, &i) in indices.iter().enumerate() {
            self.normalise_row(norm, i, &mut x[k * f..(k + 1) * f]);
            self.target_into(i, k, y);
        }
        Ok(())
    }

    /// [`Dataset::gather_batch`] of the contiguous range `start..start+count` (file order).
    ///
    /// # Errors
    /// As [`Dataset::gather_batch`].
    pub fn gather_range_batch<T: Real>(
        &self,
        norm: &Normaliser<T>,
        start: usize,
        count: usize,
        x: &mut [T],
        y: &mut TargetBuf<T>,
    ) -> Result<()> {
        if self.is_streamed() {
            let indices: Vec<usize> = (start..start + count).collect();
            return self.gather_batch(norm, &indices, x, y);
        }
        let f = self.features();
        for k in 0..count {
            self.normalise_row(norm, start + k, &mut x[k * f..(k + 1) * f]);
            self.target_into(start + k, k, y);
        }
        Ok(())
    }

    /// Gathers samples `indices` into `x` (`indices.len() × features`, normalised) and `y`: byte
    /// inputs of one channel with labels (the IDX data sets), normalised by `table`
    /// ([`Dataset::normalisation_table`]).
    ///
    /// **Panics** for float inputs or float targets ([`Dataset::gather_batch`] takes every data set).
    pub fn gather<T: Real>(
        &self,
        table: &[T; 256],
        indices: &[usize],
        x: &mut [T],
        y: &mut [usize],
    ) {
        let f = self.features();
        debug_assert_eq!(x.len(), indices.len() * f);
        self.prefetch(indices);
        let (images, labels) = (self.bytes(), self.labels());
        for (k, &i) in indices.iter().enumerate() {
            let src = &images[i * f..(i + 1) * f];
            for (dst, &b) in x[k * f..(k + 1) * f].iter_mut().zip(src) {
                *dst = table[b as usize];
            }
            y[k] = labels[i] as usize;
        }
    }

    /// Asks the processor to start loading the images `indices` into cache. A minibatch is 128
    /// rows scattered over a 47 MB array: issuing every row's loads up front lets them overlap
    /// instead of each row waiting for memory in turn (0.055 instead of 0.085 ms per MNIST minibatch
    /// of 128 on the development machine).
    fn prefetch(&self, indices: &[usize]) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let f = self.features();
            let images = self.bytes();
            for &i in indices {
                let row = &images[i * f..(i + 1) * f];
                // Every 64-byte line the row touches: one address per 64 bytes, and the last byte.
                for line in row.chunks(64).chain(row.get(f.saturating_sub(1)..)) {
                    // SAFETY: a prefetch is a hint; the address is inside `row`.
                    unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = indices;
    }

    /// All inputs normalised once (`len × features`), for fast gathers in hot loops
    /// ([`Dataset::gather_normalized`]); 188 MB in f32 for the MNIST training set.
    ///
    /// Streamed data are read whole here; hot loops on them gather per batch instead
    /// ([`Dataset::gather_batch`]).
    ///
    /// # Errors
    /// As [`Dataset::gather_batch`] (only streamed data can fail).
    pub fn normalized<T: Real>(&self) -> Result<Vec<T>> {
        let norm = self.normaliser::<T>();
        let f = self.features();
        let mut out = vec![T::zero(); self.len() * f];
        if self.is_streamed() {
            let mut y = self.target_buffer::<T>(self.len());
            self.gather_range_batch(&norm, 0, self.len(), &mut out, &mut y)?;
            return Ok(out);
        }
        for (i, row) in out.chunks_exact_mut(f.max(1)).enumerate() {
            self.normalise_row(&norm, i, row);
        }
        Ok(out)
    }

    /// Gathers samples `indices` from pre-normalised inputs (row copies, no arithmetic); labels
    /// only (**panics** for float targets; [`Dataset::gather_normalized_batch`] takes every data set).
    pub fn gather_normalized<T: Real>(
        &self,
        normalized: &[T],
        indices: &[usize],
        x: &mut [T],
        y: &mut [usize],
    ) {
        let f = self.features();
        let labels = self.labels();
        for (k, &i) in indices.iter().enumerate() {
            x[k * f..(k + 1) * f].copy_from_slice(&normalized[i * f..(i + 1) * f]);
            y[k] = labels[i] as usize;
        }
    }

    /// [`Dataset::gather_normalized`] with any targets.
    pub fn gather_normalized_batch<T: Real>(
        &self,
        normalized: &[T],
        indices: &[usize],
        x: &mut [T],
        y: &mut TargetBuf<T>,
    ) {
        let f = self.features();
        for (k, &i) in indices.iter().enumerate() {
            x[k * f..(k + 1) * f].copy_from_slice(&normalized[i * f..(i + 1) * f]);
            self.target_into(i, k, y);
        }
    }

    /// Gathers the contiguous range `start..start+count` (file order); IDX-style data as
    /// [`Dataset::gather`].
    pub fn gather_range<T: Real>(
        &self,
        table: &[T; 256],
        start: usize,
        count: usize,
        x: &mut [T],
        y: &mut [usize],
    ) {
        let f = self.features();
        for (dst, &b) in x[..count * f]
            .iter_mut()
            .zip(&self.bytes()[start * f..(start + count) * f])
        {
            *dst = table[b as usize];
        }
        for (dst, &l) in y[..count]
            .iter_mut()
            .zip(&self.labels()[start..start + count])
        {
            *dst = l as usize;
        }
    }
}

/// The 256 values `(b/255 − mean)/std`, each operation rounded in `T`.
fn byte_table<T: Real>((mean, std): (f64, f64)) -> [T; 256] {
    let (mean, std, d255) = (T::of_f64(mean), T::of_f64(std), T::of_f64(255.0));
    std::array::from_fn(|b| (T::of_usize(b) / d255 - mean) / std)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label_bytes(d: &Dataset) -> Vec<u8> {
        d.labels().iter().map(|&l| l as u8).collect()
    }

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/mnist-small")
    }

    #[test]
    fn the_mnist_subset_is_known_as_mnist_and_refused_as_fashion_mnist() {
        for split in [Split::Train, Split::Test] {
            let d = Dataset::load(DatasetKind::Mnist, &fixture(), split).unwrap();
            assert_eq!(
                identify(d.bytes(), 784, false),
                Some((DatasetKind::Mnist, split))
            );
            assert_eq!(
                identify(&label_bytes(&d), 1, true),
                Some((DatasetKind::Mnist, split))
            );
            let e = Dataset::load(DatasetKind::FashionMnist, &fixture(), split)
                .unwrap_err()
                .to_string();
            let what = format!("holds the MNIST {} images", split.name());
            assert!(
                e.contains("-images-idx3-ubyte.gz") && e.contains(&what),
                "{e}"
            );
            assert!(
                e.contains("not the Fashion-MNIST") && e.contains("--dataset mnist"),
                "{e}"
            );
        }
    }

    #[test]
    fn a_swapped_split_is_refused() {
        let test = Dataset::load(DatasetKind::Mnist, &fixture(), Split::Test).unwrap();
        let e = check_identity(
            Path::new("train-images-idx3-ubyte"),
            DatasetKind::Mnist,
            Split::Train,
            test.bytes(),
            784,
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("holds the MNIST test images") && e.contains("not the MNIST train"),
            "{e}"
        );
    }

    #[test]
    fn unknown_and_short_files_are_taken_as_named() {
        // Synthetic data and files shorter than the fingerprint match nothing.
        assert_eq!(identify(&[7u8; 40 * 784], 784, false), None);
        let d = Dataset::load(DatasetKind::Mnist, &fixture(), Split::Test).unwrap();
        assert_eq!(identify(&d.bytes()[..31 * 784], 784, false), None);
        assert_eq!(identify(&d.bytes()[..32 * 784], 28, false), None);
        check_identity(
            Path::new("x"),
            DatasetKind::FashionMnist,
            Split::Train,
            &[7u8; 40],
            1,
            true,
        )
        .unwrap();
    }

    /// Where the published files are in `data/` (after `make data`), each is known as itself.
    #[test]
    fn the_published_files_in_data_are_known() {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data");
        for kind in [DatasetKind::Mnist, DatasetKind::FashionMnist] {
            for split in [Split::Train, Split::Test] {
                let Ok(d) = Dataset::load(kind, &data.join(kind.default_folder()), split) else {
                    continue;
                };
                assert_eq!(identify(d.bytes(), 784, false), Some((kind, split)));
                assert_eq!(identify(&label_bytes(&d), 1, true), Some((kind, split)));
            }
        }
    }

    #[test]
    fn normalisation_matches_float32_torchvision() {
        let d = Dataset::from_parts(DatasetKind::Mnist, Split::Train, vec![0; 4], vec![0], 2, 2);
        let t: [f32; 256] = d.normalisation_table();
        // ((float32)255/255 - 0.1307f)/0.3081f, each op in float32.
        let expect = (255f32 / 255f32 - 0.1307f32) / 0.3081f32;
        assert_eq!(t[255].to_bits(), expect.to_bits());
        let t64: [f64; 256] = d.normalisation_table();
        assert_eq!(t64[17], (17.0 / 255.0 - 0.1307) / 0.3081);
        let f = Dataset::from_parts(
            DatasetKind::FashionMnist,
            Split::Train,
            vec![0; 4],
            vec![0],
            2,
            2,
        );
        let tf: [f64; 256] = f.normalisation_table();
        assert_eq!(tf[0], -1.0);
        assert_eq!(tf[255], 1.0);
    }
}
