//! Plugins linked into the `balora` binary: all of them, through `balora-plugins`.
//!
//! `inventory` registrations live in the plugin crates' object files; the linker drops a crate
//! that is only listed in Cargo.toml and never referenced, and its registrations with it.
//! `balora-plugins` names every plugin (its Cargo.toml is the one list of plugins); naming it
//! here keeps them all linked, so `balora plugins` lists them and configs can name them. Adding a
//! plugin needs no change here: see docs/write-an-optimizer-plugin.md.

extern crate balora_plugins;
