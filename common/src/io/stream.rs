//! The record stream of the analysis tools (`llc`, `wbic`, `hessian-trace`).
//!
//! A tool reads checkpoints named on its command line, or JSON-lines records on stdin. A record with a
//! `checkpoint` field is processed and written out with the tool's result appended under its key;
//! every other record passes through unchanged; one line out per line in, flushed at once. A record
//! that fails is reported on stderr (naming the record and its checkpoint), written out with
//! `{"<key>": {"error": "..."}}` so that nothing downstream is lost, and the tool exits non-zero at the
//! end.

use super::records::{read_records, Record, RecordWriter};
use crate::{Error, Result};
use serde_json::Value;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

/// Counts of a finished stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamSummary {
    pub processed: usize,
    pub passed_through: usize,
    pub failed: usize,
}

/// Processes checkpoints `paths` (when non-empty) or the records on `input`, appending
/// `key: process(record, checkpoint)` to each record that names a checkpoint, and writing every record
/// to `out`.
///
/// # Errors
/// Only output errors (a broken pipe included) end the stream early; per-record failures are counted in
/// the summary.
pub fn process_stream<R: BufRead, W: Write>(
    tool: &str,
    key: &str,
    paths: &[PathBuf],
    input: R,
    out: W,
    mut process: impl FnMut(&Record, &Path) -> Result<Value>,
) -> std::io::Result<StreamSummary> {
    let mut writer = RecordWriter::new(out);
    let mut summary = StreamSummary::default();
    let records: Box<dyn Iterator<Item = Result<Record>>> = if paths.is_empty() {
        Box::new(read_records(input))
    } else {
        Box::new(paths.iter().map(|p| {
            let mut r = Record::new();
            r.insert("checkpoint".into(), Value::from(p.display().to_string()));
            Ok(r)
        }))
    };
    for (line, record) in records.enumerate() {
        let mut record = match record {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{tool}: {e}");
                summary.failed += 1;
                continue;
            }
        };
        let Some(ck) = record
            .get("checkpoint")
            .and_then(Value::as_str)
            .map(PathBuf::from)
        else {
            writer.write(&record)?;
            summary.passed_through += 1;
            continue;
        };
        match process(&record, &ck) {
            Ok(v) => {
                record.insert(key.to_string(), v);
                summary.processed += 1;
            }
            Err(e) => {
                let what = match record.get("run").and_then(Value::as_str) {
                    Some(run) => format!("record {} (run {run})", line + 1),
                    None => format!("record {}", line + 1),
                };
                eprintln!("{tool}: {what}: {}: {e}", ck.display());
                let mut err = serde_json::Map::new();
                err.insert("error".into(), Value::from(e.to_string()));
                record.insert(key.to_string(), Value::Object(err));
                summary.failed += 1;
            }
        }
        writer.write(&record)?;
    }
    Ok(summary)
}

/// Fails with a one-line message when a checkpoint named by a record is missing, a directory or not a
/// regular file (before any work).
pub fn require_file(path: &Path) -> Result<(), Error> {
    super::checkpoint::require_checkpoint_file(path).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_through_and_reports_failures() {
        let input =
            b"{\"type\":\"x\"}\n{\"checkpoint\":\"a\",\"run\":\"r\"}\n{\"checkpoint\":\"b\"}\n";
        let mut out = Vec::new();
        let s = process_stream("t", "res", &[], &input[..], &mut out, |_, p| {
            if p == Path::new("a") {
                Ok(Value::from(1))
            } else {
                Err(Error::invalid("boom"))
            }
        })
        .unwrap();
        assert_eq!(
            s,
            StreamSummary {
                processed: 1,
                passed_through: 1,
                failed: 1
            }
        );
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "{\"type\":\"x\"}");
        assert_eq!(lines[1], "{\"checkpoint\":\"a\",\"run\":\"r\",\"res\":1}");
        assert_eq!(
            lines[2],
            "{\"checkpoint\":\"b\",\"res\":{\"error\":\"boom\"}}"
        );
    }
}
