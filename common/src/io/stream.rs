//! The record stream of the analysis tools (`llc`, `wbic`, `hessian-trace`).
//!
//! A tool reads checkpoints named on its command line, or JSON-lines records on stdin. A record with a
//! `checkpoint` field is processed and written out with the tool's result appended under its key;
//! every other record passes through unchanged; one line out per line in, flushed at once. A record
//! that fails is reported on stderr (naming the record and its checkpoint), written out with
//! `{"<key>": {"error": "..."}}` so that nothing downstream is lost, and the tool exits non-zero at the
//! end.
//!
//! Each record's work is isolated: a panic while processing it (a bug, or an input no check caught)
//! is caught at the record boundary ([`isolated`]) and becomes that record's error, reported on one
//! line without the panic hook's backtrace, so that one bad checkpoint costs only its own record of a
//! `train | llc | hessian-trace` pipeline.

use super::records::{read_records, Record, RecordWriter};
use crate::{Error, Result};
use serde_json::Value;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};

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
                log_line(&format!("{tool}: {}", e.full_message()));
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
        match isolated(|| process(&record, &ck)) {
            Ok(v) => {
                record.insert(key.to_string(), v);
                summary.processed += 1;
            }
            Err(e) => {
                let what = match record.get("run").and_then(Value::as_str) {
                    Some(run) => format!("record {} (run {run})", line + 1),
                    None => format!("record {}", line + 1),
                };
                let msg = e.full_message();
                log_line(&failure_line(tool, &what, &ck, &msg));
                let mut err = serde_json::Map::new();
                err.insert("error".into(), Value::from(msg));
                record.insert(key.to_string(), Value::Object(err));
                summary.failed += 1;
            }
        }
        writer.write(&record)?;
    }
    Ok(summary)
}

/// `tool: record N (run R): checkpoint: message`, naming the checkpoint once: most messages already
/// begin with its path.
fn failure_line(tool: &str, what: &str, checkpoint: &Path, msg: &str) -> String {
    if msg.starts_with(&format!("{}:", checkpoint.display())) {
        format!("{tool}: {what}: {msg}")
    } else {
        format!("{tool}: {what}: {}: {msg}", checkpoint.display())
    }
}

/// Writes one line to stderr (progress, a record's failure). A closed stderr is not worth a panic:
/// `eprintln!` would panic, and inside a record that would fail the record.
pub fn log_line(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// How many [`isolated`] calls are running; while any is, the panic hook records panics instead of
/// printing them.
static ISOLATING: AtomicUsize = AtomicUsize::new(0);
/// The first panic caught while isolating: its message and location.
static FIRST_PANIC: Mutex<Option<String>> = Mutex::new(None);
static HOOK: Once = Once::new();

/// Installs (once) a panic hook that, while an [`isolated`] call runs, keeps the first panic's message
/// for its error instead of printing the default multi-line report, and otherwise defers to the hook
/// that was installed before.
fn install_panic_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if ISOLATING.load(Ordering::SeqCst) == 0 {
                return previous(info);
            }
            let payload = info.payload();
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic with a non-text payload".to_string());
            let msg = match info.location() {
                Some(l) => format!("{msg} (at {}:{}:{})", l.file(), l.line(), l.column()),
                None => msg,
            };
            // The first panic is the cause; later ones (a scope re-panicking in the thread that
            // joins a panicked worker) are its consequences.
            let mut first = FIRST_PANIC.lock().unwrap_or_else(|p| p.into_inner());
            first.get_or_insert(msg);
        }));
    });
}

/// Runs `work`, turning a panic inside it (in this thread or in threads it scopes) into
/// [`Error::Panicked`] with the panic's message and location; nothing is printed for it. Used by
/// [`process_stream`] at every record boundary, so that one record's bug cannot end the stream.
///
/// State that `work` mutates may be left half-updated by a panic; the callers' state (data caches,
/// accumulated trace text) only ever holds complete entries. The message and location come from the
/// panic hook, which cannot tell concurrent calls apart: when several threads run `isolated` at once,
/// a panic's error falls back to the bare payload message.
pub fn isolated<T>(work: impl FnOnce() -> Result<T>) -> Result<T> {
    install_panic_hook();
    if ISOLATING.fetch_add(1, Ordering::SeqCst) == 0 {
        *FIRST_PANIC.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
    let first = if ISOLATING.fetch_sub(1, Ordering::SeqCst) == 1 {
        FIRST_PANIC.lock().unwrap_or_else(|p| p.into_inner()).take()
    } else {
        None
    };
    match result {
        Ok(r) => r,
        Err(payload) => {
            let msg = first.unwrap_or_else(|| {
                payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic with a non-text payload".to_string())
            });
            Err(Error::Panicked(msg))
        }
    }
}

/// `template` with every `{name}` replaced by `name` (a checkpoint's file stem): the file a tool
/// writes for one record, e.g. `--density 'out/{name}/density.json'`.
///
/// # Errors
/// When the template has `{name}` and `name` is not one ordinary path component (empty, `.`, `..`,
/// or containing a separator: a checkpoint named `...safetensors` has the stem `..`), since the file
/// would then land outside the folder the template names. `flag` names the option in the message.
pub fn fill_name(flag: &str, template: &Path, name: &str) -> Result<PathBuf> {
    let text = template.to_string_lossy();
    if !text.contains("{name}") {
        return Ok(template.to_path_buf());
    }
    let mut parts = Path::new(name).components();
    let single = matches!(
        (parts.next(), parts.next()),
        (Some(std::path::Component::Normal(c)), None) if c == std::ffi::OsStr::new(name)
    );
    if !single || name.contains(['/', '\\']) {
        return Err(Error::invalid(format!(
            "{flag} {text}: the checkpoint's name {name:?} is not a single file name, so {{name}} would point outside the folder; rename the checkpoint"
        )));
    }
    Ok(PathBuf::from(text.replace("{name}", name)))
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
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
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

    #[test]
    fn names_in_path_templates_are_single_components() {
        let t = Path::new("out/{name}/d.json");
        assert_eq!(
            fill_name("--density", t, "epoch-0001").unwrap(),
            PathBuf::from("out/epoch-0001/d.json")
        );
        assert_eq!(
            fill_name("--density", t, "a.b..c").unwrap(),
            PathBuf::from("out/a.b..c/d.json")
        );
        for bad in ["", ".", "..", "../x", "a/b", "/abs", "a\\b", "x/"] {
            let e = fill_name("--density", t, bad).unwrap_err().to_string();
            assert!(
                e.starts_with("--density out/{name}/d.json: ") && e.contains("single file name"),
                "{bad:?}: {e}"
            );
        }
        // Without {name} the name does not matter.
        assert_eq!(
            fill_name("--density", Path::new("d.json"), "..").unwrap(),
            PathBuf::from("d.json")
        );
    }

    /// The isolating tests share the process-wide panic record: one at a time.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

    #[test]
    fn a_panicking_record_costs_only_itself() {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let input = b"{\"checkpoint\":\"a\"}\n{\"checkpoint\":\"bad\",\"run\":\"r\"}\n{\"checkpoint\":\"c\"}\n";
        let mut out = Vec::new();
        let s = process_stream("t", "res", &[], &input[..], &mut out, |_, p| {
            if p == Path::new("bad") {
                let v: Vec<usize> = Vec::new();
                let i = p.as_os_str().len(); // 3: out of bounds, at run time
                Ok(Value::from(v[i]))
            } else {
                Ok(Value::from(p.display().to_string()))
            }
        })
        .unwrap();
        assert_eq!(
            s,
            StreamSummary {
                processed: 2,
                passed_through: 0,
                failed: 1
            }
        );
        let text = String::from_utf8(out).unwrap();
        let recs: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[0]["res"], "a");
        assert_eq!(
            recs[2]["res"], "c",
            "the record after the panic is processed"
        );
        let err = recs[1]["res"]["error"].as_str().unwrap();
        assert!(
            err.starts_with("internal error") && err.contains("index out of bounds"),
            "{err}"
        );
        assert!(err.contains("stream.rs:"), "the panic's location: {err}");
    }

    #[test]
    fn a_panic_in_a_scoped_thread_is_reported_by_its_own_message() {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let r: Result<()> = isolated(|| {
            std::thread::scope(|s| {
                s.spawn(|| panic!("chain 3 broke"));
            });
            Ok(())
        });
        let msg = r.unwrap_err().to_string();
        assert!(msg.contains("chain 3 broke"), "{msg}");
        // Outside isolation nothing is caught, and an ordinary error passes unchanged.
        let e = isolated(|| -> Result<()> { Err(Error::invalid("plain")) }).unwrap_err();
        assert_eq!(e.to_string(), "plain");
    }

    #[test]
    fn the_checkpoint_is_named_once() {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let input = b"{\"checkpoint\":\"gone.safetensors\"}\n";
        let mut out = Vec::new();
        process_stream("t", "res", &[], &input[..], &mut out, |_, p| {
            require_file(p).map(|_| Value::Null)
        })
        .unwrap();
        let rec: Value = serde_json::from_slice(&out).unwrap();
        let msg = rec["res"]["error"].as_str().unwrap();
        assert_eq!(msg, "gone.safetensors: no such checkpoint file");
        let ck = Path::new("gone.safetensors");
        assert_eq!(
            failure_line("t", "record 1", ck, msg),
            "t: record 1: gone.safetensors: no such checkpoint file"
        );
        // A message that does not name it gets it prefixed.
        assert_eq!(
            failure_line("t", "record 2", ck, "label 5 out of range 0..1"),
            "t: record 2: gone.safetensors: label 5 out of range 0..1"
        );
    }
}
