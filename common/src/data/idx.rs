//! The IDX file format of MNIST and Fashion-MNIST (LeCun et al.), plain or gzip-compressed.
//!
//! Layout: a big-endian magic `0x0000 TT NN` (TT = element type, 0x08 = u8; NN = number of dimensions),
//! NN big-endian u32 dimension sizes, then the elements in row-major order. Images are
//! `0x00000803` (count × rows × cols), labels `0x00000801` (count).

use crate::{Error, Result};
use flate2::read::GzDecoder;
use std::io::{Read, Seek, SeekFrom};
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

/// The most bytes of data one IDX file may hold (1 GiB; the MNIST training images are 47 MB, EMNIST's
/// largest split 640 MB), so that a header cannot make a reader allocate without bound.
pub const IDX_MAX_BYTES: usize = 1 << 30;

/// The most a deflate stream can expand (1032:1, with the gzip header and trailer on top): a gzip
/// file of `n` bytes cannot decompress to more than this many times `n`.
const DEFLATE_MAX_RATIO: usize = 1032;

/// Reads an IDX file (gzip is detected by its magic bytes, not its name) and checks that its magic is
/// `expected_magic` and that it holds exactly the number of elements its header announces.
///
/// Nothing is read past what the header announces: the header is read first, its element count is
/// checked (the dimensions' product must not overflow, exceed [`IDX_MAX_BYTES`] or exceed what the
/// file could hold: its size, or 1032× its size when compressed), then exactly that many bytes are
/// read, and one more byte means trailing data. A gzip bomb costs at most its announced size.
///
/// # Errors
/// [`Error::Io`] if it cannot be read; [`Error::Data`] on a wrong magic, an impossible size, a
/// truncated body, trailing bytes or a corrupt gzip stream, naming the file.
pub fn read_idx(path: &Path, expected_magic: u32) -> Result<IdxArray> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let file_len = usize::try_from(file_len).unwrap_or(usize::MAX);
    let mut magic2 = [0u8; 2];
    let got = read_up_to(&mut file, &mut magic2).map_err(|e| Error::io(path, e))?;
    let gzip = got == 2 && magic2 == [0x1f, 0x8b];
    file.seek(SeekFrom::Start(0))
        .map_err(|e| Error::io(path, e))?;
    let (reader, capacity): (Box<dyn Read>, usize) = if gzip {
        (
            Box::new(GzDecoder::new(std::io::BufReader::new(file))),
            file_len.saturating_mul(DEFLATE_MAX_RATIO),
        )
    } else {
        (Box::new(file), file_len)
    };
    let corrupt = |e: std::io::Error| {
        if gzip {
            Error::data(path, format!("corrupt gzip stream: {e}"))
        } else {
            Error::io(path, e)
        }
    };
    read_idx_from(reader, expected_magic, capacity, corrupt)?.map_err(|msg| Error::data(path, msg))
}

/// Reads into `buf` until it is full or the input ends; returns how many bytes were read.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The element count a header announces: the product of `dims`, refused when it overflows, exceeds
/// [`IDX_MAX_BYTES`] or exceeds `capacity` (the most the input could hold after the header).
fn announced_count(dims: &[usize], capacity: usize) -> std::result::Result<usize, String> {
    let shape = || {
        dims.iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("×")
    };
    let count = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("header dimensions {} overflow", shape()))?;
    if count > IDX_MAX_BYTES {
        return Err(format!(
            "header announces {count} bytes of data ({}), more than the {IDX_MAX_BYTES}-byte limit",
            shape()
        ));
    }
    if count > capacity {
        return Err(format!(
            "truncated: header announces {count} bytes of data ({}), more than the file can hold",
            shape()
        ));
    }
    Ok(count)
}

/// Reads an IDX stream: the header, then exactly the announced bytes, then checks that nothing
/// follows. `capacity` bounds the data the input could hold; `io_err` maps read errors. The inner
/// result carries format errors (without the file name).
fn read_idx_from(
    mut r: impl Read,
    expected_magic: u32,
    capacity: usize,
    io_err: impl Fn(std::io::Error) -> Error,
) -> Result<std::result::Result<IdxArray, String>> {
    let mut head = [0u8; 4];
    let got = read_up_to(&mut r, &mut head).map_err(&io_err)?;
    if got < 4 {
        return Ok(Err(format!(
            "not an IDX file: {got} bytes, shorter than the 4-byte magic"
        )));
    }
    let magic = u32::from_be_bytes(head);
    if let Err(msg) = check_magic(magic, expected_magic) {
        return Ok(Err(msg));
    }
    let ndims = (magic & 0xff) as usize;
    let header = 4 + 4 * ndims;
    let mut dims_raw = vec![0u8; 4 * ndims];
    let got = read_up_to(&mut r, &mut dims_raw).map_err(&io_err)?;
    if got < dims_raw.len() {
        return Ok(Err(format!(
            "truncated IDX header: {} bytes, need {header}",
            4 + got
        )));
    }
    let dims: Vec<usize> = dims_raw
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let count = match announced_count(&dims, capacity.saturating_sub(header)) {
        Ok(c) => c,
        Err(msg) => return Ok(Err(msg)),
    };
    // Grows with what actually arrives, so a short file never costs the announced size.
    let mut data = Vec::with_capacity(count.min(1 << 24));
    (&mut r)
        .take(count as u64)
        .read_to_end(&mut data)
        .map_err(&io_err)?;
    if data.len() < count {
        return Ok(Err(format!(
            "truncated: header announces {count} bytes of data ({}), file has {}",
            dims.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("×"),
            data.len()
        )));
    }
    let mut extra = [0u8; 4096];
    let trailing = read_up_to(&mut r, &mut extra).map_err(&io_err)?;
    if trailing > 0 {
        return Ok(Err(format!(
            "trailing bytes after the {count} bytes the header announces"
        )));
    }
    Ok(Ok(IdxArray { dims, data }))
}

fn check_magic(magic: u32, expected_magic: u32) -> std::result::Result<(), String> {
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
    Ok(())
}

/// Parses an IDX file held in memory (see [`read_idx`]).
#[cfg(test)]
fn parse_idx(bytes: &[u8], expected_magic: u32) -> std::result::Result<IdxArray, String> {
    read_idx_from(bytes, expected_magic, bytes.len(), |e| {
        Error::io("<memory>", e)
    })
    .expect("reading memory cannot fail")
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

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut e, bytes).unwrap();
        e.finish().unwrap()
    }

    fn scratch_file(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("ngd-slt-idx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn overflowing_and_absurd_dimensions_are_refused_before_reading() {
        let mut over = vec![0, 0, 8, 3];
        for _ in 0..3 {
            over.extend_from_slice(&u32::MAX.to_be_bytes());
        }
        assert!(parse_idx(&over, IDX_MAGIC_IMAGES)
            .unwrap_err()
            .contains("overflow"));
        // 4 GiB announced: beyond the cap whatever the file.
        let huge = encode_idx(&[65536, 65536, 1], &[]);
        let e = read_idx(&scratch_file("huge", &huge), IDX_MAGIC_IMAGES)
            .unwrap_err()
            .to_string();
        assert!(e.contains("huge") && e.contains("limit"), "{e}");
        // 60000 images announced in a 200-byte gzip file: more than it can decompress to.
        let mut bomb = encode_idx(&[60000, 28, 28], &[]);
        bomb.extend_from_slice(&[0; 16]);
        let e = read_idx(&scratch_file("small.gz", &gzip(&bomb)), IDX_MAGIC_IMAGES)
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than the file can hold"), "{e}");
    }

    #[test]
    fn a_gzip_bomb_is_read_only_as_far_as_its_header_announces() {
        // An endless body after a header announcing 2×2×3 bytes: refused after reading 12 more.
        let head = encode_idx(&[2, 2, 3], &[]);
        let endless = (&head[..]).chain(std::io::repeat(0));
        let e = read_idx_from(endless, IDX_MAGIC_IMAGES, usize::MAX, |e| {
            Error::io("<endless>", e)
        })
        .unwrap()
        .unwrap_err();
        assert!(e.contains("trailing"), "{e}");
        // 64 MB of zeros behind a 4-image header, compressed to ~64 kB.
        let mut bomb = encode_idx(&[4, 28, 28], &[]);
        bomb.resize(bomb.len() + (64 << 20), 0);
        let e = read_idx(&scratch_file("bomb.gz", &gzip(&bomb)), IDX_MAGIC_IMAGES)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bomb.gz") && e.contains("trailing"), "{e}");
        // The same file plain and compressed reads the same.
        let img = encode_idx(&[2, 2, 3], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        let a = read_idx(&scratch_file("img", &img), IDX_MAGIC_IMAGES).unwrap();
        let b = read_idx(&scratch_file("img.gz", &gzip(&img)), IDX_MAGIC_IMAGES).unwrap();
        assert_eq!((a.dims, a.data), (b.dims, b.data));
        let short = gzip(&img[..img.len() - 1]);
        let e = read_idx(&scratch_file("short.gz", &short), IDX_MAGIC_IMAGES)
            .unwrap_err()
            .to_string();
        assert!(e.contains("truncated") && e.contains("file has 11"), "{e}");
    }
}
