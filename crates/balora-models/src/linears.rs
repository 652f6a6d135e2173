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
    /// A Hugging Face `Conv1D` layer (GPT-2): its checkpoint weight is `[in, out]`, PEFT's
    /// `fan_in_fan_out=True`. The adapter factors are the same either way (`lora_A` `[r, in]`,
    /// `lora_B` `[out, r]`); only the base weight's layout in files differs.
    pub fan_in_fan_out: bool,
}

impl LinearInfo {
    pub(crate) fn new(path: String, layer: Option<usize>) -> Self {
        Self {
            path,
            layer,
            is_head: false,
            fan_in_fan_out: false,
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

/// The linears of one decoder layer by PEFT name, in module order. Fused projections (Phi-3)
/// are PEFT's `qkv_proj` and `gate_up_proj`: the fused layer sits in `q_proj` / `gate_proj`.
macro_rules! llama_layer_linears {
    ($l:expr, $($r:tt)*) => {{
        let a = $($r)* $l.self_attn;
        let m = $($r)* $l.mlp;
        let mut v = Vec::with_capacity(7);
        match (a.k_proj.as_ref(), a.v_proj.as_ref()) {
            (Some(_), Some(_)) => {
                v.push(("self_attn.q_proj", $($r)* a.q_proj));
                if let Some(k) = $($r)* a.k_proj {
                    v.push(("self_attn.k_proj", k));
                }
                if let Some(x) = $($r)* a.v_proj {
                    v.push(("self_attn.v_proj", x));
                }
            }
            _ => v.push(("self_attn.qkv_proj", $($r)* a.q_proj)),
        }
        v.push(("self_attn.o_proj", $($r)* a.o_proj));
        match $($r)* m.up_proj {
            Some(u) => {
                v.push(("mlp.gate_proj", $($r)* m.gate_proj));
                v.push(("mlp.up_proj", u));
            }
            None => v.push(("mlp.gate_up_proj", $($r)* m.gate_proj)),
        }
        v.push(("mlp.down_proj", $($r)* m.down_proj));
        v
    }};
}

fn head_info() -> LinearInfo {
    let mut h = LinearInfo::new("lm_head".into(), None);
    h.is_head = true;
    h
}

impl<B: Backend> AdapterHost<B> for LlamaForCausalLm<B> {
    fn linears(&self) -> Vec<(LinearInfo, &LoraLinear<B>)> {
        let mut out = Vec::new();
        for (i, l) in self.model.layers.iter().enumerate() {
            for (name, lin) in llama_layer_linears!(l, &) {
                let info = LinearInfo::new(format!("model.layers.{i}.{name}"), Some(i));
                out.push((info, lin));
            }
        }
        if let Some(h) = &self.lm_head {
            out.push((head_info(), h));
        }
        out
    }
    fn linears_mut(&mut self) -> Vec<(LinearInfo, &mut LoraLinear<B>)> {
        let mut out = Vec::new();
        for (i, l) in self.model.layers.iter_mut().enumerate() {
            for (name, lin) in llama_layer_linears!(l, &mut) {
                let info = LinearInfo::new(format!("model.layers.{i}.{name}"), Some(i));
                out.push((info, lin));
            }
        }
        if let Some(h) = &mut self.lm_head {
            out.push((head_info(), h));
        }
        out
    }
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
