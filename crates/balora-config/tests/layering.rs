//! Layering order and error messages.
#![allow(clippy::result_large_err)] // figment::Jail closures return figment::Error

use balora_config::{ConfigError, JobConfig, ScheduleName};
use figment::Jail;

fn err_of(r: Result<JobConfig, ConfigError>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn layers_override_in_order_defaults_file_env_set() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "job.toml",
            r#"
            [trainer]
            lr = 1e-3
            steps = 7
            batch_size = 3
            [adapter]
            r = 4
            "#,
        )?;
        // Default only.
        let d = JobConfig::load(None, &[]).unwrap();
        assert_eq!(d.trainer.steps, 36);
        // File overrides defaults.
        let f = JobConfig::load(Some("job.toml".as_ref()), &[]).unwrap();
        assert_eq!((f.trainer.lr, f.trainer.steps, f.adapter.r), (1e-3, 7, 4));
        assert_eq!(f.trainer.schedule, ScheduleName::Cosine); // untouched default
                                                              // Env overrides the file.
        jail.set_env("BALORA_TRAINER__STEPS", "9");
        jail.set_env("BALORA_MANIFOLD__GAUGE", "canonical");
        // Unrelated BALORA_ variables are ignored.
        jail.set_env("BALORA_SYNTHETIC_SEED", "3");
        let e = JobConfig::load(Some("job.toml".as_ref()), &[]).unwrap();
        assert_eq!(e.trainer.steps, 9);
        assert_eq!(e.trainer.lr, 1e-3);
        assert_eq!(
            e.manifold.options.0.get("gauge"),
            Some(&balora_config::OptionValue::Str("canonical".into()))
        );
        // --set overrides env.
        let s = JobConfig::load(
            Some("job.toml".as_ref()),
            &["trainer.steps=11".into(), "trainer.schedule=linear".into()],
        )
        .unwrap();
        assert_eq!(s.trainer.steps, 11);
        assert_eq!(s.trainer.schedule, ScheduleName::Linear);
        assert_eq!(s.trainer.batch_size, 3);
        Ok(())
    });
}

#[test]
fn unknown_key_in_file_is_named_with_allowed_keys() {
    Jail::expect_with(|jail| {
        jail.create_file("bad.toml", "[trainer]\nlearning_rate = 1e-3\n")?;
        let msg = err_of(JobConfig::load(Some("bad.toml".as_ref()), &[]));
        assert!(msg.contains("learning_rate"), "{msg}");
        assert!(msg.contains("trainer"), "{msg}");
        assert!(msg.contains("`lr`"), "allowed keys listed: {msg}");
        assert!(msg.contains("bad.toml"), "file named: {msg}");
        Ok(())
    });
}

#[test]
fn unknown_section_and_bad_values_are_rejected() {
    let msg = err_of(JobConfig::load(None, &["trainr.lr=1".into()]));
    assert!(msg.contains("trainr") && msg.contains("trainer"), "{msg}");
    let msg = err_of(JobConfig::load(None, &["trainer.schedule=cosine2".into()]));
    assert!(
        msg.contains("trainer.schedule") && msg.contains("constant"),
        "{msg}"
    );
    let msg = err_of(JobConfig::load(None, &["trainer.steps=\"many\"".into()]));
    assert!(msg.contains("trainer.steps"), "{msg}");
    let msg = err_of(JobConfig::load(None, &["adapter.dropout=1.5".into()]));
    assert!(
        msg.contains("adapter.dropout") && msg.contains("[0, 1)"),
        "{msg}"
    );
    let msg = err_of(JobConfig::load(
        None,
        &["trainer.devices=[\"tpu:0\"]".into()],
    ));
    assert!(
        msg.contains("trainer.devices") && msg.contains("cuda:N"),
        "{msg}"
    );
    let msg = err_of(JobConfig::load(None, &["backend=metal".into()]));
    assert!(msg.contains("backend") && msg.contains("ndarray"), "{msg}");
    let msg = err_of(JobConfig::load(None, &["noequals".into()]));
    assert!(msg.contains("KEY=VALUE"), "{msg}");
    let msg = err_of(JobConfig::load(Some("/no/such/file.toml".as_ref()), &[]));
    assert!(msg.contains("/no/such/file.toml"), "{msg}");
}

#[test]
fn shown_config_round_trips() {
    let cfg = JobConfig::load(
        None,
        &["adapter.r=2".into(), "manifold.gauge=closest".into()],
    )
    .unwrap();
    let text = cfg.to_toml();
    let back: JobConfig = toml::from_str(&text).unwrap();
    assert_eq!(back, cfg);
}
