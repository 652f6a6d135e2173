//! `model.dtype`: what each value asks for, and the values that are errors naming the field.

use balora_adapter::BaseDtype;
use balora_config::JobConfig;

fn job(sets: &[&str]) -> JobConfig {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    JobConfig::load(None, &sets).unwrap()
}

/// The error loading (which validates) ends in.
fn error(sets: &[&str]) -> String {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    JobConfig::load(None, &sets).unwrap_err().to_string()
}

#[test]
fn quantized_dtypes_parse_and_f32_stays_the_default() {
    assert_eq!(job(&[]).model.base_dtype().unwrap(), BaseDtype::F32);
    for (v, d) in [
        ("q8_0", BaseDtype::Q8_0),
        ("q4_0", BaseDtype::Q4_0),
        ("file", BaseDtype::File),
    ] {
        let j = job(&[&format!("model.dtype=\"{v}\"")]);
        assert_eq!(j.model.base_dtype().unwrap(), d);
        j.validate().unwrap();
    }
}

#[test]
fn unimplemented_or_misapplied_dtypes_name_the_field_and_value() {
    for v in ["f16", "bf16"] {
        let e = error(&[&format!("model.dtype=\"{v}\"")]);
        assert!(
            e.contains("model.dtype") && e.contains(&format!("\"{v}\"")),
            "{e}"
        );
    }
    let e = error(&["model.family=\"bert\"", "model.dtype=\"q8_0\""]);
    assert!(
        e.contains("model.dtype") && e.contains("\"q8_0\"") && e.contains("llama"),
        "{e}"
    );
    let e = error(&["model.dtype=\"q4_1\""]);
    assert!(e.contains("dtype") && e.contains("q4_1"), "{e}");
}
