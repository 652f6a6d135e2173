//! Enumerating the linear layers of our models under their Hugging Face module names.

use crate::bert::{BertForSequenceClassification, BertModel};
use crate::llama::LlamaForCausalLm;
use balora_adapter::LoraLinear;
use burn::module::Module;
use burn::tensor::backend::Backend;

/// One linear layer as PEFT sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearInfo {
    /// Hugging Face module path, e.g. `model.layers.0.self_attn.q_proj`.
    pub path: String,
    /// Decoder/encoder layer index, if inside one.
    pub layer: Option<usize>,
    /// The model's output layer (LM head or classifier): excluded from `"all-linear"`.
    pub is_head: bool,
}

impl LinearInfo {
    fn new(path: String, layer: Option<usize>) -> Self {
        Self {
            path,
            layer,
            is_head: false,
        }
    }
}

/// A model whose linear layers can carry adapters: the surgery and PEFT code work on any
/// implementor.
pub trait AdapterHost<B: Backend>: Module<B> + Sized {
    /// Every linear layer with its info, in module order.
    fn linears(&self) -> Vec<(LinearInfo, &LoraLinear<B>)>;
    /// Mutable access to every linear layer.
    fn linears_mut(&mut self) -> Vec<(LinearInfo, &mut LoraLinear<B>)>;

    /// Replaces every linear layer by `f(info, layer)`.
    fn map_linears(
        mut self,
        f: &mut dyn FnMut(&LinearInfo, LoraLinear<B>) -> LoraLinear<B>,
    ) -> Self {
        for (info, l) in self.linears_mut() {
            *l = f(&info, l.clone());
        }
        self
    }
}

impl<B: Backend> AdapterHost<B> for LlamaForCausalLm<B> {
    fn linears(&self) -> Vec<(LinearInfo, &LoraLinear<B>)> {
        let infos = llama_infos(self);
        let mut refs: Vec<&LoraLinear<B>> = Vec::new();
        for l in &self.model.layers {
            let a = &l.self_attn;
            refs.extend([&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj]);
            refs.extend([&l.mlp.gate_proj, &l.mlp.up_proj, &l.mlp.down_proj]);
        }
        if let Some(h) = &self.lm_head {
            refs.push(h);
        }
        infos.into_iter().zip(refs).collect()
    }
    fn linears_mut(&mut self) -> Vec<(LinearInfo, &mut LoraLinear<B>)> {
        let infos = llama_infos(self);
        let mut refs: Vec<&mut LoraLinear<B>> = Vec::new();
        for l in &mut self.model.layers {
            let a = &mut l.self_attn;
            refs.extend([&mut a.q_proj, &mut a.k_proj, &mut a.v_proj, &mut a.o_proj]);
            let m = &mut l.mlp;
            refs.extend([&mut m.gate_proj, &mut m.up_proj, &mut m.down_proj]);
        }
        if let Some(h) = &mut self.lm_head {
            refs.push(h);
        }
        infos.into_iter().zip(refs).collect()
    }
}

fn llama_infos<B: Backend>(m: &LlamaForCausalLm<B>) -> Vec<LinearInfo> {
    let mut v = Vec::new();
    for i in 0..m.model.layers.len() {
        for name in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            v.push(LinearInfo::new(
                format!("model.layers.{i}.self_attn.{name}"),
                Some(i),
            ));
        }
        for name in ["gate_proj", "up_proj", "down_proj"] {
            v.push(LinearInfo::new(
                format!("model.layers.{i}.mlp.{name}"),
                Some(i),
            ));
        }
    }
    if m.lm_head.is_some() {
        let mut h = LinearInfo::new("lm_head".into(), None);
        h.is_head = true;
        v.push(h);
    }
    v
}

const BERT_NAMES: [&str; 6] = [
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
];

fn bert_infos(prefix: &str, layers: usize) -> Vec<LinearInfo> {
    (0..layers)
        .flat_map(|i| {
            BERT_NAMES
                .iter()
                .map(move |n| LinearInfo::new(format!("{prefix}encoder.layer.{i}.{n}"), Some(i)))
        })
        .collect()
}

fn bert_refs<B: Backend>(m: &BertModel<B>) -> Vec<&LoraLinear<B>> {
    m.encoder
        .layer
        .iter()
        .flat_map(|l| {
            [
                &l.attention.self_.query,
                &l.attention.self_.key,
                &l.attention.self_.value,
                &l.attention.output.dense,
                &l.intermediate.dense,
                &l.output.dense,
            ]
        })
        .collect()
}

fn bert_refs_mut<B: Backend>(m: &mut BertModel<B>) -> Vec<&mut LoraLinear<B>> {
    m.encoder
        .layer
        .iter_mut()
        .flat_map(|l| {
            let sa = &mut l.attention.self_;
            [
                &mut sa.query,
                &mut sa.key,
                &mut sa.value,
                &mut l.attention.output.dense,
                &mut l.intermediate.dense,
                &mut l.output.dense,
            ]
        })
        .collect()
}

impl<B: Backend> AdapterHost<B> for BertModel<B> {
    fn linears(&self) -> Vec<(LinearInfo, &LoraLinear<B>)> {
        bert_infos("", self.encoder.layer.len())
            .into_iter()
            .zip(bert_refs(self))
            .collect()
    }
    fn linears_mut(&mut self) -> Vec<(LinearInfo, &mut LoraLinear<B>)> {
        bert_infos("", self.encoder.layer.len())
            .into_iter()
            .zip(bert_refs_mut(self))
            .collect()
    }
}

impl<B: Backend> AdapterHost<B> for BertForSequenceClassification<B> {
    fn linears(&self) -> Vec<(LinearInfo, &LoraLinear<B>)> {
        let mut v: Vec<_> = bert_infos("bert.", self.bert.encoder.layer.len())
            .into_iter()
            .zip(bert_refs(&self.bert))
            .collect();
        let mut h = LinearInfo::new("classifier".into(), None);
        h.is_head = true;
        v.push((h, &self.classifier));
        v
    }
    fn linears_mut(&mut self) -> Vec<(LinearInfo, &mut LoraLinear<B>)> {
        let n = self.bert.encoder.layer.len();
        let mut v: Vec<_> = bert_infos("bert.", n)
            .into_iter()
            .zip(bert_refs_mut(&mut self.bert))
            .collect();
        let mut h = LinearInfo::new("classifier".into(), None);
        h.is_head = true;
        v.push((h, &mut self.classifier));
        v
    }
}
