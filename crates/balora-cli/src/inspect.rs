//! `balora inspect`: diagnostics of every adapter pair in a PEFT adapter file.

use anyhow::{bail, Context, Result};
use balora_formats::{RawTensor, SafetensorsFiles, TensorSource};
use balora_manifold::{diagnose, DMatrix, PairGrams};
use std::collections::BTreeMap;
use std::path::Path;

fn to_matrix(file: &Path, t: &RawTensor) -> Result<DMatrix<f64>> {
    let (name, shape) = (&t.name, &t.shape);
    if shape.len() != 2 {
        bail!(
            "{}: tensor `{name}` has shape {shape:?}, expected 2 dimensions",
            file.display()
        );
    }
    let vals: Vec<f64> = t.data.iter().map(|&x| f64::from(x)).collect();
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

/// Prints diagnostics for each `*.lora_A.weight` / `*.lora_B.weight` pair.
pub fn run(file: &Path, json: bool) -> Result<()> {
    // The one safetensors reader (mapped, validated, F32/F16/BF16/F64 as f32); its errors
    // name the file.
    let st = SafetensorsFiles::open(&[file])?;
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
        let am = to_matrix(file, &st.load(&a)?)?;
        let bm = to_matrix(file, &st.load(&b)?)?;
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
