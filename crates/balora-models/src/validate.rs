//! Checks of model settings and tensors against each other, run before anything is allocated
//! from them: a hostile file must give a clear error, never a panic, a hang or a huge
//! allocation.
//!
//! * [`MAX_DIM`], [`MAX_LAYERS`], [`ROPE_TABLE_BUDGET`]: bounds on config values that size
//!   allocations on their own (the RoPE tables, the layer list);
//! * [`check_positive_finite`]: ε, RoPE base and other float settings;
//! * [`check_llama_config`]: every Llama-family setting on its own and against the others
//!   (messages name the file's own keys, [`gguf_key`] for a GGUF);
//! * [`count_layers`]: the number of decoder/encoder layers whose tensors a file holds, which
//!   `block_count` / `num_hidden_layers` must equal;
//! * [`first_non_finite`]: the finite check of weights (base weights and adapters);
//! * [`check_adapter_pairs`]: the shapes of every `lora_A`/`lora_B` pair of an adapter file;
//! * [`check_adapter_ranks`]: a rank against the layers it is attached to.

use crate::linears::AdapterHost;
use crate::llama::LlamaConfig;
use crate::surgery::{is_targeted, layer_adapter};
use crate::weights::MemWeights;
use crate::ModelError;
use balora_adapter::LoraConfig;
use burn::tensor::backend::Backend;
use std::collections::BTreeSet;

/// Largest accepted width, head count, vocabulary or inner size: 16 Mi (the largest real
/// models are ~10× below: Gemma's 256 Ki vocabulary, Llama 3 405B's 53 Ki FFN width).
pub const MAX_DIM: usize = 1 << 24;

/// Largest accepted layer count (real models: ≤ 126).
pub const MAX_LAYERS: usize = 1 << 12;

/// Largest head dimension (real models: 64–256). The RoPE rotation matrix is
/// `head_dim × head_dim`, so this bounds it at 16 Mi values.
pub const MAX_HEAD_DIM: usize = 1 << 12;

/// Largest RoPE table, in values (`max_position × head_dim`; there are two such tables, cos
/// and sin): 32 Mi values = 128 MiB each. Llama 3.1's 128 Ki positions × 128 fit (16 Mi).
pub const ROPE_TABLE_BUDGET: usize = 1 << 25;

/// `x` must be finite and > 0; the error names `field` of `file`.
pub fn check_positive_finite(file: &str, field: &str, x: f64) -> Result<(), ModelError> {
    if x.is_finite() && x > 0.0 {
        Ok(())
    } else {
        Err(ModelError::config(
            file,
            field,
            format!("{x} must be a finite number > 0"),
        ))
    }
}

/// `n` must be in `1..=max`; the error names `field` of `file`.
pub fn check_size(file: &str, field: &str, n: usize, max: usize) -> Result<(), ModelError> {
    if (1..=max).contains(&n) {
        Ok(())
    } else {
        Err(ModelError::config(
            file,
            field,
            format!("{n} is outside 1..={max}"),
        ))
    }
}

/// The number of layers whose tensors are named `<prefix><i>.…` (e.g. `blk.` or
/// `model.layers.`), checked to be exactly the indices `0..n`; `None` lists the first gap.
pub fn count_layers<'a>(
    names: impl IntoIterator<Item = &'a str>,
    prefix: &str,
) -> Result<usize, usize> {
    let found: BTreeSet<usize> = names
        .into_iter()
        .filter_map(|n| n.strip_prefix(prefix)?.split('.').next()?.parse().ok())
        .collect();
    match (0..found.len()).find(|i| !found.contains(i)) {
        None => Ok(found.len()),
        Some(gap) => Err(gap),
    }
}

/// The config's layer count against the layers present: `field` names the config key.
pub fn check_layer_count(
    file: &str,
    field: &str,
    configured: usize,
    names: &[String],
    prefix: &str,
) -> Result<(), ModelError> {
    match count_layers(names.iter().map(String::as_str), prefix) {
        Ok(n) if n == configured => Ok(()),
        Ok(n) => Err(ModelError::config(
            file,
            field,
            format!("{configured} layers, but the file holds tensors for {n} (`{prefix}0.` … `{prefix}{}.`)", n.saturating_sub(1)),
        )),
        Err(gap) => Err(ModelError::config(
            file,
            field,
            format!("{configured} layers, but the file has no tensors for layer {gap} (`{prefix}{gap}.…`)"),
        )),
    }
}

/// Index and value of the first NaN or ±∞ in `data`.
pub fn first_non_finite(data: &[f32]) -> Option<(usize, f32)> {
    // Sum-of-flags in chunks vectorises; the exact position is found only on failure.
    let bad = data
        .chunks(4096)
        .position(|c| !c.iter().fold(true, |ok, x| ok & x.is_finite()))?;
    let off = bad * 4096;
    data[off..]
        .iter()
        .position(|x| !x.is_finite())
        .map(|i| (off + i, data[off + i]))
}

/// A [`ModelError::Format`] if `data` of `tensor` holds a NaN or ±∞.
pub fn check_finite(
    file: &str,
    tensor: &str,
    shape: &[usize],
    data: &[f32],
) -> Result<(), ModelError> {
    match first_non_finite(data) {
        None => Ok(()),
        Some((i, v)) => Err(ModelError::Format {
            file: file.to_string(),
            message: format!(
                "tensor `{tensor}` {shape:?} holds a non-finite value ({v} at flat index {i})"
            ),
        }),
    }
}

/// Checks every tensor of an adapter file before any compute: all finite, and each
/// `lora_A` `[r, in]` / `lora_B` `[out, r]` pair 2-D with `r ≥ 1`, `in ≥ 1`, `out ≥ 1` and
/// matching ranks; a `lora_B` without its `lora_A` (or the reverse) is an error. Errors name
/// the file, the key and the shapes. `r > min(in, out)` is allowed here: PEFT writes such files
/// (a rank-8 adapter on a 2-class head), they are merely rank-deficient, and their size is
/// bounded by the file; [`check_adapter_ranks`] refuses it when *creating* adapters.
pub fn check_adapter_pairs(w: &MemWeights) -> Result<(), ModelError> {
    let file = &w.origin;
    let err = |m: String| ModelError::Adapter {
        file: file.clone(),
        message: m,
    };
    for (name, (shape, data)) in &w.tensors {
        let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if numel != Some(data.len()) {
            return Err(err(format!(
                "tensor `{name}` has {} values for shape {shape:?}",
                data.len()
            )));
        }
        check_finite(file, name, shape, data)?;
        let (own, other, a_side) = if let Some(p) = name.strip_suffix(".lora_A.weight") {
            (p, format!("{p}.lora_B.weight"), true)
        } else if let Some(p) = name.strip_suffix(".lora_B.weight") {
            (p, format!("{p}.lora_A.weight"), false)
        } else {
            continue;
        };
        let Some((oshape, _)) = w.tensors.get(&other) else {
            return Err(err(format!(
                "`{name}` has no partner `{other}` (adapter `{own}`)"
            )));
        };
        let (sa, sb) = if a_side {
            (shape, oshape)
        } else {
            (oshape, shape)
        };
        let (ka, kb) = (
            format!("{own}.lora_A.weight"),
            format!("{own}.lora_B.weight"),
        );
        if sa.len() != 2 || sa.contains(&0) {
            return Err(err(format!(
                "`{ka}` has shape {sa:?}; expected [r, in] with r ≥ 1 and in ≥ 1"
            )));
        }
        if sb.len() != 2 || sb.contains(&0) {
            return Err(err(format!(
                "`{kb}` has shape {sb:?}; expected [out, r] with r ≥ 1 and out ≥ 1"
            )));
        }
        let r = sa[0];
        if sb[1] != r {
            return Err(err(format!(
                "`{kb}` has shape {sb:?} but `{ka}` has shape {sa:?}: the ranks differ"
            )));
        }
    }
    Ok(())
}

/// Checks the rank of every layer `spec` targets in `model` (`adapter.r`, or its
/// `rank_pattern` entry) before any adapter is allocated: `1 ≤ r ≤ min(in, out)`.
pub fn check_adapter_ranks<B: Backend, M: AdapterHost<B>>(
    model: &M,
    spec: &LoraConfig,
) -> Result<(), ModelError> {
    for (info, l) in model.linears() {
        if spec.saves(&info.path) || !is_targeted(spec, &info)? {
            continue;
        }
        let r = layer_adapter(spec, &info.path)?.r();
        let (din, dout) = l.dims();
        if r == 0 || r > din.min(dout) {
            let field = if r == spec.r {
                "adapter.r".to_string()
            } else {
                format!("adapter.rank_pattern (r = {r} for `{}`)", info.path)
            };
            return Err(ModelError::Targets(format!(
                "{field} = {r} must be in 1..={} for `{}` ({din} → {dout})",
                din.min(dout),
                info.path
            )));
        }
    }
    Ok(())
}

/// The GGUF metadata key (or tensor) behind a Hugging Face config field, for messages.
pub fn gguf_key(arch: &str, hf: &str) -> String {
    let suffix = match hf {
        "vocab_size" => return "token_embd.weight (rows: vocabulary size)".to_string(),
        "hidden_size" => "embedding_length",
        "intermediate_size" => "feed_forward_length",
        "num_hidden_layers" => "block_count",
        "num_attention_heads" => "attention.head_count",
        "num_key_value_heads" => "attention.head_count_kv",
        "max_position_embeddings" => "context_length",
        "rms_norm_eps" => "attention.layer_norm_rms_epsilon",
        "rope_theta" => "rope.freq_base",
        "head_dim" => "rope.dimension_count",
        other => other,
    };
    format!("{arch}.{suffix}")
}

/// The checks of a Llama-family config (every size in range, ε and RoPE base finite and
/// positive, heads divisible, RoPE tables within [`ROPE_TABLE_BUDGET`]); `key` names a Hugging
/// Face field as the file spells it.
pub fn check_llama_config(
    cfg: &LlamaConfig,
    origin: &str,
    key: &dyn Fn(&str) -> String,
) -> Result<(), ModelError> {
    let field = |k: &str| key(k);
    check_size(origin, &field("vocab_size"), cfg.vocab_size, MAX_DIM)?;
    check_size(origin, &field("hidden_size"), cfg.hidden_size, MAX_DIM)?;
    check_size(
        origin,
        &field("intermediate_size"),
        cfg.intermediate_size,
        MAX_DIM,
    )?;
    check_size(
        origin,
        &field("num_hidden_layers"),
        cfg.num_layers,
        MAX_LAYERS,
    )?;
    check_size(
        origin,
        &field("num_attention_heads"),
        cfg.num_heads,
        MAX_DIM,
    )?;
    check_size(
        origin,
        &field("num_key_value_heads"),
        cfg.num_kv_heads,
        MAX_DIM,
    )?;
    check_size(
        origin,
        &field("max_position_embeddings"),
        cfg.max_position,
        MAX_DIM,
    )?;
    check_positive_finite(origin, &field("rms_norm_eps"), cfg.rms_norm_eps)?;
    check_positive_finite(origin, &field("rope_theta"), cfg.rope_theta)?;
    if let Some((factor, low, high, orig)) = cfg.rope_llama3_scaling {
        for (k, x) in [
            ("factor", factor),
            ("low_freq_factor", low),
            ("high_freq_factor", high),
            ("original_max_position_embeddings", orig),
        ] {
            check_positive_finite(origin, &format!("rope_scaling.{k}"), x)?;
        }
        if high <= low {
            return Err(ModelError::config(
                origin,
                "rope_scaling.high_freq_factor",
                format!("{high} must exceed low_freq_factor = {low}"),
            ));
        }
    }
    if cfg.num_heads.checked_rem(cfg.num_kv_heads) != Some(0) {
        return Err(ModelError::config(
            origin,
            &field("num_key_value_heads"),
            format!(
                "{} query heads are not a multiple of {} key/value heads",
                cfg.num_heads, cfg.num_kv_heads
            ),
        ));
    }
    if cfg.head_dim & 1 == 1 || cfg.head_dim == 0 || cfg.head_dim > MAX_HEAD_DIM {
        return Err(ModelError::config(
            origin,
            &field("head_dim"),
            format!("{} must be even and in 2..={MAX_HEAD_DIM}", cfg.head_dim),
        ));
    }
    let q_width = cfg.num_heads.checked_mul(cfg.head_dim);
    if q_width.is_none_or(|w| w > MAX_DIM) {
        return Err(ModelError::config(
            origin,
            &field("num_attention_heads"),
            format!(
                "{} heads × head_dim {} exceed {MAX_DIM}",
                cfg.num_heads, cfg.head_dim
            ),
        ));
    }
    // The RoPE cos/sin tables are [max_position, head_dim] each, built at load time.
    let table = cfg.max_position.saturating_mul(cfg.head_dim);
    if table > ROPE_TABLE_BUDGET {
        return Err(ModelError::config(
            origin,
            &field("max_position_embeddings"),
            format!(
                "{} positions × head_dim {} = {table} values per RoPE table exceed the budget of {ROPE_TABLE_BUDGET}",
                cfg.max_position, cfg.head_dim
            ),
        ));
    }
    Ok(())
}
