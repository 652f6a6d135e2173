//! Corpus-driven fuzzing of every reader of hostile input, on stable Rust.
//!
//! Each reader (GGUF → model load → generation; safetensors → adapter checks → balancing and
//! attaching; `adapter_config.json` → attaching; TOML job config; JSONL data → batches) runs on
//! its committed seed corpus (`corpus/<kind>/`), on inputs built here (the 3.6 MB nested GGUF),
//! then on deterministic mutations of them ([`balora_fuzz::mutate`]) until its share of the time
//! budget is spent. Any panic fails the test and the input is saved under
//! `$CARGO_TARGET_TMPDIR/fuzz-failures/`. An allocation above 1 GiB aborts the process (see
//! `CappedAlloc`), so a size taken from the input without a check cannot pass unnoticed.
//!
//! `BALORA_FUZZ_SECS` (default 20) is the total budget in seconds, `BALORA_FUZZ_SEED`
//! (default 0) the mutation seed. Every run prints the number of inputs tried per reader.

mod common;

use balora_fuzz::{adapter, gguf, mutate};
use common::{encoder, B};
use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant};

/// One allocation above this is refused (the process aborts with "memory allocation of N bytes
/// failed"): no reader may size an allocation from an unchecked field.
const ALLOC_CAP: usize = 1 << 30;

struct CappedAlloc;

// SAFETY: forwards to the system allocator; refusing (null) is allowed by the GlobalAlloc contract.
unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if l.size() > ALLOC_CAP {
            return std::ptr::null_mut();
        }
        System.alloc(l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        if l.size() > ALLOC_CAP {
            return std::ptr::null_mut();
        }
        System.alloc_zeroed(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if new > ALLOC_CAP {
            return std::ptr::null_mut();
        }
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static GLOBAL: CappedAlloc = CappedAlloc;

/// What every target gets: a scratch folder, the device, a tiny model to attach adapters to.
struct Ctx {
    dir: tempfile::TempDir,
    dev: burn_ndarray::NdArrayDevice,
    model: balora_models::LlamaForCausalLm<B>,
}

fn ctx() -> Ctx {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tiny.gguf");
    std::fs::write(&p, gguf::tiny_llama().to_bytes()).unwrap();
    let dev = Default::default();
    let model = balora_models::load::load_llama_gguf::<B>(&p, &dev)
        .expect("the tiny GGUF loads")
        .model;
    Ctx { dir, dev, model }
}

fn target_gguf(bytes: &[u8], c: &Ctx) -> bool {
    use balora_formats::{tokenizer_from_gguf, GgufFile, TensorSource};
    let p = c.dir.path().join("in.gguf");
    std::fs::write(&p, bytes).unwrap();
    if let Ok(f) = GgufFile::open(&p) {
        for name in f.names() {
            let _ = f.load(&name);
        }
        let _ = tokenizer_from_gguf(&f);
    }
    if let Ok(lm) = balora_models::load::load_llama_gguf::<B>(&p, &c.dev) {
        let ids = lm
            .tokenizer
            .encode("abc", false)
            .map(|e| e.get_ids().to_vec())
            .unwrap_or_default();
        let opts = balora_models::generate::GenerateOptions {
            max_tokens: 2,
            ..Default::default()
        };
        return balora_models::generate::try_generate(&lm.model, &ids, &opts, |_| {}).is_ok();
    }
    false
}

fn target_safetensors(bytes: &[u8], c: &Ctx) -> bool {
    use balora_formats::{SafetensorsFiles, TensorSource};
    let dir = c.dir.path().join("adapter");
    adapter::write_dir(&dir, &adapter::config_json(4, &["q_proj"]), bytes).unwrap();
    let p = dir.join("adapter_model.safetensors");
    if let Ok(f) = SafetensorsFiles::open(&[&p]) {
        for name in f.names() {
            let _ = f.load(&name);
        }
    }
    let Ok(w) = balora_models::MemWeights::read_safetensors(&p) else {
        return false;
    };
    let checked = balora_models::validate::check_adapter_pairs(&w);
    let _ = balora_models::balance::balance_adapter(
        &dir,
        &c.dir.path().join("balanced"),
        balora_manifold::balanced::Gauge::Closest,
    );
    if checked.is_ok() {
        if let Ok(spec) =
            balora_models::peft::parse_config(&adapter::config_json(4, &["q_proj"]), "cfg")
        {
            return balora_models::peft::apply_adapter_tensors(c.model.clone(), &spec, &w, &c.dev)
                .is_ok();
        }
    }
    false
}

fn target_adapter_config(bytes: &[u8], c: &Ctx) -> bool {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return false;
    };
    match balora_models::peft::parse_config(text, "adapter_config.json") {
        Ok(spec) => balora_models::attach(c.model.clone(), &spec, &c.dev).is_ok(),
        Err(_) => false,
    }
}

fn target_toml(bytes: &[u8], c: &Ctx) -> bool {
    use balora_config::{load_layered, JobConfig, SECTIONS};
    let p = c.dir.path().join("job.toml");
    std::fs::write(&p, bytes).unwrap();
    // JobConfig::load without the environment (a prefix nobody sets).
    if let Ok(cfg) = load_layered(
        JobConfig::default(),
        Some(&p),
        "BALORA_FUZZ_NOENV_",
        Some(SECTIONS),
        &[],
    ) {
        let _ = cfg.to_toml();
        return cfg.validate().is_ok();
    }
    false
}

fn target_jsonl(bytes: &[u8], c: &Ctx) -> bool {
    use balora_config::{DataFormat, DataSection};
    let p = c.dir.path().join("data.jsonl");
    std::fs::write(&p, bytes).unwrap();
    let enc = encoder();
    let mut deep = false;
    for format in [DataFormat::Jsonl, DataFormat::Classification] {
        let cfg = DataSection {
            format,
            seq_len: 8,
            validation_fraction: 0.0,
            max_bad_fraction: 0.5,
            ..DataSection::default()
        };
        if let Ok(ds) = balora_data::load_dataset(&cfg, &p, &enc, 1) {
            let limits = balora_data::ModelLimits {
                vocab_size: 21,
                context: 8,
                num_labels: Some(3),
            };
            if ds.check_fits(&p, cfg.seq_len, limits).is_ok() {
                let refs: Vec<&balora_data::Example> = ds.train.iter().take(4).collect();
                let b = balora_data::Batch::collate(&refs, ds.pad_id);
                assert!(b.input_ids.iter().all(|&i| (0..21).contains(&i)));
                deep = true;
            }
        }
    }
    deep
}

/// Runs one input; `true` when it got through every stage (parsed, checked, used).
type Target = fn(&[u8], &Ctx) -> bool;

/// Named inputs.
type Seeds = Vec<(String, Vec<u8>)>;

fn budget() -> (Duration, u64) {
    let secs: f64 = std::env::var("BALORA_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20.0);
    let seed = std::env::var("BALORA_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (Duration::from_secs_f64(secs.max(0.0)), seed)
}

/// Runs `target` on `seeds` then on mutations until `time` is spent; returns (inputs, inputs
/// that got through every stage, failures).
fn fuzz(
    kind: &str,
    target: Target,
    seeds: &[(String, Vec<u8>)],
    time: Duration,
    seed: u64,
    c: &Ctx,
) -> (usize, usize, Vec<String>) {
    let fail_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
    let mut failures = Vec::new();
    let mut deep = 0;
    let mut run = |label: &str, input: &[u8], n: usize| {
        let t = Instant::now();
        let r = catch_unwind(AssertUnwindSafe(|| target(input, c)));
        deep += usize::from(matches!(r, Ok(true)));
        let slow = t.elapsed() > Duration::from_secs(10);
        if r.is_err() || slow {
            std::fs::create_dir_all(&fail_dir).unwrap();
            let f = fail_dir.join(format!("{kind}-{n}.bin"));
            std::fs::write(&f, input).unwrap();
            let why = if slow { "took > 10 s" } else { "panicked" };
            failures.push(format!(
                "{kind} input {n} ({label}) {why}: saved to {}",
                f.display()
            ));
        }
    };
    let mut n = 0;
    for (name, bytes) in seeds {
        run(&format!("seed {name}"), bytes, n);
        n += 1;
    }
    let mut rng = mutate::Rng::new(seed ^ kind.len() as u64);
    let start = Instant::now();
    while start.elapsed() < time {
        let (name, base) = &seeds[rng.below(seeds.len())];
        let other = &seeds[rng.below(seeds.len())].1;
        let (mut input, mut kinds) = {
            let (v, k) = mutate::mutate(&mut rng, base, other);
            (v, vec![mutate::KINDS[k]])
        };
        for _ in 0..rng.below(3) {
            let (v, k) = mutate::mutate(&mut rng, &input, other);
            input = v;
            kinds.push(mutate::KINDS[k]);
        }
        run(&format!("{} of seed {name}", kinds.join(" + ")), &input, n);
        n += 1;
    }
    (n, deep, failures)
}

#[test]
fn fuzz_every_reader_without_a_panic() {
    let (time, seed) = budget();
    let c = ctx();
    let mut gguf_seeds = common::corpus("gguf");
    // Too big to commit: 300 000 nested one-element arrays (3.6 MB).
    let mut g = gguf::tiny_llama();
    g.set(
        "general.nested",
        gguf::Val::Raw(9, gguf::nested_array_body(300_000)),
    );
    gguf_seeds.push(("nested-300000.gguf (built)".into(), g.to_bytes()));
    let mut toml_seeds = common::corpus("toml");
    let default_job = balora_config::JobConfig::default().to_toml().into_bytes();
    toml_seeds.push(("default job (built)".into(), default_job));
    let targets: [(&str, Target, Seeds); 5] = [
        ("gguf", target_gguf, gguf_seeds),
        (
            "safetensors",
            target_safetensors,
            common::corpus("safetensors"),
        ),
        (
            "adapter_config",
            target_adapter_config,
            common::corpus("adapter_config"),
        ),
        ("toml", target_toml, toml_seeds),
        ("jsonl", target_jsonl, common::corpus("jsonl")),
    ];
    let share = time / targets.len() as u32;
    let mut all = Vec::new();
    let mut total = 0;
    let mut lines = Vec::new();
    // The panic messages of caught panics still print (useful when one fails).
    for (kind, target, seeds) in &targets {
        let t = Instant::now();
        let (n, deep, f) = fuzz(kind, *target, seeds, share, seed, &c);
        let line = format!(
            "fuzz {kind}: {n} inputs ({} seeds + {} mutations, {deep} accepted through every stage) in {:.1} s, {} failures",
            seeds.len(),
            n - seeds.len(),
            t.elapsed().as_secs_f64(),
            f.len()
        );
        println!("{line}");
        lines.push(line);
        total += n;
        all.extend(f);
    }
    let summary = format!(
        "fuzz: {total} inputs tried in all (BALORA_FUZZ_SECS = {}, seed {seed}), {} failures",
        time.as_secs_f64(),
        all.len()
    );
    println!("{summary}");
    // `cargo xtask test` prints this file after the workspace tests, so CI's log shows the count
    // (libtest captures the output of passing tests).
    let _ = std::fs::write(
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-summary.txt"),
        format!("{}\n{summary}\n", lines.join("\n")),
    );
    assert!(
        all.is_empty(),
        "{} failing inputs:\n{}",
        all.len(),
        all.join("\n")
    );
}
