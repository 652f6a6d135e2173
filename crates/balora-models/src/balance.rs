//! Re-factoring an existing PEFT adapter onto the balanced manifold (same products), so an
//! adapter trained with plain LoRA elsewhere can continue training with BaLoRA.

use crate::peft::{read_adapter, ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use crate::validate::check_adapter_pairs;
use crate::weights::Weights;
use crate::ModelError;
use balora_manifold::balanced::{balance, Gauge, DEFAULT_RANK_TOL};
use balora_manifold::{DMatrix, PairGrams};
use std::path::Path;

/// What balancing did to one adapter pair.
#[derive(Debug, Clone, PartialEq)]
pub struct BalanceRow {
    /// Module key prefix (`base_model.model.<module>`).
    pub module: String,
    /// Rank r.
    pub rank: usize,
    /// Rank that was balanced (< r: rank-deficient, only the active part balanced).
    pub active_rank: usize,
    /// `‖BᵀB − AAᵀ‖_F / (‖BᵀB‖_F + ‖AAᵀ‖_F)` before.
    pub imbalance_before: f64,
    /// The same after.
    pub imbalance_after: f64,
    /// `‖B'A' − BA‖_F / ‖BA‖_F` (in f64 before rounding to f32).
    pub product_rel_change: f64,
}

fn imbalance(a: &DMatrix<f64>, b: &DMatrix<f64>) -> f64 {
    let ga = a * a.transpose();
    let gb = b.transpose() * b;
    (&gb - &ga).norm() / (gb.norm() + ga.norm()).max(1e-300)
}

/// Balances every `lora_A`/`lora_B` pair of the adapter in `input` and writes the result (same
/// config, other tensors unchanged) to `output`. The pairs are checked first
/// ([`check_adapter_pairs`]): a zero dimension, a rank mismatch or a non-finite value is an
/// error naming the key and shapes.
pub fn balance_adapter(
    input: &Path,
    output: &Path,
    gauge: Gauge,
) -> Result<Vec<BalanceRow>, ModelError> {
    let (_spec, w) = read_adapter(input)?;
    // Shapes (no zero dimension, matching ranks) and values (finite) before any SVD.
    check_adapter_pairs(&w)?;
    let file = w.origin();
    let mut out: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let mut rows = Vec::new();
    for (name, (shape, data)) in &w.tensors {
        if let Some(pre) = name.strip_suffix(".lora_A.weight") {
            let bname = format!("{pre}.lora_B.weight");
            let (bs, bd) = w.fetch(&bname)?;
            if shape.len() != 2 || bs.len() != 2 || bs[1] != shape[0] {
                return Err(ModelError::Shape {
                    file: file.clone(),
                    tensor: bname,
                    expected: vec![
                        bs.first().copied().unwrap_or(0),
                        shape.first().copied().unwrap_or(0),
                    ],
                    actual: bs,
                });
            }
            let (r, din, dout) = (shape[0], shape[1], bs[0]);
            let a = DMatrix::from_row_slice(
                r,
                din,
                &data.iter().map(|&x| x as f64).collect::<Vec<_>>(),
            );
            let b =
                DMatrix::from_row_slice(dout, r, &bd.iter().map(|&x| x as f64).collect::<Vec<_>>());
            let grams = PairGrams::from_factors(&a, &b).map_err(|e| ModelError::Adapter {
                file: file.clone(),
                message: format!("`{pre}`: {e}"),
            })?;
            let rf = balance(&grams, gauge, DEFAULT_RANK_TOL);
            let (a2, b2) = rf.transform.apply(&a, &b);
            let prod = &b * &a;
            let change = (&b2 * &a2 - &prod).norm() / prod.norm().max(1e-300);
            rows.push(BalanceRow {
                module: pre.to_string(),
                rank: r,
                active_rank: rf.active_rank,
                imbalance_before: imbalance(&a, &b),
                imbalance_after: imbalance(&a2, &b2),
                product_rel_change: change,
            });
            let row_major = |m: &DMatrix<f64>| {
                m.transpose()
                    .iter()
                    .map(|&v| v as f32)
                    .collect::<Vec<f32>>()
            };
            out.push((name.clone(), shape.clone(), row_major(&a2)));
            out.push((bname, bs.clone(), row_major(&b2)));
        } else if name.ends_with(".lora_B.weight") {
            let aname = name.replace(".lora_B.weight", ".lora_A.weight");
            if !w.contains(&aname) {
                return Err(ModelError::MissingTensor {
                    file: file.clone(),
                    tensor: aname,
                });
            }
        } else {
            out.push((name.clone(), shape.clone(), data.clone()));
        }
    }
    if rows.is_empty() {
        return Err(ModelError::Adapter {
            file,
            message: "no lora_A/lora_B pairs to balance".into(),
        });
    }
    let wpath = output.join(ADAPTER_WEIGHTS);
    balora_formats::write_safetensors(&wpath, &out, balora_formats::PT_FORMAT)
        .map_err(|e| ModelError::format(&wpath, e))?;
    let cfg = input.join(ADAPTER_CONFIG);
    let text = std::fs::read(&cfg).map_err(|e| ModelError::io(&cfg, e))?;
    balora_formats::atomic::write_atomic(&output.join(ADAPTER_CONFIG), &text)?;
    Ok(rows)
}
