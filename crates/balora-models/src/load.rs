//! Loading models from files through `balora-formats`: GGUF (Llama family) and Hugging Face
//! folders (`config.json` + `*.safetensors` [+ `tokenizer.json`]).

use crate::bert::{BertConfig, BertModel};
use crate::llama::{LlamaConfig, LlamaForCausalLm};
use crate::validate::{check_finite, check_layer_count};
use crate::weights::{Quantizing, Weights};
use crate::ModelError;
use balora_adapter::BaseDtype;
use balora_formats::{
    load_tokenizer_json, read_hf_config, tokenizer_from_gguf, GgufFile, LlamaHfView,
    SafetensorsFiles, TensorSource,
};
use burn::tensor::backend::Backend;
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

/// Any `balora-formats` tensor source seen as [`Weights`]. Every tensor is checked to be
/// finite as it is read ([`crate::validate::check_finite`]: a NaN or ±∞ weight is an error
/// naming the tensor). It is cheap enough to be always on: 37 ms over SmolLM2's 134.5 M values
/// against a 2.2 s load, 1.7 % (`cargo test -p balora-fuzz --test real_assets -- --nocapture`).
pub struct SourceWeights<'a>(pub &'a dyn TensorSource);

impl Weights for SourceWeights<'_> {
    fn origin(&self) -> String {
        self.0.path().display().to_string()
    }
    fn contains(&self, name: &str) -> bool {
        self.0.names().iter().any(|n| n == name)
    }
    fn fetch(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>), ModelError> {
        if !self.contains(name) {
            return Err(ModelError::MissingTensor {
                file: self.origin(),
                tensor: name.to_string(),
            });
        }
        let t = self.0.load(name).map_err(|e| fmt_err(self.0.path(), e))?;
        check_finite(&self.origin(), name, &t.shape, &t.data)?;
        Ok((t.shape, t.data))
    }
}

/// A Llama-family GGUF seen as [`Weights`] in Hugging Face names and layout: the one place
/// llama.cpp's q/k row permutation is undone ([`LlamaHfView`]), so the model, its adapters and
/// every file written from it are in Hugging Face layout. Messages name the GGUF tensor (the
/// name in the file); every tensor is checked to be finite as in [`SourceWeights`].
struct GgufWeights<'a>(LlamaHfView<'a>);

impl Weights for GgufWeights<'_> {
    fn origin(&self) -> String {
        self.0.path().display().to_string()
    }
    fn contains(&self, name: &str) -> bool {
        self.0.contains(name)
    }
    fn fetch(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>), ModelError> {
        let Some(gguf) = self.0.gguf_name(name) else {
            return Err(ModelError::MissingTensor {
                file: self.origin(),
                tensor: crate::llama::hf_to_gguf_name(name).unwrap_or_else(|| name.to_string()),
            });
        };
        let t = self.0.load(name).map_err(|e| fmt_err(self.0.path(), e))?;
        check_finite(&self.origin(), gguf, &t.shape, &t.data)?;
        Ok((t.shape, t.data))
    }
}

/// The tokenizer's ids must index the embedding: a tokenizer with more tokens than the model
/// has rows would hand the model ids it cannot embed.
fn check_tokenizer_vocab(
    tokenizer: &Tokenizer,
    vocab: usize,
    tfile: &Path,
    field: &str,
) -> Result<(), ModelError> {
    let n = tokenizer.get_vocab_size(true);
    if n > vocab {
        return Err(ModelError::config(
            &tfile.display().to_string(),
            field,
            format!("the tokenizer has {n} tokens but the model's embedding has only {vocab} rows (token ids must be < {vocab})"),
        ));
    }
    Ok(())
}

fn fmt_err(path: &Path, e: impl std::fmt::Display) -> ModelError {
    ModelError::format(path, e)
}

/// A loaded causal LM with its tokenizer and where it came from.
pub struct LoadedLm<B: Backend> {
    /// The model.
    pub model: LlamaForCausalLm<B>,
    /// Its config.
    pub config: LlamaConfig,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// End-of-sequence token ids (from metadata/config; may be empty).
    pub eos_ids: Vec<u32>,
    /// Chat template text, if the file has one.
    pub chat_template: Option<String>,
    /// Model file or folder.
    pub source: PathBuf,
}

/// Loads a Llama-family model from a `.gguf` file or a Hugging Face folder.
pub fn load_causal_lm<B: Backend>(
    path: &Path,
    device: &B::Device,
) -> Result<LoadedLm<B>, ModelError> {
    load_causal_lm_as(path, BaseDtype::F32, device)
}

/// [`load_causal_lm`] with the frozen linear weights held as `dtype` (`model.dtype`; a
/// quantized base needs the flex backend, and [`BaseDtype::File`] a GGUF file).
pub fn load_causal_lm_as<B: Backend>(
    path: &Path,
    dtype: BaseDtype,
    device: &B::Device,
) -> Result<LoadedLm<B>, ModelError> {
    let field = |m: String| ModelError::config(&path.display().to_string(), "model.dtype", m);
    if dtype.is_quantized() && !balora_cpu::is_flex::<B>() {
        return Err(field(format!(
            "\"{}\" keeps the base as quantization blocks, which only the flex backend multiplies (this is {}): use backend = \"flex\" or model.dtype = \"f32\"",
            dtype.name(),
            B::name(device)
        )));
    }
    if path.is_dir() {
        if dtype == BaseDtype::File {
            return Err(field("\"file\" keeps a GGUF file's own quantization blocks, and this is a Hugging Face folder: use \"q8_0\" or \"q4_0\" (quantized at load) or \"f32\"".into()));
        }
        load_llama_hf_dir_as(path, dtype, device)
    } else {
        load_llama_gguf_as(path, dtype, device)
    }
}

/// Loads a Llama-family GGUF, in Hugging Face layout (q/k rows un-permuted as they are read).
pub fn load_llama_gguf<B: Backend>(
    path: &Path,
    device: &B::Device,
) -> Result<LoadedLm<B>, ModelError> {
    load_llama_gguf_as(path, BaseDtype::F32, device)
}

fn load_llama_gguf_as<B: Backend>(
    path: &Path,
    dtype: BaseDtype,
    device: &B::Device,
) -> Result<LoadedLm<B>, ModelError> {
    let file = GgufFile::open(path).map_err(|e| fmt_err(path, e))?;
    let origin = path.display().to_string();
    let arch = file
        .architecture()
        .map_err(|e| fmt_err(path, e))?
        .to_string();
    if matches!(arch.as_str(), "gpt2" | "gptneox") {
        return Err(ModelError::config(
            &origin,
            "general.architecture",
            format!("`{arch}`: balora reads GPT-2 and GPT-NeoX from a Hugging Face folder (config.json + *.safetensors), not from GGUF"),
        ));
    }
    let names = file.names();
    let emb = file
        .tensor_info("token_embd.weight")
        .map_err(|e| fmt_err(path, e))?;
    let vocab = emb.shape.first().copied().unwrap_or(0);
    let tied = !names.iter().any(|n| n == "output.weight");
    let num = |k: &str| {
        file.get(k)
            .and_then(|v| v.as_float().or_else(|| v.as_int().map(|i| i as f64)))
    };
    let config = LlamaConfig::from_gguf(&num, &arch, vocab, tied, &origin)?;
    check_layer_count(
        &origin,
        &format!("{arch}.block_count"),
        config.num_layers,
        &names,
        "blk.",
    )?;
    let tokenizer = tokenizer_from_gguf(&file).map_err(|e| fmt_err(path, e))?;
    check_tokenizer_vocab(&tokenizer, config.vocab_size, path, "tokenizer.ggml.tokens")?;
    let view = LlamaHfView::new(&file).map_err(|e| fmt_err(path, e))?;
    let heads = (arch != "qwen2").then_some((config.num_heads, config.num_kv_heads));
    let gw = GgufWeights(view);
    let w = Quantizing::new(&gw, dtype, Some((&file, heads)));
    let model = LlamaForCausalLm::load(&config, &w, device)?;
    let eos_ids = file
        .get("tokenizer.ggml.eos_token_id")
        .and_then(|v| v.as_int())
        .map(|i| vec![i as u32])
        .unwrap_or_default();
    Ok(LoadedLm {
        model,
        config,
        tokenizer,
        eos_ids,
        chat_template: file.chat_template().map(str::to_string),
        source: path.to_path_buf(),
    })
}

fn safetensors_in(dir: &Path) -> Result<SafetensorsFiles, ModelError> {
    SafetensorsFiles::open_dir(dir).map_err(|e| fmt_err(dir, e))
}

/// Loads a Llama-family Hugging Face folder (`config.json`, `*.safetensors`, `tokenizer.json`).
pub fn load_llama_hf_dir<B: Backend>(
    dir: &Path,
    device: &B::Device,
) -> Result<LoadedLm<B>, ModelError> {
    load_llama_hf_dir_as(dir, BaseDtype::F32, device)
}

fn load_llama_hf_dir_as<B: Backend>(
    dir: &Path,
    dtype: BaseDtype,
    device: &B::Device,
) -> Result<LoadedLm<B>, ModelError> {
    let cpath = dir.join("config.json");
    let cfg_json = read_hf_config(&cpath).map_err(|e| fmt_err(&cpath, e))?;
    let config = LlamaConfig::from_hf_json(&cfg_json, &cpath.display().to_string())?;
    let files = safetensors_in(dir)?;
    check_layer_count(
        &cpath.display().to_string(),
        "num_hidden_layers",
        config.num_layers,
        &files.names(),
        "model.layers.",
    )?;
    let tpath = dir.join("tokenizer.json");
    let tokenizer = load_tokenizer_json(&tpath).map_err(|e| fmt_err(&tpath, e))?;
    check_tokenizer_vocab(&tokenizer, config.vocab_size, &tpath, "vocab")?;
    let sw = SourceWeights(&files);
    let model = LlamaForCausalLm::load(&config, &Quantizing::new(&sw, dtype, None), device)?;
    let eos_ids = match cfg_json.get("eos_token_id") {
        Some(serde_json::Value::Number(n)) => {
            n.as_u64().map(|x| vec![x as u32]).unwrap_or_default()
        }
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => Vec::new(),
    };
    let chat_template = std::fs::read_to_string(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| {
            v.get("chat_template")
                .and_then(|c| c.as_str())
                .map(str::to_string)
        });
    Ok(LoadedLm {
        model,
        config,
        tokenizer,
        eos_ids,
        chat_template,
        source: dir.to_path_buf(),
    })
}

/// Loads a BERT-family Hugging Face folder (e.g. all-MiniLM-L6-v2) and its tokenizer.
pub fn load_bert_hf_dir<B: Backend>(
    dir: &Path,
    device: &B::Device,
) -> Result<(BertModel<B>, BertConfig, Tokenizer), ModelError> {
    let cpath = dir.join("config.json");
    let cfg_json = read_hf_config(&cpath).map_err(|e| fmt_err(&cpath, e))?;
    let config = BertConfig::from_hf_json(&cfg_json, &cpath.display().to_string())?;
    let files = safetensors_in(dir)?;
    let names = files.names();
    let prefix = if names.iter().any(|n| n.starts_with("bert.encoder.layer.")) {
        "bert.encoder.layer."
    } else {
        "encoder.layer."
    };
    check_layer_count(
        &cpath.display().to_string(),
        "num_hidden_layers",
        config.num_layers,
        &names,
        prefix,
    )?;
    let tpath = dir.join("tokenizer.json");
    let tokenizer = load_tokenizer_json(&tpath).map_err(|e| fmt_err(&tpath, e))?;
    check_tokenizer_vocab(&tokenizer, config.vocab_size, &tpath, "vocab")?;
    let model = BertModel::load(&config, &SourceWeights(&files), device)?;
    Ok((model, config, tokenizer))
}

/// The loader a model file or folder needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// A Llama-style decoder ([`load_causal_lm`]): every `.gguf` file, and a folder of another
    /// `model_type` (whose loader names it if it is not one of its families).
    Llama,
    /// GPT-2 ([`load_gpt2_hf_dir`]).
    Gpt2,
    /// GPT-NeoX / Pythia ([`load_gpt_neox_hf_dir`]).
    GptNeoX,
    /// A BERT encoder ([`load_bert_hf_dir`]).
    Bert,
}

impl ModelKind {
    /// The family's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Llama => "Llama-style",
            ModelKind::Gpt2 => "GPT-2",
            ModelKind::GptNeoX => "GPT-NeoX",
            ModelKind::Bert => "BERT",
        }
    }
}

/// Which loader reads `path`: a file is a GGUF ([`ModelKind::Llama`]); a Hugging Face folder
/// goes by its `config.json`'s `model_type` or, without one, its first `architectures` entry.
pub fn model_kind(path: &Path) -> Result<ModelKind, ModelError> {
    if !path.is_dir() {
        return Ok(ModelKind::Llama);
    }
    let cpath = path.join("config.json");
    let v = read_hf_config(&cpath).map_err(|e| fmt_err(&cpath, e))?;
    let by_type = v.get("model_type").and_then(serde_json::Value::as_str);
    let arch = v
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(serde_json::Value::as_str)
        .unwrap_or("");
    Ok(match by_type {
        Some("gpt2") => ModelKind::Gpt2,
        Some("gpt_neox") => ModelKind::GptNeoX,
        Some("bert") => ModelKind::Bert,
        Some(_) => ModelKind::Llama,
        None if arch == "GPT2LMHeadModel" => ModelKind::Gpt2,
        None if arch == "GPTNeoXForCausalLM" => ModelKind::GptNeoX,
        None if arch.starts_with("Bert") => ModelKind::Bert,
        None => ModelKind::Llama,
    })
}

/// A Hugging Face folder's `config.json` (with its path, for messages) and safetensors.
fn hf_files(dir: &Path) -> Result<(serde_json::Value, String, SafetensorsFiles), ModelError> {
    let cpath = dir.join("config.json");
    let cfg_json = read_hf_config(&cpath).map_err(|e| fmt_err(&cpath, e))?;
    Ok((cfg_json, cpath.display().to_string(), safetensors_in(dir)?))
}

/// Loads a GPT-2 Hugging Face folder (`config.json` + `*.safetensors`; the tokenizer is not
/// read: use [`load_tokenizer_json`] when needed).
pub fn load_gpt2_hf_dir<B: Backend>(
    dir: &Path,
    device: &B::Device,
) -> Result<(crate::Gpt2LmHeadModel<B>, crate::Gpt2Config), ModelError> {
    let (v, origin, files) = hf_files(dir)?;
    let config = crate::Gpt2Config::from_hf_json(&v, &origin)?;
    let names = files.names();
    let prefix = if names.iter().any(|n| n.starts_with("h.")) {
        "h."
    } else {
        "transformer.h."
    };
    check_layer_count(&origin, "n_layer", config.num_layers, &names, prefix)?;
    let model = crate::Gpt2LmHeadModel::load(&config, &SourceWeights(&files), device)?;
    Ok((model, config))
}

/// Loads a GPT-NeoX / Pythia Hugging Face folder (`config.json` + `*.safetensors`; the
/// tokenizer is not read).
pub fn load_gpt_neox_hf_dir<B: Backend>(
    dir: &Path,
    device: &B::Device,
) -> Result<(crate::GptNeoXForCausalLm<B>, crate::GptNeoXConfig), ModelError> {
    let (v, origin, files) = hf_files(dir)?;
    let config = crate::GptNeoXConfig::from_hf_json(&v, &origin)?;
    let names = files.names();
    let n = config.num_layers;
    check_layer_count(&origin, "num_hidden_layers", n, &names, "gpt_neox.layers.")?;
    let model = crate::GptNeoXForCausalLm::load(&config, &SourceWeights(&files), device)?;
    Ok((model, config))
}
