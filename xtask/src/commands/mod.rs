//! One module per `cargo xtask` subcommand; each adds its methods to [`Xtask`](crate::util::Xtask).

pub mod assets;
pub mod bench_backends;
pub mod bench_torch;
pub mod build;
pub mod conformance;
pub mod docs;
pub mod peft_roundtrip;
pub mod setup;
pub mod test;
