//! A small GGUF (v3) writer: typed metadata, F32 tensors, and raw values for corrupt files.

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    /// GGUF type 4.
    U32(u32),
    /// GGUF type 10.
    U64(u64),
    /// GGUF type 6.
    F32(f32),
    /// GGUF type 8.
    Str(String),
    /// GGUF type 9: element type id and elements (written with that type's encoding).
    Arr(u32, Vec<Val>),
    /// Any type id followed by the given bytes, verbatim.
    Raw(u32, Vec<u8>),
}

impl Val {
    fn type_id(&self) -> u32 {
        match self {
            Val::U32(_) => 4,
            Val::U64(_) => 10,
            Val::F32(_) => 6,
            Val::Str(_) => 8,
            Val::Arr(..) => 9,
            Val::Raw(t, _) => *t,
        }
    }

    fn write_body(&self, out: &mut Vec<u8>) {
        match self {
            Val::U32(x) => out.extend(x.to_le_bytes()),
            Val::U64(x) => out.extend(x.to_le_bytes()),
            Val::F32(x) => out.extend(x.to_le_bytes()),
            Val::Str(s) => write_str(out, s),
            Val::Arr(elem, v) => {
                out.extend(elem.to_le_bytes());
                out.extend((v.len() as u64).to_le_bytes());
                for e in v {
                    e.write_body(out);
                }
            }
            Val::Raw(_, b) => out.extend(b),
        }
    }

    /// An array of strings.
    pub fn strs<S: AsRef<str>>(v: &[S]) -> Val {
        Val::Arr(
            8,
            v.iter().map(|s| Val::Str(s.as_ref().to_string())).collect(),
        )
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// The raw body of `depth` arrays nested in each other, each holding one element, the innermost
/// an empty `u8` array: `[[[…[]…]]]`. 12 bytes a level, so 300 000 levels are 3.6 MB.
pub fn nested_array_body(depth: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(depth * 12 + 12);
    for _ in 0..depth {
        out.extend(9u32.to_le_bytes());
        out.extend(1u64.to_le_bytes());
    }
    out.extend(0u32.to_le_bytes());
    out.extend(0u64.to_le_bytes());
    out
}

/// A GGUF file under construction: metadata pairs and F32 tensors (shapes row-major, HF order).
#[derive(Debug, Clone, Default)]
pub struct Gguf {
    /// Metadata in file order.
    pub kv: Vec<(String, Val)>,
    /// Tensors: name, shape (slowest first), f32 data.
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl Gguf {
    /// Sets (replaces or appends) a metadata key.
    pub fn set(&mut self, key: &str, v: Val) -> &mut Self {
        match self.kv.iter_mut().find(|(k, _)| k == key) {
            Some(e) => e.1 = v,
            None => self.kv.push((key.to_string(), v)),
        }
        self
    }

    /// Removes a metadata key.
    pub fn remove(&mut self, key: &str) -> &mut Self {
        self.kv.retain(|(k, _)| k != key);
        self
    }

    /// The data of a tensor, to corrupt.
    pub fn data_mut(&mut self, name: &str) -> &mut Vec<f32> {
        &mut self
            .tensors
            .iter_mut()
            .find(|t| t.0 == name)
            .unwrap_or_else(|| panic!("no tensor {name}"))
            .2
    }

    /// Replaces a tensor (shape and data).
    pub fn put_tensor(&mut self, name: &str, shape: Vec<usize>, data: Vec<f32>) -> &mut Self {
        self.tensors.retain(|t| t.0 != name);
        self.tensors.push((name.to_string(), shape, data));
        self
    }

    /// The file's bytes (GGUF v3, alignment 32, tensors F32).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(b"GGUF");
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.kv.len() as u64).to_le_bytes());
        for (k, v) in &self.kv {
            write_str(&mut out, k);
            out.extend(v.type_id().to_le_bytes());
            v.write_body(&mut out);
        }
        let mut offset = 0u64;
        for (name, shape, data) in &self.tensors {
            write_str(&mut out, name);
            out.extend((shape.len() as u32).to_le_bytes());
            for &d in shape.iter().rev() {
                out.extend((d as u64).to_le_bytes());
            }
            out.extend(0u32.to_le_bytes());
            out.extend(offset.to_le_bytes());
            offset += (data.len() as u64 * 4).div_ceil(32) * 32;
        }
        while out.len().checked_rem(32) != Some(0) {
            out.push(0);
        }
        for (_, _, data) in &self.tensors {
            let start = out.len();
            out.extend(data.iter().flat_map(|x| x.to_le_bytes()));
            while (out.len() - start).checked_rem(32) != Some(0) {
                out.push(0);
            }
        }
        out
    }
}

/// Sizes of [`tiny_llama`].
pub const VOCAB: usize = 16;
/// Width.
pub const D: usize = 8;
/// SwiGLU width.
pub const FF: usize = 16;
/// Query heads (head_dim 4).
pub const HEADS: usize = 2;
/// Key/value heads.
pub const KV_HEADS: usize = 1;
/// Head dimension.
pub const HEAD_DIM: usize = 4;
/// `llama.context_length`.
pub const CONTEXT: usize = 32;

/// Deterministic small weights.
pub fn weights(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.5
        })
        .collect()
}

/// The 16 tokens of [`tiny_llama`]'s tokenizer: the letters `a`…`p` (ids 0…15).
pub fn tokens() -> Vec<String> {
    (b'a'..=b'p').map(|c| (c as char).to_string()).collect()
}

/// A valid 1-layer Llama GGUF: vocab 16, width 8, 2 query heads and 1 key/value head of
/// dimension 4, SwiGLU width 16, context 32, tied head, byte-level BPE tokenizer over `a`…`p`.
pub fn tiny_llama() -> Gguf {
    let mut g = Gguf::default();
    g.set("general.architecture", Val::Str("llama".into()))
        .set("llama.embedding_length", Val::U32(D as u32))
        .set("llama.feed_forward_length", Val::U32(FF as u32))
        .set("llama.block_count", Val::U32(1))
        .set("llama.attention.head_count", Val::U32(HEADS as u32))
        .set("llama.attention.head_count_kv", Val::U32(KV_HEADS as u32))
        .set("llama.attention.layer_norm_rms_epsilon", Val::F32(1e-5))
        .set("llama.rope.freq_base", Val::F32(10000.0))
        .set("llama.context_length", Val::U32(CONTEXT as u32))
        .set("tokenizer.ggml.model", Val::Str("gpt2".into()))
        .set("tokenizer.ggml.tokens", Val::strs(&tokens()))
        .set("tokenizer.ggml.merges", Val::Arr(8, vec![]));
    let q = HEADS * HEAD_DIM;
    let kv = KV_HEADS * HEAD_DIM;
    let specs: [(&str, Vec<usize>); 11] = [
        ("token_embd.weight", vec![VOCAB, D]),
        ("output_norm.weight", vec![D]),
        ("blk.0.attn_norm.weight", vec![D]),
        ("blk.0.ffn_norm.weight", vec![D]),
        ("blk.0.attn_q.weight", vec![q, D]),
        ("blk.0.attn_k.weight", vec![kv, D]),
        ("blk.0.attn_v.weight", vec![kv, D]),
        ("blk.0.attn_output.weight", vec![D, q]),
        ("blk.0.ffn_gate.weight", vec![FF, D]),
        ("blk.0.ffn_up.weight", vec![FF, D]),
        ("blk.0.ffn_down.weight", vec![D, FF]),
    ];
    for (i, (name, shape)) in specs.into_iter().enumerate() {
        let n = shape.iter().product();
        let data = if name.ends_with("norm.weight") {
            vec![1.0; n]
        } else {
            weights(n, i as u64 + 1)
        };
        g.put_tensor(name, shape, data);
    }
    g
}
