//! `balora merge`: base model + PEFT adapter → one safetensors file of merged weights in
//! Hugging Face names and layout.
//!
//! Bases: a Llama-family `.gguf` or HF folder, a GPT-2 or GPT-NeoX HF folder, or a BERT HF
//! folder (told apart by `config.json`: `balora_models::load::model_kind`). A BERT adapter with
//! `bert.`-prefixed modules and a `classifier` (what `balora train` writes for a classify job,
//! and what PEFT writes for `SEQ_CLS`) is merged into a classifier and written in
//! `BertForSequenceClassification` names (`bert.…`, `classifier.…`).
//!
//! Safety: `--out` may not be (or be a hard link to, or a symlink to) any input file or folder,
//! nor a `.safetensors` file inside the base model's folder (it would be read as a shard next
//! time); an existing file is replaced only with `--force`; every merged tensor must be finite
//! (a NaN/Inf adapter or an overflowing `lora_alpha` is an error naming the module, and nothing
//! is written); the file is written atomically (temporary file + rename).

use anyhow::{bail, Context, Result};
use balora_models::export::{
    bert_classifier_hf_tensors, bert_hf_tensors, llama_hf_tensors, NamedTensor,
};
use balora_models::load::{
    load_bert_hf_dir, load_causal_lm, load_gpt2_hf_dir, load_gpt_neox_hf_dir, model_kind, ModelKind,
};
use balora_models::peft::{apply_adapter_tensors, read_adapter};
use balora_models::{
    merge_all, AdapterHost, BertForSequenceClassification, Gpt2LmHeadModel, GptNeoXForCausalLm,
    Pooling, Weights,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Arguments of `balora merge`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Base model: `.gguf` file or Hugging Face folder (default: the SmolLM2 asset).
    #[arg(long)]
    base: Option<PathBuf>,
    /// PEFT adapter folder.
    #[arg(long)]
    adapter: PathBuf,
    /// Output `.safetensors` file (never one of the inputs).
    #[arg(long)]
    out: PathBuf,
    /// Replace `--out` if it exists.
    #[arg(long)]
    force: bool,
}

type B = burn::backend::NdArray;

/// Module path → adapter scale, for every adapted linear layer.
type Adapted = BTreeMap<String, f64>;

/// A file's identity: its canonical path and, on Unix, (device, inode), so hard links match.
#[derive(Debug, PartialEq)]
struct FileId {
    path: PathBuf,
    inode: Option<(u64, u64)>,
}

fn file_id(p: &Path) -> Option<FileId> {
    let path = std::fs::canonicalize(p).ok()?;
    #[cfg(unix)]
    let inode = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&path).ok().map(|m| (m.dev(), m.ino()))
    };
    #[cfg(not(unix))]
    let inode = None;
    Some(FileId { path, inode })
}

fn same(a: &FileId, b: &FileId) -> bool {
    a.path == b.path || (a.inode.is_some() && a.inode == b.inode)
}

/// Every input path: the base file or folder and its files, the adapter folder and its files.
fn inputs(base: &Path, adapter: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for p in [base, adapter] {
        v.push(p.to_path_buf());
        if let Ok(rd) = std::fs::read_dir(p) {
            v.extend(rd.filter_map(|e| e.ok()).map(|e| e.path()));
        }
    }
    v
}

/// Refuses an `--out` that would overwrite or shadow an input, or an existing file without
/// `--force`.
fn check_out(out: &Path, base: &Path, adapter: &Path, force: bool) -> Result<()> {
    let name = out
        .file_name()
        .with_context(|| format!("--out {}: not a file path", out.display()))?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let parent_id = file_id(parent).with_context(|| {
        format!(
            "--out {}: folder {} does not exist",
            out.display(),
            parent.display()
        )
    })?;
    let out_id = file_id(out).unwrap_or(FileId {
        path: parent_id.path.join(name),
        inode: None,
    });
    for input in inputs(base, adapter) {
        if let Some(id) = file_id(&input) {
            if same(&out_id, &id) {
                bail!(
                    "--out {} is the input {} (same file{}): choose another output path",
                    out.display(),
                    input.display(),
                    if out_id.path == id.path {
                        ""
                    } else {
                        ", a hard link"
                    }
                );
            }
        }
    }
    if base.is_dir()
        && file_id(base).is_some_and(|b| b.path == parent_id.path)
        && Path::new(name)
            .extension()
            .is_some_and(|e| e == "safetensors")
    {
        bail!(
            "--out {} is inside the base model folder {}: it would be read as one of its \
             weight shards; write it elsewhere",
            out.display(),
            base.display()
        );
    }
    if let Ok(m) = std::fs::symlink_metadata(out) {
        if m.is_dir() {
            bail!("--out {} is a folder; give a file path", out.display());
        }
        if !force {
            bail!("--out {} exists; pass --force to replace it", out.display());
        }
    }
    Ok(())
}

fn adapted<M: AdapterHost<B>>(m: &M) -> Adapted {
    m.linears()
        .into_iter()
        .filter_map(|(i, l)| l.adapter.as_ref().map(|a| (i.path, a.scale)))
        .collect()
}

/// Every merged value must be finite: names the first tensor that is not, and its adapter.
fn check_finite(tensors: &[NamedTensor], adapters: &Adapted) -> Result<()> {
    for (name, _, data) in tensors {
        let bad = data.iter().filter(|x| !x.is_finite()).count();
        if bad == 0 {
            continue;
        }
        let module = name
            .strip_suffix(".weight")
            .or_else(|| name.strip_suffix(".bias"))
            .unwrap_or(name);
        let why = match adapters.get(module) {
            Some(s) => format!(
                "the adapter on `{module}` (scale α/r = {s:e}) has non-finite lora_A/lora_B \
                 values or overflows f32 (check lora_alpha)"
            ),
            None => format!("`{module}` has no adapter: the base weight is not finite"),
        };
        bail!(
            "merged tensor `{name}` has {bad} non-finite values (NaN/Inf): {why}; nothing written"
        );
    }
    Ok(())
}

/// The number of classes of a BERT classifier adapter (its `classifier` weight rows).
fn classes(w: &balora_models::MemWeights, adapter: &Path) -> Result<usize> {
    let key = "base_model.model.classifier.weight";
    if !w.contains(key) {
        bail!(
            "{}: the adapter adapts `bert.` modules of a classifier but holds no `{key}` \
             (train with modules_to_save = [\"classifier\"])",
            adapter.display()
        );
    }
    let (shape, _) = w.fetch(key)?;
    match shape.as_slice() {
        [c, _] if *c > 0 => Ok(*c),
        _ => bail!(
            "{}: `{key}` has shape {shape:?}, expected [classes, hidden]",
            adapter.display()
        ),
    }
}

fn merge_bert(base: &Path, adapter: &Path) -> Result<(Vec<NamedTensor>, Adapted)> {
    let device = Default::default();
    let (bert, _, _) = load_bert_hf_dir::<B>(base, &device)
        .with_context(|| format!("loading {}", base.display()))?;
    let (spec, w) = read_adapter(adapter)?;
    let classifier = w.tensors.keys().any(|k| {
        k.starts_with("base_model.model.bert.") || k.starts_with("base_model.model.classifier.")
    });
    if classifier {
        let m =
            BertForSequenceClassification::new(bert, classes(&w, adapter)?, Pooling::Cls, &device);
        let m = apply_adapter_tensors(m, &spec, &w, &device)?;
        let ad = adapted(&m);
        Ok((bert_classifier_hf_tensors(&merge_all(m)), ad))
    } else {
        let m = apply_adapter_tensors(bert, &spec, &w, &device)?;
        let ad = adapted(&m);
        Ok((bert_hf_tensors(&merge_all(m), ""), ad))
    }
}

/// The causal LM `base` of loader `kind` with the adapter merged, in Hugging Face names.
fn merge_lm(base: &Path, adapter: &Path, kind: ModelKind) -> Result<(Vec<NamedTensor>, Adapted)> {
    let device = Default::default();
    let loading = || format!("loading {}", base.display());
    match kind {
        ModelKind::Gpt2 => {
            let m = load_gpt2_hf_dir::<B>(base, &device).with_context(loading)?;
            merged(m.0, adapter, Gpt2LmHeadModel::hf_tensors)
        }
        ModelKind::GptNeoX => {
            let m = load_gpt_neox_hf_dir::<B>(base, &device).with_context(loading)?;
            merged(m.0, adapter, GptNeoXForCausalLm::hf_tensors)
        }
        ModelKind::Llama | ModelKind::Bert => {
            let lm = load_causal_lm::<B>(base, &device).with_context(loading)?;
            merged(lm.model, adapter, llama_hf_tensors)
        }
    }
}

/// `model` with the PEFT adapter in `adapter` applied and merged, exported by `export`.
fn merged<M: AdapterHost<B>>(
    model: M,
    adapter: &Path,
    export: fn(&M) -> Vec<NamedTensor>,
) -> Result<(Vec<NamedTensor>, Adapted)> {
    let (spec, w) = read_adapter(adapter)?;
    let m = apply_adapter_tensors(model, &spec, &w, &Default::default())?;
    let ad = adapted(&m);
    Ok((export(&merge_all(m)), ad))
}

/// Runs the command.
pub fn run(a: Args) -> Result<()> {
    let base = crate::generate::default_model(a.base.as_deref())?;
    check_out(&a.out, &base, &a.adapter, a.force)?;
    let kind = model_kind(&base).with_context(|| format!("reading {}", base.display()))?;
    let (tensors, adapters) = match kind {
        ModelKind::Bert => merge_bert(&base, &a.adapter),
        _ => merge_lm(&base, &a.adapter, kind),
    }
    .with_context(|| format!("merging adapter {}", a.adapter.display()))?;
    if adapters.is_empty() {
        bail!("{}: no adapter matched the base model", a.adapter.display());
    }
    check_finite(&tensors, &adapters)?;
    balora_formats::write_safetensors(&a.out, &tensors, balora_formats::PT_FORMAT)
        .with_context(|| format!("writing {}", a.out.display()))?;
    println!(
        "merged {} adapters into {} tensors → {}",
        adapters.len(),
        tensors.len(),
        a.out.display()
    );
    Ok(())
}
