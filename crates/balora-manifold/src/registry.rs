//! Link-time plugin registries (`inventory`): one generic [`Registry`] of [`PluginEntry`]s,
//! instantiated for manifolds ([`Manifolds`], here) and optimizers (`balora_optim::Optimizers`).
//!
//! An entry carries its name, description, option docs, build function and the module that
//! registered it (`origin`, filled in by [`register_manifold!`](crate::register_manifold) /
//! `balora_optim::register_optimizer!`), so two crates registering the same name are an error
//! that names both — at the first lookup, i.e. when a run builds its optimizer and manifold.
//!
//! ```
//! use balora_manifold::{register_manifold, Manifolds, Registry, Unconstrained};
//! register_manifold! {
//!     name: "doc-example",
//!     description: "does nothing (doc example)",
//!     options: &[],
//!     build: |_opts| Ok(Box::new(Unconstrained)),
//! }
//! let e = Registry::<Manifolds>::find("doc-example").unwrap();
//! assert_eq!(e.origin, module_path!());
//! ```

use crate::{Manifold, ManifoldError, OptionDoc, Options};
use std::marker::PhantomData;
use std::sync::OnceLock;

/// A kind of plugin (manifolds, optimizers): what its build function returns, and where its
/// registrations are collected.
pub trait Kind: Sized + Sync + 'static {
    /// `"manifold"`, `"optimizer"`: for errors.
    const WHAT: &'static str;
    /// The build function: parses options (rejecting unknown keys) into the plugin.
    type Build: Copy + Send + Sync + 'static;
    /// The `inventory` registry of this kind (one `static` per kind).
    fn inventory() -> &'static inventory::Registry;
    /// Entries registered by other means than [`PluginEntry`] (kept for compatibility).
    fn extra() -> &'static [PluginEntry<Self>] {
        &[]
    }
    /// Cache of the sorted entries.
    fn cache() -> &'static OnceLock<Vec<&'static PluginEntry<Self>>>;
}

/// One registered plugin.
pub struct PluginEntry<K: Kind> {
    /// Name used in configs (`[manifold] name`, `[optimizer] name`).
    pub name: &'static str,
    /// One-line description for `balora plugins`.
    pub description: &'static str,
    /// Documented options.
    pub options: &'static [OptionDoc],
    /// Builds the plugin from its options.
    pub build: K::Build,
    /// `module_path!()` of the registration; its first segment is the crate.
    pub origin: &'static str,
}

impl<K: Kind> PluginEntry<K> {
    /// The registering crate (first segment of [`origin`](Self::origin)).
    pub fn crate_name(&self) -> &'static str {
        self.origin.split("::").next().unwrap_or(self.origin)
    }
}

impl<K: Kind> inventory::Collect for PluginEntry<K> {
    fn registry() -> &'static inventory::Registry {
        K::inventory()
    }
}

/// A registry lookup that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// No entry of that name.
    #[error("unknown {what} `{name}`; registered {what}s: {known}")]
    Unknown {
        /// `"manifold"` / `"optimizer"`.
        what: &'static str,
        /// The requested name.
        name: String,
        /// Comma-separated registered names.
        known: String,
    },
    /// Two linked crates register the same name.
    #[error("{what} `{name}` is registered twice: by `{first}` and by `{second}`; rename one (a plugin's name must be unique among all linked crates)")]
    Duplicate {
        /// `"manifold"` / `"optimizer"`.
        what: &'static str,
        /// The name.
        name: &'static str,
        /// Origin (module path) of one registration.
        first: &'static str,
        /// Origin of the other.
        second: &'static str,
    },
}

/// The registry of plugin kind `K`.
pub struct Registry<K>(PhantomData<K>);

impl<K: Kind> Registry<K> {
    /// All registered entries, sorted by name (then origin); duplicates included.
    pub fn entries() -> impl Iterator<Item = &'static PluginEntry<K>> {
        K::cache()
            .get_or_init(|| {
                let mut v: Vec<&'static PluginEntry<K>> = inventory::iter::<PluginEntry<K>>
                    .into_iter()
                    .chain(K::extra())
                    .collect();
                v.sort_by_key(|e| (e.name, e.origin));
                v
            })
            .iter()
            .copied()
    }

    /// Every name registered once; otherwise the first duplicate with both origins.
    pub fn check_unique() -> Result<(), RegistryError> {
        let v: Vec<_> = Self::entries().collect();
        match v.windows(2).find(|w| w[0].name == w[1].name) {
            None => Ok(()),
            Some(w) => Err(RegistryError::Duplicate {
                what: K::WHAT,
                name: w[0].name,
                first: w[0].origin,
                second: w[1].origin,
            }),
        }
    }

    /// The entry named `name`, after checking that no name is registered twice.
    pub fn find(name: &str) -> Result<&'static PluginEntry<K>, RegistryError> {
        Self::check_unique()?;
        Self::entries()
            .find(|e| e.name == name)
            .ok_or_else(|| RegistryError::Unknown {
                what: K::WHAT,
                name: name.to_string(),
                known: Self::entries()
                    .map(|e| e.name)
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

/// The manifold plugin kind.
pub struct Manifolds;

impl Kind for Manifolds {
    const WHAT: &'static str = "manifold";
    type Build = fn(&Options) -> Result<Box<dyn Manifold>, ManifoldError>;
    fn inventory() -> &'static inventory::Registry {
        static REGISTRY: inventory::Registry = inventory::Registry::new();
        &REGISTRY
    }
    fn cache() -> &'static OnceLock<Vec<&'static PluginEntry<Self>>> {
        static CACHE: OnceLock<Vec<&'static PluginEntry<Manifolds>>> = OnceLock::new();
        &CACHE
    }
}

/// A registered manifold.
pub type ManifoldPlugin = PluginEntry<Manifolds>;

/// Registers a manifold: `name`, `description`, `options`, `build` as in [`PluginEntry`]; the
/// origin is the invoking module (`module_path!()`).
#[macro_export]
macro_rules! register_manifold {
    ($($field:ident : $value:expr),+ $(,)?) => {
        $crate::inventory::submit! {
            $crate::ManifoldPlugin { $($field: $value,)+ origin: ::core::module_path!() }
        }
    };
}

/// All registered manifolds, sorted by name.
pub fn manifold_entries() -> impl Iterator<Item = &'static ManifoldPlugin> {
    Registry::<Manifolds>::entries()
}

/// Builds a registered manifold by name; the error lists the registered names, or names both
/// crates when one name is registered twice.
pub fn build_manifold(name: &str, options: &Options) -> Result<Box<dyn Manifold>, ManifoldError> {
    match Registry::<Manifolds>::find(name) {
        Ok(entry) => (entry.build)(options),
        Err(RegistryError::Unknown { name, known, .. }) => {
            Err(ManifoldError::Unknown { name, known })
        }
        Err(e) => Err(ManifoldError::Registry(e)),
    }
}
