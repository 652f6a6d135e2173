//! `LoraConfig`: PEFT's pattern matching (first match in insertion order, `(.*\.)?(key)$`),
//! the ambiguity rule for unordered (TOML table) patterns, per-layer init σ, and r = 0.
//!
//! The expected values are hand-written from PEFT 0.21.2's `peft.utils.other.get_pattern_key`:
//!
//! ```python
//! for key in pattern_keys:                       # dict insertion order
//!     if re.match(rf"(.*\.)?({key})$", key_to_match): return key
//! return key_to_match                            # → rank_pattern.get(..., r)
//! ```

use balora_adapter::{
    AdapterInit, LayerInit, LoraConfig, LoraConfigError, ModuleSelector, Patterns,
};

fn cfg(r: usize) -> LoraConfig {
    LoraConfig::new(r, 16.0, ModuleSelector::Regex("all-linear".into())).unwrap()
}

#[test]
fn rank_pattern_follows_peft_first_match_in_insertion_order() {
    let mut c = cfg(8);
    // Insertion order: the specific key first, then the generic one.
    c.rank_pattern = Patterns::ordered(vec![
        ("layers.0.self_attn.q_proj".into(), 16),
        ("q_proj".into(), 4),
        (r"layers\.[12]\..*_proj".into(), 2),
        ("mlp.up_proj".into(), 32),
    ]);
    // (module path, rank PEFT gives it): worked by hand from get_pattern_key.
    let table: &[(&str, usize)] = &[
        ("model.layers.0.self_attn.q_proj", 16), // key 1 matches first
        ("model.layers.1.self_attn.q_proj", 4),  // key 1 no; key 2 matches (before key 3)
        ("model.layers.1.self_attn.k_proj", 2),  // only key 3
        ("model.layers.1.mlp.up_proj", 2),       // key 3 is inserted before key 4
        ("model.layers.0.mlp.up_proj", 32),      // key 3 needs layer 1/2; key 4
        ("model.layers.0.self_attn.k_proj", 8),  // nothing: r
        ("model.layers.10.self_attn.q_proj", 4), // "layers.0." is not a suffix of "layers.10."
        ("model.layers.0.self_attn.xq_proj", 8), // "q_proj" must be a whole dotted suffix
        ("q_proj", 4),                           // the whole path is a suffix too
    ];
    for (path, want) in table {
        assert_eq!(c.resolve(path).unwrap().r(), *want, "{path}");
    }
    // The same keys in the other order: PEFT gives the generic key to layer 0 too.
    c.rank_pattern = Patterns::ordered(vec![
        ("q_proj".into(), 4),
        ("layers.0.self_attn.q_proj".into(), 16),
    ]);
    assert_eq!(c.resolve("model.layers.0.self_attn.q_proj").unwrap().r(), 4);
}

#[test]
fn alpha_pattern_and_scale_per_layer() {
    let mut c = cfg(8);
    c.rank_pattern = Patterns::ordered(vec![("v_proj".into(), 4)]);
    c.alpha_pattern = Patterns::ordered(vec![("v_proj".into(), 2.0), ("o_proj".into(), 32.0)]);
    let v = c.resolve("m.layers.0.v_proj").unwrap();
    assert_eq!((v.r(), v.alpha(), v.scale()), (4, 2.0, 0.5));
    let o = c.resolve("m.layers.0.o_proj").unwrap();
    assert_eq!((o.r(), o.alpha(), o.scale()), (8, 32.0, 4.0));
    c.rslora = true;
    let v = c.resolve("m.layers.0.v_proj").unwrap();
    assert_eq!(v.scale(), 2.0 / 2.0); // α/√r = 2/√4
}

#[test]
fn unordered_patterns_reject_an_ambiguous_match_and_accept_disjoint_keys() {
    let mut c = cfg(8);
    c.rank_pattern = Patterns::unordered([
        ("q_proj".to_string(), 4),
        ("layers.0.self_attn.q_proj".to_string(), 16),
    ]);
    let e = c.resolve("model.layers.0.self_attn.q_proj").unwrap_err();
    assert_eq!(e.field, "adapter.rank_pattern");
    assert!(e.message.contains("\"q_proj\"") && e.message.contains("layers.0.self_attn.q_proj"));
    assert!(e.message.contains("ordered array"), "{e}");
    // Unambiguous modules resolve.
    assert_eq!(c.resolve("model.layers.1.self_attn.q_proj").unwrap().r(), 4);
    // Overlapping keys that agree are not ambiguous.
    c.rank_pattern = Patterns::unordered([("q_proj".to_string(), 4), (".*q_proj".to_string(), 4)]);
    assert_eq!(c.resolve("model.layers.0.self_attn.q_proj").unwrap().r(), 4);
}

#[test]
fn gaussian_std_is_one_over_each_layers_own_rank_or_init_std() {
    let mut c = cfg(8);
    c.init = AdapterInit::Gaussian;
    c.rank_pattern = Patterns::ordered(vec![("k_proj".into(), 2)]);
    assert_eq!(
        c.resolve("a.q_proj").unwrap().init(),
        LayerInit::Gaussian { std: 1.0 / 8.0 }
    );
    assert_eq!(
        c.resolve("a.k_proj").unwrap().init(),
        LayerInit::Gaussian { std: 0.5 }
    );
    c.init_std = Some(0.01);
    for p in ["a.q_proj", "a.k_proj"] {
        assert_eq!(
            c.resolve(p).unwrap().init(),
            LayerInit::Gaussian { std: 0.01 }
        );
    }
    c.init = AdapterInit::Kaiming;
    let e = c.validate().unwrap_err();
    assert_eq!(e.field, "adapter.init_std");
    c.init_std = None;
    assert_eq!(c.resolve("a.q_proj").unwrap().init(), LayerInit::Kaiming);
}

#[test]
fn gaussian_init_draws_a_with_the_resolved_std() {
    use burn::backend::NdArray;
    let mut c = cfg(4);
    c.init = AdapterInit::Gaussian;
    c.rank_pattern = Patterns::ordered(vec![("wide".into(), 2)]);
    let dev = Default::default();
    <NdArray as burn::tensor::backend::Backend>::seed(&dev, 7);
    for (path, r, std) in [("m.narrow", 4usize, 0.25), ("m.wide", 2, 0.5)] {
        let l = balora_adapter::LoraLinear::<NdArray>::new(4000, 8, false, &dev)
            .with_adapter(&c.resolve(path).unwrap(), &dev);
        let a: Vec<f32> = l
            .adapter
            .unwrap()
            .lora_a
            .val()
            .into_data()
            .to_vec()
            .unwrap();
        assert_eq!(a.len(), r * 4000);
        let n = a.len() as f64;
        let sd = (a.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / n).sqrt();
        // r·4000 ≥ 8000 draws: the sample σ is within 3% of σ.
        assert!(
            (sd / std - 1.0).abs() < 0.03,
            "{path}: σ̂ = {sd}, want {std}"
        );
    }
}

#[test]
fn rank_zero_is_rejected_everywhere_with_the_field_named() {
    let e: LoraConfigError =
        LoraConfig::new(0, 16.0, ModuleSelector::List(vec!["q".into()])).unwrap_err();
    assert_eq!(e.field, "adapter.r");
    let zero = LoraConfig {
        r: 0,
        ..Default::default()
    };
    assert_eq!(zero.validate().unwrap_err().field, "adapter.r");
    assert_eq!(zero.resolve("q_proj").unwrap_err().field, "adapter.r");
    let mut c = cfg(8);
    c.rank_pattern = Patterns::ordered(vec![("q_proj".into(), 0)]);
    assert_eq!(
        c.validate().unwrap_err().field,
        "adapter.rank_pattern.\"q_proj\""
    );
    assert!(c
        .resolve("x.q_proj")
        .unwrap_err()
        .field
        .starts_with("adapter.rank_pattern"));
    // Every layer that resolves has a finite scale.
    assert!(cfg(1).resolve("x").unwrap().scale().is_finite());
}

#[test]
fn bad_regexes_and_values_name_the_field() {
    let mut c = cfg(8);
    c.rank_pattern = Patterns::ordered(vec![("(q_proj".into(), 4)]);
    assert_eq!(
        c.validate().unwrap_err().field,
        "adapter.rank_pattern.\"(q_proj\""
    );
    let mut c = cfg(8);
    c.alpha_pattern = Patterns::ordered(vec![("q".into(), f64::NAN)]);
    assert_eq!(
        c.validate().unwrap_err().field,
        "adapter.alpha_pattern.\"q\""
    );
    let mut c = cfg(8);
    c.targets = ModuleSelector::Regex("(".into());
    assert_eq!(c.validate().unwrap_err().field, "adapter.targets");
    c.targets = ModuleSelector::List(vec![]);
    assert_eq!(c.validate().unwrap_err().field, "adapter.targets");
    let mut c = cfg(8);
    c.dropout = 1.0;
    assert_eq!(c.validate().unwrap_err().field, "adapter.dropout");
}

#[test]
fn selection_rules() {
    let mut c = LoraConfig::new(2, 4.0, ModuleSelector::List(vec!["q_proj".into()])).unwrap();
    assert!(c
        .selects("model.layers.3.self_attn.q_proj", Some(3), false)
        .unwrap());
    assert!(!c
        .selects("model.layers.3.self_attn.xq_proj", Some(3), false)
        .unwrap());
    c.layers_to_transform = vec![1];
    assert!(!c
        .selects("model.layers.3.self_attn.q_proj", Some(3), false)
        .unwrap());
    assert!(c
        .selects("model.layers.1.self_attn.q_proj", Some(1), false)
        .unwrap());
    c.exclude = ModuleSelector::Regex(r".*\.1\..*".into());
    assert!(!c
        .selects("model.layers.1.self_attn.q_proj", Some(1), false)
        .unwrap());
    let all = cfg(2);
    assert!(all.selects("lm_head", None, false).unwrap());
    assert!(!all.selects("lm_head", None, true).unwrap());
}

#[test]
fn init_scale_multiplies_the_initialisation_of_a() {
    use balora_adapter::LoraAdapter;
    use burn::backend::NdArray;
    use burn::tensor::backend::Backend;
    type B = NdArray;
    let dev = Default::default();
    let draw = |scale: f64, init: AdapterInit| {
        let cfg = LoraConfig {
            r: 4,
            init,
            init_scale: scale,
            ..Default::default()
        };
        B::seed(&dev, 7);
        let a = LoraAdapter::<B>::new(64, 32, &cfg.resolve("q_proj").unwrap(), &dev);
        a.lora_a.val().into_data().to_vec::<f32>().unwrap()
    };
    for init in [AdapterInit::Kaiming, AdapterInit::Gaussian] {
        let (one, three) = (draw(1.0, init), draw(3.0, init));
        for (x, y) in one.iter().zip(&three) {
            assert!((3.0 * x - y).abs() <= 1e-6 * y.abs().max(1e-3), "{x} {y}");
        }
    }
    // Kaiming's bound 1/√in, times the scale.
    let a = draw(2.0, AdapterInit::Kaiming);
    assert!(a.iter().all(|v| v.abs() <= 2.0 / 8.0));
    assert!(a.iter().any(|v| v.abs() > 0.9 * 2.0 / 8.0));
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let cfg = LoraConfig {
            init_scale: bad,
            ..Default::default()
        };
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("adapter.init_scale"), "{e}");
    }
}
