//! BERT family on a tiny random encoder against a naive f64 reference written here.

mod common;
use balora_models::peft::{adapter_tensors, load_adapter, save_adapter, AdapterMeta};
use balora_models::weights::to_vec;
use balora_models::{
    attach, merge_all, unmerge_all, AdapterHost, BertConfig, BertForSequenceClassification,
    BertModel, LoraConfig, MemWeights, ModuleSelector, Pooling, SequenceClassifier,
};
use burn::backend::NdArray;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use common::*;

type B = NdArray;
const D: usize = 16;
const FF: usize = 32;
const NH: usize = 4;
const V: usize = 30;

fn weights(seed: u64) -> MemWeights {
    let mut r = Lcg(seed);
    let mut w = MemWeights::new("tiny-bert.safetensors");
    w.insert(
        "embeddings.word_embeddings.weight",
        vec![V, D],
        r.vec(V * D, 1.0),
    );
    w.insert(
        "embeddings.position_embeddings.weight",
        vec![20, D],
        r.vec(20 * D, 0.5),
    );
    w.insert(
        "embeddings.token_type_embeddings.weight",
        vec![2, D],
        r.vec(2 * D, 0.5),
    );
    let ln = |w: &mut MemWeights, r: &mut Lcg, p: &str| {
        w.insert(
            format!("{p}.weight"),
            vec![D],
            r.vec(D, 0.2).into_iter().map(|x| 1.0 + x).collect(),
        );
        w.insert(format!("{p}.bias"), vec![D], r.vec(D, 0.2));
    };
    ln(&mut w, &mut r, "embeddings.LayerNorm");
    for l in 0..2 {
        let p = format!("encoder.layer.{l}");
        for (n, i, o) in [
            ("attention.self.query", D, D),
            ("attention.self.key", D, D),
            ("attention.self.value", D, D),
            ("attention.output.dense", D, D),
            ("intermediate.dense", D, FF),
            ("output.dense", FF, D),
        ] {
            w.insert(
                format!("{p}.{n}.weight"),
                vec![o, i],
                r.vec(o * i, 1.0 / (i as f32).sqrt()),
            );
            w.insert(format!("{p}.{n}.bias"), vec![o], r.vec(o, 0.2));
        }
        ln(&mut w, &mut r, &format!("{p}.attention.output.LayerNorm"));
        ln(&mut w, &mut r, &format!("{p}.output.LayerNorm"));
    }
    w
}

fn cfg() -> BertConfig {
    BertConfig::from_hf_json(&serde_json::json!({"vocab_size": V, "hidden_size": D, "num_hidden_layers": 2, "num_attention_heads": NH, "intermediate_size": FF, "max_position_embeddings": 20, "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu"}), "config.json").unwrap()
}

fn erf(x: f64) -> f64 {
    // Maclaurin series of erf (accurate to ~1e-12 for the small arguments used here).
    let t = x.abs();
    let mut sum = 0.0;
    let mut term = t;
    let mut n = 0;
    while n < 200 {
        sum += term / (2 * n + 1) as f64;
        n += 1;
        term *= -t * t / n as f64;
    }
    let v = (2.0 / std::f64::consts::PI.sqrt() * sum).clamp(-1.0, 1.0);
    if x < 0.0 {
        -v
    } else {
        v
    }
}

/// Naive f64 BERT: last hidden states of one sentence.
fn reference(w: &MemWeights, ids: &[usize]) -> Vec<Vec<f64>> {
    let g = |n: &str| -> Vec<f64> { w.tensors[n].1.iter().map(|&x| x as f64).collect() };
    let ln = |x: &[f64], p: &str| -> Vec<f64> {
        let m = x.iter().sum::<f64>() / D as f64;
        let v = x.iter().map(|a| (a - m) * (a - m)).sum::<f64>() / D as f64;
        let (gw, gb) = (g(&format!("{p}.weight")), g(&format!("{p}.bias")));
        (0..D)
            .map(|i| (x[i] - m) / (v + 1e-12).sqrt() * gw[i] + gb[i])
            .collect()
    };
    let lin = |x: &[f64], p: &str| -> Vec<f64> {
        let (wt, b) = (g(&format!("{p}.weight")), g(&format!("{p}.bias")));
        let i = x.len();
        (0..b.len())
            .map(|o| (0..i).map(|c| wt[o * i + c] * x[c]).sum::<f64>() + b[o])
            .collect()
    };
    let (we, pe, te) = (
        g("embeddings.word_embeddings.weight"),
        g("embeddings.position_embeddings.weight"),
        g("embeddings.token_type_embeddings.weight"),
    );
    let mut xs: Vec<Vec<f64>> = ids
        .iter()
        .enumerate()
        .map(|(p, &i)| {
            let e: Vec<f64> = (0..D)
                .map(|k| we[i * D + k] + pe[p * D + k] + te[k])
                .collect();
            ln(&e, "embeddings.LayerNorm")
        })
        .collect();
    let hd = D / NH;
    for l in 0..2 {
        let p = format!("encoder.layer.{l}");
        let q: Vec<_> = xs
            .iter()
            .map(|x| lin(x, &format!("{p}.attention.self.query")))
            .collect();
        let k: Vec<_> = xs
            .iter()
            .map(|x| lin(x, &format!("{p}.attention.self.key")))
            .collect();
        let v: Vec<_> = xs
            .iter()
            .map(|x| lin(x, &format!("{p}.attention.self.value")))
            .collect();
        let s = xs.len();
        let mut out = Vec::new();
        for i in 0..s {
            let mut ctx = vec![0.0; D];
            for h in 0..NH {
                let sc: Vec<f64> = (0..s)
                    .map(|j| {
                        (0..hd)
                            .map(|e| q[i][h * hd + e] * k[j][h * hd + e])
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let m = sc.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = sc.iter().map(|a| (a - m).exp()).sum();
                for j in 0..s {
                    for e in 0..hd {
                        ctx[h * hd + e] += (sc[j] - m).exp() / z * v[j][h * hd + e];
                    }
                }
            }
            let a = lin(&ctx, &format!("{p}.attention.output.dense"));
            let x1 = ln(
                &(0..D).map(|e| a[e] + xs[i][e]).collect::<Vec<_>>(),
                &format!("{p}.attention.output.LayerNorm"),
            );
            let inner: Vec<f64> = lin(&x1, &format!("{p}.intermediate.dense"))
                .iter()
                .map(|&u| 0.5 * u * (1.0 + erf(u / 2f64.sqrt())))
                .collect();
            let o = lin(&inner, &format!("{p}.output.dense"));
            out.push(ln(
                &(0..D).map(|e| o[e] + x1[e]).collect::<Vec<_>>(),
                &format!("{p}.output.LayerNorm"),
            ));
        }
        xs = out;
    }
    xs
}

fn ids(rows: &[&[usize]], s: usize) -> (Tensor<B, 2, Int>, Tensor<B, 2, Bool>) {
    let dev = Default::default();
    let mut flat = Vec::new();
    let mut mask = Vec::new();
    for r in rows {
        for j in 0..s {
            flat.push(*r.get(j).unwrap_or(&0) as i64);
            mask.push(j < r.len());
        }
    }
    (
        Tensor::from_data(TensorData::new(flat, [rows.len(), s]), &dev),
        Tensor::from_data(TensorData::new(mask, [rows.len(), s]), &dev),
    )
}

#[test]
fn hidden_states_and_pooling_match_naive_reference() {
    let w = weights(8);
    let m = BertModel::<B>::load(&cfg(), &w, &Default::default()).unwrap();
    let a: &[usize] = &[1, 5, 9, 29, 2];
    let b: &[usize] = &[1, 7, 2];
    let (x, mask) = ids(&[a, b], 5);
    let h = m.forward(x.clone(), Some(mask.clone()));
    let ra = reference(&w, a);
    let rb = reference(&w, b);
    let got = to_vec(h.clone());
    let want_a: Vec<f64> = ra.concat();
    assert!(
        max_abs_diff(&got[..5 * D], &want_a) < 1e-4,
        "{}",
        max_abs_diff(&got[..5 * D], &want_a)
    );
    // The padded row equals the unpadded computation on its real tokens.
    assert!(max_abs_diff(&got[5 * D..5 * D + 3 * D], &rb.concat()) < 1e-4);
    let mean = to_vec(m.pool(h.clone(), Some(mask.clone()), Pooling::Mean));
    let want_mean: Vec<f64> = (0..D)
        .map(|e| rb.iter().map(|r| r[e]).sum::<f64>() / 3.0)
        .collect();
    assert!(max_abs_diff(&mean[D..], &want_mean) < 1e-4);
    let cls = to_vec(m.pool(h, Some(mask), Pooling::Cls));
    assert!(max_abs_diff(&cls[..D], &ra[0]) < 1e-4);
}

#[test]
fn classifier_merge_parity_and_peft_keys() {
    let dev = Default::default();
    let w = weights(9);
    let bert = BertModel::<B>::load(&cfg(), &w, &dev).unwrap();
    let clf = BertForSequenceClassification::new(bert, 3, Pooling::Cls, &dev);
    let mut spec = LoraConfig::new(
        2,
        4.0,
        ModuleSelector::List(vec!["query".into(), "value".into()]),
    )
    .unwrap();
    spec.modules_to_save = vec!["classifier".into()];
    let (m, s) = attach(clf, &spec, &dev).unwrap();
    assert_eq!(s.adapters, 4);
    assert_eq!(s.trainable, 4 * 2 * (D + D) + D * 3 + 3);
    let mut r = Lcg(5);
    let m = m.map_linears(&mut |_, mut l| {
        if let Some(a) = l.adapter.as_mut() {
            let [o, k] = a.lora_b.dims();
            a.lora_b = burn::module::Param::from_tensor(Tensor::from_data(
                TensorData::new(r.vec(o * k, 0.5), [o, k]),
                &Default::default(),
            ));
        }
        l
    });
    let (x, mask) = ids(&[&[1, 4, 6, 2], &[1, 3, 2]], 4);
    let before = to_vec(m.forward_classes(x.clone(), Some(mask.clone())));
    let merged = merge_all(m);
    let mv = to_vec(merged.forward_classes(x.clone(), Some(mask.clone())));
    let b64: Vec<f64> = before.iter().map(|&v| v as f64).collect();
    assert!(max_abs_diff(&mv, &b64) < 1e-4);
    let un = unmerge_all(merged);
    assert!(
        max_abs_diff(
            &to_vec(un.forward_classes(x.clone(), Some(mask.clone()))),
            &b64
        ) < 1e-4
    );
    let keys: Vec<String> = adapter_tensors(&un, &spec)
        .into_iter()
        .map(|t| t.0)
        .collect();
    assert!(
        keys.contains(
            &"base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight".to_string()
        ),
        "{keys:?}"
    );
    assert!(keys.contains(
        &"base_model.model.bert.encoder.layer.1.attention.self.value.lora_B.weight".to_string()
    ));
    assert!(keys.contains(&"base_model.model.classifier.weight".to_string()));
    assert!(keys.contains(&"base_model.model.classifier.bias".to_string()));
    // Plain encoder (feature extraction) keys have no `bert.` prefix.
    let (enc, _) = attach(
        BertModel::<B>::load(&cfg(), &w, &dev).unwrap(),
        &spec_q(),
        &dev,
    )
    .unwrap();
    let keys: Vec<String> = adapter_tensors(&enc, &spec_q())
        .into_iter()
        .map(|t| t.0)
        .collect();
    assert_eq!(
        keys[0],
        "base_model.model.encoder.layer.0.attention.self.query.lora_A.weight"
    );
    let dir_tmp = tempfile::Builder::new()
        .prefix("balora-bert-")
        .tempdir()
        .unwrap();
    let dir = dir_tmp.path();
    save_adapter(
        &un,
        &spec,
        &AdapterMeta {
            task_type: Some("SEQ_CLS".into()),
            base_model_name_or_path: None,
        },
        dir,
    )
    .unwrap();
    let fresh = BertForSequenceClassification::new(
        BertModel::<B>::load(&cfg(), &w, &dev).unwrap(),
        3,
        Pooling::Cls,
        &dev,
    );
    let (re, _) = load_adapter(fresh, dir, &dev).unwrap();
    assert!(max_abs_diff(&to_vec(re.forward_classes(x, Some(mask))), &b64) < 1e-5);
}

fn spec_q() -> LoraConfig {
    LoraConfig::new(2, 4.0, ModuleSelector::List(vec!["query".into()])).unwrap()
}

#[test]
fn gaussian_init_and_init_std_apply_per_layer_rank_on_bert() {
    // The same rule as on Llama (tests/llama.rs): the surgery resolves every layer alike.
    let dev = Default::default();
    for init_std in [None, Some(0.01)] {
        let bert = BertModel::<B>::load(&cfg(), &weights(3), &dev).unwrap();
        let clf = BertForSequenceClassification::new(bert, 2, Pooling::Cls, &dev);
        let spec = gaussian_spec("query", "value", init_std);
        // Seeded: a few hundred draws per layer, so an unlucky stream could miss the 30 % band.
        <B as burn::tensor::backend::Backend>::seed(&dev, 11);
        let (m, _) = attach(clf, &spec, &dev).unwrap();
        check_gaussian_init(&a_rms(&m), "value", init_std);
    }
}

#[test]
fn targets_matching_nothing_are_an_error_even_with_modules_to_save() {
    // PEFT raises "Target modules … not found in the base model" here; balora used to train
    // only the classifier head, silently.
    let dev = Default::default();
    let bert = BertModel::<B>::load(&cfg(), &weights(3), &dev).unwrap();
    let clf = BertForSequenceClassification::new(bert, 2, Pooling::Cls, &dev);
    let mut spec = LoraConfig::new(
        2,
        4.0,
        ModuleSelector::Regex(r".*\.layer\.\d+\.ffn\.dense".into()),
    )
    .unwrap();
    spec.modules_to_save = vec!["classifier".into()];
    let e = attach(clf, &spec, &dev).expect_err("refused").to_string();
    assert!(e.contains("matched no linear layer"), "{e}");
    assert!(
        e.contains("intermediate.dense"),
        "names the real modules: {e}"
    );
}
