//! Exporting a model's (possibly merged) weights under Hugging Face names and layout.

use crate::bert::{BertForSequenceClassification, BertModel};
use crate::linears::AdapterHost;
use crate::llama::LlamaForCausalLm;
use crate::weights::to_vec;
use balora_adapter::LoraLinear;
use burn::nn::{Embedding, LayerNorm};
use burn::tensor::backend::Backend;

/// `(name, shape, row-major data)`.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

fn linear<B: Backend>(out: &mut Vec<NamedTensor>, path: &str, l: &LoraLinear<B>) {
    let (din, dout) = l.dims();
    let w = to_vec(l.base_weight().transpose());
    out.push((format!("{path}.weight"), vec![dout, din], w));
    if let Some(b) = &l.base.bias {
        out.push((format!("{path}.bias"), vec![dout], to_vec(b.val())));
    }
}

fn emb<B: Backend>(out: &mut Vec<NamedTensor>, name: &str, e: &Embedding<B>) {
    out.push((
        name.to_string(),
        e.weight.dims().to_vec(),
        to_vec(e.weight.val()),
    ));
}

fn ln<B: Backend>(out: &mut Vec<NamedTensor>, prefix: &str, n: &LayerNorm<B>) {
    out.push((
        format!("{prefix}.weight"),
        n.gamma.dims().to_vec(),
        to_vec(n.gamma.val()),
    ));
    if let Some(b) = &n.beta {
        out.push((format!("{prefix}.bias"), b.dims().to_vec(), to_vec(b.val())));
    }
}

/// Every weight of a Llama-family model (Qwen3, Gemma 2/3 and Phi-3 included) in Hugging Face
/// names and layout (the model's own layout, a GGUF-loaded one included). Adapters are not
/// included: merge them first.
pub fn llama_hf_tensors<B: Backend>(m: &LlamaForCausalLm<B>) -> Vec<NamedTensor> {
    let mut out = Vec::new();
    emb(&mut out, "model.embed_tokens.weight", &m.model.embed_tokens);
    for (info, l) in m.linears() {
        linear(&mut out, &info.path, l);
    }
    // Gemma's norms are written as `w` (the model holds `1 + w`).
    out.extend(m.hf_norm_tensors());
    out
}

/// Every weight of a BERT encoder in Hugging Face names (`prefix` e.g. `""` or `"bert."`).
pub fn bert_hf_tensors<B: Backend>(m: &BertModel<B>, prefix: &str) -> Vec<NamedTensor> {
    let mut out = Vec::new();
    let e = &m.embeddings;
    emb(
        &mut out,
        &format!("{prefix}embeddings.word_embeddings.weight"),
        &e.word_embeddings,
    );
    emb(
        &mut out,
        &format!("{prefix}embeddings.position_embeddings.weight"),
        &e.position_embeddings,
    );
    emb(
        &mut out,
        &format!("{prefix}embeddings.token_type_embeddings.weight"),
        &e.token_type_embeddings,
    );
    ln(
        &mut out,
        &format!("{prefix}embeddings.LayerNorm"),
        &e.layer_norm,
    );
    for (info, l) in m.linears() {
        linear(&mut out, &format!("{prefix}{}", info.path), l);
    }
    for (i, l) in m.encoder.layer.iter().enumerate() {
        let p = format!("{prefix}encoder.layer.{i}");
        ln(
            &mut out,
            &format!("{p}.attention.output.LayerNorm"),
            &l.attention.output.layer_norm,
        );
        ln(
            &mut out,
            &format!("{p}.output.LayerNorm"),
            &l.output.layer_norm,
        );
    }
    out
}

/// Every weight of a BERT classifier in Hugging Face `BertForSequenceClassification` names
/// (`bert.…` and `classifier.weight`/`.bias`). balora's head reads the pooled hidden state
/// directly, so there is no `bert.pooler.*` to write.
pub fn bert_classifier_hf_tensors<B: Backend>(
    m: &BertForSequenceClassification<B>,
) -> Vec<NamedTensor> {
    let mut out = bert_hf_tensors(&m.bert, "bert.");
    linear(&mut out, "classifier", &m.classifier);
    out
}
