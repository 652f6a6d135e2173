//! Training on a quantized base (`model.dtype`): a model whose linear weights are held as
//! quantization blocks against the same model holding, in f32, the weights an independent
//! reference computes (ggml's quantizers re-written here in f64, or the file's own blocks
//! dequantised by the f32 loader). The two compute the same function with the same weights, so
//! logits, adapter gradients and a few training steps agree up to f32 summation order:
//! stated tolerances below, each well under the quantization's own effect on the logits (which
//! the tests also check is visible, so the quantized path cannot be silently skipped).

use balora_adapter::{BaseDtype, LoraConfig, ModuleSelector, QuantKind};
use balora_models::export::llama_hf_tensors;
use balora_models::load::{load_causal_lm_as, load_llama_gguf};
use balora_models::weights::{to_vec, MemWeights, Quantizing};
use balora_models::{attach, AdapterHost, CausalLm, LlamaConfig, LlamaForCausalLm};
use burn::backend::{Autodiff, Flex, NdArray};
use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{activation::log_softmax, Int, Tensor, TensorData};
use half::f16;

type Ad = Autodiff<Flex>;

/// A random tiny Llama (d 32, ff 64: whole 32-value blocks) as Hugging Face tensors.
fn tiny() -> (LlamaConfig, MemWeights) {
    let cfg = LlamaConfig::tiny(40);
    let dev = Default::default();
    Flex::seed(&dev, 11);
    let m = LlamaForCausalLm::<Flex>::random(&cfg, &dev);
    let mut w = MemWeights::new("tiny");
    for (n, s, d) in llama_hf_tensors(&m) {
        w.insert(n, s, d);
    }
    (cfg, w)
}

/// ggml's `quantize_row_q8_0_ref` / `quantize_row_q4_0_ref` and dequantisation, in f64.
fn roundtrip(k: QuantKind, x: &[f32]) -> Vec<f32> {
    let mut out = Vec::new();
    for b in x.chunks(32) {
        let b: Vec<f64> = b.iter().map(|&v| v as f64).collect();
        let (d, q8) = match k {
            QuantKind::Q8_0 => (b.iter().fold(0f64, |m, v| m.max(v.abs())) / 127.0, true),
            _ => (
                b.iter()
                    .fold(0f64, |m, &v| if v.abs() > m.abs() { v } else { m })
                    / -8.0,
                false,
            ),
        };
        let d16 = f16::from_f64(d).to_f64();
        for v in &b {
            let q = match (d == 0.0, q8) {
                (true, _) => 0.0,
                (false, true) => (v / d).round(),
                (false, false) => (v / d + 8.5).trunc().min(15.0) - 8.0,
            };
            out.push((q * d16) as f32);
        }
    }
    out
}

/// The source with every linear weight replaced by its reference round trip.
fn reference(w: &MemWeights, k: QuantKind) -> MemWeights {
    let mut r = w.clone();
    for (name, (_, data)) in r.tensors.iter_mut() {
        if name.ends_with("_proj.weight") {
            *data = roundtrip(k, data);
        }
    }
    r
}

fn ids<B: Backend>(dev: &B::Device) -> Tensor<B, 2, Int> {
    let v: Vec<i64> = (0..2 * 12).map(|i| (i * 7 + 3) % 40).collect();
    Tensor::from_data(TensorData::new(v, [2, 12]), dev)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .fold(0.0, f64::max)
}

#[test]
fn quantized_base_logits_equal_the_f64_reference_weights_in_f32() {
    let (cfg, w) = tiny();
    let dev = Default::default();
    let f32_model = LlamaForCausalLm::<Flex>::load(&cfg, &w, &dev).unwrap();
    let plain = to_vec(f32_model.forward_logits(ids(&dev), None));
    for (dtype, kind) in [
        (BaseDtype::Q8_0, QuantKind::Q8_0),
        (BaseDtype::Q4_0, QuantKind::Q4_0),
    ] {
        let q =
            LlamaForCausalLm::<Flex>::load(&cfg, &Quantizing::new(&w, dtype, None), &dev).unwrap();
        assert!(q
            .linears()
            .iter()
            .all(|(_, l)| l.quant.as_ref().is_some_and(|m| m.kind() == kind)));
        let r = LlamaForCausalLm::<Flex>::load(&cfg, &reference(&w, kind), &dev).unwrap();
        let (lq, lr) = (
            to_vec(q.forward_logits(ids(&dev), None)),
            to_vec(r.forward_logits(ids(&dev), None)),
        );
        let (d, quant_effect) = (max_abs_diff(&lq, &lr), max_abs_diff(&lq, &plain));
        eprintln!(
            "{kind:?}: max |Δ logits| vs reference {d:.2e}, vs unquantized f32 {quant_effect:.2e}"
        );
        // Summation order only (logits are O(1)): 1e-5; the quantization itself moves them more.
        assert!(d <= 1e-5, "{kind:?}: {d}");
        assert!(
            quant_effect > 100.0 * d.max(1e-7),
            "{kind:?}: {quant_effect}"
        );
    }
}

/// Every adapter with the same A (seeded init) and a non-zero B (so dA is not zero), on `Ad`.
fn with_adapters(m: LlamaForCausalLm<Ad>) -> LlamaForCausalLm<Ad> {
    let dev = Default::default();
    let spec = LoraConfig::new(
        4,
        8.0,
        ModuleSelector::List(vec!["q_proj".into(), "v_proj".into(), "down_proj".into()]),
    )
    .unwrap();
    Ad::seed(&dev, 5);
    let (mut m, _) = attach(m, &spec, &dev).unwrap();
    for (i, (_, l)) in m.linears_mut().into_iter().enumerate() {
        if let Some(ad) = l.adapter.as_mut() {
            let [o, r] = ad.lora_b.dims();
            let v: Vec<f32> = (0..o * r)
                .map(|j| (((i * 31 + j * 17) % 13) as f32 - 6.0) * 0.01)
                .collect();
            ad.lora_b = Param::from_tensor(Tensor::from_data(TensorData::new(v, [o, r]), &dev));
        }
    }
    m
}

/// Mean next-token cross-entropy.
fn loss(m: &LlamaForCausalLm<Ad>) -> Tensor<Ad, 1> {
    let dev = Default::default();
    let x = ids::<Ad>(&dev);
    let logits = m.forward_logits(x.clone(), None).slice([0..2, 0..11]);
    let targets = x.slice([0..2, 1..12]).reshape([2, 11, 1]);
    -log_softmax(logits, 2).gather(2, targets).mean()
}

/// `(A gradients, B gradients)` of every adapter, flattened in module order.
fn adapter_grads(m: &LlamaForCausalLm<Ad>) -> (f32, Vec<f32>, Vec<f32>) {
    let l = loss(m);
    let v = to_vec(l.clone())[0];
    let g = l.backward();
    let (mut ga, mut gb) = (Vec::new(), Vec::new());
    for (_, lin) in m.linears() {
        if let Some(ad) = &lin.adapter {
            ga.extend(to_vec(ad.lora_a.val().grad(&g).unwrap()));
            gb.extend(to_vec(ad.lora_b.val().grad(&g).unwrap()));
        }
    }
    (v, ga, gb)
}

fn models(dtype: BaseDtype, kind: QuantKind) -> (LlamaForCausalLm<Ad>, LlamaForCausalLm<Ad>) {
    let (cfg, w) = tiny();
    let dev = Default::default();
    let q = LlamaForCausalLm::<Ad>::load(&cfg, &Quantizing::new(&w, dtype, None), &dev).unwrap();
    let r = LlamaForCausalLm::<Ad>::load(&cfg, &reference(&w, kind), &dev).unwrap();
    (with_adapters(q), with_adapters(r))
}

#[test]
fn adapter_gradients_on_a_quantized_base_equal_the_dequantised_f32_base() {
    let (q, r) = models(BaseDtype::Q8_0, QuantKind::Q8_0);
    let ((lq, aq, bq), (lr, ar, br)) = (adapter_grads(&q), adapter_grads(&r));
    let scale = |v: &[f32]| v.iter().fold(0f64, |m, x| m.max(x.abs() as f64));
    let (da, db) = (max_abs_diff(&aq, &ar), max_abs_diff(&bq, &br));
    eprintln!(
        "loss {lq} vs {lr}; max |Δ dA| {da:.2e} of max |dA| {:.2e}; max |Δ dB| {db:.2e} of {:.2e}",
        scale(&ar),
        scale(&br)
    );
    assert!((lq - lr).abs() <= 1e-5);
    // Relative to the largest gradient entry: summation order through 2 layers' backward.
    assert!(scale(&ar) > 0.0 && da <= 1e-4 * scale(&ar), "dA: {da}");
    assert!(scale(&br) > 0.0 && db <= 1e-4 * scale(&br), "dB: {db}");
}

/// Plain SGD on the adapters.
fn sgd_step(m: &mut LlamaForCausalLm<Ad>, lr: f64) -> f32 {
    let l = loss(m);
    let v = to_vec(l.clone())[0];
    let g = l.backward();
    for (_, lin) in m.linears_mut() {
        if let Some(ad) = lin.adapter.as_mut() {
            let (a, b) = (ad.lora_a.val(), ad.lora_b.val());
            let na = a.clone().inner() - a.grad(&g).unwrap().mul_scalar(lr);
            let nb = b.clone().inner() - b.grad(&g).unwrap().mul_scalar(lr);
            ad.lora_a = Param::from_tensor(Tensor::from_inner(na).require_grad());
            ad.lora_b = Param::from_tensor(Tensor::from_inner(nb).require_grad());
        }
    }
    v
}

#[test]
fn training_steps_on_a_quantized_base_follow_the_dequantised_f32_base() {
    let (mut q, mut r) = models(BaseDtype::Q4_0, QuantKind::Q4_0);
    let (mut lq, mut lr) = (Vec::new(), Vec::new());
    for _ in 0..8 {
        lq.push(sgd_step(&mut q, 0.5));
        lr.push(sgd_step(&mut r, 0.5));
    }
    eprintln!("losses quantized {lq:?}\nlosses reference {lr:?}");
    for (a, b) in lq.iter().zip(&lr) {
        assert!((a - b).abs() <= 1e-4, "{lq:?} vs {lr:?}");
    }
    assert!(lq[7] < lq[0] - 0.05, "the loss goes down: {lq:?}");
}

#[test]
fn smollm2_keeps_its_q4_1_blocks_and_computes_the_f32_loaders_logits() {
    let Some(path) = balora_assets::for_test("smollm2") else {
        return;
    };
    let dev = Default::default();
    let f = load_llama_gguf::<Flex>(&path, &dev).unwrap();
    let q = load_causal_lm_as::<Flex>(&path, BaseDtype::File, &dev).unwrap();
    assert!(q.model.linears().iter().all(|(_, l)| l
        .quant
        .as_ref()
        .is_some_and(|m| m.kind() == QuantKind::Q4_1)));
    let enc = f
        .tokenizer
        .encode("Call me Ishmael. Some years ago", false)
        .unwrap();
    let v: Vec<i64> = enc.get_ids().iter().map(|&i| i as i64).collect();
    let n = v.len();
    let x = Tensor::<Flex, 2, Int>::from_data(TensorData::new(v, [1, n]), &dev);
    let (lf, lq) = (
        to_vec(f.model.forward_logits(x.clone(), None)),
        to_vec(q.model.forward_logits(x, None)),
    );
    let d = max_abs_diff(&lf, &lq);
    let scale = lf.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
    eprintln!("SmolLM2 file blocks vs f32: max |Δ logits| {d:.2e} (max |logit| {scale:.1})");
    // Same weights, 30 layers of f32 sums in another order: 1e-3 absolute on logits of ~20.
    assert!(d <= 1e-3, "{d}");
}

#[test]
fn a_dtype_the_backend_or_the_file_cannot_hold_is_an_error_naming_the_field() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let gguf = dir.join("../balora-fuzz/corpus/gguf/tiny_llama.gguf");
    let hf = dir.join("tests/fixtures/peft_real/llama/base");
    let msg = |r: Result<_, balora_models::ModelError>| match r {
        Ok(_) => panic!("loaded"),
        Err(e) => e.to_string(),
    };
    let e =
        msg(load_causal_lm_as::<NdArray>(&gguf, BaseDtype::Q8_0, &Default::default()).map(|_| ()));
    assert!(
        e.contains("model.dtype") && e.contains("\"q8_0\"") && e.contains("flex"),
        "{e}"
    );
    let e = msg(load_causal_lm_as::<Flex>(&hf, BaseDtype::File, &Default::default()).map(|_| ()));
    assert!(
        e.contains("model.dtype") && e.contains("\"file\"") && e.contains("Hugging Face"),
        "{e}"
    );
    // The tiny GGUF's rows have 8 values: no whole 32-value blocks.
    let e = msg(load_causal_lm_as::<Flex>(&gguf, BaseDtype::Q8_0, &Default::default()).map(|_| ()));
    assert!(e.contains("model.dtype") && e.contains("q_proj"), "{e}");
}

#[test]
fn the_summary_counts_held_blocks_and_modules_to_save_needs_an_f32_base() {
    let (cfg, w) = tiny();
    let dev = Default::default();
    let f = LlamaForCausalLm::<Flex>::load(&cfg, &w, &dev).unwrap();
    let q = LlamaForCausalLm::<Flex>::load(&cfg, &Quantizing::new(&w, BaseDtype::Q8_0, None), &dev)
        .unwrap();
    let spec = LoraConfig::new(4, 8.0, ModuleSelector::List(vec!["q_proj".into()])).unwrap();
    let (_, sf) = attach(f, &spec, &dev).unwrap();
    let (_, sq) = attach(q.clone(), &spec, &dev).unwrap();
    assert_eq!((sq.total, sq.trainable), (sf.total, sf.trainable));
    let mut save = spec.clone();
    save.modules_to_save = vec!["o_proj".into()];
    let e = attach(q, &save, &dev).unwrap_err().to_string();
    assert!(e.contains("model.dtype") && e.contains("o_proj"), "{e}");
}
