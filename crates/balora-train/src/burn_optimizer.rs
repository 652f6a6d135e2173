//! balora's optimizers and manifold hook behind burn's [`Optimizer`] trait, so burn-train's
//! `Learner` (or any burn code written against `Optimizer<M, B>`) can fine-tune with BaLoRA.
//!
//! [`BurnOptimizer::step`](Optimizer::step) runs exactly [`TrainStepper::step`]: the optimizer
//! update, then the manifold hook, then the moment transport. Its record is the optimizer state
//! that balora's own checkpoints hold ([`AdapterOptimizer::state`]) plus the step counter,
//! saved at the state's own precision whatever burn's `PrecisionSettings`, so a resumed run is
//! bit-exact.

use crate::{StepReport, TrainError, TrainStepper};
use balora_manifold::Options;
use balora_optim::{AdapterOptimizer, RegistryBackend};
use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::{GradientsParams, LearningRate, MultiGradientsParams, Optimizer};
use burn::record::{PrecisionSettings, Record};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

type MakeStepper<B> = dyn Fn() -> Result<TrainStepper<B>, TrainError> + Send + Sync;

/// A [`TrainStepper`] as a burn [`Optimizer`]: hand it to burn-train's `Learner` like burn's
/// own `AdamConfig::new().init()`.
///
/// burn's trait wants `Clone` (the `Learner` clones its optimizer to load a record), and an
/// optimizer plugin is a trait object that cannot be cloned, so a `BurnOptimizer` keeps the
/// recipe of its stepper: a clone is a freshly built stepper loaded with this one's state (the
/// same state a checkpoint holds), a deep copy like burn's own optimizers.
///
/// **Errors.** burn's trait cannot return one. A step whose manifold hook fails (non-finite
/// factors: the run has diverged) panics with the step number and the adapter, as burn itself
/// panics on a run it cannot continue; the `Learner`'s last checkpoint stays intact. A record
/// of another optimizer or manifold panics on load. Code that drives its own loop can use
/// [`try_step`](Self::try_step) and [`try_load_record`](Self::try_load_record) instead, which
/// return the error.
///
/// ```
/// use balora_adapter::{LoraConfig, LoraLinear};
/// use balora_manifold::Options;
/// use balora_train::BurnOptimizer;
/// use burn::backend::{Autodiff, NdArray};
/// use burn::optim::{GradientsParams, Optimizer};
/// use burn::tensor::Tensor;
/// type B = Autodiff<NdArray>;
///
/// let dev = Default::default();
/// let lora = LoraConfig { r: 2, ..Default::default() }.resolve("fc").unwrap();
/// let mut model = LoraLinear::<B>::new(6, 5, false, &dev).with_adapter(&lora, &dev);
/// let no = Options::default();
/// let mut optim = BurnOptimizer::<B>::from_names("adamw", &no, "balanced", &no).unwrap();
/// for _ in 0..3 {
///     let loss = model.forward(Tensor::<B, 2>::ones([4, 6], &dev)).powi_scalar(2).mean();
///     let grads = GradientsParams::from_grads(loss.backward(), &model);
///     model = optim.step(1e-2, model, grads); // AdamW, then BaLoRA's re-balancing
/// }
/// let record = Optimizer::<LoraLinear<B>, B>::to_record(&optim);
/// assert_eq!(record.step, 3);
/// let resumed = BurnOptimizer::<B>::from_names("adamw", &no, "balanced", &no).unwrap();
/// let resumed = Optimizer::<LoraLinear<B>, B>::load_record(resumed, record);
/// assert_eq!(resumed.steps(), 3);
/// ```
pub struct BurnOptimizer<B: AutodiffBackend> {
    make: Arc<MakeStepper<B>>,
    stepper: TrainStepper<B>,
    /// A loaded record not yet on a device: the optimizer state is put on the module's device
    /// at the next step (burn's `load_record` gets no device).
    pending: Option<BurnOptimizerRecord>,
    last: Option<StepReport>,
}

/// The record of a [`BurnOptimizer`]: what balora's checkpoints hold for the optimizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BurnOptimizerRecord {
    /// `"<optimizer> + <manifold>"` (checked on load).
    pub method: String,
    /// Steps taken (the manifold's schedule and the optimizer's bias correction follow it).
    pub step: u64,
    /// [`AdapterOptimizer::state`]: named host tensors, kept at their own dtype.
    pub state: Vec<(String, TensorData)>,
}

/// Saved as is under every `PrecisionSettings`: a half-precision optimizer state would not
/// resume bit-exactly.
impl<B: Backend> Record<B> for BurnOptimizerRecord {
    type Item<S: PrecisionSettings> = BurnOptimizerRecord;

    fn into_item<S: PrecisionSettings>(self) -> Self::Item<S> {
        self
    }

    fn from_item<S: PrecisionSettings>(item: Self::Item<S>, _device: &B::Device) -> Self {
        item
    }
}

impl<B: AutodiffBackend> BurnOptimizer<B>
where
    B::InnerBackend: RegistryBackend,
{
    /// Builds the optimizer and manifold from their registered names, like
    /// [`TrainStepper::from_names`] (whose transport warning is logged here, once).
    pub fn from_names(
        optimizer: &str,
        optimizer_options: &Options,
        manifold: &str,
        manifold_options: &Options,
    ) -> Result<Self, TrainError> {
        let stepper =
            TrainStepper::from_names(optimizer, optimizer_options, manifold, manifold_options)?;
        let (o, oo, m, mo) = (
            optimizer.to_string(),
            optimizer_options.clone(),
            manifold.to_string(),
            manifold_options.clone(),
        );
        let make = move || TrainStepper::from_names_quiet(&o, &oo, &m, &mo);
        Ok(Self::with_stepper(Arc::new(make), stepper))
    }
}

impl<B: AutodiffBackend> BurnOptimizer<B> {
    /// From a function that builds the stepper (for steppers that are not built by name, e.g.
    /// [`TrainStepper::new`] with a manifold of one's own); it is called now and on every clone.
    pub fn new<F>(make: F) -> Result<Self, TrainError>
    where
        F: Fn() -> Result<TrainStepper<B>, TrainError> + Send + Sync + 'static,
    {
        let stepper = make()?;
        Ok(Self::with_stepper(Arc::new(make), stepper))
    }

    fn with_stepper(make: Arc<MakeStepper<B>>, stepper: TrainStepper<B>) -> Self {
        Self {
            make,
            stepper,
            pending: None,
            last: None,
        }
    }

    /// Steps taken (those of a loaded record included).
    pub fn steps(&self) -> u64 {
        match &self.pending {
            Some(r) => r.step,
            None => self.stepper.steps(),
        }
    }

    /// What the last step did (the hook's report and timings); `None` before the first step.
    pub fn last_report(&self) -> Option<&StepReport> {
        self.last.as_ref()
    }

    /// `"<optimizer> + <manifold>"`.
    pub fn method(&self) -> String {
        let optimizer: &dyn AdapterOptimizer<B::InnerBackend> =
            self.stepper.driver().inner.as_ref();
        format!("{} + {}", optimizer.name(), self.stepper.manifold().name())
    }

    /// The state as a record (see [`BurnOptimizerRecord`]).
    pub fn record(&self) -> BurnOptimizerRecord {
        if let Some(r) = &self.pending {
            return r.clone();
        }
        BurnOptimizerRecord {
            method: self.method(),
            step: self.stepper.steps(),
            state: self.stepper.driver().inner.state(),
        }
    }

    /// Loads a record, or says why it does not fit. The tensors go to the module's device at
    /// the next step, where a state that does not fit the optimizer is reported.
    pub fn try_load_record(mut self, record: BurnOptimizerRecord) -> Result<Self, TrainError> {
        let method = self.method();
        if record.method != method {
            return Err(TrainError::Data(format!(
                "optimizer record of `{}` loaded into `{method}`",
                record.method
            )));
        }
        self.pending = Some(record);
        Ok(self)
    }

    /// One step, [`TrainStepper::step`], with its error.
    pub fn try_step<M: AutodiffModule<B>>(
        &mut self,
        lr: LearningRate,
        module: M,
        grads: GradientsParams,
    ) -> Result<M, TrainError> {
        if let Some(record) = self.pending.take() {
            let device = module.devices().into_iter().next().unwrap_or_default();
            self.stepper
                .driver_mut()
                .inner
                .load_state(record.state, &device)?;
            self.stepper.set_steps(record.step);
        }
        let (module, report) = self.stepper.step(lr, module, grads)?;
        self.last = Some(report);
        Ok(module)
    }
}

impl<B: AutodiffBackend> Clone for BurnOptimizer<B> {
    fn clone(&self) -> Self {
        let stepper = (self.make)()
            .unwrap_or_else(|e| panic!("rebuilding the optimizer to clone it failed: {e}"));
        Self {
            make: self.make.clone(),
            stepper,
            pending: Some(self.record()),
            last: self.last.clone(),
        }
    }
}

impl<M: AutodiffModule<B>, B: AutodiffBackend> Optimizer<M, B> for BurnOptimizer<B> {
    type Record = BurnOptimizerRecord;

    /// [`TrainStepper::step`]; panics where it would return an error (see the type's doc).
    fn step(&mut self, lr: LearningRate, module: M, grads: GradientsParams) -> M {
        self.try_step(lr, module, grads)
            .unwrap_or_else(|e| panic!("balora optimizer `{}`: {e}", self.method()))
    }

    /// Gradients from several devices are summed per parameter on one device (burn's rule),
    /// moved to the parameter's device, then stepped like [`step`](Optimizer::step).
    fn step_multi(&mut self, lr: LearningRate, module: M, grads: MultiGradientsParams) -> M {
        let mut gather = Gather {
            multi: grads,
            out: GradientsParams::new(),
        };
        module.visit(&mut gather);
        Optimizer::<M, B>::step(self, lr, module, gather.out)
    }

    fn to_record(&self) -> Self::Record {
        self.record()
    }

    fn load_record(self, record: Self::Record) -> Self {
        self.try_load_record(record)
            .unwrap_or_else(|e| panic!("balora optimizer: {e}"))
    }
}

/// Turns burn's per-device gradients into one [`GradientsParams`].
struct Gather {
    multi: MultiGradientsParams,
    out: GradientsParams,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Gather {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some((grad, _)) = self.multi.remove::<B::InnerBackend, D>(param.id) {
            let grad = grad.to_device(&param.val().device());
            self.out.register::<B::InnerBackend, D>(param.id, grad);
        }
    }
}
