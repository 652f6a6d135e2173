//! `balora_train::distributed::GradLayout`: the flat gradient buffer of data-parallel training is
//! laid out by module path, so models built in different processes (different `ParamId`s)
//! flatten in the same order; folding slots is left-to-right gradient accumulation.

use balora_adapter::{collect_params, LoraConfig, LoraLinear};
use balora_train::distributed::GradLayout;
use burn::backend::{Autodiff, NdArray};
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

type B = Autodiff<NdArray>;

#[derive(Module, Debug)]
struct Two<B: Backend> {
    z: LoraLinear<B>,
    a: LoraLinear<B>,
}

/// Deterministic values in visit order (the RNG is shared with concurrently running tests).
struct Fill(f32);

impl burn::module::ModuleMapper<B> for Fill {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<Tensor<B, D>>,
    ) -> burn::module::Param<Tensor<B, D>> {
        let (id, old, mapper) = param.consume();
        let n = old.shape().num_elements();
        let v: Vec<f32> = (0..n)
            .map(|i| {
                self.0 += 1.0;
                ((self.0 * 0.37 + i as f32).sin() * 0.5).clamp(-0.5, 0.5)
            })
            .collect();
        let t =
            Tensor::<B, 1>::from_data(TensorData::new(v, [n]), &old.device()).reshape(old.shape());
        let t = if old.is_require_grad() {
            t.require_grad()
        } else {
            t
        };
        burn::module::Param::from_mapped_value(id, t, mapper)
    }
}

fn two(dev: &burn::tensor::Device<B>) -> Two<B> {
    let cfg = LoraConfig {
        r: 2,
        ..Default::default()
    };
    let lin = |name: &str| {
        LoraLinear::<B>::new(4, 3, false, dev).with_adapter(&cfg.resolve(name).unwrap(), dev)
    };
    Two {
        z: lin("z"),
        a: lin("a"),
    }
    .map(&mut Fill(0.0))
}

fn grads(m: &Two<B>, dev: &burn::tensor::Device<B>) -> GradientsParams {
    let x = Tensor::<B, 2>::from_data([[1.0, -2.0, 0.5, 3.0]], dev);
    let y = m.z.forward(x.clone()).sum() + m.a.forward(x).powi_scalar(2).sum();
    GradientsParams::from_grads(y.backward(), m)
}

#[test]
fn models_with_different_param_ids_flatten_in_the_same_order() {
    let dev = Default::default();
    let (m1, m2) = (two(&dev), two(&dev));
    let (l1, l2) = (GradLayout::new(&m1), GradLayout::new(&m2));
    assert_eq!(
        l1.paths(),
        [
            "a.adapter.lora_a",
            "a.adapter.lora_b",
            "z.adapter.lora_a",
            "z.adapter.lora_b"
        ]
    );
    assert_eq!(l1.paths(), l2.paths());
    assert_ne!(
        collect_params(&m1).pairs[0].a_id,
        collect_params(&m2).pairs[0].a_id,
        "fresh ids per model"
    );
    let f1 = l1.flatten::<NdArray>(&grads(&m1, &dev));
    let f2 = l2.flatten::<NdArray>(&grads(&m2, &dev));
    assert_eq!(f1.len(), l1.buffer_len());
    assert!(f1.iter().zip(&f2).all(|(a, b)| a.to_bits() == b.to_bits()));
    assert!(
        f1[l1.values_len()..].iter().all(|&f| f == 1.0),
        "every gradient present"
    );
    // Back into the other model's ids: the same values.
    let g = l2.unflatten::<NdArray>(&f1);
    assert_eq!(l2.flatten::<NdArray>(&g), f2);
}

#[test]
fn fold_is_left_to_right_accumulation_and_skips_missing() {
    let dev = Default::default();
    let m = two(&dev);
    let l = GradLayout::new(&m);
    let g = l.flatten::<NdArray>(&grads(&m, &dev));
    let w = l.buffer_len();
    let mut absent = vec![-0.0f32; w];
    absent[..l.values_len()].fill(5.0); // values without flags are ignored
    let slots: Vec<f32> = [g.clone(), absent, g.clone()].concat();
    let out = l.fold(&slots);
    let twice: Vec<f32> = g[..l.values_len()].iter().map(|x| x + x).collect();
    assert_eq!(&out[..l.values_len()], &twice[..]);
    assert_eq!(w, slots.len() / 3);
}
