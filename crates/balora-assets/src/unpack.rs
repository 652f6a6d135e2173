//! Unpacking zip (wheels) and tar.gz (npm) archives, refusing paths that leave the target.

use crate::AssetError;
use std::fs::File;
use std::path::Path;

/// Unpacks a zip archive (a wheel) into `dest` (created if needed). Entries whose path would
/// leave `dest` (absolute, `..`) are an error.
pub fn unpack_zip(archive: &Path, dest: &Path) -> Result<usize, AssetError> {
    let bad = |msg: String| AssetError::Unpack {
        file: archive.to_path_buf(),
        msg,
    };
    let file = File::open(archive).map_err(|e| AssetError::io(archive, e))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(e.to_string()))?;
    std::fs::create_dir_all(dest).map_err(|e| AssetError::io(dest, e))?;
    let mut n = 0;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| bad(e.to_string()))?;
        let rel = entry
            .enclosed_name()
            .ok_or_else(|| bad(format!("entry {:?} leaves the target folder", entry.name())))?;
        let out = dest.join(rel);
        if entry.is_dir() {
            std::fs::create_dir_all(&out).map_err(|e| AssetError::io(&out, e))?;
            continue;
        }
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent).map_err(|e| AssetError::io(parent, e))?;
        }
        let mut f = File::create(&out).map_err(|e| AssetError::io(&out, e))?;
        std::io::copy(&mut entry, &mut f)
            .map_err(|e| bad(format!("entry {:?}: {e}", entry.name())))?;
        n += 1;
    }
    Ok(n)
}

/// Unpacks a gzip-compressed tar archive (an npm package) into `dest` (created if needed).
/// Entries whose path would leave `dest` are an error.
pub fn unpack_tgz(archive: &Path, dest: &Path) -> Result<usize, AssetError> {
    let bad = |msg: String| AssetError::Unpack {
        file: archive.to_path_buf(),
        msg,
    };
    let file = File::open(archive).map_err(|e| AssetError::io(archive, e))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    std::fs::create_dir_all(dest).map_err(|e| AssetError::io(dest, e))?;
    let mut n = 0;
    for entry in tar.entries().map_err(|e| bad(e.to_string()))? {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let path = entry.path().map_err(|e| bad(e.to_string()))?.into_owned();
        if path.is_absolute()
            || path
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(bad(format!(
                "entry {} leaves the target folder",
                path.display()
            )));
        }
        // `unpack_in` also refuses paths escaping `dest`; false means it skipped the entry.
        let ok = entry
            .unpack_in(dest)
            .map_err(|e| bad(format!("entry {}: {e}", path.display())))?;
        if !ok {
            return Err(bad(format!(
                "entry {} leaves the target folder",
                path.display()
            )));
        }
        if entry.header().entry_type().is_file() {
            n += 1;
        }
    }
    Ok(n)
}
