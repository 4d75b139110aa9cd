//! Atomic file writes: a temporary file in the same folder, flushed to disk, then renamed over the
//! target, so a reader (or a crash, or Ctrl-C) never sees a partial file.
//!
//! The temporary file of `dir/name` is `dir/.name.tmp-PID` (PID: the writing process). A process
//! killed by SIGKILL (or a power cut) leaves it behind; [`remove_stale_temp_files`] removes the ones
//! whose process is gone, and `train`/`switch` call it on their output folders before they write.

use crate::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically.
///
/// # Errors
/// [`Error::Io`] naming the path if the folder is not writable or the disk is full; the temporary
/// file is removed and the previous content of `path`, if any, is untouched.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| Error::invalid(format!("{}: not a file path", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Creates `dir` if needed and checks that files can be created in it, before any work is done.
pub fn check_writable_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let probe = dir.join(format!(".write-test-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| Error::io(dir, e))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// The PID in the name of one of our temporary files: `.<name>.tmp-PID` ([`atomic_write`]) or
/// `.write-test-PID` ([`check_writable_dir`]); `None` for every other name.
fn temp_file_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?;
    let digits = match rest.strip_prefix("write-test-") {
        Some(d) => d,
        None => {
            let (stem, d) = rest.rsplit_once(".tmp-")?;
            if stem.is_empty() {
                return None;
            }
            d
        }
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Whether process `pid` may still be running. Where `/proc` is not mounted (not Linux) every
/// process counts as alive, so nothing is removed there.
fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    if !Path::new("/proc/self").exists() {
        return true;
    }
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Removes the temporary files that a killed writer left in `dir` (not its subfolders): only files
/// named as [`atomic_write`] and [`check_writable_dir`] name theirs, and only when the process in the
/// name is no longer running. Returns the files removed; a missing `dir` holds none.
///
/// # Errors
/// [`Error::Io`] naming the folder or file when it cannot be listed or a stale file not removed.
pub fn remove_stale_temp_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let Some(pid) = entry.file_name().to_str().and_then(temp_file_pid) else {
            continue;
        };
        let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
        if is_file && !process_alive(pid) {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            removed.push(path);
        }
    }
    removed.sort();
    Ok(removed)
}

/// Checks that `name` (`what` says which setting it is, for the message) can be used as one path
/// component under an output folder: not empty, not `.` or `..`, no `/`, `\` or NUL.
///
/// # Errors
/// [`Error::Invalid`] naming the setting, the value and what is wrong with it.
pub fn check_path_component(what: &str, name: &str) -> Result<()> {
    let problem = if name.is_empty() {
        Some("is empty")
    } else if name == "." || name == ".." {
        Some("is not a folder name")
    } else if name.contains(['/', '\\']) {
        Some("contains a path separator")
    } else if name.contains('\0') {
        Some("contains a NUL byte")
    } else {
        None
    };
    match problem {
        Some(p) => Err(Error::invalid(format!(
            "{what} {name:?} {p}; it names a folder inside the output folder, so it must be one plain name"
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_are_recognised_and_nothing_else() {
        assert_eq!(temp_file_pid(".epoch-0001.safetensors.tmp-123"), Some(123));
        assert_eq!(temp_file_pid(".run.jsonl.tmp-7"), Some(7));
        assert_eq!(temp_file_pid(".write-test-42"), Some(42));
        for other in [
            "epoch-0001.safetensors",
            "run.jsonl.tmp-1",
            "..tmp-1",
            ".x.tmp-",
            ".x.tmp-12a",
            ".write-test-",
            "notes.txt",
        ] {
            assert_eq!(temp_file_pid(other), None, "{other}");
        }
    }

    #[test]
    fn stale_temp_files_are_removed_live_ones_and_others_kept() {
        let dir = std::env::temp_dir().join(format!("ngd-slt-stale-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        // PID 0 and pids above the kernel's limit (2^22) are never running processes.
        let dead = dir.join(".epoch-0001.safetensors.tmp-4194305");
        let probe = dir.join(".write-test-4194306");
        let ours = dir.join(format!(".run.jsonl.tmp-{}", std::process::id()));
        let other = dir.join("notes.tmp-4194305");
        let nested = dir.join("sub/.x.tmp-4194305");
        for f in [&dead, &probe, &ours, &other, &nested] {
            std::fs::write(f, b"x").unwrap();
        }
        let removed = remove_stale_temp_files(&dir).unwrap();
        if Path::new("/proc/self").exists() {
            assert_eq!(removed, vec![dead.clone(), probe.clone()]);
            assert!(!dead.exists() && !probe.exists());
        }
        assert!(ours.exists() && other.exists() && nested.exists());
        assert!(remove_stale_temp_files(&dir.join("missing"))
            .unwrap()
            .is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn path_components_are_single_plain_names() {
        for ok in ["sgd", "ngd-alpha0.1", "a.b", "..x"] {
            check_path_component("branch name", ok).unwrap();
        }
        for (bad, why) in [
            ("", "is empty"),
            (".", "not a folder name"),
            ("..", "not a folder name"),
            ("../x", "separator"),
            ("/abs", "separator"),
            ("a\\b", "separator"),
            ("a\0b", "NUL"),
        ] {
            let e = check_path_component("branch name", bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains("branch name") && e.contains(why), "{bad:?}: {e}");
        }
    }
}
