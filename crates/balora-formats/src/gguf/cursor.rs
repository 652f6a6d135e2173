//! The bounds-checked byte cursor of the GGUF reader, with the limits that keep a crafted
//! header from nesting arrays without end or allocating without bound.

use super::GgufValue;
use crate::error::FormatError;
use std::path::Path;

/// How deep metadata arrays may nest (`[[[u8]]]` is depth 3). Real files use depth 1; the
/// limit keeps a crafted file (a chain of one-element arrays) from overflowing the stack.
pub const MAX_ARRAY_DEPTH: usize = 8;

/// How many metadata values (array elements included) a file may hold: 16 Mi values, ~50× the
/// largest tokenizer vocabularies (Llama 3: 128 Ki tokens + 280 Ki merges). Each value takes
/// 32 bytes in memory, so a crafted file of one-byte array elements cannot make the reader
/// allocate more than ~512 MiB.
pub const MAX_METADATA_VALUES: usize = 1 << 24;

pub(super) struct Cursor<'a> {
    pub(super) buf: &'a [u8],
    pub(super) pos: usize,
    pub(super) path: &'a Path,
    /// Current array nesting depth while reading a metadata value.
    pub(super) depth: usize,
    /// Metadata values read so far (array elements included).
    pub(super) values: usize,
}

impl<'a> Cursor<'a> {
    pub(super) fn take(
        &mut self,
        n: usize,
        what: &dyn Fn() -> String,
    ) -> Result<&'a [u8], FormatError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(FormatError::Truncated {
                path: self.path.to_path_buf(),
                what: what(),
                start: self.pos as u64,
                end: (self.pos as u64).saturating_add(n as u64),
                len: self.buf.len() as u64,
            }),
        }
    }
    pub(super) fn arr<const N: usize>(
        &mut self,
        what: &dyn Fn() -> String,
    ) -> Result<[u8; N], FormatError> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    pub(super) fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.arr(what)?))
    }
    pub(super) fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.arr(what)?))
    }
    pub(super) fn invalid(&self, what: String, msg: String) -> FormatError {
        FormatError::Invalid {
            path: self.path.to_path_buf(),
            what,
            msg,
        }
    }
    /// A count that must be plausible for the bytes left (each item needs ≥ `min_item` bytes).
    pub(super) fn count(
        &mut self,
        min_item: usize,
        what: &dyn Fn() -> String,
    ) -> Result<usize, FormatError> {
        let n = self.u64(what)?;
        let left = (self.buf.len() - self.pos) as u64;
        if n.saturating_mul(min_item as u64) > left {
            return Err(FormatError::Truncated {
                path: self.path.to_path_buf(),
                what: format!("{} ({n} items announced)", what()),
                start: self.pos as u64,
                end: (self.pos as u64).saturating_add(n.saturating_mul(min_item as u64)),
                len: self.buf.len() as u64,
            });
        }
        Ok(n as usize)
    }
    pub(super) fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, FormatError> {
        let n = self.count(1, what)?;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| self.invalid(what(), format!("string is not UTF-8: {e}")))
    }
    pub(super) fn value(
        &mut self,
        ty: u32,
        what: &dyn Fn() -> String,
    ) -> Result<GgufValue, FormatError> {
        Ok(match ty {
            0 => GgufValue::U8(self.arr::<1>(what)?[0]),
            1 => GgufValue::I8(self.arr::<1>(what)?[0] as i8),
            2 => GgufValue::U16(u16::from_le_bytes(self.arr(what)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.arr(what)?)),
            4 => GgufValue::U32(self.u32(what)?),
            5 => GgufValue::I32(i32::from_le_bytes(self.arr(what)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.arr(what)?)),
            7 => match self.arr::<1>(what)?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => return Err(self.invalid(what(), format!("bool byte {b} (expected 0 or 1)"))),
            },
            8 => GgufValue::String(self.string(what)?),
            9 => {
                let elem = self.u32(what)?;
                let min = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    _ => {
                        return Err(
                            self.invalid(what(), format!("unknown array element type {elem}"))
                        )
                    }
                };
                if elem == 9 && self.depth + 1 >= MAX_ARRAY_DEPTH {
                    return Err(self.invalid(
                        what(),
                        format!("arrays nested deeper than {MAX_ARRAY_DEPTH} levels"),
                    ));
                }
                let n = self.count(min, what)?;
                self.values = self.values.saturating_add(n);
                if self.values > MAX_METADATA_VALUES {
                    return Err(self.invalid(
                        what(),
                        format!(
                            "{n} array elements bring the metadata past {MAX_METADATA_VALUES} values"
                        ),
                    ));
                }
                let mut v = Vec::with_capacity(n);
                self.depth += 1;
                for _ in 0..n {
                    match self.value(elem, what) {
                        Ok(x) => v.push(x),
                        Err(e) => {
                            self.depth -= 1;
                            return Err(e);
                        }
                    }
                }
                self.depth -= 1;
                GgufValue::Array(elem, v)
            }
            10 => GgufValue::U64(self.u64(what)?),
            11 => GgufValue::I64(i64::from_le_bytes(self.arr(what)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.arr(what)?)),
            t => return Err(self.invalid(what(), format!("unknown value type {t}"))),
        })
    }
}
