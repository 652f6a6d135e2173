//! Backend-agnostic training for LoRA/BaLoRA.
//!
//! [`TrainStepper`] is the one place where a training step happens: the optimizer updates the
//! parameters, then the manifold hook re-factors every adapter, then the optimizer is told which
//! gauge transforms were applied (for moment transport). Everything is generic over burn's
//! `AutodiffBackend`, so the same code runs on ndarray, wgpu, CUDA and LibTorch.
//!
//! [`synthetic`] is the paper's synthetic experiment (a 20×20 layer, rank 4) built on it.

mod burn_optimizer;
pub mod checkpoint;
pub mod diagnostics;
pub mod distributed;
mod grads;
pub mod loss;
pub mod plot;
pub mod report;
mod runstate;
mod schedule;
mod stepper;
pub mod synthetic;
mod synthetic_problem;
pub mod tiny;
mod trainer;

pub use burn_optimizer::{BurnOptimizer, BurnOptimizerRecord};
pub use grads::clip_grad_norm;
pub use runstate::{PROGRESS_EVERY_S, PROGRESS_EVERY_STEPS};
pub use schedule::LrSchedule;
pub use stepper::{StepReport, TrainError, TrainStepper};
pub use trainer::{evaluate, train, Device, MetricRecord, Objective, RunOptions, TrainOutcome};
