//! Using balora as a library on **your own** burn model.
//!
//! A small regression MLP (defined here, not one of balora's models) is "pre-trained" (random
//! weights stand in for that), gets LoRA adapters attached to both of its linear layers, and is
//! fine-tuned towards a teacher that differs from it by a low-rank change — with an optimizer and a
//! manifold chosen **by name** from the link-time registries, through the same `TrainStepper` the
//! `balora` trainer uses.
//!
//! ```sh
//! cargo run --example custom_model -p balora                         # loraplus + balanced
//! cargo run --example custom_model -p balora -- adamw unconstrained  # plain LoRA
//! cargo run --example custom_model -p balora -- riemannian orthonormal
//! ```

// Plugin crates register their optimizers/manifolds with `inventory`; naming them here keeps
// them linked (a crate only listed in Cargo.toml is dropped by the linker, registrations and all).
extern crate balora_plugin_loraplus;
extern crate balora_plugin_orthonormal;
extern crate balora_plugin_riemannian;

use balora::adapter::{collect_params, LoraConfig, LoraConfigError, LoraLinear};
use balora::manifold::{OptionValue, Options};
use balora::train::TrainStepper;
use burn::backend::{Autodiff, NdArray};
use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig, Relu};
use burn::optim::GradientsParams;
use burn::tensor::{backend::Backend, Distribution, ElementConversion, Tensor};

type B = Autodiff<NdArray>;

/// The user's model, as they wrote it: plain burn.
#[derive(Module, Debug)]
struct Mlp<B: Backend> {
    fc1: Linear<B>,
    act: Relu,
    fc2: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    fn new(d_in: usize, hidden: usize, d_out: usize, device: &B::Device) -> Self {
        Self {
            fc1: LinearConfig::new(d_in, hidden).init(device),
            act: Relu::new(),
            fc2: LinearConfig::new(hidden, d_out).init(device),
        }
    }

    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.fc2.forward(self.act.forward(self.fc1.forward(x)))
    }

    /// Attaching adapters: each `Linear` becomes a `LoraLinear` (frozen base + trainable A, B).
    /// Each layer's rank, scale and initialisation come from `cfg.resolve(<module path>)`, so
    /// `rank_pattern` / `alpha_pattern` work for custom models too; a bad config is an error.
    fn with_adapters(
        self,
        cfg: &LoraConfig,
        device: &B::Device,
    ) -> Result<MlpWithAdapters<B>, LoraConfigError> {
        Ok(MlpWithAdapters {
            fc1: LoraLinear::from_base(self.fc1).with_adapter(&cfg.resolve("fc1")?, device),
            act: self.act,
            fc2: LoraLinear::from_base(self.fc2).with_adapter(&cfg.resolve("fc2")?, device),
        })
    }
}

/// The same model with adapters. balora finds the pairs by their field names (`lora_a`,
/// `lora_b` under one module path), so any burn module that holds `LoraLinear`s works.
#[derive(Module, Debug)]
struct MlpWithAdapters<B: Backend> {
    fc1: LoraLinear<B>,
    act: Relu,
    fc2: LoraLinear<B>,
}

impl<B: Backend> MlpWithAdapters<B> {
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.fc2.forward(self.act.forward(self.fc1.forward(x)))
    }
}

/// `W + u·vᵀ` with u, v of rank `k`: the teacher's low-rank change to a layer.
fn perturbed<B: Backend>(layer: &Linear<B>, k: usize, device: &B::Device) -> Linear<B> {
    let [d_in, d_out] = layer.weight.dims();
    let u = Tensor::<B, 2>::random([d_in, k], Distribution::Normal(0.0, 0.5), device);
    let v = Tensor::<B, 2>::random([k, d_out], Distribution::Normal(0.0, 0.5), device);
    Linear {
        weight: Param::from_tensor((layer.weight.val() + u.matmul(v)).detach()),
        bias: layer.bias.clone(),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let optimizer = args.next().unwrap_or_else(|| "loraplus".into());
    let manifold = args.next().unwrap_or_else(|| "balanced".into());
    let device = Default::default();
    <B as Backend>::seed(&device, 7);

    // "Pre-trained" user model and a teacher that differs from it by a rank-2 change per layer.
    let pretrained = Mlp::<B>::new(16, 64, 4, &device);
    let teacher = Mlp {
        fc1: perturbed(&pretrained.fc1, 2, &device),
        act: Relu::new(),
        fc2: perturbed(&pretrained.fc2, 2, &device),
    };
    let x = Tensor::<B, 2>::random([512, 16], Distribution::Normal(0.0, 1.0), &device);
    let y = teacher.forward(x.clone()).detach();

    let cfg = LoraConfig {
        r: 4,
        alpha: 4.0,
        ..Default::default()
    };
    let mut model = pretrained.with_adapters(&cfg, &device)?;
    let adapters: Vec<String> = collect_params(&model)
        .pairs
        .iter()
        .map(|p| p.key.clone())
        .collect();
    println!("adapters found: {adapters:?}");

    // Optimizer and manifold by registered name, options as a config file would give them.
    let (lr, opt_options) = match optimizer.as_str() {
        "loraplus" => (
            2e-3,
            Options::default().with("ratio", OptionValue::Float(8.0)),
        ),
        "riemannian" => (
            1e-2,
            Options::default().with("delta", OptionValue::Float(1e-4)),
        ),
        "sgd" => (5e-3, Options::default()),
        _ => (1e-2, Options::default()),
    };
    let mut stepper =
        TrainStepper::<B>::from_names(&optimizer, &opt_options, &manifold, &Options::default())?;
    println!("optimizer {optimizer} (lr {lr}), manifold {manifold}");

    let mse = |m: &MlpWithAdapters<B>| (m.forward(x.clone()) - y.clone()).powi_scalar(2).mean();
    let first = mse(&model).into_scalar().elem::<f64>();
    println!("step    0  loss {first:.5}");
    let mut last = first;
    for step in 1..=300 {
        let loss = mse(&model);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let (next, report) = stepper.step(lr, model, grads)?;
        model = next;
        if step % 50 == 0 {
            last = mse(&model).into_scalar().elem::<f64>();
            println!(
                "step {step:4}  loss {last:.5}  (adapters re-factored this step: {})",
                report.hook.refactored
            );
        }
    }
    if !last.is_finite() || last >= first {
        return Err(format!("loss did not go down: {first} → {last}").into());
    }
    println!("loss {first:.4} → {last:.4}");
    Ok(())
}
