//! Hostile-input testing for balora's file readers, on stable Rust (no cargo-fuzz).
//!
//! * [`gguf`]: a small GGUF writer and [`gguf::tiny_llama`], a valid 1-layer Llama GGUF with a
//!   byte-level BPE tokenizer (~3 KB), whose settings each test can corrupt;
//! * [`adapter`]: PEFT adapter files (`adapter_model.safetensors` + `adapter_config.json`),
//!   including shapes the `safetensors` crate accepts but no model can use (`[0, 2^40]`);
//! * [`mutate`]: a deterministic mutator (bit flips, truncation, length-field overwrites with
//!   0 / 1 / `0xFFFFFFFF` / `u64::MAX`, splices) driven by a seeded xorshift generator.
//!
//! The tests in `tests/` run every reader on the committed seed corpus (`corpus/`) and on
//! mutations of it, failing on any panic; see `tests/fuzz.rs` for the time budget
//! (`BALORA_FUZZ_SECS`).

pub mod adapter;
pub mod gguf;
pub mod mutate;
