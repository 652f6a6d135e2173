//! `balora inspect`: diagnostics of every adapter pair in a PEFT adapter file.

use anyhow::{bail, Context, Result};
use balora_manifold::{diagnose, DMatrix, PairGrams};
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::path::Path;

fn to_matrix(
    file: &Path,
    name: &str,
    view: &safetensors::tensor::TensorView<'_>,
) -> Result<DMatrix<f64>> {
    let shape = view.shape();
    if shape.len() != 2 {
        bail!(
            "{}: tensor `{name}` has shape {shape:?}, expected 2 dimensions",
            file.display()
        );
    }
    let data = view.data();
    let vals: Vec<f64> = match view.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect(),
        Dtype::F16 | Dtype::BF16 => {
            let bf = view.dtype() == Dtype::BF16;
            data.chunks_exact(2)
                .map(|c| {
                    let bits = u16::from_le_bytes([c[0], c[1]]);
                    if bf {
                        f32::from_bits((bits as u32) << 16) as f64
                    } else {
                        half_to_f32(bits) as f64
                    }
                })
                .collect()
        }
        other => bail!(
            "{}: tensor `{name}` has dtype {other:?}; expected F32, F64, F16 or BF16",
            file.display()
        ),
    };
    if shape.contains(&0) || shape[0].checked_mul(shape[1]) != Some(vals.len()) {
        bail!(
            "{}: tensor `{name}` has shape {shape:?} ({} values); an adapter factor needs both dimensions ≥ 1",
            file.display(),
            vals.len()
        );
    }
    if let Some(i) = vals.iter().position(|v| !v.is_finite()) {
        bail!(
            "{}: tensor `{name}` {shape:?} holds a non-finite value ({} at flat index {i})",
            file.display(),
            vals[i]
        );
    }
    Ok(DMatrix::from_row_slice(shape[0], shape[1], &vals))
}

fn half_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, f) => {
            // subnormal
            let v = f as f32 / 1024.0 * 2f32.powi(-14);
            return if sign != 0 { -v } else { v };
        }
        (31, 0) => sign | 0x7f80_0000,
        (31, _) => sign | 0x7fc0_0000,
        (e, f) => sign | ((e + 112) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

/// Prints diagnostics for each `*.lora_A.weight` / `*.lora_B.weight` pair.
pub fn run(file: &Path, json: bool) -> Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: not a valid safetensors file: {e}", file.display()))?;
    let mut pairs: BTreeMap<String, [Option<String>; 2]> = BTreeMap::new();
    for name in st.names() {
        if let Some(k) = name.strip_suffix(".lora_A.weight") {
            pairs.entry(k.to_string()).or_default()[0] = Some(name.to_string());
        } else if let Some(k) = name.strip_suffix(".lora_B.weight") {
            pairs.entry(k.to_string()).or_default()[1] = Some(name.to_string());
        }
    }
    if pairs.is_empty() {
        bail!(
            "{}: no `*.lora_A.weight` / `*.lora_B.weight` tensors found",
            file.display()
        );
    }
    let mut rows = Vec::new();
    for (key, [a, b]) in pairs {
        let (Some(a), Some(b)) = (a, b) else {
            bail!(
                "{}: adapter `{key}` has only one of lora_A / lora_B",
                file.display()
            );
        };
        let am = to_matrix(file, &a, &st.tensor(&a)?)?;
        let bm = to_matrix(file, &b, &st.tensor(&b)?)?;
        if bm.ncols() != am.nrows() {
            bail!(
                "{}: adapter `{key}`: `{b}` has shape [{}, {}] but `{a}` has shape [{}, {}]: the ranks differ",
                file.display(),
                bm.nrows(),
                bm.ncols(),
                am.nrows(),
                am.ncols()
            );
        }
        let grams = PairGrams::from_factors(&am, &bm)
            .with_context(|| format!("{}: adapter `{key}`", file.display()))?;
        rows.push((key, am.nrows(), diagnose(&grams)));
    }
    if json {
        let v: Vec<_> = rows
            .iter()
            .map(|(k, r, d)| serde_json::json!({"adapter": k, "rank": r, "diagnostics": d}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{:<60} {:>4} {:>12} {:>12} {:>12} {:>12}",
            "adapter", "r", "balance gap", "σ₁(BA)", "σ_r(BA)", "κ = 2σ₁/σ_r"
        );
        for (k, r, d) in rows {
            println!(
                "{:<60} {:>4} {:>12.3e} {:>12.4e} {:>12.4e} {:>12.4e}",
                k,
                r,
                d.balance_gap,
                d.singular_values.first().copied().unwrap_or(0.0),
                d.singular_values.last().copied().unwrap_or(0.0),
                d.balanced_condition
            );
        }
    }
    Ok(())
}
