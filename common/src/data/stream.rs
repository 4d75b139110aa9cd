//! Inputs read from the data file as minibatches are gathered, never held whole: data sets of any
//! size (`--stream`, or a file past [`STREAM_ABOVE_BYTES`]).
//!
//! A streamed data set keeps its targets in memory (n labels, or n·k floats) and, for its inputs
//! `x` `[n, …]`, only the file, the byte offset of x's data and the size of one row. Each gather
//! reads the rows it needs with positioned reads (`pread`, no shared cursor, so chains on several
//! threads read the same file) into a buffer of one row, and normalises them exactly as the
//! in-memory path does ([`super::Dataset::gather_batch`]): the same f64 value of each stored
//! element, the same normaliser in `T`, so a streamed run's numbers are the in-memory run's bit for
//! bit. Memory: one row's bytes per gather, plus the batch; the file is read once when it is opened
//! (in chunks of [`CHUNK_BYTES`]) to check every value (finite floats, token ids in range) and to
//! compute the fingerprint, so the same checks refuse the same files.
//!
//! The cost is a read per row: on a file in the page cache about as fast as the in-memory gather;
//! beyond memory, the disk's random-read rate.

use super::dataset::Normaliser;
use crate::{Error, Real, Result};
use safetensors::Dtype;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Files larger than this (1 GiB) are streamed without being asked.
pub const STREAM_ABOVE_BYTES: u64 = 1 << 30;

/// The size of the reads of the opening pass (1 MiB).
pub const CHUNK_BYTES: usize = 1 << 20;

/// Whether a data file is read whole into memory or streamed from disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Streaming {
    /// Streamed when the file is larger than [`STREAM_ABOVE_BYTES`] (the default).
    #[default]
    Auto,
    /// Always streamed (`--stream`).
    Always,
}

impl Streaming {
    /// Whether a file of `len` bytes is streamed.
    pub fn streams(self, len: u64) -> bool {
        match self {
            Streaming::Auto => len > STREAM_ABOVE_BYTES,
            Streaming::Always => true,
        }
    }
}

/// How one stored element is decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Element {
    U8,
    F32,
    F64,
    /// Integer token ids of this dtype.
    Token(Dtype),
}

impl Element {
    pub(crate) fn bytes(self) -> usize {
        match self {
            Element::U8 => 1,
            Element::F32 => 4,
            Element::F64 => 8,
            Element::Token(d) => d.bitsize() / 8,
        }
    }

    /// Element `i` of `raw` as f64 (exact for every stored type: float32, token ids below 2²⁴).
    #[inline]
    fn value(self, raw: &[u8], i: usize) -> f64 {
        let b = self.bytes();
        let c = &raw[i * b..(i + 1) * b];
        match self {
            Element::U8 => c[0] as f64,
            Element::F32 => f32::from_le_bytes(c.try_into().expect("4 bytes")) as f64,
            Element::F64 => f64::from_le_bytes(c.try_into().expect("8 bytes")),
            Element::Token(d) => super::file::integer_at(d, c) as f64,
        }
    }
}

/// The inputs of a streamed data set: where its rows are in the file.
#[derive(Clone, Debug)]
pub struct StreamedInputs {
    path: PathBuf,
    file: Arc<File>,
    element: Element,
    /// The absolute byte offset of row 0.
    offset: u64,
    /// Values per row.
    features: usize,
    /// Rows in use (after [`StreamedInputs::truncate`]).
    len: usize,
}

impl PartialEq for StreamedInputs {
    /// The same rows of the same file.
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path
            && self.element == other.element
            && self.offset == other.offset
            && self.features == other.features
            && self.len == other.len
    }
}

impl StreamedInputs {
    pub(crate) fn new(
        path: &Path,
        file: Arc<File>,
        element: Element,
        offset: u64,
        features: usize,
        len: usize,
    ) -> Self {
        StreamedInputs {
            path: path.to_path_buf(),
            file,
            element,
            offset,
            features,
            len,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the stored inputs are bytes (normalised through a table, as uint8 images).
    pub fn is_bytes(&self) -> bool {
        self.element == Element::U8
    }

    pub(crate) fn truncate(&mut self, n: usize) {
        self.len = self.len.min(n);
    }

    fn row_bytes(&self) -> usize {
        self.features * self.element.bytes()
    }

    /// A buffer for one row's stored bytes.
    pub(crate) fn row_buffer(&self) -> Vec<u8> {
        vec![0; self.row_bytes()]
    }

    /// Reads row `i`'s stored bytes into `buf` ([`StreamedInputs::row_buffer`]).
    ///
    /// # Errors
    /// [`Error::Io`] naming the file when the read fails (the file was truncated or removed while in
    /// use).
    pub(crate) fn read_row(&self, i: usize, buf: &mut [u8]) -> Result<()> {
        debug_assert!(i < self.len);
        let at = self.offset + (i * self.row_bytes()) as u64;
        self.file.read_exact_at(buf, at).map_err(|e| {
            Error::io(
                &self.path,
                std::io::Error::new(
                    e.kind(),
                    format!("reading sample {i} of the streamed x: {e}"),
                ),
            )
        })
    }

    /// Normalises the stored row `raw` into `dst` as [`super::Dataset`]'s in-memory rows are: a
    /// byte b through its channel's table, any other value v as `(v − mean)/std` in `T`.
    pub(crate) fn normalise<T: Real>(&self, norm: &Normaliser<T>, raw: &[u8], dst: &mut [T]) {
        match norm {
            Normaliser::Table { tables, plane } => {
                for (j, (d, &b)) in dst.iter_mut().zip(raw).enumerate() {
                    *d = tables[if tables.len() == 1 { 0 } else { j / plane }][b as usize];
                }
            }
            Normaliser::Affine { channels, plane } => {
                for (j, d) in dst.iter_mut().enumerate() {
                    let (m, s) = channels[j / plane];
                    *d = (T::of_f64(self.element.value(raw, j)) - m) / s;
                }
            }
        }
    }

    /// Reads rows `0..len` in order, in chunks of about [`CHUNK_BYTES`], giving `visit` each chunk
    /// with the flat index of its first element (the opening pass: checks and fingerprint).
    ///
    /// # Errors
    /// A failed read ([`Error::Io`]), or what `visit` returns.
    pub(crate) fn for_each_chunk(
        &self,
        mut visit: impl FnMut(&[u8], usize) -> Result<()>,
    ) -> Result<()> {
        let row = self.row_bytes().max(1);
        let rows_per_chunk = (CHUNK_BYTES / row).max(1);
        let mut buf = vec![0u8; rows_per_chunk * row];
        let mut start = 0;
        while start < self.len {
            let rows = rows_per_chunk.min(self.len - start);
            let chunk = &mut buf[..rows * row];
            self.file
                .read_exact_at(chunk, self.offset + (start * row) as u64)
                .map_err(|e| Error::io(&self.path, e))?;
            visit(chunk, start * self.features)?;
            start += rows;
        }
        Ok(())
    }

    /// The first value of `chunk` (flat index `first` onwards) that the in-memory loader refuses:
    /// a float that is not finite, or a token id outside 0..`max_token`, as (flat index, text).
    pub(crate) fn first_bad(
        &self,
        chunk: &[u8],
        first: usize,
        max_token: i128,
    ) -> Option<(usize, String)> {
        let count = chunk.len() / self.element.bytes();
        match self.element {
            Element::U8 => None,
            Element::F32 | Element::F64 => (0..count)
                .map(|j| (j, self.element.value(chunk, j)))
                .find(|(_, v)| !v.is_finite())
                .map(|(j, v)| (first + j, v.to_string())),
            Element::Token(d) => {
                let b = self.element.bytes();
                (0..count)
                    .map(|j| (j, super::file::integer_at(d, &chunk[j * b..(j + 1) * b])))
                    .find(|(_, t)| !(0..max_token).contains(t))
                    .map(|(j, t)| (first + j, t.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_streams_only_past_the_threshold() {
        assert!(!Streaming::Auto.streams(STREAM_ABOVE_BYTES));
        assert!(Streaming::Auto.streams(STREAM_ABOVE_BYTES + 1));
        assert!(Streaming::Always.streams(0));
    }
}
