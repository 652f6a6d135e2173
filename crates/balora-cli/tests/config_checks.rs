//! Config handling of the CLI: `BALORA_<SECTION>_<KEY>` environment keys, unknown `BALORA_`
//! variables, `config show --out`, `compare` validating its grid like `train` validates a job, and
//! logs kept off stdout.

mod common;
use common::{balora, generate_capital_of_france};

fn show(envs: &[(&str, &str)], extra: &[&str]) -> (bool, String, String) {
    let o = balora()
        .args(["config", "show"])
        .args(extra)
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn value(toml_text: &str, section: &str, key: &str) -> toml::Value {
    let t: toml::Table = toml::from_str(toml_text).unwrap();
    t[section][key].clone()
}

#[test]
fn env_keys_with_one_or_two_underscores_set_the_key() {
    let (ok, out, e) = show(&[("BALORA_TRAINER_STEPS", "17")], &[]);
    assert!(ok, "{e}");
    assert_eq!(value(&out, "trainer", "steps").as_integer(), Some(17));
    let (ok, out, e) = show(&[("BALORA_TRAINER__WARMUP_STEPS", "5")], &[]);
    assert!(ok, "{e}");
    assert_eq!(value(&out, "trainer", "warmup_steps").as_integer(), Some(5));
    let (ok, _, e) = show(&[("BALORA_TRAINR_STEPS", "17")], &[]);
    assert!(!ok && e.contains("BALORA_TRAINR_STEPS"), "{e}");
}

#[test]
fn config_show_out_sets_the_output_dir() {
    let (ok, out, e) = show(&[], &["--out", "runs/elsewhere"]);
    assert!(ok, "{e}");
    assert_eq!(
        value(&out, "output", "dir").as_str(),
        Some("runs/elsewhere")
    );
}

#[test]
fn compare_rejects_a_bad_grid_before_loading_anything() {
    // Inside a fresh folder that is removed at the end: the command must not create `dir`.
    let parent = tempfile::Builder::new()
        .prefix("balora-cmp-")
        .tempdir()
        .unwrap();
    let dir = parent.path().join("out");
    for (flag, value, named) in [
        ("--init-stds", "0", "--init-stds"),
        ("--init-stds", "0.01,-1", "--init-stds"),
        ("--lrs", "nan", "--lrs"),
        ("--lrs", "0", "--lrs"),
    ] {
        let o = balora()
            .args(["compare", flag, value, "--out"])
            .arg(&dir)
            .arg("--report")
            .arg(dir.join("r.md"))
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{flag} {value} accepted");
        assert!(
            e.contains(named) && e.contains("must be > 0"),
            "{flag} {value}: {e}"
        );
        assert!(!dir.exists(), "{flag} {value}: wrote {}", dir.display());
    }
    let o = balora()
        .args(["compare", "--method", "X=nosuchmanifold", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("nosuchmanifold") && e.contains("balanced"),
        "{e}"
    );
}

#[test]
fn generate_puts_only_the_text_on_stdout_and_uncoloured_logs_on_stderr() {
    let Some(o) = generate_capital_of_france() else {
        return;
    };
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{err}");
    // tools/reference/models_golden.py decodes " Paris." greedily.
    assert_eq!(out.trim_end(), "The capital of France is Paris.");
    assert!(err.contains("INFO") && err.contains("loaded"), "{err}");
    assert!(
        !err.contains('\x1b'),
        "colour codes in piped stderr: {err:?}"
    );
}
