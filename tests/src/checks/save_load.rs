//! `save_load`: a module record saved on one backend and loaded on another.

use super::support::{adapter_of, dev, host, host1, lora_layer, within, I};
use super::Ctx;
use crate::reference::{self as r, Gen, M};
use balora_adapter::LoraLinear;
use burn::backend::ndarray::NdArrayDevice;
use burn::backend::NdArray;
use burn::module::Module;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use burn::tensor::backend::{AutodiffBackend, Backend};

fn layer_params<B: Backend>(layer: &LoraLinear<B>) -> Result<Vec<(String, M)>, String> {
    let ad = adapter_of(layer)?;
    let mut v = vec![
        ("base.weight".to_string(), host(layer.base.weight.val())),
        ("lora_a".to_string(), host(ad.lora_a.val())),
        ("lora_b".to_string(), host(ad.lora_b.val())),
    ];
    if let Some(bias) = &layer.base.bias {
        let vals = host1(bias.val());
        v.push(("base.bias".into(), M::from_row_slice(1, vals.len(), &vals)));
    }
    Ok(v)
}

fn skeleton<B: Backend>(din: usize, dout: usize, rank: usize, device: &B::Device) -> LoraLinear<B> {
    // Different random values than the saved model, so a load that does nothing is caught.
    let cfg = balora_adapter::LoraConfig {
        r: rank,
        alpha: 2.0 * rank as f64,
        ..Default::default()
    };
    let layer = cfg.resolve("fc").expect("a valid rank");
    LoraLinear::<B>::new(din, dout, true, device).with_adapter(&layer, device)
}

/// A module record saved on this backend (burn's named MessagePack recorder, full precision) and
/// loaded on ndarray, and saved on ndarray and loaded here: parameters bit-identical, outputs of
/// the loaded model on the same backend bit-identical, across backends within the forward's
/// matmul bound.
pub(super) fn save_load<B: AutodiffBackend>(ctx: &Ctx<B>) -> Result<String, String> {
    let d = &ctx.device;
    let nd = NdArrayDevice::default();
    let mut gen = Gen::new(61);
    let (n, din, dout, rank, s) = (3, 6, 5, 2, 2.0);
    let w = gen.normal(din, dout, 0.5);
    let bias: Vec<f64> = gen.normal(1, dout, 0.5).iter().copied().collect();
    let a = gen.normal(rank, din, 1.0);
    let b = gen.normal(dout, rank, 1.0);
    let x = gen.normal(n, din, 1.0);
    let (y_ref, y_scale) = r::lora_forward(&x, &w, Some(&bias), &a, &b, s);
    let bound = ctx.precision.matmul_bound(din + rank + 3, 2);
    let dir = std::env::temp_dir().join(format!(
        "balora-conformance-{}-{}",
        std::process::id(),
        ctx.kind.name()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
    let result = (|| -> Result<String, String> {
        // Here → ndarray.
        let here = lora_layer::<I<B>>(&w, Some(&bias), &a, &b, s, d);
        let path = dir.join("from-here");
        here.clone()
            .save_file(path.clone(), &recorder)
            .map_err(|e| format!("saving on {}: {e}", ctx.kind.name()))?;
        let on_nd = skeleton::<NdArray>(din, dout, rank, &nd)
            .load_file(path, &recorder, &nd)
            .map_err(|e| format!("loading on ndarray: {e}"))?;
        if layer_params(&on_nd)? != layer_params(&here)? {
            return Err(format!(
                "saved on {}, loaded on ndarray: parameters differ",
                ctx.kind.name()
            ));
        }
        let y_here = host(here.forward(dev::<I<B>>(&x, d)));
        let y_nd = host(on_nd.forward(dev::<NdArray>(&x, &nd)));
        let mut worst = within("loaded on ndarray: forward", &y_nd, &y_ref, &y_scale, bound)?;
        worst = worst.max(within(
            "saved model: forward",
            &y_here,
            &y_ref,
            &y_scale,
            bound,
        )?);
        // ndarray → here.
        let path = dir.join("from-ndarray");
        on_nd
            .save_file(path.clone(), &recorder)
            .map_err(|e| format!("saving on ndarray: {e}"))?;
        let back = skeleton::<I<B>>(din, dout, rank, d)
            .load_file(path, &recorder, d)
            .map_err(|e| format!("loading on {}: {e}", ctx.kind.name()))?;
        if layer_params(&back)? != layer_params(&here)? {
            return Err(format!(
                "saved on ndarray, loaded on {}: parameters differ",
                ctx.kind.name()
            ));
        }
        if host(back.forward(dev::<I<B>>(&x, d))) != y_here {
            return Err("the reloaded model's outputs are not bit-identical to the original's on the same backend".into());
        }
        Ok(format!(
            "parameters and same-backend outputs bit-identical; cross-backend outputs within {worst:.3} of the bound"
        ))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}
