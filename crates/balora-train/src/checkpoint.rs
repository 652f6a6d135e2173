//! Checkpoints: trainable parameters (adapters + `modules_to_save`), optimizer state, trainer
//! state (step, scheduler, RNG seed, data position), and a manifest with every file's size and
//! SHA-256, written last. The folder is built next to its destination and swapped in
//! atomically, so a crash mid-write leaves the previous checkpoints intact; loading verifies the
//! manifest, and [`Checkpoint::latest_intact`] falls back past damaged ones. The last N are kept.

use balora_adapter::{collect_params, replace_params};
use balora_data::LoaderState;
use burn::module::{Module, ParamId};
use burn::tensor::{backend::Backend, DType, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Errors of checkpointing.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// File system.
    #[error("{path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A file that does not parse or does not fit the model.
    #[error("checkpoint {path}: {message}")]
    Bad {
        /// Path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Everything except tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub step: u64,
    /// Data position.
    pub loader: LoaderState,
    /// Seed (dropout is reseeded from `seed` and the step, so the RNG state is the pair).
    pub seed: u64,
    /// Scheduler: peak lr, warmup and total steps, and the lr of the last step.
    pub lr_peak: f64,
    /// Warmup steps.
    pub warmup: u64,
    /// Total steps.
    pub total_steps: u64,
    /// lr used at `step`.
    pub last_lr: f64,
    /// Tokens trained on so far.
    pub tokens: u64,
    /// Training seconds so far.
    pub elapsed_s: f64,
    /// Name of the manifold and optimizer (checked on resume).
    pub method: String,
}

/// A checkpoint in memory.
pub struct Checkpoint {
    /// Trainer state.
    pub state: TrainerState,
    /// Trainable parameters by module path (f32, original shapes).
    pub params: Vec<(String, TensorData)>,
    /// Optimizer state ([`AdapterOptimizer::state`](balora_optim::AdapterOptimizer::state)).
    pub optimizer: Vec<(String, TensorData)>,
}

/// Trainable parameters of `module` by module path: all adapter pairs and the trainable others.
pub fn trainable_params<B: Backend, M: Module<B>>(module: &M) -> Vec<(String, TensorData)> {
    let table = collect_params(module);
    let mut out = Vec::new();
    // Every adapter pair is trained (its tensors here are reshaped views, so their own
    // require-grad flag does not tell); other parameters only when trainable.
    for p in &table.pairs {
        out.push((format!("{}.lora_a", p.key), p.a.to_data().convert::<f32>()));
        out.push((format!("{}.lora_b", p.key), p.b.to_data().convert::<f32>()));
    }
    for s in table.singles.iter().filter(|s| s.trainable) {
        out.push((
            s.path.clone(),
            TensorData::new(
                s.value
                    .to_data()
                    .convert::<f32>()
                    .to_vec::<f32>()
                    .unwrap_or_default(),
                s.shape.clone(),
            ),
        ));
    }
    out
}

/// Puts saved parameter values back into `module` by path; every trainable parameter must be
/// present with its shape.
pub fn load_trainable_params<B: Backend, M: Module<B>>(
    module: M,
    params: &[(String, TensorData)],
    source: &Path,
) -> Result<M, CheckpointError> {
    let table = collect_params(&module);
    let mut slots: BTreeMap<String, (ParamId, Vec<usize>)> = BTreeMap::new();
    for p in &table.pairs {
        slots.insert(format!("{}.lora_a", p.key), (p.a_id, p.a.dims().to_vec()));
        slots.insert(format!("{}.lora_b", p.key), (p.b_id, p.b.dims().to_vec()));
    }
    for s in table.singles.iter().filter(|s| s.trainable) {
        slots.insert(s.path.clone(), (s.id, s.shape.clone()));
    }
    let device = table
        .pairs
        .first()
        .map(|p| p.a.device())
        .or_else(|| table.singles.first().map(|s| s.value.device()));
    let Some(device) = device else {
        return Ok(module);
    };
    let saved: HashMap<&str, &TensorData> = params.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut updates = HashMap::new();
    for (path, (id, shape)) in &slots {
        let Some(data) = saved.get(path.as_str()) else {
            return Err(CheckpointError::Bad {
                path: source.to_path_buf(),
                message: format!("missing parameter `{path}` (shape {shape:?})"),
            });
        };
        if data.shape.as_slice() != shape.as_slice() {
            return Err(CheckpointError::Bad {
                path: source.to_path_buf(),
                message: format!(
                    "parameter `{path}` has shape {:?}, the model expects {shape:?}",
                    data.shape
                ),
            });
        }
        let n: usize = shape.iter().product();
        let t = Tensor::<B, 1>::from_data(
            TensorData::new(data.to_vec::<f32>().unwrap_or_default(), [n]),
            &device,
        );
        updates.insert(*id, t.into());
    }
    Ok(replace_params(module, updates))
}

fn format_err(path: &Path) -> impl FnOnce(balora_formats::FormatError) -> CheckpointError + '_ {
    move |e| CheckpointError::Bad {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Writes named tensors as f32 safetensors, atomically and durably
/// ([`balora_formats::write_safetensors`]).
fn write_tensors(path: &Path, tensors: &[(String, TensorData)]) -> Result<(), CheckpointError> {
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = tensors
        .iter()
        .map(|(k, d)| {
            let v = d
                .clone()
                .convert::<f32>()
                .to_vec::<f32>()
                .unwrap_or_default();
            (k.clone(), d.shape.to_vec(), v)
        })
        .collect();
    balora_formats::write_safetensors(path, &tensors, &[]).map_err(format_err(path))
}

/// Reads an f32 safetensors file into named tensors, sorted by name
/// ([`balora_formats::SafetensorsFiles`]; a tensor of another dtype is an error).
fn read_tensors(path: &Path) -> Result<Vec<(String, TensorData)>, CheckpointError> {
    let files = balora_formats::SafetensorsFiles::open(&[path]).map_err(format_err(path))?;
    let mut out = Vec::new();
    for name in balora_formats::TensorSource::names(&files) {
        let (_, dtype) = files.info(&name).map_err(format_err(path))?;
        if dtype != safetensors::Dtype::F32 {
            return Err(CheckpointError::Bad {
                path: path.to_path_buf(),
                message: format!("tensor `{name}` is {dtype:?}, expected F32"),
            });
        }
        let t = balora_formats::TensorSource::load(&files, &name).map_err(format_err(path))?;
        out.push((name, TensorData::new(t.data, t.shape)));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

const PREFIX: &str = "checkpoint-";

/// The manifest, written last into a checkpoint: every other file with its size and SHA-256.
pub const MANIFEST: &str = "manifest.json";

/// Files of a checkpoint besides the manifest.
pub const CHECKPOINT_FILES: [&str; 3] =
    ["params.safetensors", "optimizer.safetensors", "state.json"];

/// One file entry of [`MANIFEST`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// File name inside the checkpoint folder.
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Lowercase hex SHA-256 of the content.
    pub sha256: String,
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Directory name of the checkpoint at `step`.
pub fn checkpoint_dir(root: &Path, step: u64) -> PathBuf {
    root.join(format!("{PREFIX}{step:08}"))
}

/// Checkpoint folders under `root` by name (`checkpoint-<step>`), oldest first; intact or not
/// (see [`verify`]); temporary and staging folders are not listed.
pub fn list_checkpoints(root: &Path) -> Vec<(u64, PathBuf)> {
    let Ok(rd) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut v: Vec<(u64, PathBuf)> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let step = name.strip_prefix(PREFIX)?.parse::<u64>().ok()?;
            Some((step, e.path()))
        })
        .collect();
    v.sort();
    v
}

/// Checks that the checkpoint in `dir` is complete: its [`MANIFEST`] parses and lists every
/// checkpoint file, and each file has the recorded size and SHA-256.
pub fn verify(dir: &Path) -> Result<(), CheckpointError> {
    let mp = dir.join(MANIFEST);
    let bad = |message: String| CheckpointError::Bad {
        path: dir.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(&mp).map_err(|e| {
        bad(format!(
            "no readable {MANIFEST} ({e}): the write did not finish"
        ))
    })?;
    let entries: Vec<ManifestEntry> =
        serde_json::from_str(&text).map_err(|e| bad(format!("{MANIFEST}: {e}")))?;
    for name in CHECKPOINT_FILES {
        let Some(entry) = entries.iter().find(|e| e.name == name) else {
            return Err(bad(format!("{MANIFEST} does not list {name}")));
        };
        let path = dir.join(name);
        let bytes = std::fs::read(&path).map_err(|e| bad(format!("{name}: {e}")))?;
        if bytes.len() as u64 != entry.bytes {
            return Err(bad(format!(
                "{name} has {} bytes, the manifest records {}",
                bytes.len(),
                entry.bytes
            )));
        }
        let h = sha256_hex(&bytes);
        if h != entry.sha256 {
            return Err(bad(format!(
                "{name}: SHA-256 {h} differs from the manifest's {}",
                entry.sha256
            )));
        }
    }
    Ok(())
}

/// Removes leftovers of interrupted saves under `root` (`.tmp-checkpoint-*` from older versions,
/// `.checkpoint-*.staging-*` folders); returns what was removed. A `.checkpoint-N.old-*` folder
/// (the rename-aside fallback of a folder swap, interrupted between its two renames) is renamed
/// back to `checkpoint-N` when that is missing, else removed. Call it only while holding the run
/// folder (no other writer).
pub fn clean_stale(root: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for e in rd.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().to_string();
        let p = e.path();
        if let Some(orig) = name
            .strip_prefix('.')
            .filter(|n| n.starts_with(PREFIX))
            .and_then(|n| n.split_once(".old-"))
            .map(|(orig, _)| root.join(orig))
        {
            if !orig.exists() && std::fs::rename(&p, &orig).is_ok() {
                tracing::warn!("restored {} from an interrupted swap", orig.display());
                continue;
            }
        }
        let stale = name.starts_with(&format!(".tmp-{PREFIX}"))
            || (name.starts_with(&format!(".{PREFIX}"))
                && (name.contains(".staging-")
                    || name.contains(".old-")
                    || name.contains(".tmp-")));
        if stale {
            let gone = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            if gone.is_ok() {
                removed.push(p);
            }
        }
    }
    removed
}

fn atomic_err(e: balora_formats::atomic::AtomicError) -> CheckpointError {
    CheckpointError::Io {
        path: e.path.clone(),
        source: e.into(),
    }
}

/// What [`Checkpoint::latest_intact`] found.
pub struct LatestIntact {
    /// The newest checkpoint that verified and loaded, with its folder.
    pub found: Option<(PathBuf, Checkpoint)>,
    /// Newer checkpoint folders that did not, with the reason, newest first.
    pub skipped: Vec<(PathBuf, String)>,
}

impl Checkpoint {
    /// Writes the checkpoint under `root` atomically and keeps the newest `keep`.
    pub fn save(&self, root: &Path, keep: usize) -> Result<PathBuf, CheckpointError> {
        self.save_with_fault(root, keep, None)
    }

    /// [`save`](Self::save), failing after writing `fail_after` files (tests of atomicity).
    ///
    /// The files are written into a staging folder next to the destination, the [`MANIFEST`]
    /// (sizes and SHA-256 of the others) last; the folder is `fsync`ed and swapped in
    /// ([`balora_formats::atomic::replace_dir`]). Then older checkpoints beyond `keep` are
    /// removed; checkpoints of later steps (which a resumed run will rewrite) are left alone.
    #[doc(hidden)]
    pub fn save_with_fault(
        &self,
        root: &Path,
        keep: usize,
        fail_after: Option<usize>,
    ) -> Result<PathBuf, CheckpointError> {
        use balora_formats::atomic::{create_dir_all_synced, replace_dir, staging_dir};
        create_dir_all_synced(root).map_err(atomic_err)?;
        let final_dir = checkpoint_dir(root, self.state.step);
        let tmp = staging_dir(&final_dir).map_err(atomic_err)?;
        let result = (|| {
            let mut written = 0usize;
            let check = |written: &mut usize| -> Result<(), CheckpointError> {
                *written += 1;
                if fail_after.is_some_and(|n| *written > n) {
                    return Err(CheckpointError::Io {
                        path: tmp.clone(),
                        source: std::io::Error::other("injected failure"),
                    });
                }
                Ok(())
            };
            check(&mut written)?;
            write_tensors(&tmp.join("params.safetensors"), &self.params)?;
            check(&mut written)?;
            write_tensors(&tmp.join("optimizer.safetensors"), &self.optimizer)?;
            check(&mut written)?;
            let json =
                serde_json::to_string_pretty(&self.state).map_err(|e| CheckpointError::Bad {
                    path: tmp.clone(),
                    message: e.to_string(),
                })?;
            let sp = tmp.join("state.json");
            std::fs::write(&sp, json.as_bytes()).map_err(io(&sp))?;
            check(&mut written)?;
            let mut entries = Vec::new();
            for name in CHECKPOINT_FILES {
                let p = tmp.join(name);
                let bytes = std::fs::read(&p).map_err(io(&p))?;
                entries.push(ManifestEntry {
                    name: name.to_string(),
                    bytes: bytes.len() as u64,
                    sha256: sha256_hex(&bytes),
                });
            }
            let mp = tmp.join(MANIFEST);
            let text = serde_json::to_string_pretty(&entries).unwrap_or_default();
            std::fs::write(&mp, text.as_bytes()).map_err(io(&mp))?;
            replace_dir(&tmp, &final_dir).map_err(atomic_err)
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        let older: Vec<PathBuf> = list_checkpoints(root)
            .into_iter()
            .filter(|(s, _)| *s < self.state.step)
            .map(|(_, p)| p)
            .collect();
        let excess = (older.len() + 1).saturating_sub(keep.max(1));
        for old in older.iter().take(excess) {
            std::fs::remove_dir_all(old).map_err(io(old))?;
        }
        Ok(final_dir)
    }

    /// Loads the checkpoint in `dir` after [`verify`]ing it.
    pub fn load(dir: &Path) -> Result<Self, CheckpointError> {
        verify(dir)?;
        let sp = dir.join("state.json");
        let text = std::fs::read_to_string(&sp).map_err(io(&sp))?;
        let state: TrainerState =
            serde_json::from_str(&text).map_err(|e| CheckpointError::Bad {
                path: sp.clone(),
                message: e.to_string(),
            })?;
        Ok(Self {
            state,
            params: read_tensors(&dir.join("params.safetensors"))?,
            optimizer: read_tensors(&dir.join("optimizer.safetensors"))?,
        })
    }

    /// The newest intact checkpoint under `root`, if any, with the newer ones that failed to
    /// verify or load.
    pub fn latest_intact(root: &Path) -> LatestIntact {
        let mut skipped = Vec::new();
        for (_, dir) in list_checkpoints(root).into_iter().rev() {
            match Self::load(&dir) {
                Ok(ck) => {
                    return LatestIntact {
                        found: Some((dir, ck)),
                        skipped,
                    }
                }
                Err(e) => skipped.push((dir, e.to_string())),
            }
        }
        LatestIntact {
            found: None,
            skipped,
        }
    }

    /// The newest intact checkpoint under `root`, if any (see [`latest_intact`](Self::latest_intact)).
    pub fn latest(root: &Path) -> Result<Option<Self>, CheckpointError> {
        Ok(Self::latest_intact(root).found.map(|(_, c)| c))
    }
}

/// Converts f32 host data to the dtype `like` needs (identity for f32 backends).
pub fn as_f32(d: TensorData) -> TensorData {
    if d.dtype == DType::F32 {
        d
    } else {
        d.convert::<f32>()
    }
}
