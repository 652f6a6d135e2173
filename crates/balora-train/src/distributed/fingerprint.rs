//! The periodic cross-rank check that every rank holds the same adapters and optimizer state,
//! and what happens when one does not ([`Mismatch`]): an error (CPU backends, where ranks are
//! bit-identical by construction, so a difference is a bug) or a re-broadcast of rank 0's state
//! with a warning (GPU backends, whose kernels need not be bit-reproducible across devices).

use crate::checkpoint::{load_trainable_params, trainable_params};
use crate::trainer::Device;
use crate::{TrainError, TrainStepper};
use balora_collective::Collective;
use burn::module::Module;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::TensorData;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use sha2::{Digest, Sha256};
use std::path::Path;

/// Test hook: `BALORA_FUZZ_PERTURB=<rank>:<step>` changes that rank's adapters and optimizer state
/// just before the fingerprint check after `step` (a check step: a multiple of
/// [`super::FINGERPRINT_EVERY`] or the last), as a rank that drifted would.
pub const PERTURB_ENV: &str = "BALORA_FUZZ_PERTURB";

/// Test hook: `BALORA_FUZZ_ON_MISMATCH=rebroadcast` (or `error`) overrides
/// [`crate::RunOptions::on_mismatch`], e.g. to exercise the GPU rule on CPU ranks.
pub const ON_MISMATCH_ENV: &str = "BALORA_FUZZ_ON_MISMATCH";

/// What a data-parallel run does when the ranks' fingerprints differ.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mismatch {
    /// Stop with an error naming the ranks that differ (CPU backends: ranks are bit-identical by
    /// construction).
    #[default]
    Error,
    /// Warn, then give every rank rank 0's adapters and optimizer state (GPU backends: kernels
    /// need not be bit-reproducible from one device to another).
    Rebroadcast,
}

/// SHA-256 of the trainable parameters and the optimizer state (names, shapes and bytes).
pub fn fingerprint<B: AutodiffBackend, M: Module<B>>(
    model: &M,
    stepper: &mut TrainStepper<B>,
) -> [u8; 32] {
    let mut h = Sha256::new();
    let state = stepper.driver_mut().inner.state();
    for (name, d) in trainable_params(model).iter().chain(state.iter()) {
        h.update(name.as_bytes());
        h.update(format!("{:?}", d.shape).as_bytes());
        h.update(d.as_bytes());
    }
    h.finalize().into()
}

/// Compares every rank's [`fingerprint`] after `step`. On a difference, per `policy` (or the
/// [`ON_MISMATCH_ENV`] test hook): an error naming the ranks that differ from rank 0, or a
/// warning and rank 0's adapters and optimizer state on every rank (checked again afterwards).
pub(crate) fn check_fingerprint<B: AutodiffBackend, M: Module<B>>(
    c: &dyn Collective,
    model: &mut M,
    stepper: &mut TrainStepper<B>,
    step: u64,
    policy: Mismatch,
    device: &Device<B>,
) -> Result<(), TrainError> {
    perturb_hook(c.rank(), step, model, stepper, device)?;
    let differ = differing(c, model, stepper)?;
    if differ.is_empty() {
        return Ok(());
    }
    let what = format!(
        "after step {step} the adapters or optimizer state of rank(s) {differ:?} differ from \
         rank 0's"
    );
    if policy_override().unwrap_or(policy) == Mismatch::Error {
        return Err(TrainError::Data(format!(
            "distributed: {what} (the ranks no longer train the same model)"
        )));
    }
    if c.rank() == 0 {
        tracing::warn!("{what}: re-sending rank 0's adapters and optimizer state to every rank");
    }
    rebroadcast(c, model, stepper, device)?;
    let still = differing(c, model, stepper)?;
    if !still.is_empty() {
        return Err(TrainError::Data(format!(
            "distributed: after re-sending rank 0's state, rank(s) {still:?} still differ"
        )));
    }
    Ok(())
}

/// The ranks whose fingerprint differs from rank 0's.
fn differing<B: AutodiffBackend, M: Module<B>>(
    c: &dyn Collective,
    model: &M,
    stepper: &mut TrainStepper<B>,
) -> Result<Vec<usize>, TrainError> {
    let all = c.all_gather_hash(fingerprint(model, stepper))?;
    Ok((1..all.len()).filter(|&r| all[r] != all[0]).collect())
}

fn policy_override() -> Option<Mismatch> {
    match std::env::var(ON_MISMATCH_ENV).ok()?.as_str() {
        "rebroadcast" => Some(Mismatch::Rebroadcast),
        "error" => Some(Mismatch::Error),
        _ => None,
    }
}

/// Replaces `model`'s trainable parameters and the optimizer state by rank 0's (collective).
fn rebroadcast<B: AutodiffBackend, M: Module<B>>(
    c: &dyn Collective,
    model: &mut M,
    stepper: &mut TrainStepper<B>,
    device: &Device<B>,
) -> Result<(), TrainError> {
    let mut bytes = if c.rank() == 0 {
        encode(
            &trainable_params(model),
            &stepper.driver_mut().inner.state(),
        )?
    } else {
        Vec::new()
    };
    c.broadcast_bytes(0, &mut bytes)?;
    if c.rank() == 0 {
        return Ok(());
    }
    let (params, optimizer) = decode(&bytes)?;
    *model = load_trainable_params(model.clone(), &params, Path::new("<rank 0's state>"))?;
    stepper.driver_mut().inner.load_state(optimizer, device)?;
    Ok(())
}

const PARAM: &str = "param/";
const OPTIM: &str = "optim/";

fn to_f32_bytes(d: &TensorData) -> Vec<u8> {
    d.clone()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap_or_default()
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect()
}

/// Parameters and optimizer state as one f32 safetensors buffer (names prefixed by kind).
fn encode(
    params: &[(String, TensorData)],
    optimizer: &[(String, TensorData)],
) -> Result<Vec<u8>, TrainError> {
    let named: Vec<(String, Vec<usize>, Vec<u8>)> = params
        .iter()
        .map(|(k, d)| (format!("{PARAM}{k}"), d))
        .chain(optimizer.iter().map(|(k, d)| (format!("{OPTIM}{k}"), d)))
        .map(|(k, d)| (k, d.shape.to_vec(), to_f32_bytes(d)))
        .collect();
    let views = named
        .iter()
        .map(|(k, shape, b)| {
            TensorView::new(Dtype::F32, shape.clone(), b)
                .map(|v| (k.clone(), v))
                .map_err(|e| TrainError::Data(format!("distributed: tensor `{k}`: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    safetensors::serialize(views, None)
        .map_err(|e| TrainError::Data(format!("distributed: encoding rank 0's state: {e}")))
}

type Named = Vec<(String, TensorData)>;

/// The inverse of [`encode`]: (parameters, optimizer state), each sorted by name.
fn decode(bytes: &[u8]) -> Result<(Named, Named), TrainError> {
    let bad = |e: safetensors::SafeTensorError| {
        TrainError::Data(format!("distributed: decoding rank 0's state: {e}"))
    };
    let st = SafeTensors::deserialize(bytes).map_err(bad)?;
    let (mut params, mut optimizer) = (Vec::new(), Vec::new());
    for (name, view) in st.tensors() {
        let v: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let d = TensorData::new(v, view.shape().to_vec());
        if let Some(k) = name.strip_prefix(PARAM) {
            params.push((k.to_string(), d));
        } else if let Some(k) = name.strip_prefix(OPTIM) {
            optimizer.push((k.to_string(), d));
        }
    }
    params.sort_by(|a, b| a.0.cmp(&b.0));
    optimizer.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((params, optimizer))
}

/// [`PERTURB_ENV`]: adds 1e-3 to every trainable parameter and optimizer state element of the
/// named rank at the named step.
fn perturb_hook<B: AutodiffBackend, M: Module<B>>(
    rank: usize,
    step: u64,
    model: &mut M,
    stepper: &mut TrainStepper<B>,
    device: &Device<B>,
) -> Result<(), TrainError> {
    if std::env::var(PERTURB_ENV).ok() != Some(format!("{rank}:{step}")) {
        return Ok(());
    }
    eprintln!(
        "{PERTURB_ENV}: rank {rank} perturbs its adapters and optimizer state at step {step}"
    );
    let bump = |v: &[(String, TensorData)]| -> Named {
        v.iter()
            .map(|(k, d)| {
                let x: Vec<f32> = d
                    .clone()
                    .convert::<f32>()
                    .to_vec::<f32>()
                    .unwrap_or_default()
                    .iter()
                    .map(|x| x + 1e-3)
                    .collect();
                (k.clone(), TensorData::new(x, d.shape.clone()))
            })
            .collect()
    };
    let params = bump(&trainable_params(model));
    let state = bump(&stepper.driver_mut().inner.state());
    *model = load_trainable_params(model.clone(), &params, Path::new("<perturbed>"))?;
    stepper.driver_mut().inner.load_state(state, device)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_decode_keeps_names_shapes_and_bits() {
        let p = vec![(
            "m.lora_a".to_string(),
            TensorData::new(vec![1.5f32, -0.0, f32::MIN_POSITIVE, 3.0], [2, 2]),
        )];
        let o = vec![
            ("b.moment".to_string(), TensorData::new(vec![7.0f32], [1])),
            (
                "a.moment".to_string(),
                TensorData::new(vec![-1e-30f32, 2.0], [2]),
            ),
        ];
        let (p2, o2) = decode(&encode(&p, &o).unwrap()).unwrap();
        let bits = |v: &Named| -> Vec<(String, Vec<usize>, Vec<u32>)> {
            v.iter()
                .map(|(k, d)| {
                    let x = d.to_vec::<f32>().unwrap();
                    (
                        k.clone(),
                        d.shape.to_vec(),
                        x.iter().map(|f| f.to_bits()).collect(),
                    )
                })
                .collect()
        };
        assert_eq!(bits(&p2), bits(&p));
        let mut sorted = o.clone();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(bits(&o2), bits(&sorted));
        assert!(decode(b"not safetensors").is_err());
    }
}
