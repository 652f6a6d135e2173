use balora_adapter::{apply_manifold_autodiff, HookReport, ManifoldHookError};
use balora_manifold::{build_manifold, Manifold, ManifoldError, Options};
use balora_optim::{build_optimizer, OptimError, OptimizerDriver, RegistryBackend, TransportMode};
use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;

/// Errors of a training step.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Optimizer construction.
    #[error("optimizer: {0}")]
    Optim(#[from] OptimError),
    /// Manifold construction.
    #[error("manifold: {0}")]
    Manifold(#[from] ManifoldError),
    /// The hook failed (e.g. NaN factors).
    #[error("manifold hook at step {step}: {source}")]
    Hook {
        /// Step.
        step: u64,
        /// Cause.
        source: ManifoldHookError,
    },
    /// Bad data or an unusable run state.
    #[error("{0}")]
    Data(String),
    /// File system.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// Checkpoint writing or loading.
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
}

/// What one step did.
#[derive(Debug, Clone, Default)]
pub struct StepReport {
    /// Steps taken so far (1-based after the first step).
    pub step: u64,
    /// The manifold hook's report.
    pub hook: HookReport,
    /// Seconds of the optimizer update (host clock; exact on synchronous backends).
    pub optimizer_s: f64,
    /// Seconds of the manifold hook and the moment transport (host clock).
    pub hook_s: f64,
}

impl StepReport {
    /// Adapters the hook balanced only on their active rank (numerical rank of `B·A` below r),
    /// or `None` when the manifold did not run at this step (e.g. plain LoRA).
    pub fn rank_deficient(&self) -> Option<usize> {
        (self.hook.adapters > 0).then_some(self.hook.rank_deficient)
    }

    /// Adapters the hook left unchanged, and so unbalanced, because `B·A = 0` (e.g. `B = 0`),
    /// or `None` when the manifold did not run at this step.
    pub fn zero_product(&self) -> Option<usize> {
        (self.hook.adapters > 0).then_some(self.hook.zero_product)
    }
}

/// Optimizer + manifold: the data flow `grads → optimizer step → manifold hook → state transport`.
///
/// ```
/// use balora_adapter::{LoraConfig, LoraLinear};
/// use balora_train::TrainStepper;
/// use balora_manifold::Options;
/// use burn::backend::{Autodiff, NdArray};
/// use burn::optim::GradientsParams;
/// use burn::tensor::Tensor;
/// type B = Autodiff<NdArray>;
///
/// let dev = Default::default();
/// let mut model = LoraLinear::<B>::new(6, 5, false, &dev).with_adapter(&LoraConfig { r: 2, ..Default::default() }.resolve("fc").unwrap(), &dev);
/// let mut stepper = TrainStepper::<B>::from_names("adamw", &Options::default(), "balanced", &Options::default()).unwrap();
/// for _ in 0..3 {
///     let loss = model.forward(Tensor::<B, 2>::ones([4, 6], &dev)).powi_scalar(2).mean();
///     let grads = GradientsParams::from_grads(loss.backward(), &model);
///     let (m, _report) = stepper.step(1e-2, model, grads).unwrap();
///     model = m;
/// }
/// assert_eq!(stepper.steps(), 3);
/// ```
pub struct TrainStepper<B: AutodiffBackend> {
    driver: OptimizerDriver<B>,
    manifold: Box<dyn Manifold>,
    step: u64,
}

impl<B: AutodiffBackend> TrainStepper<B>
where
    B::InnerBackend: RegistryBackend,
{
    /// Builds the optimizer and manifold from their registered names, and logs
    /// [`transport_warning`](Self::transport_warning) (once, here, at setup) if there is one.
    pub fn from_names(
        optimizer: &str,
        optimizer_options: &Options,
        manifold: &str,
        manifold_options: &Options,
    ) -> Result<Self, TrainError> {
        let stepper =
            Self::from_names_quiet(optimizer, optimizer_options, manifold, manifold_options)?;
        if let Some(warning) = stepper.transport_warning() {
            tracing::warn!("{warning}");
        }
        Ok(stepper)
    }

    /// [`from_names`](Self::from_names) without the setup warning (for many identical runs
    /// whose caller warns once).
    pub fn from_names_quiet(
        optimizer: &str,
        optimizer_options: &Options,
        manifold: &str,
        manifold_options: &Options,
    ) -> Result<Self, TrainError> {
        Ok(Self::new(
            OptimizerDriver::new(build_optimizer::<B::InnerBackend>(
                optimizer,
                optimizer_options,
            )?),
            build_manifold(manifold, manifold_options)?,
        ))
    }
}

impl<B: AutodiffBackend> TrainStepper<B> {
    /// From an optimizer driver and a manifold.
    pub fn new(driver: OptimizerDriver<B>, manifold: Box<dyn Manifold>) -> Self {
        Self {
            driver,
            manifold,
            step: 0,
        }
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Sets the step counter (when resuming).
    pub fn set_steps(&mut self, step: u64) {
        self.step = step;
    }

    /// The optimizer driver (to read its state).
    pub fn driver(&self) -> &OptimizerDriver<B> {
        &self.driver
    }

    /// The optimizer driver (state save/load).
    pub fn driver_mut(&mut self) -> &mut OptimizerDriver<B> {
        &mut self.driver
    }

    /// The manifold.
    pub fn manifold(&self) -> &dyn Manifold {
        self.manifold.as_ref()
    }

    /// A warning when the optimizer keeps moments but does not transport them while the
    /// manifold uses the canonical gauge, which flips the signs (and at ties the order) of the
    /// factors' rows from one step to the next: the moments then point the wrong way for those
    /// rows (about 100× worse than with transport on the synthetic experiment; see
    /// `docs/transport.md`). `None` otherwise.
    pub fn transport_warning(&self) -> Option<String> {
        let canonical = self.manifold.name() == "balanced(canonical)";
        let optimizer = &self.driver.inner;
        (canonical && optimizer.moment_transport() == Some(TransportMode::Off)).then(|| {
            format!(
                "optimizer `{}` keeps moments but does not transport them, and the canonical \
                 gauge re-orients the adapters' factors every step, so the moments point the \
                 wrong way (about 100x worse on the synthetic experiment): set \
                 `transport = true` in the optimizer options, or use `gauge = \"closest\"`",
                optimizer.name()
            )
        })
    }

    /// One step: optimizer update, then the manifold hook, then state transport.
    pub fn step<M: AutodiffModule<B>>(
        &mut self,
        lr: f64,
        module: M,
        grads: GradientsParams,
    ) -> Result<(M, StepReport), TrainError> {
        let t0 = std::time::Instant::now();
        let module = self.driver.step(lr, module, grads);
        let t1 = std::time::Instant::now();
        self.step += 1;
        let (module, hook) = apply_manifold_autodiff(module, self.manifold.as_ref(), self.step)
            .map_err(|source| TrainError::Hook {
                step: self.step,
                source,
            })?;
        self.driver.on_refactor(&hook.transforms);
        let hook_s = t1.elapsed().as_secs_f64();
        let optimizer_s = (t1 - t0).as_secs_f64();
        if hook.rank_deficient > 0 {
            tracing::debug!(
                step = self.step,
                count = hook.rank_deficient,
                "rank-deficient adapters balanced on their active rank"
            );
        }
        Ok((
            module,
            StepReport {
                step: self.step,
                hook,
                optimizer_s,
                hook_s,
            },
        ))
    }
}
