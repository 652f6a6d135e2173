//! Link-time optimizer registry.
//!
//! Optimizers are generic over the backend, but `inventory` registers plain values, so an entry
//! holds a backend-free [`OptimizerFactory`]; [`ErasedFactory`] (blanket-implemented here, once,
//! for every factory) instantiates it for each backend compiled into this crate, and
//! [`RegistryBackend`] picks the right one for a given backend type. Plugins only implement
//! [`OptimizerFactory`] and [`AdapterOptimizer`](crate::AdapterOptimizer).

use crate::{AdapterOptimizer, OptimError, Options};
use balora_manifold::{Kind, PluginEntry, Registry, RegistryError};
use burn::tensor::backend::Backend;
use std::sync::OnceLock;

/// Builds an optimizer for any backend.
pub trait OptimizerFactory: Send + Sync + 'static {
    /// The optimizer for backend `B`.
    fn build<B: Backend>(&self) -> Box<dyn AdapterOptimizer<B>>;
}

/// An [`OptimizerFactory`] with its generic method instantiated for each compiled-in backend.
pub trait ErasedFactory: Send + Sync {
    /// For `Flex`.
    #[cfg(feature = "flex")]
    fn build_flex(&self) -> Box<dyn AdapterOptimizer<burn::backend::Flex>>;
    /// For `NdArray`.
    #[cfg(feature = "ndarray")]
    fn build_ndarray(&self) -> Box<dyn AdapterOptimizer<burn::backend::NdArray>>;
    /// For `Wgpu`.
    #[cfg(feature = "wgpu")]
    fn build_wgpu(&self) -> Box<dyn AdapterOptimizer<burn::backend::Wgpu>>;
    /// For `Cuda`.
    #[cfg(feature = "cuda")]
    fn build_cuda(&self) -> Box<dyn AdapterOptimizer<burn::backend::Cuda>>;
    /// For `LibTorch`.
    #[cfg(feature = "tch")]
    fn build_tch(&self) -> Box<dyn AdapterOptimizer<burn::backend::LibTorch>>;
}

impl<T: OptimizerFactory> ErasedFactory for T {
    #[cfg(feature = "flex")]
    fn build_flex(&self) -> Box<dyn AdapterOptimizer<burn::backend::Flex>> {
        self.build()
    }
    #[cfg(feature = "ndarray")]
    fn build_ndarray(&self) -> Box<dyn AdapterOptimizer<burn::backend::NdArray>> {
        self.build()
    }
    #[cfg(feature = "wgpu")]
    fn build_wgpu(&self) -> Box<dyn AdapterOptimizer<burn::backend::Wgpu>> {
        self.build()
    }
    #[cfg(feature = "cuda")]
    fn build_cuda(&self) -> Box<dyn AdapterOptimizer<burn::backend::Cuda>> {
        self.build()
    }
    #[cfg(feature = "tch")]
    fn build_tch(&self) -> Box<dyn AdapterOptimizer<burn::backend::LibTorch>> {
        self.build()
    }
}

/// A backend that registered optimizers can be instantiated for (the inner, non-autodiff one).
pub trait RegistryBackend: Backend {
    /// Instantiates `factory` for this backend.
    fn instantiate(factory: &dyn ErasedFactory) -> Box<dyn AdapterOptimizer<Self>>;
}

#[cfg(feature = "flex")]
impl RegistryBackend for burn::backend::Flex {
    fn instantiate(f: &dyn ErasedFactory) -> Box<dyn AdapterOptimizer<Self>> {
        f.build_flex()
    }
}
#[cfg(feature = "ndarray")]
impl RegistryBackend for burn::backend::NdArray {
    fn instantiate(f: &dyn ErasedFactory) -> Box<dyn AdapterOptimizer<Self>> {
        f.build_ndarray()
    }
}
#[cfg(feature = "wgpu")]
impl RegistryBackend for burn::backend::Wgpu {
    fn instantiate(f: &dyn ErasedFactory) -> Box<dyn AdapterOptimizer<Self>> {
        f.build_wgpu()
    }
}
#[cfg(feature = "cuda")]
impl RegistryBackend for burn::backend::Cuda {
    fn instantiate(f: &dyn ErasedFactory) -> Box<dyn AdapterOptimizer<Self>> {
        f.build_cuda()
    }
}
#[cfg(feature = "tch")]
impl RegistryBackend for burn::backend::LibTorch {
    fn instantiate(f: &dyn ErasedFactory) -> Box<dyn AdapterOptimizer<Self>> {
        f.build_tch()
    }
}

/// The optimizer plugin kind: an instance of the generic [`Registry`] of `balora-manifold`.
pub struct Optimizers;

impl Kind for Optimizers {
    const WHAT: &'static str = "optimizer";
    type Build = fn(&Options) -> Result<Box<dyn ErasedFactory>, OptimError>;
    fn inventory() -> &'static inventory::Registry {
        static REGISTRY: inventory::Registry = inventory::Registry::new();
        &REGISTRY
    }
    fn cache() -> &'static OnceLock<Vec<&'static PluginEntry<Self>>> {
        static CACHE: OnceLock<Vec<&'static PluginEntry<Optimizers>>> = OnceLock::new();
        &CACHE
    }
}

/// A registered optimizer (name, description, options, build: parses options, rejecting
/// unknown keys, into a factory; origin).
pub type OptimizerEntry = PluginEntry<Optimizers>;

/// Registers an optimizer: `name`, `description`, `options`, `build` as in [`OptimizerEntry`];
/// the origin is the invoking module (`module_path!()`).
#[macro_export]
macro_rules! register_optimizer {
    ($($field:ident : $value:expr),+ $(,)?) => {
        $crate::inventory::submit! {
            $crate::OptimizerEntry { $($field: $value,)+ origin: ::core::module_path!() }
        }
    };
}

/// All registered optimizers, sorted by name.
pub fn optimizer_entries() -> impl Iterator<Item = &'static OptimizerEntry> {
    Registry::<Optimizers>::entries()
}

/// Builds a registered optimizer by name for backend `B`; the error lists the registered names,
/// or names both crates when one name is registered twice.
pub fn build_optimizer<B: RegistryBackend>(
    name: &str,
    options: &Options,
) -> Result<Box<dyn AdapterOptimizer<B>>, OptimError> {
    let entry = match Registry::<Optimizers>::find(name) {
        Ok(entry) => entry,
        Err(RegistryError::Unknown { name, known, .. }) => {
            return Err(OptimError::Unknown { name, known })
        }
        Err(e) => return Err(OptimError::Registry(e)),
    };
    let factory = (entry.build)(options)?;
    Ok(B::instantiate(factory.as_ref()))
}
