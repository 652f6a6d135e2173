//! The run folder of `balora train`: one run per folder, held with a lock, never writing over
//! the run's inputs, resumable only under the settings it was started with.
//!
//! * A non-empty folder is refused unless `--overwrite` (the previous run's files are removed)
//!   or `trainer.resume = true`.
//! * `run.lock` is `flock`ed for the whole run; a second run in the same folder fails naming the
//!   holder's pid.
//! * The resolved config is stored as `config.toml`; a resume compares the new config with it
//!   and lists every difference (`field: old → new`) unless `--allow-config-change`.
//! * Leftovers of interrupted saves (staging folders) are removed at the start.

use anyhow::{bail, Context, Result};
use balora_config::JobConfig;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// The lock file in a run folder.
pub const LOCK: &str = "run.lock";
/// The resolved config of the run.
pub const CONFIG: &str = "config.toml";
/// Files and folders a run writes (removed by `--overwrite`).
pub const ARTIFACTS: &[&str] = &[
    CONFIG,
    "metrics.jsonl",
    "loss.svg",
    "adapter",
    "checkpoints",
];

/// A run folder held for the lifetime of this value (the lock is released on drop).
pub struct RunDir {
    _lock: File,
}

/// A file or folder the run reads, with what it is (for messages).
pub struct Input<'a> {
    /// `config file`, `model`, `data`, …
    pub what: &'a str,
    /// Its path.
    pub path: &'a Path,
}

/// `path` made absolute with symlinks resolved as far as it exists (the rest appended).
fn canonical(path: &Path) -> PathBuf {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(c) = existing.canonicalize() {
            return rest.iter().rev().fold(c, |p, r| p.join(r));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return abs,
        }
    }
}

/// Refuses an output folder that contains (or is) one of the inputs, except the run's own
/// stored config when resuming (it is then read, never rewritten).
pub fn check_inputs(out: &Path, inputs: &[Input<'_>], resume: bool) -> Result<()> {
    let out_c = canonical(out);
    for i in inputs {
        let c = canonical(i.path);
        if !c.starts_with(&out_c) {
            continue;
        }
        if resume && i.what == "config file" && c == out_c.join(CONFIG) {
            continue;
        }
        bail!(
            "refusing to use {} as the output folder: it contains the {} {}, which this run would \
             overwrite or delete; choose another --out (e.g. runs/<name>)",
            out.display(),
            i.what,
            i.path.display()
        );
    }
    Ok(())
}

/// Takes the folder's lock or fails naming the holder.
fn lock(out: &Path) -> Result<File> {
    use std::io::{Read, Seek, Write};
    let path = out.join(LOCK);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening the lock file {}", path.display()))?;
    if !try_lock(&f) {
        let mut pid = String::new();
        let _ = f.read_to_string(&mut pid);
        let pid = pid.trim();
        bail!(
            "{} is in use by another balora run (pid {}; lock {}); wait for it to finish or \
             choose another --out",
            out.display(),
            if pid.is_empty() { "unknown" } else { pid },
            path.display()
        );
    }
    f.set_len(0)
        .and_then(|_| f.rewind())
        .and_then(|_| writeln!(f, "{}", std::process::id()))
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(f)
}

#[cfg(unix)]
fn try_lock(f: &File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a valid open descriptor owned by `f`; no memory is passed.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

#[cfg(not(unix))]
fn try_lock(_f: &File) -> bool {
    // No flock here (std's File::try_lock needs a newer Rust than the workspace's minimum).
    tracing::warn!("run-folder locking is only implemented on unix");
    true
}

/// Removes staging folders of interrupted saves in `out`. An aside folder `.{name}.old-*` (left
/// when a swap without `RENAME_EXCHANGE` was killed between its two renames) is renamed back to
/// `name` when that is missing — it is then the only complete copy — else removed.
fn clean_stale(out: &Path) {
    let Ok(rd) = std::fs::read_dir(out) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let p = e.path();
        for a in ARTIFACTS {
            let dest = out.join(a);
            if name.starts_with(&format!(".{a}.old-"))
                && !dest.exists()
                && std::fs::rename(&p, &dest).is_ok()
            {
                tracing::warn!("restored {} from an interrupted swap", dest.display());
                break;
            }
            let stale = [".staging-", ".old-", ".tmp-"]
                .iter()
                .any(|t| name.starts_with(&format!(".{a}{t}")));
            if stale {
                let r = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
                if r.is_ok() {
                    tracing::warn!("removed {} (left by an interrupted save)", p.display());
                }
                break;
            }
        }
    }
}

/// Entries of `out` other than the lock file.
fn contents(out: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(out)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n != LOCK)
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Config keys whose change makes a checkpoint meaningless for the new run.
fn resume_relevant(key: &str) -> bool {
    const TRAINER: &[&str] = &[
        "steps",
        "batch_size",
        "grad_accum",
        "lr",
        "schedule",
        "warmup_steps",
        "min_lr_ratio",
        "max_grad_norm",
        "seed",
    ];
    let (section, rest) = key.split_once('.').unwrap_or((key, ""));
    match section {
        "model" | "adapter" | "manifold" | "optimizer" | "data" => true,
        "trainer" => TRAINER.contains(&rest.split('.').next().unwrap_or("")),
        _ => false,
    }
}

fn flatten(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, String>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// The resume-relevant differences between a stored config (TOML text) and `new`, as
/// `field: old → new` lines.
pub fn config_changes(stored: &str, new: &JobConfig) -> Result<Vec<String>> {
    let old: toml::Value = toml::from_str(stored).context("parsing the stored config")?;
    let new: toml::Value = toml::from_str(&new.to_toml()).context("rendering the config")?;
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    flatten("", &old, &mut a);
    flatten("", &new, &mut b);
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let unset = "(unset)".to_string();
    Ok(keys
        .into_iter()
        .filter(|k| resume_relevant(k))
        .filter_map(|k| {
            let (o, n) = (a.get(k).unwrap_or(&unset), b.get(k).unwrap_or(&unset));
            (o != n).then(|| format!("{k}: {o} → {n}"))
        })
        .collect())
}

/// Opens `out` for the run described by `cfg` (see the module doc). `inputs` are checked first;
/// `allow_change` lets a resume proceed with a changed config (stored as the new `config.toml`).
pub fn open(
    out: &Path,
    cfg: &JobConfig,
    inputs: &[Input<'_>],
    allow_change: bool,
) -> Result<RunDir> {
    let resume = cfg.trainer.resume;
    check_inputs(out, inputs, resume)?;
    if out.exists() && !out.is_dir() {
        bail!("--out {} exists and is not a folder", out.display());
    }
    balora_formats::atomic::create_dir_all_synced(out)?;
    let lock = lock(out)?;
    clean_stale(out);
    let cfg_path = out.join(CONFIG);
    let stored_is_input = inputs
        .iter()
        .any(|i| i.what == "config file" && canonical(i.path) == canonical(&cfg_path));
    let mut existing = contents(out);
    if existing == [CONFIG] {
        // A run that stopped before its first step (e.g. the data did not load) left only its
        // config: nothing to keep.
        existing.clear();
    }
    if resume {
        let ck_root = out.join("checkpoints");
        if balora_train::checkpoint::list_checkpoints(&ck_root).is_empty() {
            bail!(
                "trainer.resume = true but {} has no checkpoint to resume from; start a fresh run \
                 (without trainer.resume) in an empty folder",
                out.display()
            );
        }
        match std::fs::read_to_string(&cfg_path) {
            Ok(stored) => {
                let changes = config_changes(&stored, cfg)
                    .with_context(|| format!("reading {}", cfg_path.display()))?;
                if !changes.is_empty() {
                    if !allow_change {
                        bail!(
                            "cannot resume the run in {}: its config ({}) differs:\n  {}\nresume \
                             with the same settings, or pass --allow-config-change to continue \
                             under the new ones",
                            out.display(),
                            cfg_path.display(),
                            changes.join("\n  ")
                        );
                    }
                    if stored_is_input {
                        bail!(
                            "--allow-config-change would rewrite {}, which is this run's input \
                             config; copy it elsewhere and edit the copy",
                            cfg_path.display()
                        );
                    }
                    tracing::warn!("resuming under a changed config: {}", changes.join("; "));
                    balora_formats::atomic::write_atomic(&cfg_path, cfg.to_toml().as_bytes())?;
                }
            }
            Err(e) => bail!(
                "cannot resume the run in {}: its config {} cannot be read ({e})",
                out.display(),
                cfg_path.display()
            ),
        }
    } else {
        if !existing.is_empty() {
            if !cfg.output.overwrite {
                bail!(
                    "the output folder {} is not empty ({}); pass --overwrite to replace the run \
                     in it, --set trainer.resume=true to continue it, or choose another --out",
                    out.display(),
                    existing.join(", ")
                );
            }
            for a in ARTIFACTS {
                let p = out.join(a);
                let r = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else if p.exists() {
                    std::fs::remove_file(&p)
                } else {
                    Ok(())
                };
                r.with_context(|| format!("--overwrite: removing {}", p.display()))?;
            }
            tracing::warn!("--overwrite: removed the previous run in {}", out.display());
        }
        balora_formats::atomic::write_atomic(&cfg_path, cfg.to_toml().as_bytes())?;
    }
    Ok(RunDir { _lock: lock })
}
