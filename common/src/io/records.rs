//! JSON-lines records.
//!
//! A record is one JSON object on one line of stdout. Keys keep their insertion order (serde_json's
//! `preserve_order`), every line is flushed as soon as it is written, and tools downstream keep every
//! field they do not understand and append their own (`{...record, "llc": {...}}`), so pipelines like
//! `train | llc | hessian-trace` stream while training runs. The fields are documented in the README.

use crate::{Error, Result};
use serde_json::{Map, Value};
use std::io::{BufRead, Write};

/// One record: an ordered JSON object.
pub type Record = Map<String, Value>;

/// A JSON number, or null for NaN and ±∞: JSON has no non-finite numbers, and a record says "no
/// number" (one chain has no spread, a mean over no steps) with null rather than failing to write.
pub fn finite_or_null(x: f64) -> Value {
    if x.is_finite() {
        Value::from(x)
    } else {
        Value::Null
    }
}

/// Writes records as JSON lines, flushing after each.
pub struct RecordWriter<W: Write> {
    out: W,
}

impl<W: Write> RecordWriter<W> {
    pub fn new(out: W) -> Self {
        RecordWriter { out }
    }

    /// Writes one record and flushes. A broken pipe is returned as an `io::Error` of kind
    /// `BrokenPipe` so that binaries can exit quietly (`train | head -1`).
    pub fn write(&mut self, record: &Record) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.out, record)?;
        self.out.write_all(b"\n")?;
        self.out.flush()
    }
}

/// Reads JSON-lines records from `input`; blank lines are skipped. Each item is the record or an
/// error naming the line. A read error (stdin a directory, a device error) is the last item: reading
/// on would fail the same way forever.
pub fn read_records<R: BufRead>(input: R) -> impl Iterator<Item = Result<Record>> {
    let mut failed = false;
    input
        .lines()
        .enumerate()
        .map_while(move |(i, line)| {
            if failed {
                return None;
            }
            Some(match line {
                Err(e) => {
                    failed = true;
                    Some(Err(Error::io("<stdin>", e)))
                }
                Ok(l) if l.trim().is_empty() => None,
                Ok(l) => Some(match serde_json::from_str::<Value>(&l) {
                    Ok(Value::Object(m)) => Ok(m),
                    Ok(_) => Err(Error::invalid(format!(
                        "<stdin>: line {}: a record must be a JSON object",
                        i + 1
                    ))),
                    Err(e) => Err(Error::invalid(format!(
                        "<stdin>: line {}: not JSON: {e}",
                        i + 1
                    ))),
                }),
            })
        })
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_numbers_are_null_and_finite_ones_are_kept_exactly() {
        for x in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(finite_or_null(x), Value::Null, "{x}");
        }
        for x in [0.0, -0.0, 1.5, -2.25e-300, f64::MAX, f64::MIN_POSITIVE] {
            assert_eq!(finite_or_null(x).as_f64(), Some(x), "{x}");
        }
    }

    #[test]
    fn order_is_kept_and_lines_round_trip() {
        let mut r = Record::new();
        r.insert("zeta".into(), Value::from(1));
        r.insert("alpha".into(), Value::from("x"));
        let mut buf = Vec::new();
        RecordWriter::new(&mut buf).write(&r).unwrap();
        assert_eq!(
            String::from_utf8(buf.clone()).unwrap(),
            "{\"zeta\":1,\"alpha\":\"x\"}\n"
        );
        let back: Vec<_> = read_records(&b"\n{\"a\":1}\n[1]\n"[..]).collect();
        assert_eq!(back.len(), 2);
        assert!(back[0].is_ok());
        assert!(back[1].as_ref().unwrap_err().to_string().contains("line 3"));
        let _ = buf;
    }

    /// A reader whose every read fails, as stdin does when it is a directory.
    struct Broken;
    impl std::io::Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from_raw_os_error(21))
        }
    }

    #[test]
    fn a_read_error_ends_the_records() {
        let items: Vec<_> = read_records(std::io::BufReader::new(Broken))
            .take(3)
            .collect();
        assert_eq!(
            items.len(),
            1,
            "one error, then the end (it looped for ever)"
        );
        let e = items[0].as_ref().unwrap_err();
        assert_eq!(
            e.full_message(),
            format!("<stdin>: {}", std::io::Error::from_raw_os_error(21))
        );
    }
}
