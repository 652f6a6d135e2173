//! An optimizer name registered by two crates is an error naming both, at start-up (its own
//! test binary: the duplicate breaks every lookup in the process).

use balora_optim::{build_optimizer, register_optimizer, OptimizerFactory, Options, SignDescent};
use burn::backend::NdArray;
use burn::tensor::backend::Backend;

struct Again;
impl OptimizerFactory for Again {
    fn build<B: Backend>(&self) -> Box<dyn balora_optim::AdapterOptimizer<B>> {
        Box::new(SignDescent { eps: 1e-8 })
    }
}

// Same name as the LoRA+ plugin, which balora-plugins links.
register_optimizer! {
    name: "loraplus",
    description: "a second `loraplus`, from this test crate",
    options: &[],
    build: |_opts| Ok(Box::new(Again)),
}

#[test]
fn a_duplicate_name_is_an_error_naming_both_crates() {
    let msg = balora_plugins::link().unwrap_err().to_string();
    assert!(
        msg.contains("optimizer `loraplus` is registered twice")
            && msg.contains("`balora_plugin_loraplus`")
            && msg.contains("`duplicate_optimizer`"),
        "{msg}"
    );
    // Start-up fails for any optimizer, not only the duplicated one.
    let err = build_optimizer::<NdArray>("adamw", &Options::default())
        .err()
        .expect("a registry with a duplicate name must not build");
    assert_eq!(err.to_string(), msg);
}
