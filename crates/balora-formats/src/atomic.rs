//! Crash-safe file and folder replacement: the one home of balora's atomic writes.
//!
//! * [`write_atomic`]: writes a file through a temporary file in the same folder, `fsync`s it,
//!   renames it over the destination and `fsync`s the folder, so after a crash the destination
//!   holds either the old or the new bytes, never a prefix, and a completed call survives a power
//!   loss.
//! * [`staging_dir`] + [`replace_dir`]: build a complete folder next to the destination, then
//!   swap it in. On Linux the swap is one `renameat2(RENAME_EXCHANGE)`, so a reader sees the old
//!   or the new folder, never a missing or half-written one. Where the exchange is unsupported
//!   (other systems, or file systems without it) the old folder is first renamed aside: a crash
//!   between the two renames leaves the destination missing and the old folder at
//!   `.{name}.old-*`, which the next [`replace_dir`] call removes.
//!
//! Every error is an [`AtomicError`] naming the path and the operation that failed.
//!
//! ```
//! use balora_formats::atomic::{replace_dir, staging_dir, write_atomic};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let root = tempfile::tempdir()?;
//! let file = root.path().join("report.json");
//! write_atomic(&file, b"{}")?;
//! let dest = root.path().join("checkpoint");
//! let stage = staging_dir(&dest)?;
//! write_atomic(&stage.join("weights.bin"), &[1, 2, 3])?;
//! replace_dir(&stage, &dest)?;
//! assert_eq!(std::fs::read(dest.join("weights.bin"))?, [1, 2, 3]);
//! # Ok(()) }
//! ```

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// An I/O failure during an atomic write, naming the path and the operation.
#[derive(Debug, thiserror::Error)]
#[error("{op} {}: {source}", path.display())]
pub struct AtomicError {
    /// What was being done (`"writing"`, `"renaming onto"`, `"syncing"`...).
    pub op: &'static str,
    /// The path the operation was about.
    pub path: PathBuf,
    /// The operating-system error.
    #[source]
    pub source: std::io::Error,
}

impl AtomicError {
    fn new(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

impl From<AtomicError> for std::io::Error {
    /// Keeps the error kind; the message names the operation and the path.
    fn from(e: AtomicError) -> Self {
        std::io::Error::new(e.source.kind(), e.to_string())
    }
}

/// Result of this module's functions.
pub type Result<T> = std::result::Result<T, AtomicError>;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name no other call of this process (and, through the pid, no other process) uses.
fn unique_sibling(path: &Path, tag: &str) -> Result<(PathBuf, PathBuf)> {
    let name = path.file_name().ok_or_else(|| {
        AtomicError::new(
            "naming",
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the path has no file name",
            ),
        )
    })?;
    let dir = parent_of(path);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let sibling = dir.join(format!(
        ".{}.{tag}-{}-{n}",
        name.to_string_lossy(),
        std::process::id()
    ));
    Ok((dir, sibling))
}

fn parent_of(path: &Path) -> PathBuf {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

/// `fsync`s a folder so the names created, renamed or removed in it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|f| f.sync_all())
            .map_err(|e| AtomicError::new("syncing folder", dir, e))
    }
    #[cfg(not(unix))]
    {
        // Folders cannot be opened for syncing on Windows; renames there are journaled metadata.
        let _ = dir;
        Ok(())
    }
}

/// Creates `dir` and its missing ancestors, `fsync`ing each parent whose entries changed.
pub fn create_dir_all_synced(dir: &Path) -> Result<()> {
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(p) = cur.filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
        missing.push(p.to_path_buf());
        cur = p.parent();
    }
    if missing.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| AtomicError::new("creating folder", dir, e))?;
    for p in missing.iter().rev() {
        sync_dir(&parent_of(p))?;
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically and durably: a temporary file in the same folder
/// (created exclusively), write, `fsync`, rename over `path`, `fsync` of the folder. Missing parent
/// folders are created. On error the temporary file is removed and `path` is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// [`write_atomic`] with the content produced by `fill`, which writes into the temporary file
/// (wrap it in a `BufWriter` for many small writes; flush it before returning).
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<()> {
    let (dir, tmp) = unique_sibling(path, "tmp")?;
    create_dir_all_synced(&dir)?;
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| AtomicError::new("creating", &tmp, e))?;
        fill(&mut f).map_err(|e| AtomicError::new("writing", &tmp, e))?;
        f.sync_all()
            .map_err(|e| AtomicError::new("syncing", &tmp, e))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(|e| AtomicError::new("renaming onto", path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    sync_dir(&dir)
}

/// Creates a fresh, empty staging folder next to `dest` (same parent, hence same file system),
/// for [`replace_dir`]. Missing parents of `dest` are created.
pub fn staging_dir(dest: &Path) -> Result<PathBuf> {
    let (dir, stage) = unique_sibling(dest, "staging")?;
    create_dir_all_synced(&dir)?;
    std::fs::create_dir(&stage).map_err(|e| AtomicError::new("creating folder", &stage, e))?;
    Ok(stage)
}

/// `fsync`s every file and folder under `dir` (the folder itself included).
pub fn sync_tree(dir: &Path) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| AtomicError::new("listing", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| AtomicError::new("listing", dir, e))?;
        let p = entry.path();
        let ty = entry
            .file_type()
            .map_err(|e| AtomicError::new("inspecting", &p, e))?;
        if ty.is_dir() {
            sync_tree(&p)?;
        } else if ty.is_file() {
            File::open(&p)
                .and_then(|f| f.sync_all())
                .map_err(|e| AtomicError::new("syncing", &p, e))?;
        }
    }
    sync_dir(dir)
}

/// Replaces the folder `dest` by the complete folder `staged` (which must be in the same parent
/// folder, e.g. from [`staging_dir`]): `fsync`s everything under `staged`, swaps it in, removes
/// the old content and `fsync`s the parent. If `dest` does not exist it is a plain rename.
///
/// On Linux an existing `dest` is swapped with one `renameat2(RENAME_EXCHANGE)`: at every
/// instant `dest` names either the complete old or the complete new folder. Elsewhere, or if the
/// file system refuses the exchange, the old folder is renamed aside first (see the module doc).
pub fn replace_dir(staged: &Path, dest: &Path) -> Result<()> {
    if parent_of(staged) != parent_of(dest) {
        return Err(AtomicError::new(
            "replacing",
            dest,
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "the staged folder {} is not in the same folder as the destination",
                    staged.display()
                ),
            ),
        ));
    }
    sync_tree(staged)?;
    let parent = parent_of(dest);
    remove_leftovers(dest);
    if !dest.exists() {
        std::fs::rename(staged, dest).map_err(|e| AtomicError::new("renaming onto", dest, e))?;
        return sync_dir(&parent);
    }
    if exchange(staged, dest).map_err(|e| AtomicError::new("exchanging with", dest, e))? {
        // `staged` now names the old folder.
        sync_dir(&parent)?;
        std::fs::remove_dir_all(staged)
            .map_err(|e| AtomicError::new("removing old folder", staged, e))?;
        return sync_dir(&parent);
    }
    let (_, aside) = unique_sibling(dest, "old")?;
    std::fs::rename(dest, &aside).map_err(|e| AtomicError::new("renaming aside", dest, e))?;
    std::fs::rename(staged, dest).map_err(|e| AtomicError::new("renaming onto", dest, e))?;
    sync_dir(&parent)?;
    std::fs::remove_dir_all(&aside)
        .map_err(|e| AtomicError::new("removing old folder", &aside, e))?;
    sync_dir(&parent)
}

/// Removes `.{name}.old-*` folders a crash in the rename-aside fallback may have left.
fn remove_leftovers(dest: &Path) {
    let (Some(name), Ok(entries)) = (dest.file_name(), std::fs::read_dir(parent_of(dest))) else {
        return;
    };
    let prefix = format!(".{}.old-", name.to_string_lossy());
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Atomically exchanges two paths; `Ok(false)` when the system or file system cannot.
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<bool> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let ca = CString::new(a.as_os_str().as_bytes())?;
    let cb = CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: both pointers are valid NUL-terminated strings that outlive the call; the syscall
    // reads them and touches no other memory.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) => Ok(false),
        _ => Err(err),
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_a: &Path, _b: &Path) -> std::io::Result<bool> {
    Ok(false)
}
