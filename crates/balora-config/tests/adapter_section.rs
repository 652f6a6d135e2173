//! The `[adapter]` section is `balora_adapter::LoraConfig`: the TOML keys of earlier releases
//! still load, the ordered array form of the patterns keeps PEFT's first-match order, r = 0 is
//! an error naming the key.
#![allow(clippy::result_large_err)] // figment::Jail closures return figment::Error

use balora_config::{AdapterInit, JobConfig, ModuleSelector};
use figment::Jail;

#[test]
fn the_existing_toml_keys_load() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "job.toml",
            r#"
            [adapter]
            r = 4
            alpha = 8.0
            rslora = true
            dropout = 0.1
            targets = ["q_proj", "v_proj"]
            exclude = ["layers.0.self_attn.v_proj"]
            layers_to_transform = [0, 1]
            rank_pattern = { v_proj = 2 }
            alpha_pattern = { q_proj = 16.0 }
            modules_to_save = ["score"]
            init = "gaussian"
            init_std = 0.02
            "#,
        )?;
        let c = JobConfig::load(Some("job.toml".as_ref()), &[]).unwrap();
        let a = &c.adapter;
        assert_eq!((a.r, a.alpha, a.rslora, a.dropout), (4, 8.0, true, 0.1));
        assert_eq!(
            a.targets,
            ModuleSelector::List(vec!["q_proj".into(), "v_proj".into()])
        );
        assert_eq!(
            a.exclude,
            ModuleSelector::List(vec!["layers.0.self_attn.v_proj".into()])
        );
        assert_eq!(a.layers_to_transform, [0, 1]);
        assert_eq!(a.rank_pattern.get("v_proj"), Some(&2));
        assert!(!a.rank_pattern.is_ordered());
        assert_eq!(a.alpha_pattern.get("q_proj"), Some(&16.0));
        assert_eq!(a.modules_to_save, ["score"]);
        assert_eq!((a.init, a.init_std), (AdapterInit::Gaussian, Some(0.02)));
        // The merged config written next to a run loads back to the same section.
        jail.create_file("back.toml", &c.to_toml())?;
        let back = JobConfig::load(Some("back.toml".as_ref()), &[]).unwrap();
        assert_eq!(back.adapter, c.adapter);
        Ok(())
    });
}

#[test]
fn the_array_form_keeps_the_written_order() {
    Jail::expect_with(|jail| {
        // Written with the generic key first: PEFT's first match gives layer 0 rank 4, although
        // the keys sorted alphabetically would put "layers..." first (rank 16).
        jail.create_file(
            "job.toml",
            r#"
            [adapter]
            targets = "all-linear"
            rank_pattern = [["q_proj", 4], ["layers.0.self_attn.q_proj", 16]]
            "#,
        )?;
        let c = JobConfig::load(Some("job.toml".as_ref()), &[]).unwrap();
        assert!(c.adapter.rank_pattern.is_ordered());
        assert_eq!(
            c.adapter.targets,
            ModuleSelector::Regex("all-linear".into())
        );
        assert_eq!(
            c.adapter
                .resolve("model.layers.0.self_attn.q_proj")
                .unwrap()
                .r(),
            4
        );
        jail.create_file("back.toml", &c.to_toml())?;
        let back = JobConfig::load(Some("back.toml".as_ref()), &[]).unwrap();
        assert_eq!(back.adapter, c.adapter);
        // The table form cannot know the order: the overlap is an error naming both keys.
        jail.create_file(
            "table.toml",
            r#"
            [adapter]
            targets = "all-linear"
            rank_pattern = { q_proj = 4, "layers.0.self_attn.q_proj" = 16 }
            "#,
        )?;
        let t = JobConfig::load(Some("table.toml".as_ref()), &[]).unwrap();
        let e = t
            .adapter
            .resolve("model.layers.0.self_attn.q_proj")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("adapter.rank_pattern") && e.contains("\"q_proj\""),
            "{e}"
        );
        Ok(())
    });
}

#[test]
fn bad_values_name_the_key() {
    for (set, key) in [
        ("adapter.r=0", "adapter.r"),
        (
            "adapter.rank_pattern={q_proj=0}",
            "adapter.rank_pattern.\"q_proj\"",
        ),
        ("adapter.alpha=0", "adapter.alpha"),
        ("adapter.init_std=0.1", "adapter.init_std"), // init is kaiming
        ("adapter.targets=[]", "adapter.targets"),
    ] {
        let e = JobConfig::load(None, &[set.into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "{set}: {e}");
    }
}
