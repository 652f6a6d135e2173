//! Datasets for fine-tuning with balora.
//!
//! * plain-text corpora for causal LM, tokenized and chunked into fixed-length sequences;
//! * JSONL lines `{"text"}`, `{"prompt","completion"}` or `{"messages":[{role,content}…]}`,
//!   rendered with a chat template ([`ChatTemplate::ChatMl`] for SmolLM2) and with the prompt
//!   tokens masked out of the loss;
//! * classification JSONL `{"text","label"}`;
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

mod batch;
mod fit;
mod load;
mod template;

pub use batch::{Batch, Example, Loader, LoaderState, IGNORE_INDEX};
pub use fit::ModelLimits;
pub use load::{load_dataset, DataError, Dataset, Encoder, LineSource};
pub use template::{ChatMessage, ChatTemplate};
