//! Checkpoints: trainable parameters (adapters + `modules_to_save`), optimizer state, trainer
//! state (step, scheduler, RNG seed, data position). Written into a temporary directory and
//! renamed into place, so a crash mid-write leaves the previous checkpoint intact; the last N
//! are kept.

use balora_adapter::{collect_params, replace_params};
use balora_data::LoaderState;
use burn::module::{Module, ParamId};
use burn::tensor::{backend::Backend, DType, Tensor, TensorData};
use safetensors::tensor::TensorView;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
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

/// Writes named tensors (f32) as safetensors.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, TensorData)],
    metadata: Option<HashMap<String, String>>,
) -> Result<(), CheckpointError> {
    let bufs: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(k, d)| {
            let v: Vec<f32> = d
                .clone()
                .convert::<f32>()
                .to_vec::<f32>()
                .unwrap_or_default();
            let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            (k.clone(), bytes, d.shape.to_vec())
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = bufs
        .iter()
        .map(|(k, b, s)| {
            TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .map(|v| (k.clone(), v))
                .map_err(|e| CheckpointError::Bad {
                    path: path.to_path_buf(),
                    message: format!("tensor `{k}`: {e}"),
                })
        })
        .collect::<Result<_, _>>()?;
    let bytes = safetensors::serialize(views, metadata).map_err(|e| CheckpointError::Bad {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut f = std::fs::File::create(path).map_err(io(path))?;
    f.write_all(&bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// Reads an f32 safetensors file into named tensors.
pub fn read_safetensors(path: &Path) -> Result<Vec<(String, TensorData)>, CheckpointError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| CheckpointError::Bad {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(CheckpointError::Bad {
                path: path.to_path_buf(),
                message: format!("tensor `{name}` is {:?}, expected F32", view.dtype()),
            });
        }
        let v: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.push((name, TensorData::new(v, view.shape().to_vec())));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

const PREFIX: &str = "checkpoint-";

/// Directory name of the checkpoint at `step`.
pub fn checkpoint_dir(root: &Path, step: u64) -> PathBuf {
    root.join(format!("{PREFIX}{step:08}"))
}

/// Complete checkpoints under `root`, oldest first (temporary directories are ignored).
pub fn list_checkpoints(root: &Path) -> Vec<(u64, PathBuf)> {
    let Ok(rd) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut v: Vec<(u64, PathBuf)> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let step = name.strip_prefix(PREFIX)?.parse::<u64>().ok()?;
            e.path()
                .join("state.json")
                .exists()
                .then(|| (step, e.path()))
        })
        .collect();
    v.sort();
    v
}

impl Checkpoint {
    /// Writes the checkpoint under `root` atomically and keeps the newest `keep`.
    pub fn save(&self, root: &Path, keep: usize) -> Result<PathBuf, CheckpointError> {
        self.save_with_fault(root, keep, None)
    }

    /// [`save`](Self::save), failing after writing `fail_after` files (tests of atomicity).
    #[doc(hidden)]
    pub fn save_with_fault(
        &self,
        root: &Path,
        keep: usize,
        fail_after: Option<usize>,
    ) -> Result<PathBuf, CheckpointError> {
        std::fs::create_dir_all(root).map_err(io(root))?;
        let final_dir = checkpoint_dir(root, self.state.step);
        let tmp = root.join(format!(
            ".tmp-{PREFIX}{:08}-{}",
            self.state.step,
            std::process::id()
        ));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
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
        write_safetensors(&tmp.join("params.safetensors"), &self.params, None)?;
        check(&mut written)?;
        write_safetensors(&tmp.join("optimizer.safetensors"), &self.optimizer, None)?;
        check(&mut written)?;
        let json = serde_json::to_string_pretty(&self.state).map_err(|e| CheckpointError::Bad {
            path: tmp.clone(),
            message: e.to_string(),
        })?;
        let sp = tmp.join("state.json");
        let mut f = std::fs::File::create(&sp).map_err(io(&sp))?;
        f.write_all(json.as_bytes()).map_err(io(&sp))?;
        f.sync_all().map_err(io(&sp))?;
        if final_dir.exists() {
            std::fs::remove_dir_all(&final_dir).map_err(io(&final_dir))?;
        }
        std::fs::rename(&tmp, &final_dir).map_err(io(&final_dir))?;
        let all = list_checkpoints(root);
        if all.len() > keep {
            for (_, old) in &all[..all.len() - keep] {
                std::fs::remove_dir_all(old).map_err(io(old))?;
            }
        }
        Ok(final_dir)
    }

    /// Loads the checkpoint in `dir`.
    pub fn load(dir: &Path) -> Result<Self, CheckpointError> {
        let sp = dir.join("state.json");
        let text = std::fs::read_to_string(&sp).map_err(io(&sp))?;
        let state: TrainerState =
            serde_json::from_str(&text).map_err(|e| CheckpointError::Bad {
                path: sp.clone(),
                message: e.to_string(),
            })?;
        Ok(Self {
            state,
            params: read_safetensors(&dir.join("params.safetensors"))?,
            optimizer: read_safetensors(&dir.join("optimizer.safetensors"))?,
        })
    }

    /// The newest complete checkpoint under `root`, if any.
    pub fn latest(root: &Path) -> Result<Option<Self>, CheckpointError> {
        match list_checkpoints(root).last() {
            Some((_, dir)) => Self::load(dir).map(Some),
            None => Ok(None),
        }
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
