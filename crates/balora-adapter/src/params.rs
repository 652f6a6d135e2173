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

impl<B: burn::tensor::backend::AutodiffBackend> PairSlot<B> {
    /// The same pair on the inner (non-autodiff) backend: same key and ids, no graph.
    pub fn inner(&self) -> PairSlot<B::InnerBackend> {
        PairSlot {
            key: self.key.clone(),
            a_id: self.a_id,
            b_id: self.b_id,
            a: self.a.clone().inner(),
            b: self.b.clone().inner(),
        }
    }
}

/// The trainable float parameters of a module: LoRA pairs, and the other trainable parameters
/// ("singles"). Frozen parameters (base weights) are not collected: every caller (optimizer,
/// gradient clipping, checkpoints) works on the trainable ones, and collecting a frozen weight
/// would copy it on backends whose reshape copies (burn-ndarray).
#[derive(Debug, Clone)]
pub struct ParamTable<B: Backend> {
    /// Adapter pairs, in module order (whatever their require-grad flag).
    pub pairs: Vec<PairSlot<B>>,
    /// Every other trainable float parameter, in module order.
    pub singles: Vec<ParamSlot<B>>,
}

/// Walks `module` and returns its adapter pairs and other trainable parameters.
pub fn collect_params<B: Backend, M: Module<B>>(module: &M) -> ParamTable<B> {
    collect(module, false)
}

/// Like [`collect_params`] but records only `lora_a`/`lora_b` parameters (detached from any
/// autodiff graph): what the manifold hook needs.
pub fn collect_pairs<B: Backend, M: Module<B>>(module: &M) -> Vec<PairSlot<B>> {
    collect(module, true).pairs
}

fn collect<B: Backend, M: Module<B>>(module: &M, pairs_only: bool) -> ParamTable<B> {
    let mut v = Collector::<B> {
        path: Vec::new(),
        halves: Vec::new(),
        singles: Vec::new(),
        pairs_only,
    };
    module.visit(&mut v);
    let mut by_parent: BTreeMap<String, [Option<Half<B>>; 2]> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for (parent, idx, half) in v.halves {
        let entry = by_parent.entry(parent.clone()).or_insert_with(|| {
            order.push(parent.clone());
            [None, None]
        });
        entry[idx] = Some(half);
    }
    let mut singles = v.singles;
    let mut pairs = Vec::new();
    for key in order {
        match by_parent.remove(&key) {
            Some([Some(a), Some(b)]) if a.value.dims()[0] == b.value.dims()[1] => {
                pairs.push(PairSlot {
                    key,
                    a_id: a.id,
                    b_id: b.id,
                    a: a.value,
                    b: b.value,
                });
            }
            // Half a pair, or mismatched ranks: treat as ordinary parameters.
            Some([a, b]) if !pairs_only => singles.extend(
                a.into_iter()
                    .chain(b)
                    .filter(|h| h.trainable)
                    .map(|h| h.into_single(&key)),
            ),
            _ => {}
        }
    }
    ParamTable { pairs, singles }
}

/// One `lora_a`/`lora_b` tensor, kept 2-D.
struct Half<B: Backend> {
    leaf: &'static str,
    id: ParamId,
    value: Tensor<B, 2>,
    trainable: bool,
}

impl<B: Backend> Half<B> {
    fn into_single(self, parent: &str) -> ParamSlot<B> {
        let shape = self.value.dims().to_vec();
        let n: usize = shape.iter().product();
        ParamSlot {
            path: if parent.is_empty() {
                self.leaf.to_string()
            } else {
                format!("{parent}.{}", self.leaf)
            },
            id: self.id,
            shape,
            value: self.value.reshape([n]),
            trainable: self.trainable,
        }
    }
}

/// A tensor of rank `D` seen as rank `E` when its shape is `dims` — no data movement (burn's
/// reshape copies on burn-ndarray even when nothing changes).
fn as_rank<B: Backend, const D: usize, const E: usize>(
    t: Tensor<B, D>,
    dims: [usize; E],
) -> Tensor<B, E> {
    if t.dims().as_slice() == dims.as_slice() {
        Tensor::from_primitive(t.into_primitive())
    } else {
        t.reshape(dims)
    }
}

struct Collector<B: Backend> {
    path: Vec<String>,
    halves: Vec<(String, usize, Half<B>)>,
    singles: Vec<ParamSlot<B>>,
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
        let leaf = match (self.path.last().map(String::as_str), D) {
            (Some("lora_a"), 2) => Some(("lora_a", 0)),
            (Some("lora_b"), 2) => Some(("lora_b", 1)),
            _ => None,
        };
        if let Some((leaf, idx)) = leaf {
            let value = param.val();
            let trainable = value.is_require_grad();
            let value = if self.pairs_only {
                value.detach()
            } else {
                value
            };
            let dims = value.dims();
            let value = as_rank(value, [dims[0], dims[1]]);
            let parent = self.path[..self.path.len() - 1].join(".");
            self.halves.push((
                parent,
                idx,
                Half {
                    leaf,
                    id: param.id,
                    value,
                    trainable,
                },
            ));
            return;
        }
        if self.pairs_only || !param.is_require_grad() {
            return;
        }
        let value = param.val();
        let shape = value.dims().to_vec();
        let n: usize = shape.iter().product();
        self.singles.push(ParamSlot {
            path: self.path.join("."),
            id: param.id,
            shape,
            trainable: true,
            value: value.reshape([n]),
        });
    }
}

/// A new value for a parameter: a tensor of the parameter's shape (used as is), or its
/// flattened values (reshaped to the parameter's shape).
#[derive(Debug, Clone)]
pub struct ParamValue<B: Backend> {
    value: burn::tensor::TensorPrimitive<B>,
}

impl<B: Backend, const D: usize> From<Tensor<B, D>> for ParamValue<B> {
    fn from(t: Tensor<B, D>) -> Self {
        Self {
            value: t.into_primitive(),
        }
    }
}

/// Replaces parameter values by id (see [`ParamValue`] for the accepted shapes).
/// Trainable parameters stay trainable; the new values are detached from any graph.
///
/// # Panics
/// When a value is neither of its parameter's shape nor flat with as many elements.
pub fn replace_params<B: Backend, M: Module<B>>(
    module: M,
    updates: HashMap<ParamId, ParamValue<B>>,
) -> M {
    let mut m = Replacer { updates };
    module.map(&mut m)
}

struct Replacer<B: Backend> {
    updates: HashMap<ParamId, ParamValue<B>>,
}

impl<B: Backend> ModuleMapper<B> for Replacer<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, old, mapper) = param.consume();
        let tensor = match self.updates.remove(&id) {
            Some(ParamValue { value }) => {
                use burn::tensor::TensorMetadata;
                let trainable = old.is_require_grad();
                let dims = value.shape();
                let t = if dims.as_slice() == old.dims().as_slice() {
                    Tensor::<B, D>::from_primitive(value)
                } else if dims.num_dims() == 1 && dims[0] == old.shape().num_elements() {
                    Tensor::<B, 1>::from_primitive(value).reshape(old.shape())
                } else {
                    panic!(
                        "replace_params: a value of shape {:?} for a parameter of shape {:?}",
                        dims.as_slice(),
                        old.dims()
                    )
                };
                let t = t.detach();
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
