//! GGUF (versions 2 and 3) reader: header, metadata, tensor index, f32 dequantisation (the
//! types of [`crate::quant::SUPPORTED`], K-quants included).
//!
//! Layout (little-endian): `"GGUF"`, `version: u32`, `n_tensors: u64`, `n_kv: u64`, then
//! `n_kv` metadata pairs (`key: string`, `type: u32`, value), then `n_tensors` tensor infos
//! (`name: string`, `n_dims: u32`, `ne: [u64; n_dims]`, `type: u32`, `offset: u64`), then
//! padding to `general.alignment` (default 32), then the data section; each tensor's `offset`
//! is relative to the data section. Strings are `len: u64` + UTF-8 bytes.
//!
//! ggml lists dimensions fastest-first (`ne[0]` is the row length); [`GgufTensorInfo::shape`]
//! reverses them so a linear weight reads `[out, in]` as in PyTorch.
//!
//! **Llama Q/K rows**: llama.cpp's converter permutes the rows of `attn_q`/`attn_k` for the
//! interleaved RoPE of ggml. [`crate::RawTensor::unpermute_llama_qk`] undoes it to get the
//! Hugging Face (`rotate_half`) layout.

use crate::error::{examples, FormatError};
use crate::quant::{dequantize, GgmlType, SUPPORTED};
use crate::{RawTensor, TensorSource};
use memmap2::Mmap;
use std::collections::HashMap;
use std::fmt;

mod cursor;
mod value;

use cursor::Cursor;
pub use cursor::{MAX_ARRAY_DEPTH, MAX_METADATA_VALUES};
use std::path::{Path, PathBuf};
pub use value::GgufValue;

/// One entry of the tensor index.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorInfo {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Row-major shape, slowest first (ggml's `ne` reversed): a linear weight is `[out, in]`.
    pub shape: Vec<usize>,
    /// Element type.
    pub ggml_type: GgmlType,
    /// Absolute byte offset of the data in the file.
    pub offset: u64,
    /// Byte size of the data (`None` for types without known geometry).
    pub n_bytes: Option<u64>,
}

impl GgufTensorInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A memory-mapped GGUF file with its parsed metadata and tensor index.
pub struct GgufFile {
    path: PathBuf,
    map: Mmap,
    version: u32,
    metadata: Vec<(String, GgufValue)>,
    meta_index: HashMap<String, usize>,
    tensors: Vec<GgufTensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .finish()
    }
}

impl GgufFile {
    /// Maps and parses `path`. Tensor data is not read until [`TensorSource::load`].
    ///
    /// Errors name the file: not GGUF (magic), version other than 2/3, truncated header,
    /// metadata or tensor data, invalid strings/types, tensor offsets that are not aligned.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, FormatError> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| FormatError::io(path, e))?;
        // SAFETY: the map is read-only; as with any mmap, the file must not be truncated by
        // another process while it is open (model files are not written in place).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| FormatError::io(path, e))?;
        Self::parse(path.to_path_buf(), map)
    }

    fn parse(path: PathBuf, map: Mmap) -> Result<Self, FormatError> {
        let mut c = Cursor {
            buf: &map,
            pos: 0,
            path: &path,
            depth: 0,
            values: 0,
        };
        let header = || "header".to_string();
        let magic: [u8; 4] = c.arr(&header)?;
        if &magic != b"GGUF" {
            return Err(FormatError::BadMagic {
                path: path.clone(),
                found: magic,
            });
        }
        let version = c.u32(&header)?;
        if !(2..=3).contains(&version) {
            return Err(FormatError::UnsupportedVersion {
                path: path.clone(),
                version,
            });
        }
        let n_tensors = c.count(24, &|| "header (tensor count)".to_string())?;
        let n_kv = c.count(13, &|| "header (metadata count)".to_string())?;
        let mut metadata = Vec::with_capacity(n_kv);
        let mut meta_index = HashMap::with_capacity(n_kv);
        for i in 0..n_kv {
            let key = c.string(&|| format!("metadata entry {i} (key)"))?;
            let what = || format!("metadata `{key}`");
            let ty = c.u32(&what)?;
            let value = c.value(ty, &what)?;
            if meta_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(c.invalid(what(), "key occurs twice".into()));
            }
            metadata.push((key, value));
        }
        let alignment = match meta_index.get("general.alignment").map(|&i| &metadata[i].1) {
            None => 32,
            Some(v) => match v.as_int() {
                Some(a) if a > 0 && (a as u64).is_power_of_two() => a as u64,
                _ => {
                    return Err(c.invalid(
                        "metadata `general.alignment`".into(),
                        format!("{v} is not a positive power of two"),
                    ))
                }
            },
        };
        let mut raw = Vec::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let name = c.string(&|| format!("tensor info {i} (name)"))?;
            let what = || format!("tensor info `{name}`");
            let n_dims = c.u32(&what)?;
            if n_dims > 8 {
                return Err(c.invalid(what(), format!("{n_dims} dimensions (at most 8)")));
            }
            let mut ne = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                ne.push(c.u64(&what)?);
            }
            let type_id = c.u32(&what)?;
            let offset = c.u64(&what)?;
            raw.push((name, ne, type_id, offset));
        }
        let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
        let len = map.len() as u64;
        let mut tensors = Vec::with_capacity(n_tensors);
        let mut tensor_index = HashMap::with_capacity(n_tensors);
        for (name, ne, type_id, offset) in raw {
            let ggml_type =
                GgmlType::from_id(type_id).ok_or_else(|| FormatError::UnknownTensorType {
                    path: path.clone(),
                    tensor: name.clone(),
                    type_id,
                })?;
            let invalid = |msg: String| FormatError::Invalid {
                path: path.clone(),
                what: format!("tensor info `{name}`"),
                msg,
            };
            let mut shape = Vec::with_capacity(ne.len());
            for &d in ne.iter().rev() {
                shape.push(
                    usize::try_from(d).map_err(|_| invalid(format!("dimension {d} too large")))?,
                );
            }
            let numel = shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .ok_or_else(|| {
                    invalid(format!("{} shape {shape:?} overflows", ggml_type.name()))
                })?;
            if offset.checked_rem(alignment) != Some(0) {
                return Err(invalid(format!(
                    "data offset {offset} is not a multiple of the alignment {alignment}"
                )));
            }
            let abs = data_offset
                .checked_add(offset)
                .ok_or_else(|| invalid(format!("data offset {offset} overflows")))?;
            let n_bytes = match ggml_type.block() {
                None => None,
                Some((per, _)) => match ggml_type.bytes_for(numel) {
                    Some(b) => Some(b as u64),
                    None => {
                        return Err(FormatError::ShapeMismatch {
                            path: path.clone(),
                            tensor: name.clone(),
                            found: shape,
                            expected: format!(
                                "a whole number of {} blocks of {per} elements whose byte size fits in memory",
                                ggml_type.name()
                            ),
                        })
                    }
                },
            };
            if let Some(nb) = n_bytes {
                if abs.saturating_add(nb) > len {
                    return Err(FormatError::Truncated {
                        path: path.clone(),
                        what: format!("data of tensor `{name}` ({} {shape:?})", ggml_type.name()),
                        start: abs,
                        end: abs.saturating_add(nb),
                        len,
                    });
                }
            }
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                return Err(invalid("name occurs twice".into()));
            }
            tensors.push(GgufTensorInfo {
                name,
                shape,
                ggml_type,
                offset: abs,
                n_bytes,
            });
        }
        Ok(Self {
            path,
            map,
            version,
            metadata,
            meta_index,
            tensors,
            tensor_index,
            alignment,
            data_offset,
        })
    }

    /// GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Data alignment (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute byte offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// All metadata pairs in file order.
    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.metadata
    }

    /// The tensor index in file order.
    pub fn tensor_infos(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    /// The index entry of one tensor.
    pub fn tensor_info(&self, name: &str) -> Result<&GgufTensorInfo, FormatError> {
        match self.tensor_index.get(name) {
            Some(&i) => Ok(&self.tensors[i]),
            None => Err(FormatError::MissingTensor {
                path: self.path.clone(),
                tensor: name.to_string(),
                count: self.tensors.len(),
                examples: examples(self.tensors.iter().map(|t| t.name.as_str()), name, 5),
            }),
        }
    }

    /// A metadata value, `None` when absent.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].1)
    }

    fn require(&self, key: &str) -> Result<&GgufValue, FormatError> {
        self.get(key).ok_or_else(|| FormatError::MissingMetadata {
            path: self.path.clone(),
            key: key.to_string(),
        })
    }

    fn wrong(&self, key: &str, expected: &'static str, v: &GgufValue) -> FormatError {
        FormatError::MetadataType {
            path: self.path.clone(),
            key: key.to_string(),
            expected,
            found: format!("{} {v}", v.type_name()),
        }
    }

    /// An integer key that fits `u32` (stored as any integer type).
    pub fn get_u32(&self, key: &str) -> Result<u32, FormatError> {
        let v = self.require(key)?;
        v.as_int()
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| self.wrong(key, "an integer fitting u32", v))
    }

    /// An integer key that fits `u64` (stored as any integer type).
    pub fn get_u64(&self, key: &str) -> Result<u64, FormatError> {
        let v = self.require(key)?;
        v.as_int()
            .and_then(|i| u64::try_from(i).ok())
            .ok_or_else(|| self.wrong(key, "an integer fitting u64", v))
    }

    /// A float key (f32 or f64 stored; f64 is rounded).
    pub fn get_f32(&self, key: &str) -> Result<f32, FormatError> {
        let v = self.require(key)?;
        v.as_float()
            .map(|x| x as f32)
            .ok_or_else(|| self.wrong(key, "a float", v))
    }

    /// A bool key.
    pub fn get_bool(&self, key: &str) -> Result<bool, FormatError> {
        match self.require(key)? {
            GgufValue::Bool(b) => Ok(*b),
            v => Err(self.wrong(key, "a bool", v)),
        }
    }

    /// A string key.
    pub fn get_str(&self, key: &str) -> Result<&str, FormatError> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| self.wrong(key, "a string", v))
    }

    /// An array key (any element type).
    pub fn get_array(&self, key: &str) -> Result<&[GgufValue], FormatError> {
        let v = self.require(key)?;
        v.as_array().ok_or_else(|| self.wrong(key, "an array", v))
    }

    /// An array-of-strings key.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>, FormatError> {
        let v = self.require(key)?;
        let arr = v
            .as_array()
            .ok_or_else(|| self.wrong(key, "an array of strings", v))?;
        arr.iter()
            .map(|e| {
                e.as_str()
                    .ok_or_else(|| self.wrong(key, "an array of strings", v))
            })
            .collect()
    }

    /// An array-of-integers key, as i64.
    pub fn get_int_array(&self, key: &str) -> Result<Vec<i64>, FormatError> {
        let v = self.require(key)?;
        let arr = v
            .as_array()
            .ok_or_else(|| self.wrong(key, "an array of integers", v))?;
        arr.iter()
            .map(|e| {
                e.as_int()
                    .and_then(|i| i64::try_from(i).ok())
                    .ok_or_else(|| self.wrong(key, "an array of integers", v))
            })
            .collect()
    }

    /// `general.architecture`, e.g. `"llama"`.
    pub fn architecture(&self) -> Result<&str, FormatError> {
        self.get_str("general.architecture")
    }

    /// `<architecture>.<suffix>` as u32, e.g. `arch_u32("block_count")` reads `llama.block_count`.
    pub fn arch_u32(&self, suffix: &str) -> Result<u32, FormatError> {
        self.get_u32(&format!("{}.{suffix}", self.architecture()?))
    }

    /// `<architecture>.<suffix>` as f32, e.g. `arch_f32("rope.freq_base")`.
    pub fn arch_f32(&self, suffix: &str) -> Result<f32, FormatError> {
        self.get_f32(&format!("{}.{suffix}", self.architecture()?))
    }

    /// `tokenizer.chat_template` (a Jinja template), `None` when absent or not a string.
    pub fn chat_template(&self) -> Option<&str> {
        self.get("tokenizer.chat_template").and_then(|v| v.as_str())
    }

    /// The raw bytes of a tensor (still quantised).
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8], FormatError> {
        let info = self.tensor_info(name)?;
        let n = info.n_bytes.ok_or_else(|| self.unsupported(info))?;
        // Bounds were checked against the file length in `parse`.
        Ok(&self.map[info.offset as usize..(info.offset + n) as usize])
    }

    fn unsupported(&self, info: &GgufTensorInfo) -> FormatError {
        FormatError::UnsupportedType {
            path: self.path.clone(),
            tensor: info.name.clone(),
            dtype: info.ggml_type.name(),
            supported: SUPPORTED,
        }
    }
}

impl TensorSource for GgufFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn names(&self) -> Vec<String> {
        self.tensors.iter().map(|t| t.name.clone()).collect()
    }

    fn load(&self, name: &str) -> Result<RawTensor, FormatError> {
        let info = self.tensor_info(name)?;
        let bytes = self.tensor_bytes(name)?;
        if !info.ggml_type.converts_to_f32() {
            return Err(self.unsupported(info));
        }
        // Sizes were checked in `parse`; an error here still names the tensor and its type.
        let data = dequantize(info.ggml_type, bytes, info.numel()).map_err(|msg| {
            FormatError::Invalid {
                path: self.path.clone(),
                what: format!("data of tensor `{}` ({})", info.name, info.ggml_type.name()),
                msg,
            }
        })?;
        Ok(RawTensor {
            name: info.name.clone(),
            shape: info.shape.clone(),
            data,
        })
    }
}
