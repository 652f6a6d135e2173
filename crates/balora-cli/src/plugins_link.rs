//! Plugins linked into the `balora` binary.
//!
//! `inventory` registrations live in the plugin crates' object files; the linker drops a crate
//! that is only listed in Cargo.toml and never referenced, and its `inventory::submit!` with it.
//! One `extern crate` per plugin keeps each one linked, so `balora plugins` lists it and configs
//! can name it. To add a plugin: add it to Cargo.toml and a line here.

extern crate balora_plugin_loraplus;
extern crate balora_plugin_orthonormal;
extern crate balora_plugin_riemannian;
