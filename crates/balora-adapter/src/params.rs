//! Finding parameters (and LoRA pairs) in any burn module by their module path.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::{backend::Backend, Tensor};
use std::collections::{BTreeMap, HashMap};

/// One parameter: path (e.g. `layers.0.attn.q_proj.base.weight`), id, shape, flattened value.
#[derive(Debug, Clone)]
pub struct ParamSlot<B: Backend> {
    /// Dotted module path.
    pub path: String,
    /// burn's parameter id (gradients are keyed by it).
    pub id: ParamId,
    /// Original shape.
    pub shape: Vec<usize>,
    /// Value, flattened.
    pub value: Tensor<B, 1>,
    /// Whether the parameter is trainable.
    pub trainable: bool,
}

/// An adapter pair found in a module: A `[r, in]` and B `[out, r]`.
#[derive(Debug, Clone)]
pub struct PairSlot<B: Backend> {
    /// Adapter key: the module path that holds `lora_a` and `lora_b`.
    pub key: String,
    /// A's parameter id.
    pub a_id: ParamId,
    /// B's parameter id.
    pub b_id: ParamId,
    /// A, `[r, in]`.
    pub a: Tensor<B, 2>,
    /// B, `[out, r]`.
    pub b: Tensor<B, 2>,
}

/// All float parameters of a module: LoRA pairs, and the other parameters ("singles").
#[derive(Debug, Clone)]
pub struct ParamTable<B: Backend> {
    /// Adapter pairs, in module order.
    pub pairs: Vec<PairSlot<B>>,
    /// Every other float parameter, in module order.
    pub singles: Vec<ParamSlot<B>>,
}

/// Walks `module` and returns its pairs and other parameters.
pub fn collect_params<B: Backend, M: Module<B>>(module: &M) -> ParamTable<B> {
    collect(module, false)
}

/// Like [`collect_params`] but records only `lora_a`/`lora_b` parameters (detached from any
/// autodiff graph): what the manifold hook needs, without touching the frozen base weights.
pub fn collect_pairs<B: Backend, M: Module<B>>(module: &M) -> Vec<PairSlot<B>> {
    collect(module, true).pairs
}

fn collect<B: Backend, M: Module<B>>(module: &M, pairs_only: bool) -> ParamTable<B> {
    let mut v = Collector::<B> {
        path: Vec::new(),
        slots: Vec::new(),
        pairs_only,
    };
    module.visit(&mut v);
    let mut halves: BTreeMap<String, [Option<ParamSlot<B>>; 2]> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut singles = Vec::new();
    for slot in v.slots {
        let (parent, leaf) = match slot.path.rsplit_once('.') {
            Some((p, l)) => (p.to_string(), l),
            None => (String::new(), slot.path.as_str()),
        };
        let idx = match (leaf, slot.shape.len()) {
            ("lora_a", 2) => 0,
            ("lora_b", 2) => 1,
            _ => {
                singles.push(slot);
                continue;
            }
        };
        let entry = halves.entry(parent.clone()).or_insert_with(|| {
            order.push(parent.clone());
            [None, None]
        });
        entry[idx] = Some(slot);
    }
    let mut pairs = Vec::new();
    for key in order {
        match halves.remove(&key) {
            Some([Some(a), Some(b)]) if a.shape[0] == b.shape[1] => {
                let (ra, ia) = (a.shape[0], a.shape[1]);
                let (ob, rb) = (b.shape[0], b.shape[1]);
                pairs.push(PairSlot {
                    key,
                    a_id: a.id,
                    b_id: b.id,
                    a: a.value.reshape([ra, ia]),
                    b: b.value.reshape([ob, rb]),
                });
            }
            // Half a pair, or mismatched ranks: treat as ordinary parameters.
            Some([a, b]) => singles.extend(a.into_iter().chain(b)),
            None => {}
        }
    }
    ParamTable { pairs, singles }
}

struct Collector<B: Backend> {
    path: Vec<String>,
    slots: Vec<ParamSlot<B>>,
    pairs_only: bool,
}

impl<B: Backend> ModuleVisitor<B> for Collector<B> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if self.pairs_only
            && !(D == 2
                && matches!(
                    self.path.last().map(String::as_str),
                    Some("lora_a" | "lora_b")
                ))
        {
            return;
        }
        let value = if self.pairs_only {
            param.val().detach()
        } else {
            param.val()
        };
        let shape = value.dims().to_vec();
        let n: usize = shape.iter().product();
        self.slots.push(ParamSlot {
            path: self.path.join("."),
            id: param.id,
            shape,
            trainable: value.is_require_grad(),
            value: value.reshape([n]),
        });
    }
}

/// Replaces parameter values by id (values flattened; each is reshaped to its parameter's shape).
/// Trainable parameters stay trainable; the new values are detached from any graph.
pub fn replace_params<B: Backend, M: Module<B>>(
    module: M,
    updates: HashMap<ParamId, Tensor<B, 1>>,
) -> M {
    let mut m = Replacer { updates };
    module.map(&mut m)
}

struct Replacer<B: Backend> {
    updates: HashMap<ParamId, Tensor<B, 1>>,
}

impl<B: Backend> ModuleMapper<B> for Replacer<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, old, mapper) = param.consume();
        let tensor = match self.updates.remove(&id) {
            Some(new) => {
                let trainable = old.is_require_grad();
                let t = new.reshape(old.shape()).detach();
                if trainable {
                    t.require_grad()
                } else {
                    t
                }
            }
            None => old,
        };
        Param::from_mapped_value(id, tensor, mapper)
    }
}
