//! The balora side of `cargo xtask peft-roundtrip`: writes balora adapters (random factors,
//! plain and balanced) on the real-PEFT fixture base models, with balora's outputs, for
//! `tools/reference/peft_roundtrip.py` to load with PEFT and compare.
//!
//! ```sh
//! cargo run -p balora-models --example peft_roundtrip -- crates/balora-models/tests/fixtures/peft_real target/peft-roundtrip
//! ```
//!
//! For each family (llama, qwen2, bert) writes `<out>/<family>/{lora,balanced}/` (PEFT adapter
//! folders: `lora` with random unbalanced factors, `balanced` the same adapter after
//! `balora balance`'s re-factoring) and `<out>/<family>/{lora,balanced}.outputs.json`
//! (`input_ids` and balora's outputs: `logits` for the LMs; `hidden` and `cls_logits` for BERT).

use balora_manifold::balanced::Gauge;
use balora_models::balance::balance_adapter;
use balora_models::load::{load_bert_hf_dir, load_causal_lm};
use balora_models::peft::{load_adapter, save_adapter, AdapterMeta};
use balora_models::weights::to_vec;
use balora_models::{
    attach, AdapterHost, BertForSequenceClassification, CausalLm, LoraConfig, ModuleSelector,
    Patterns, Pooling, SequenceClassifier,
};
use burn::backend::NdArray;
use burn::module::Param;
use burn::tensor::{Int, Tensor, TensorData};
use serde_json::json;
use std::path::{Path, PathBuf};

type B = NdArray;
type Res<T> = Result<T, Box<dyn std::error::Error>>;

const IDS: [[i64; 8]; 2] = [[2, 30, 11, 77, 5, 64, 19, 8], [4, 90, 13, 55, 70, 3, 41, 1]];

fn ids() -> Tensor<B, 2, Int> {
    let flat: Vec<i64> = IDS.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [2, 8]), &Default::default())
}

/// Replaces every adapter's factors with deterministic pseudo-random values (B ≠ 0, unbalanced).
fn randomize<M: AdapterHost<B>>(m: M, seed: u64) -> M {
    let mut state = seed;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as f64 / (1u64 << 31) as f64 * 2.0 - 1.0) as f32
    };
    let dev = Default::default();
    m.map_linears(&mut |_, mut l| {
        if let Some(a) = l.adapter.as_mut() {
            let [r, din] = a.lora_a.dims();
            let [dout, _] = a.lora_b.dims();
            let av: Vec<f32> = (0..r * din).map(|_| 0.5 * next()).collect();
            let bv: Vec<f32> = (0..dout * r).map(|_| 0.1 * next()).collect();
            a.lora_a = Param::from_tensor(Tensor::from_data(TensorData::new(av, [r, din]), &dev));
            a.lora_b = Param::from_tensor(Tensor::from_data(TensorData::new(bv, [dout, r]), &dev));
        }
        l
    })
}

fn write_json(path: &Path, v: serde_json::Value) -> Res<()> {
    std::fs::write(path, serde_json::to_string(&v)?)?;
    Ok(())
}

fn lm(fixtures: &Path, out: &Path, family: &str, spec: &LoraConfig) -> Res<()> {
    let dev = Default::default();
    let base_dir = fixtures.join(family).join("base");
    let load = || load_causal_lm::<B>(&base_dir, &dev).map(|l| l.model);
    let (m, summary) = attach(load()?, spec, &dev)?;
    let m = randomize(m, 7);
    let dir = out.join(family);
    let meta = AdapterMeta {
        task_type: Some("CAUSAL_LM".into()),
        base_model_name_or_path: Some(base_dir.display().to_string()),
    };
    save_adapter(&m, spec, &meta, &dir.join("lora"))?;
    balance_adapter(&dir.join("lora"), &dir.join("balanced"), Gauge::Closest)?;
    for variant in ["lora", "balanced"] {
        let (m, _) = load_adapter(load()?, &dir.join(variant), &dev)?;
        let logits = to_vec(m.forward_logits(ids(), None));
        write_json(
            &dir.join(format!("{variant}.outputs.json")),
            json!({"input_ids": IDS, "logits": logits}),
        )?;
    }
    println!("{family}: {summary}");
    Ok(())
}

fn bert(fixtures: &Path, out: &Path, spec: &LoraConfig) -> Res<()> {
    let dev = Default::default();
    let base_dir = fixtures.join("bert").join("base");
    let load = || -> Res<BertForSequenceClassification<B>> {
        let (bert, _, _) = load_bert_hf_dir::<B>(&base_dir, &dev)?;
        Ok(BertForSequenceClassification::new(
            bert,
            3,
            Pooling::Cls,
            &dev,
        ))
    };
    let (m, summary) = attach(load()?, spec, &dev)?;
    let m = randomize(m, 11);
    let dir = out.join("bert");
    let meta = AdapterMeta {
        task_type: Some("SEQ_CLS".into()),
        base_model_name_or_path: Some(base_dir.display().to_string()),
    };
    save_adapter(&m, spec, &meta, &dir.join("lora"))?;
    balance_adapter(&dir.join("lora"), &dir.join("balanced"), Gauge::Closest)?;
    for variant in ["lora", "balanced"] {
        let (m, _) = load_adapter(load()?, &dir.join(variant), &dev)?;
        let hidden = to_vec(m.bert.forward(ids(), None));
        let cls = to_vec(m.forward_classes(ids(), None));
        write_json(
            &dir.join(format!("{variant}.outputs.json")),
            json!({"input_ids": IDS, "hidden": hidden, "cls_logits": cls}),
        )?;
    }
    println!("bert: {summary}");
    Ok(())
}

fn main() -> Res<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [fixtures, out] = args.as_slice() else {
        return Err("usage: peft_roundtrip <fixtures/peft_real> <out dir>".into());
    };
    let list = |v: &[&str]| ModuleSelector::List(v.iter().map(|s| s.to_string()).collect());
    let mut llama = LoraConfig::new(4, 8.0, ModuleSelector::Regex("all-linear".into()))?;
    llama.rank_pattern = Patterns::ordered(vec![("down_proj".into(), 2)]);
    llama.alpha_pattern = Patterns::ordered(vec![("o_proj".into(), 12.0)]);
    lm(fixtures, out, "llama", &llama)?;
    let mut qwen2 = LoraConfig::new(8, 4.0, list(&["q_proj", "v_proj", "up_proj"]))?;
    qwen2.rslora = true;
    qwen2.layers_to_transform = vec![1];
    lm(fixtures, out, "qwen2", &qwen2)?;
    let mut cls = LoraConfig::new(4, 16.0, list(&["query", "value"]))?;
    cls.modules_to_save = vec!["classifier".into()];
    bert(fixtures, out, &cls)?;
    Ok(())
}
