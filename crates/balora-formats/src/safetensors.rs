//! safetensors, the one home of balora's reading and writing of the format: [`SafetensorsFiles`]
//! over one or several files (sharded checkpoints; memory-mapped, header and offsets validated
//! by the `safetensors` crate with its limits), converting to f32; [`read_safetensors`] for a
//! whole file; [`write_safetensors`] for f32 tensors, through [`crate::atomic::write_atomic`].

use crate::error::{examples, FormatError};
use crate::{RawTensor, TensorSource};
use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, SafeTensors, TensorView};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

struct Shard {
    path: PathBuf,
    map: Mmap,
    /// Start of the data section (8 + header length).
    data_start: usize,
    meta: Metadata,
}

/// One or several memory-mapped `*.safetensors` files seen as one set of tensors.
/// F32, F16, BF16 and F64 tensors load as f32.
pub struct SafetensorsFiles {
    shards: Vec<Shard>,
    /// name → shard index, plus the names in (shard, offset) order.
    index: HashMap<String, usize>,
    order: Vec<String>,
}

impl std::fmt::Debug for SafetensorsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsFiles")
            .field(
                "files",
                &self.shards.iter().map(|s| &s.path).collect::<Vec<_>>(),
            )
            .field("tensors", &self.order.len())
            .finish()
    }
}

impl SafetensorsFiles {
    /// Maps and validates every file (header, offsets). A name in two files is an error.
    pub fn open<P: AsRef<Path>>(paths: &[P]) -> Result<Self, FormatError> {
        if paths.is_empty() {
            return Err(FormatError::Safetensors {
                path: PathBuf::from("(no files)"),
                msg: "SafetensorsFiles::open needs at least one file".into(),
            });
        }
        let mut shards: Vec<Shard> = Vec::with_capacity(paths.len());
        let mut index = HashMap::new();
        let mut order = Vec::new();
        for p in paths {
            let path = p.as_ref();
            let file = std::fs::File::open(path).map_err(|e| FormatError::io(path, e))?;
            // SAFETY: read-only map; the file must not be truncated while open.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| FormatError::io(path, e))?;
            let bad = |e: safetensors::SafeTensorError| FormatError::Safetensors {
                path: path.to_path_buf(),
                msg: e.to_string(),
            };
            // Full validation (offsets cover the data exactly), then keep the owned metadata.
            SafeTensors::deserialize(&map).map_err(bad)?;
            let (n, meta) = SafeTensors::read_metadata(&map).map_err(bad)?;
            let shard_idx = shards.len();
            for name in meta.offset_keys() {
                if let Some(&other) = index.get(&name) {
                    let first: &Shard = &shards[other];
                    return Err(FormatError::DuplicateTensor {
                        tensor: name,
                        first: first.path.clone(),
                        second: path.to_path_buf(),
                    });
                }
                index.insert(name.clone(), shard_idx);
                order.push(name);
            }
            shards.push(Shard {
                path: path.to_path_buf(),
                map,
                data_start: 8 + n,
                meta,
            });
        }
        Ok(Self {
            shards,
            index,
            order,
        })
    }

    /// All `*.safetensors` files of a directory, sorted by name (e.g. a model folder with
    /// `model-00001-of-00002.safetensors`, ...).
    pub fn open_dir(dir: impl AsRef<Path>) -> Result<Self, FormatError> {
        let dir = dir.as_ref();
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| FormatError::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(FormatError::Safetensors {
                path: dir.to_path_buf(),
                msg: "no *.safetensors file in this directory".into(),
            });
        }
        Self::open(&files)
    }

    /// The files, in the order given.
    pub fn paths(&self) -> Vec<&Path> {
        self.shards.iter().map(|s| s.path.as_path()).collect()
    }

    /// Shape and dtype of a tensor without reading it.
    pub fn info(&self, name: &str) -> Result<(Vec<usize>, Dtype), FormatError> {
        let shard = self.shard(name)?;
        let info = shard.meta.info(name).ok_or_else(|| self.missing(name))?;
        Ok((info.shape.clone(), info.dtype))
    }

    fn shard(&self, name: &str) -> Result<&Shard, FormatError> {
        self.index
            .get(name)
            .map(|&i| &self.shards[i])
            .ok_or_else(|| self.missing(name))
    }

    fn missing(&self, name: &str) -> FormatError {
        FormatError::MissingTensor {
            path: self.shards[0].path.clone(),
            tensor: name.to_string(),
            count: self.order.len(),
            examples: examples(self.order.iter().map(String::as_str), name, 5),
        }
    }
}

impl TensorSource for SafetensorsFiles {
    /// The first file.
    fn path(&self) -> &Path {
        &self.shards[0].path
    }

    fn names(&self) -> Vec<String> {
        self.order.clone()
    }

    fn load(&self, name: &str) -> Result<RawTensor, FormatError> {
        let shard = self.shard(name)?;
        let info = shard.meta.info(name).ok_or_else(|| self.missing(name))?;
        let (a, b) = info.data_offsets;
        // `deserialize` validated these offsets against the file in `open`.
        let bytes = &shard.map[shard.data_start + a..shard.data_start + b];
        let data: Vec<f32> = match info.dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::F64 => bytes
                .chunks_exact(8)
                .map(|c| {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(c);
                    f64::from_le_bytes(a) as f32
                })
                .collect(),
            other => {
                return Err(FormatError::UnsupportedType {
                    path: shard.path.clone(),
                    tensor: name.to_string(),
                    dtype: format!("{other:?}"),
                    supported: "F32, F16, BF16, F64",
                })
            }
        };
        Ok(RawTensor {
            name: name.to_string(),
            shape: info.shape.clone(),
            data,
        })
    }
}

/// The header metadata of model and adapter files, `{"format": "pt"}`: transformers and PEFT
/// expect it (checkpoints write none).
pub const PT_FORMAT: &[(&str, &str)] = &[("format", "pt")];

/// Every tensor of one safetensors file as f32, in file order ([`SafetensorsFiles`]: mapped,
/// validated, F32/F16/BF16/F64 converted).
pub fn read_safetensors(path: impl AsRef<Path>) -> Result<Vec<RawTensor>, FormatError> {
    let files = SafetensorsFiles::open(&[path.as_ref()])?;
    files.order.iter().map(|n| files.load(n)).collect()
}

/// Writes f32 tensors `(name, shape, row-major data)` as one safetensors file, atomically and
/// durably ([`crate::atomic::write_atomic`]: temporary file, `fsync`, rename, folder `fsync`).
/// `metadata` goes into the header's `__metadata__` (none when empty; [`PT_FORMAT`] for model
/// and adapter files).
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    metadata: &[(&str, &str)],
) -> Result<(), FormatError> {
    let bad = |msg: String| FormatError::Safetensors {
        path: path.to_path_buf(),
        msg,
    };
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, d)| d.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let mut views = Vec::with_capacity(tensors.len());
    for ((name, shape, _), b) in tensors.iter().zip(&bytes) {
        let v = TensorView::new(Dtype::F32, shape.clone(), b)
            .map_err(|e| bad(format!("tensor `{name}`: {e}")))?;
        views.push((name.as_str(), v));
    }
    let meta = (!metadata.is_empty()).then(|| {
        metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>()
    });
    let out = safetensors::tensor::serialize(views, meta).map_err(|e| bad(e.to_string()))?;
    crate::atomic::write_atomic(path, &out).map_err(|e| FormatError::io(path, e.into()))
}
