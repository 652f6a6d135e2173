//! How a model's frozen linear weights are held in memory (the `model.dtype` setting): f32, or
//! ggml quantization blocks that [`LoraLinear`](crate::LoraLinear) dequantises tile by tile
//! inside each product (adapters stay f32 on top).

pub use balora_cpu::{QuantKind, QuantMatrix};

/// The storage of the frozen linear weights of a loaded model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[allow(non_camel_case_types)]
pub enum BaseDtype {
    /// f32 (the default).
    #[default]
    F32,
    /// `Q8_0` blocks: a GGUF tensor already in `Q8_0` is kept as it is, any other is quantized
    /// at load from its f32 values (ggml's reference rounding).
    Q8_0,
    /// `Q4_0` blocks, as for [`BaseDtype::Q8_0`].
    Q4_0,
    /// A GGUF file's own blocks where they are `Q8_0`, `Q4_0` or `Q4_1` (no requantization:
    /// the model computes what the file dequantised to f32 computes); linear weights the file
    /// stores in another type are held as `Q8_0`. GGUF files only.
    File,
}

impl BaseDtype {
    /// The config value (`"q8_0"`).
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Q8_0 => "q8_0",
            Self::Q4_0 => "q4_0",
            Self::File => "file",
        }
    }

    /// Whether linear weights are kept as blocks.
    pub fn is_quantized(self) -> bool {
        self != Self::F32
    }
}
