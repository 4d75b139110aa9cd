//! The IDX file format of MNIST and Fashion-MNIST (LeCun et al.), plain or gzip-compressed.
//!
//! Layout: a big-endian magic `0x0000 TT NN` (TT = element type, 0x08 = u8; NN = number of dimensions),
//! NN big-endian u32 dimension sizes, then the elements in row-major order. Images are
//! `0x00000803` (count × rows × cols), labels `0x00000801` (count).

use crate::{Error, Result};
use flate2::read::GzDecoder;
use std::io::Read;
use std::path::Path;

/// Magic number of an IDX file of u8 images (3 dimensions).
pub const IDX_MAGIC_IMAGES: u32 = 0x0000_0803;
/// Magic number of an IDX file of u8 labels (1 dimension).
pub const IDX_MAGIC_LABELS: u32 = 0x0000_0801;

/// The contents of an IDX file of unsigned bytes.
#[derive(Clone, Debug)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Reads an IDX file (gzip is detected by its magic bytes, not its name) and checks that its magic is
/// `expected_magic` and that it holds exactly the number of elements its header announces.
///
/// # Errors
/// [`Error::Io`] if it cannot be read; [`Error::Data`] on a wrong magic, a truncated body, trailing
/// bytes or a corrupt gzip stream, naming the file.
pub fn read_idx(path: &Path, expected_magic: u32) -> Result<IdxArray> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bytes = if raw.len() >= 2 && raw[0] == 0x1f && raw[1] == 0x8b {
        let mut out = Vec::with_capacity(raw.len() * 4);
        GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::data(path, format!("corrupt gzip stream: {e}")))?;
        out
    } else {
        raw
    };
    parse_idx(&bytes, expected_magic).map_err(|msg| Error::data(path, msg))
}

fn parse_idx(bytes: &[u8], expected_magic: u32) -> std::result::Result<IdxArray, String> {
    if bytes.len() < 4 {
        return Err(format!(
            "not an IDX file: {} bytes, shorter than the 4-byte magic",
            bytes.len()
        ));
    }
    let magic = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if magic != expected_magic {
        return Err(format!(
            "wrong IDX magic 0x{magic:08x}, expected 0x{expected_magic:08x} ({})",
            if expected_magic == IDX_MAGIC_IMAGES {
                "u8 images, 3 dimensions"
            } else {
                "u8 labels, 1 dimension"
            }
        ));
    }
    let ndims = (magic & 0xff) as usize;
    let header = 4 + 4 * ndims;
    if bytes.len() < header {
        return Err(format!(
            "truncated IDX header: {} bytes, need {header}",
            bytes.len()
        ));
    }
    let dims: Vec<usize> = (0..ndims)
        .map(|i| {
            let o = 4 + 4 * i;
            u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize
        })
        .collect();
    let count: usize = dims.iter().product();
    let body = bytes.len() - header;
    if body < count {
        return Err(format!(
            "truncated: header announces {count} bytes of data ({}), file has {body}",
            dims.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("×")
        ));
    }
    if body > count {
        return Err(format!(
            "{} trailing bytes after the {count} bytes the header announces",
            body - count
        ));
    }
    Ok(IdxArray {
        dims,
        data: bytes[header..].to_vec(),
    })
}

/// Encodes an IDX file of u8 (used to write test fixtures and in tests).
pub fn encode_idx(dims: &[usize], data: &[u8]) -> Vec<u8> {
    let magic = 0x0000_0800u32 | dims.len() as u32;
    let mut out = magic.to_be_bytes().to_vec();
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let img = encode_idx(&[2, 2, 3], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        let a = parse_idx(&img, IDX_MAGIC_IMAGES).unwrap();
        assert_eq!(a.dims, vec![2, 2, 3]);
        assert_eq!(a.data[11], 12);
        assert!(parse_idx(&img, IDX_MAGIC_LABELS)
            .unwrap_err()
            .contains("wrong IDX magic 0x00000803"));
        assert!(parse_idx(&img[..img.len() - 1], IDX_MAGIC_IMAGES)
            .unwrap_err()
            .contains("truncated"));
        let mut long = img.clone();
        long.push(0);
        assert!(parse_idx(&long, IDX_MAGIC_IMAGES)
            .unwrap_err()
            .contains("trailing"));
        assert!(parse_idx(&img[..6], IDX_MAGIC_IMAGES)
            .unwrap_err()
            .contains("header"));
    }
}
