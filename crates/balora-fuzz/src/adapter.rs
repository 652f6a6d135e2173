//! PEFT adapter files written byte by byte, so shapes the `safetensors` crate accepts but no
//! model can use (`[0, 2^40]`, rank 0) can be produced.

use std::path::Path;

/// A tensor to write: name, shape, F32 data (may be shorter than the shape says, for corrupt files).
pub type Tensor = (String, Vec<u64>, Vec<f32>);

/// A safetensors file: 8-byte header length, JSON header (padded with spaces to 8 bytes),
/// F32 data in the given order.
pub fn safetensors_bytes(tensors: &[Tensor]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut offset = 0u64;
    for (name, shape, data) in tensors {
        let end = offset + data.len() as u64 * 4;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut h = serde_json::Value::Object(header).to_string().into_bytes();
    while h.len().checked_rem(8) != Some(0) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    for (_, _, data) in tensors {
        out.extend(data.iter().flat_map(|x| x.to_le_bytes()));
    }
    out
}

/// The PEFT keys of module `module` (e.g. `model.layers.0.self_attn.q_proj`).
pub fn keys(module: &str) -> (String, String) {
    (
        format!("base_model.model.{module}.lora_A.weight"),
        format!("base_model.model.{module}.lora_B.weight"),
    )
}

/// An `adapter_config.json` text with rank `r`, α = `r` and `targets`.
pub fn config_json(r: u64, targets: &[&str]) -> String {
    serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": r,
        "lora_alpha": r,
        "target_modules": targets,
        "lora_dropout": 0.0,
        "bias": "none",
    })
    .to_string()
}

/// Writes `adapter_config.json` and `adapter_model.safetensors` into `dir`.
pub fn write_dir(dir: &Path, config: &str, weights: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("adapter_config.json"), config)?;
    std::fs::write(dir.join("adapter_model.safetensors"), weights)
}

/// A q_proj adapter pair for [`crate::gguf::tiny_llama`] (`in = out = 8`) of rank `r`, values
/// from [`crate::gguf::weights`].
pub fn q_proj_pair(r: usize) -> Vec<Tensor> {
    let (ka, kb) = keys("model.layers.0.self_attn.q_proj");
    vec![
        (ka, vec![r as u64, 8], crate::gguf::weights(r * 8, 7)),
        (kb, vec![8, r as u64], crate::gguf::weights(8 * r, 8)),
    ]
}
