//! The checks, generic over burn's `AutodiffBackend`: one code path for every backend.
//!
//! Each returns `Ok(detail)` (how close it came: the worst error as a fraction of its bound)
//! or `Err(why)`. Bounds are derived from the backend's [`Precision`]; the reasoning is stated
//! next to each. One file per check (or family of checks, e.g. one per registered optimizer),
//! host ↔ device helpers and the tolerance comparisons in `support.rs`.

mod adapter_fwd_bwd;
mod merge_unmerge;
mod optimizer;
mod plugins;
mod projection;
mod save_load;
mod support;
mod train_20_steps;

pub use optimizer::optimizer_reference;
pub use support::{dev, host};

use crate::{catch, BackendKind, Precision};
use adapter_fwd_bwd::adapter_fwd_bwd;
use balora_manifold::manifold_entries;
use balora_optim::{optimizer_entries, RegistryBackend};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use merge_unmerge::merge_unmerge;
use optimizer::optimizer_step;
use plugins::{manifold_contract, optimizer_consistency};
use projection::projection;
use save_load::save_load;
use train_20_steps::train_20_steps;

/// What every check gets: the device, the floating-point model, the backend.
pub struct Ctx<B: AutodiffBackend> {
    /// Device to run on.
    pub device: B::Device,
    /// Floating-point model for tolerances.
    pub precision: Precision,
    /// Which backend this is.
    pub kind: BackendKind,
}

/// A check: `Ok(detail)` passes, `Err(why)` fails.
pub type CheckFn<B> = Box<dyn Fn(&Ctx<B>) -> Result<String, String>>;

/// The matrix rows, in order (one row per registered optimizer and per registered manifold:
/// every linked plugin is checked on every backend).
pub fn names() -> Vec<String> {
    let mut v = vec!["adapter_fwd_bwd".to_string()];
    v.extend(optimizer_entries().map(|e| format!("optimizer:{}", e.name)));
    v.extend(manifold_entries().map(|e| format!("manifold:{}", e.name)));
    v.extend(
        [
            "projection:closest",
            "projection:canonical",
            "train_20_steps",
            "merge_unmerge",
            "save_load",
        ]
        .map(String::from),
    );
    v
}

/// Every check for backend `B`, named as in [`names`].
pub fn all<B: AutodiffBackend>() -> Vec<(String, CheckFn<B>)>
where
    B::InnerBackend: RegistryBackend,
{
    let mut v: Vec<(String, CheckFn<B>)> = Vec::new();
    v.push(("adapter_fwd_bwd".into(), Box::new(adapter_fwd_bwd::<B>)));
    for e in optimizer_entries() {
        let name = e.name;
        // Against the closed-form f64 update where the suite has one, else against ndarray.
        let check: CheckFn<B> = if optimizer_reference(name).is_some() {
            Box::new(move |c: &Ctx<B>| optimizer_step::<B>(c, name))
        } else {
            Box::new(move |c: &Ctx<B>| optimizer_consistency::<B>(c, name))
        };
        v.push((format!("optimizer:{name}"), check));
    }
    for e in manifold_entries() {
        let name = e.name;
        v.push((
            format!("manifold:{name}"),
            Box::new(move |c: &Ctx<B>| manifold_contract::<B>(c, name)),
        ));
    }
    v.push((
        "projection:closest".into(),
        Box::new(|c: &Ctx<B>| projection::<B>(c, "closest")),
    ));
    v.push((
        "projection:canonical".into(),
        Box::new(|c: &Ctx<B>| projection::<B>(c, "canonical")),
    ));
    v.push(("train_20_steps".into(), Box::new(train_20_steps::<B>)));
    v.push(("merge_unmerge".into(), Box::new(merge_unmerge::<B>)));
    v.push(("save_load".into(), Box::new(save_load::<B>)));
    v
}

/// Runs one tiny computation; a missing driver (no Vulkan ICD, no CUDA driver) panics inside
/// the backend, which comes back here as `Err(message)`.
pub fn probe<B: Backend>(device: &B::Device) -> Result<(), String> {
    catch(true, || {
        let t = Tensor::<B, 1>::from_data(TensorData::new(vec![1.0f32, 2.0], [2]), device);
        let v: Vec<f64> = (t.clone() + t).into_data().iter::<f64>().collect();
        if v == [2.0, 4.0] {
            Ok(())
        } else {
            Err(format!("probe computed {v:?} for [1, 2] + [1, 2]"))
        }
    })
    .and_then(|r| r)
}
