//! Link-time optimizer registry.
//!
//! Optimizers are generic over the backend, but `inventory` registers plain values, so an entry
//! holds a backend-free [`OptimizerFactory`]; [`ErasedFactory`] (blanket-implemented here, once,
//! for every factory) instantiates it for each backend compiled into this crate, and
//! [`RegistryBackend`] picks the right one for a given backend type. Plugins only implement
//! [`OptimizerFactory`] and [`AdapterOptimizer`](crate::AdapterOptimizer).

use crate::{AdapterOptimizer, OptimError, Options};
use balora_manifold::OptionDoc;
use burn::tensor::backend::Backend;

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

/// An optimizer registered with `inventory::submit!`.
pub struct OptimizerEntry {
    /// Name used in configs (`optimizer.name`).
    pub name: &'static str,
    /// One-line description for `balora plugins`.
    pub description: &'static str,
    /// Documented options.
    pub options: &'static [OptionDoc],
    /// Parses options (rejecting unknown keys) into a factory.
    pub build: fn(&Options) -> Result<Box<dyn ErasedFactory>, OptimError>,
}

inventory::collect!(OptimizerEntry);

/// All registered optimizers, sorted by name.
pub fn optimizer_entries() -> impl Iterator<Item = &'static OptimizerEntry> {
    let mut v: Vec<_> = inventory::iter::<OptimizerEntry>.into_iter().collect();
    v.sort_by_key(|e| e.name);
    v.into_iter()
}

/// Builds a registered optimizer by name for backend `B`; the error lists the registered names.
pub fn build_optimizer<B: RegistryBackend>(
    name: &str,
    options: &Options,
) -> Result<Box<dyn AdapterOptimizer<B>>, OptimError> {
    let entry = optimizer_entries()
        .find(|e| e.name == name)
        .ok_or_else(|| OptimError::Unknown {
            name: name.to_string(),
            known: optimizer_entries()
                .map(|e| e.name)
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let factory = (entry.build)(options)?;
    Ok(B::instantiate(factory.as_ref()))
}
