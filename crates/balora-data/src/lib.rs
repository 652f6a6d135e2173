//! Datasets for fine-tuning with balora.
//!
//! * plain-text corpora for causal LM, tokenized and chunked into fixed-length sequences;
//! * JSONL lines `{"text"}`, `{"prompt","completion"}` or `{"messages":[{role,content}…]}`,
//!   rendered with a chat template ([`ChatTemplate::ChatMl`] for SmolLM2) and with the prompt
//!   tokens masked out of the loss;
//! * classification JSONL `{"text","label"}`;
//! * the pinned data assets `chatterbot` (prompt/completion pairs from YAML dialogues) and
//!   `rotten-tomatoes` (`fresh`/`rotten` review snippets, CSV) read through the same code as
//!   JSONL records ([`assets`]), with strict YAML and CSV readers ([`yaml`], [`csv`]) whose
//!   errors name file and line;
//! * a deterministic seeded split and shuffle, and padded batches with attention masks
//!   ([`Loader`], whose position is saved in checkpoints).
//!
//! [`Dataset::check_fits`] checks the data against the model (ids below the vocabulary size,
//! `data.seq_len` within the context) before any batch is built.
//!
//! Malformed lines are reported with file and line number; above `max_bad_fraction` of bad
//! lines the load fails, so a run never silently drops most of a dataset.
//!
//! ```
//! use balora_data::{Batch, Example, Loader};
//! let examples: Vec<Example> = (0..5u32)
//!     .map(|i| Example::lm(vec![i, i + 1, i + 2], vec![true; 3]))
//!     .collect();
//! let mut loader = Loader::new(examples.len(), 2, 7);
//! let batch = Batch::collate(&loader.next_indices().iter().map(|&i| &examples[i]).collect::<Vec<_>>(), 0);
//! assert_eq!((batch.batch, batch.seq), (2, 3));
//! ```

pub mod assets;
mod batch;
pub mod csv;
mod fit;
mod load;
mod template;
pub mod yaml;

pub use batch::{Batch, Example, Loader, LoaderState, IGNORE_INDEX};
pub use fit::ModelLimits;
pub use load::{load_dataset, DataError, Dataset, Encoder, LineSource};
pub use template::{ChatMessage, ChatTemplate};
