//! Tokenizers: built from GGUF metadata (byte-level BPE) or loaded from `tokenizer.json`.

use crate::error::FormatError;
use crate::gguf::GgufFile;
use crate::TensorSource;
use std::path::Path;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

/// `tokenizer.ggml.pre` values understood by [`tokenizer_from_gguf`].
pub const SUPPORTED_PRE: &str =
    "gpt2/default, smollm/starcoder/refact/codeshell/command-r, llama-bpe/llama3";

/// The Llama-3 pre-tokenizer split (as in Meta's `tokenizer.json`).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

// llama.cpp token types (`tokenizer.ggml.token_type`).
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;

/// Builds the tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata.
///
/// Supported: `tokenizer.ggml.model = "gpt2"` (byte-level BPE) with the pre-tokenizers of
/// [`SUPPORTED_PRE`]. The BPE model comes from `tokenizer.ggml.tokens` (id = position) and
/// `tokenizer.ggml.merges` (`"a b"` strings, priority = position); tokens of type control (3)
/// and the bos/eos/unk/padding ids are added as special tokens, user-defined ones (4) as added
/// tokens. `tokenizer.ggml.add_bos_token = true` adds a post-processor prepending bos.
/// No normalizer, padding or truncation.
pub fn tokenizer_from_gguf(file: &GgufFile) -> Result<Tokenizer, FormatError> {
    let path = file.path();
    let err = |msg: String| FormatError::Tokenizer {
        path: path.to_path_buf(),
        msg,
    };
    let model = file.get_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(err(format!(
            "tokenizer.ggml.model = {model:?} is not supported (only \"gpt2\", byte-level BPE)"
        )));
    }
    let tokens = file.get_str_array("tokenizer.ggml.tokens")?;
    let merges_raw = file.get_str_array("tokenizer.ggml.merges")?;
    let types = match file.get("tokenizer.ggml.token_type") {
        Some(_) => file.get_int_array("tokenizer.ggml.token_type")?,
        None => vec![1; tokens.len()],
    };
    if types.len() != tokens.len() {
        return Err(err(format!(
            "tokenizer.ggml.token_type has {} entries for {} tokens",
            types.len(),
            tokens.len()
        )));
    }
    let mut vocab = tokenizers::models::bpe::Vocab::default();
    for (id, t) in tokens.iter().enumerate() {
        if vocab.insert((*t).to_string(), id as u32).is_some() {
            return Err(err(format!(
                "token {t:?} occurs twice in tokenizer.ggml.tokens"
            )));
        }
    }
    let mut merges = Vec::with_capacity(merges_raw.len());
    for (i, m) in merges_raw.iter().enumerate() {
        let (a, b) = m.split_once(' ').ok_or_else(|| {
            err(format!(
                "tokenizer.ggml.merges[{i}] = {m:?} is not two tokens separated by a space"
            ))
        })?;
        merges.push((a.to_string(), b.to_string()));
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| err(format!("building the BPE model: {e}")))?;
    let mut tok = Tokenizer::new(bpe);

    let pre = match file.get("tokenizer.ggml.pre") {
        Some(_) => file.get_str("tokenizer.ggml.pre")?,
        None => "default",
    };
    let byte_level = ByteLevel::new(false, true, true);
    let pre_tok: PreTokenizerWrapper = match pre {
        "default" | "gpt2" | "gpt-2" => byte_level.into(),
        "smollm" | "starcoder" | "refact" | "codeshell" | "command-r" => {
            Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
        }
        "llama-bpe" | "llama3" => {
            let split = Split::new(
                SplitPattern::Regex(LLAMA3_SPLIT.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| err(format!("llama3 split regex: {e}")))?;
            Sequence::new(vec![
                split.into(),
                ByteLevel::new(false, true, false).into(),
            ])
            .into()
        }
        other => {
            return Err(err(format!(
                "tokenizer.ggml.pre = {other:?} is not supported (supported: {SUPPORTED_PRE})"
            )))
        }
    };
    tok.with_pre_tokenizer(Some(pre_tok));
    tok.with_decoder(Some(ByteLevelDecoder::default()));

    // Special and added tokens.
    let mut special_ids: Vec<u32> = types
        .iter()
        .enumerate()
        .filter(|(_, &t)| t == TOKEN_CONTROL)
        .map(|(i, _)| i as u32)
        .collect();
    for key in [
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id",
        "tokenizer.ggml.padding_token_id",
    ] {
        if file.get(key).is_some() {
            let id = file.get_u32(key)?;
            if id as usize >= tokens.len() {
                return Err(err(format!(
                    "{key} = {id} is outside the vocabulary of {} tokens",
                    tokens.len()
                )));
            }
            special_ids.push(id);
        }
    }
    special_ids.sort_unstable();
    special_ids.dedup();
    let special: Vec<AddedToken> = special_ids
        .iter()
        .map(|&id| AddedToken::from(tokens[id as usize], true))
        .collect();
    tok.add_special_tokens(&special);
    let user: Vec<AddedToken> = types
        .iter()
        .enumerate()
        .filter(|(i, &t)| {
            t == TOKEN_USER_DEFINED && special_ids.binary_search(&(*i as u32)).is_err()
        })
        .map(|(i, _)| AddedToken::from(tokens[i], false).normalized(false))
        .collect();
    tok.add_tokens(&user);

    let add_bos = matches!(file.get("tokenizer.ggml.add_bos_token"), Some(v) if v == &crate::GgufValue::Bool(true));
    if add_bos {
        let bos_id = file.get_u32("tokenizer.ggml.bos_token_id")?;
        let bos = tokens
            .get(bos_id as usize)
            .ok_or_else(|| err(format!("bos id {bos_id} outside the vocabulary")))?;
        let post = TemplateProcessing::builder()
            .try_single(format!("{bos} $A"))
            .and_then(|b| b.try_pair(format!("{bos} $A {bos} $B")))
            .map_err(|e| err(format!("bos template: {e}")))?
            .special_tokens(vec![(bos.to_string(), bos_id)])
            .build()
            .map_err(|e| err(format!("bos template: {e}")))?;
        tok.with_post_processor(Some(post));
    }
    Ok(tok)
}

/// Loads a Hugging Face `tokenizer.json`, with its padding and truncation switched off (the
/// trainer batches and truncates itself).
pub fn load_tokenizer_json(path: &Path) -> Result<Tokenizer, FormatError> {
    if !path.is_file() {
        return Err(FormatError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "tokenizer file not found"),
        ));
    }
    let mut tok = Tokenizer::from_file(path).map_err(|e| FormatError::Tokenizer {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    tok.with_padding(None);
    tok.with_truncation(None)
        .map_err(|e| FormatError::Tokenizer {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
    Ok(tok)
}
