//! Reading and writing safetensors files (f32 out; f32/f16/bf16 in), atomically.

use crate::weights::MemWeights;
use crate::ModelError;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::HashMap;
use std::path::Path;

fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let mant = (h & 0x3ff) as u32;
    let bits = match (exp, mant) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: normalise.
            let mut e = 127 - 15 + 1;
            let mut m = m;
            while m & 0x400 == 0 {
                m <<= 1;
                e -= 1;
            }
            sign | ((e as u32) << 23) | ((m & 0x3ff) << 13)
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// Reads every tensor of a safetensors file as f32.
pub fn read_safetensors(path: &Path) -> Result<MemWeights, ModelError> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
    let origin = path.display().to_string();
    let st = SafeTensors::deserialize(&bytes).map_err(|e| ModelError::Format {
        file: origin.clone(),
        message: format!("not a valid safetensors file: {e}"),
    })?;
    let mut out = MemWeights::new(origin.clone());
    for (name, view) in st.tensors() {
        let raw = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => raw
                .chunks_exact(2)
                .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
            Dtype::BF16 => raw
                .chunks_exact(2)
                .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
                .collect(),
            other => {
                return Err(ModelError::Format {
                    file: origin,
                    message: format!(
                        "tensor `{name}` has dtype {other:?}; only F32, F16, BF16 are supported"
                    ),
                })
            }
        };
        out.insert(name, view.shape().to_vec(), data);
    }
    Ok(out)
}

/// Writes `path` atomically and durably (temporary file, `fsync`, rename, folder `fsync`):
/// [`balora_formats::atomic::write_atomic`].
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    balora_formats::atomic::write_atomic(path, bytes).map_err(|e| {
        let path = e.path.clone();
        ModelError::io(
            &path,
            std::io::Error::new(e.source.kind(), format!("{}: {}", e.op, e.source)),
        )
    })
}

/// Writes f32 tensors `(name, shape, data)` as safetensors (with `{"format": "pt"}` metadata), atomically.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
) -> Result<(), ModelError> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, d)| d.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let origin = path.display().to_string();
    let mut views = Vec::with_capacity(tensors.len());
    for ((name, shape, _), b) in tensors.iter().zip(&bytes) {
        let v = TensorView::new(Dtype::F32, shape.clone(), b).map_err(|e| ModelError::Format {
            file: origin.clone(),
            message: format!("tensor `{name}`: {e}"),
        })?;
        views.push((name.clone(), v));
    }
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let out =
        safetensors::tensor::serialize(views, Some(meta)).map_err(|e| ModelError::Format {
            file: origin,
            message: e.to_string(),
        })?;
    write_atomic(path, &out)
}
