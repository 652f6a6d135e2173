//! Link-time registry of manifolds (`inventory`).

use crate::{Manifold, ManifoldError, OptionDoc, Options};

/// A manifold registered with `inventory::submit!`, from this or any linked crate.
///
/// ```
/// use balora_manifold::{ManifoldEntry, Unconstrained};
/// balora_manifold::inventory::submit! {
///     ManifoldEntry {
///         name: "doc-example",
///         description: "does nothing (doc example)",
///         options: &[],
///         build: |_opts| Ok(Box::new(Unconstrained)),
///     }
/// }
/// assert!(balora_manifold::manifold_entries().any(|e| e.name == "doc-example"));
/// ```
pub struct ManifoldEntry {
    /// Name used in configs (`manifold.name`).
    pub name: &'static str,
    /// One-line description for `balora plugins`.
    pub description: &'static str,
    /// Documented options.
    pub options: &'static [OptionDoc],
    /// Builds the manifold from its options; must reject unknown keys.
    pub build: fn(&Options) -> Result<Box<dyn Manifold>, ManifoldError>,
}

inventory::collect!(ManifoldEntry);

/// All registered manifolds, sorted by name.
pub fn manifold_entries() -> impl Iterator<Item = &'static ManifoldEntry> {
    let mut v: Vec<_> = inventory::iter::<ManifoldEntry>.into_iter().collect();
    v.sort_by_key(|e| e.name);
    v.into_iter()
}

/// Builds a registered manifold by name; the error lists the registered names.
pub fn build_manifold(name: &str, options: &Options) -> Result<Box<dyn Manifold>, ManifoldError> {
    match manifold_entries().find(|e| e.name == name) {
        Some(entry) => (entry.build)(options),
        None => Err(ManifoldError::Unknown {
            name: name.to_string(),
            known: manifold_entries()
                .map(|e| e.name)
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}
