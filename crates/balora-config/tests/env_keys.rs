//! `BALORA_…` environment keys: both documented forms work, unknown names are errors naming them.
//! Every test runs inside a figment `Jail` (one at a time, environment restored afterwards).
#![allow(clippy::result_large_err)] // figment::Jail closures return figment::Error

use balora_config::{env_key, JobConfig, SECTIONS};
use figment::Jail;

#[test]
fn single_and_double_underscore_forms_set_the_same_key() {
    Jail::expect_with(|jail| {
        jail.set_env("BALORA_TRAINER_STEPS", "17");
        jail.set_env("BALORA_TRAINER_WARMUP_STEPS", "5");
        jail.set_env("BALORA_ADAPTER__R", "3");
        jail.set_env("BALORA_BACKEND", "ndarray");
        let c = JobConfig::load(None, &[]).unwrap();
        assert_eq!(c.trainer.steps, 17);
        assert_eq!(c.trainer.warmup_steps, 5);
        assert_eq!(c.adapter.r, 3);
        assert_eq!(c.backend, balora_config::BackendName::Ndarray);
        Ok(())
    });
}

#[test]
fn key_mapping_examples() {
    let s = SECTIONS;
    assert_eq!(env_key("TRAINER_LR", s).as_deref(), Some("trainer.lr"));
    assert_eq!(env_key("trainer__lr", s).as_deref(), Some("trainer.lr"));
    assert_eq!(
        env_key("DATA_MAX_CHARS", s).as_deref(),
        Some("data.max_chars")
    );
    assert_eq!(
        env_key("ADAPTER__RANK_PATTERN__Q_PROJ", s).as_deref(),
        Some("adapter.rank_pattern.q_proj")
    );
    assert_eq!(env_key("BACKEND", s).as_deref(), Some("backend"));
    assert_eq!(env_key("TRAINR_LR", s), None);
    assert_eq!(env_key("STEPS", s), None);
}

#[test]
fn unknown_variables_are_named_and_tool_variables_pass() {
    Jail::expect_with(|jail| {
        // Tool variables are not config and are accepted.
        jail.set_env("BALORA_ASSETS", "/tmp/x");
        jail.set_env("BALORA_SYNTHETIC_SEED", "3");
        jail.set_env("BALORA_BENCH_STEPS", "3");
        assert!(JobConfig::load(None, &[]).is_ok());
        // A misspelt section is named, with the accepted forms.
        jail.set_env("BALORA_TRAINR_STEPS", "3");
        let e = JobConfig::load(None, &[]).unwrap_err().to_string();
        assert!(e.contains("BALORA_TRAINR_STEPS"), "{e}");
        assert!(e.contains("BALORA_TRAINER_STEPS=100"), "{e}");
        assert!(e.contains("TRAINER"), "{e}");
        Ok(())
    });
}

#[test]
fn unknown_key_in_a_known_section_is_named_with_its_variable() {
    Jail::expect_with(|jail| {
        jail.set_env("BALORA_TRAINER_STEPZ", "3");
        let e = JobConfig::load(None, &[]).unwrap_err().to_string();
        assert!(e.contains("stepz"), "{e}");
        assert!(e.contains("BALORA_"), "source named: {e}");
        Ok(())
    });
}
