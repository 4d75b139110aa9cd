//! MNIST and Fashion-MNIST as the paper uses them.

use super::idx::{read_idx, IDX_MAGIC_IMAGES, IDX_MAGIC_LABELS};
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

/// A data set split held in memory as raw bytes; batches are normalised as they are gathered.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub kind: DatasetKind,
    pub split: Split,
    /// The folder the files were read from.
    pub folder: PathBuf,
    /// `len × rows × cols` pixels, row-major.
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
    pub rows: usize,
    pub cols: usize,
    pub classes: usize,
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
            kind,
            split,
            folder,
            images: images.data,
            labels: labels.data,
            rows,
            cols,
            classes,
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
            kind,
            split,
            folder: PathBuf::new(),
            images,
            labels,
            rows,
            cols,
            classes: 10,
        }
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Pixels per image.
    pub fn features(&self) -> usize {
        self.rows * self.cols
    }

    /// One sample's shape, [channels, height, width] (the IDX images have one channel).
    pub fn sample_shape(&self) -> [usize; 3] {
        [1, self.rows, self.cols]
    }

    /// Keeps the first `n` samples in file order.
    pub fn truncate(&mut self, n: usize) {
        let n = n.min(self.len());
        self.labels.truncate(n);
        self.images.truncate(n * self.features());
    }

    /// The 256 normalised values `(b/255 − mean)/std`, each operation rounded in `T` (for `f32` this is
    /// bit-identical to torchvision's `ToTensor` + `Normalize`; for `f64` it is the float64 formula).
    pub fn normalisation_table<T: Real>(&self) -> [T; 256] {
        let (mean, std) = self.kind.normalisation();
        let (mean, std, d255) = (T::of_f64(mean), T::of_f64(std), T::of_f64(255.0));
        std::array::from_fn(|b| (T::of_usize(b) / d255 - mean) / std)
    }

    /// Gathers samples `indices` into `x` (`indices.len() × features`, normalised) and `y`.
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
        for (k, &i) in indices.iter().enumerate() {
            let src = &self.images[i * f..(i + 1) * f];
            for (dst, &b) in x[k * f..(k + 1) * f].iter_mut().zip(src) {
                *dst = table[b as usize];
            }
            y[k] = self.labels[i] as usize;
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
            for &i in indices {
                let row = &self.images[i * f..(i + 1) * f];
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

    /// All images normalised once (`len × features`), for fast gathers in hot loops
    /// ([`Dataset::gather_normalized`]); 188 MB in f32 for the MNIST training set.
    pub fn normalized<T: Real>(&self) -> Vec<T> {
        let table = self.normalisation_table::<T>();
        self.images.iter().map(|&b| table[b as usize]).collect()
    }

    /// Gathers samples `indices` from pre-normalised images (row copies, no arithmetic).
    pub fn gather_normalized<T: Real>(
        &self,
        normalized: &[T],
        indices: &[usize],
        x: &mut [T],
        y: &mut [usize],
    ) {
        let f = self.features();
        for (k, &i) in indices.iter().enumerate() {
            x[k * f..(k + 1) * f].copy_from_slice(&normalized[i * f..(i + 1) * f]);
            y[k] = self.labels[i] as usize;
        }
    }

    /// Gathers the contiguous range `start..start+count` (file order).
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
            .zip(&self.images[start * f..(start + count) * f])
        {
            *dst = table[b as usize];
        }
        for (dst, &l) in y[..count]
            .iter_mut()
            .zip(&self.labels[start..start + count])
        {
            *dst = l as usize;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/mnist-small")
    }

    #[test]
    fn the_mnist_subset_is_known_as_mnist_and_refused_as_fashion_mnist() {
        for split in [Split::Train, Split::Test] {
            let d = Dataset::load(DatasetKind::Mnist, &fixture(), split).unwrap();
            assert_eq!(
                identify(&d.images, 784, false),
                Some((DatasetKind::Mnist, split))
            );
            assert_eq!(
                identify(&d.labels, 1, true),
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
            &test.images,
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
        assert_eq!(identify(&d.images[..31 * 784], 784, false), None);
        assert_eq!(identify(&d.images[..32 * 784], 28, false), None);
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
                assert_eq!(identify(&d.images, 784, false), Some((kind, split)));
                assert_eq!(identify(&d.labels, 1, true), Some((kind, split)));
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
