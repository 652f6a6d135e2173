//! Every data format, prompt masking, malformed lines, the loader.

use balora_config::{DataFormat, DataSection};
use balora_data::{load_dataset, Batch, DataError, Encoder, Loader, IGNORE_INDEX};
use std::io::Write;

const WORDS: &[&str] = &[
    "[UNK]",
    "<pad>",
    "<|im_start|>",
    "<|im_end|>",
    "user",
    "assistant",
    "system",
    "hi",
    "there",
    "hello",
    "be",
    "nice",
    "good",
    "bad",
    "the",
    "cat",
    "sat",
    "on",
    "mat",
    "[CLS]",
    "[SEP]",
];

/// A word-level tokenizer (whitespace pre-tokenizer) with ChatML markers as special tokens.
fn encoder() -> Encoder {
    let vocab: String = WORDS
        .iter()
        .enumerate()
        .map(|(i, w)| format!("\"{w}\": {i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let added: String = ["<|im_start|>", "<|im_end|>", "<pad>"]
        .iter()
        .map(|t| {
            let id = WORDS.iter().position(|w| w == t).unwrap();
            format!(r#"{{"id": {id}, "content": "{t}", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}}"#)
        })
        .collect::<Vec<_>>()
        .join(", ");
    let json = format!(
        r#"{{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [{added}],
        "normalizer": null, "pre_tokenizer": {{"type": "Whitespace"}}, "post_processor": null, "decoder": null,
        "model": {{"type": "WordLevel", "vocab": {{{vocab}}}, "unk_token": "[UNK]"}}}}"#
    );
    Encoder::new(tokenizers::Tokenizer::from_bytes(json.as_bytes()).unwrap())
}

fn id(w: &str) -> u32 {
    WORDS.iter().position(|x| *x == w).unwrap() as u32
}

fn file(name: &str, body: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(name);
    std::fs::File::create(&p)
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    (dir, p)
}

fn cfg(format: DataFormat, seq_len: usize, valid: f64) -> DataSection {
    DataSection {
        format,
        seq_len,
        validation_fraction: valid,
        ..DataSection::default()
    }
}

#[test]
fn text_corpus_is_chunked_and_tail_is_validation() {
    // 23 tokens → 5 chunks of 4 (3 tokens dropped); 1 (the last) held out.
    let words = ["the", "cat", "sat", "on", "the", "mat"];
    let text: Vec<&str> = (0..23).map(|i| words[i % 6]).collect();
    let (_d, p) = file("corpus.txt", &text.join(" "));
    let ds = load_dataset(&cfg(DataFormat::Auto, 4, 0.2), &p, &encoder(), 0).unwrap();
    assert_eq!((ds.train.len(), ds.valid.len()), (4, 1));
    let all: Vec<u32> = text.iter().map(|w| id(w)).collect();
    assert_eq!(ds.train[1].ids, all[4..8]);
    assert_eq!(ds.valid[0].ids, all[16..20]);
    assert!(ds.train[0].target.iter().all(|&t| t));
}

#[test]
fn jsonl_text_prompt_completion_and_chat_with_masking() {
    let body = r#"{"text": "the cat sat"}
{"prompt": "hi there", "completion": "hello"}

{"messages": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]}
"#;
    let (_d, p) = file("chat.jsonl", body);
    let mut c = cfg(DataFormat::Auto, 64, 0.0);
    c.max_examples = 0;
    let ds = load_dataset(&c, &p, &encoder(), 0).unwrap();
    assert_eq!(ds.train.len(), 3);
    let find = |first: &[u32]| {
        ds.train
            .iter()
            .find(|e| e.ids.starts_with(first))
            .unwrap()
            .clone()
    };
    let (s, e) = (id("<|im_start|>"), id("<|im_end|>"));
    // {"text"}: everything trained.
    let t = find(&[id("the")]);
    assert_eq!(t.ids, vec![id("the"), id("cat"), id("sat")]);
    assert!(t.target.iter().all(|&x| x));
    // prompt/completion through ChatML: only "hello<|im_end|>" is trained.
    let pc = find(&[s, id("user"), id("hi")]);
    assert_eq!(
        pc.ids,
        vec![
            s,
            id("user"),
            id("hi"),
            id("there"),
            e,
            s,
            id("assistant"),
            id("hello"),
            e
        ]
    );
    assert_eq!(
        pc.target,
        vec![false, false, false, false, false, false, false, true, true]
    );
    // messages: system and user turns masked, assistant content + end marker trained.
    let m = find(&[s, id("system")]);
    assert_eq!(
        m.ids,
        vec![
            s,
            id("system"),
            id("be"),
            id("nice"),
            e,
            s,
            id("user"),
            id("hi"),
            e,
            s,
            id("assistant"),
            id("hello"),
            id("there"),
            e
        ]
    );
    let trained: Vec<u32> = m
        .ids
        .iter()
        .zip(&m.target)
        .filter(|(_, &t)| t)
        .map(|(&i, _)| i)
        .collect();
    assert_eq!(trained, vec![id("hello"), id("there"), e]);
    // Collated labels: −100 except trained positions; padding masked out.
    let b = Batch::collate(&[&pc, &t], 1);
    assert_eq!((b.batch, b.seq), (2, 9));
    let row0: Vec<i64> = b.labels[..9].to_vec();
    let mut want = vec![IGNORE_INDEX; 9];
    want[7] = id("hello") as i64;
    want[8] = e as i64;
    assert_eq!(row0, want);
    assert_eq!(
        &b.labels[9..],
        &[
            IGNORE_INDEX,
            id("cat") as i64,
            id("sat") as i64,
            -100,
            -100,
            -100,
            -100,
            -100,
            -100
        ]
    );
    assert_eq!(
        &b.attention_mask[9..],
        &[true, true, true, false, false, false, false, false, false]
    );
    assert_eq!(b.input_ids[12], 1);
    assert_eq!(b.loss_tokens(), 4);
}

#[test]
fn classification_with_string_and_integer_labels() {
    let (_d, p) = file("cls.jsonl", "{\"text\": \"good cat\", \"label\": \"pos\"}\n{\"text\": \"bad cat\", \"label\": \"neg\"}\n{\"text\": \"good mat\", \"label\": \"pos\"}\n");
    let ds = load_dataset(&cfg(DataFormat::Classification, 8, 0.0), &p, &encoder(), 0).unwrap();
    assert_eq!(ds.classes, vec!["pos".to_string(), "neg".to_string()]);
    let mut labels: Vec<usize> = ds.train.iter().map(|e| e.label.unwrap()).collect();
    labels.sort();
    assert_eq!(labels, vec![0, 0, 1]);
    let (_d2, p2) = file(
        "cls2.jsonl",
        "{\"text\": \"good\", \"label\": 1}\n{\"text\": \"bad\", \"label\": 0}\n",
    );
    let ds = load_dataset(&cfg(DataFormat::Classification, 8, 0.0), &p2, &encoder(), 0).unwrap();
    let b = Batch::collate(&ds.train.iter().collect::<Vec<_>>(), 1);
    assert!(b.classification);
    let mut l = b.labels.clone();
    l.sort();
    assert_eq!(l, vec![0, 1]);
}

#[test]
fn malformed_line_is_reported_with_file_and_line() {
    let (_d, p) = file(
        "bad.jsonl",
        "{\"text\": \"the cat\"}\n{\"text\": \"the\"\n{\"text\": \"mat\"}\n",
    );
    let err = load_dataset(&cfg(DataFormat::Jsonl, 8, 0.0), &p, &encoder(), 0).unwrap_err();
    assert!(matches!(err, DataError::Malformed { line: 2, .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("bad.jsonl:2") && msg.contains("invalid JSON"),
        "{msg}"
    );
    // Wrong shapes are named too.
    let (_d, p) = file("shape.jsonl", "{\"prompt\": \"hi\"}\n");
    let msg = load_dataset(&cfg(DataFormat::Jsonl, 8, 0.0), &p, &encoder(), 0)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("shape.jsonl:1") && msg.contains("completion"),
        "{msg}"
    );
    let (_d, p) = file("cls.jsonl", "{\"text\": \"good\", \"label\": -1}\n");
    let msg = load_dataset(&cfg(DataFormat::Classification, 8, 0.0), &p, &encoder(), 0)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("cls.jsonl:1") && msg.contains("label"),
        "{msg}"
    );
}

#[test]
fn tolerated_bad_lines_are_skipped_but_too_many_fail() {
    let good = "{\"text\": \"the cat sat\"}\n";
    let mut body = good.repeat(199);
    body.push_str("not json\n");
    let (_d, p) = file("mostly.jsonl", &body);
    let mut c = cfg(DataFormat::Jsonl, 8, 0.0);
    c.max_bad_fraction = 0.01;
    let ds = load_dataset(&c, &p, &encoder(), 0).unwrap();
    assert_eq!(ds.train.len(), 199);
    let body = format!("{good}not json\nnot json\n{good}");
    let (_d, p) = file("half.jsonl", &body);
    let msg = load_dataset(&c, &p, &encoder(), 0).unwrap_err().to_string();
    assert!(
        msg.contains("2 of 4 lines") && msg.contains("line 2"),
        "{msg}"
    );
}

#[test]
fn loader_is_deterministic_covers_each_epoch_and_resumes() {
    let mut a = Loader::new(10, 3, 42);
    let mut b = Loader::new(10, 3, 42);
    let first: Vec<Vec<usize>> = (0..7).map(|_| a.next_indices()).collect();
    let same: Vec<Vec<usize>> = (0..7).map(|_| b.next_indices()).collect();
    assert_eq!(first, same);
    // The first 10 draws are a permutation of 0..10.
    let mut epoch0: Vec<usize> = first.concat()[..10].to_vec();
    epoch0.sort();
    assert_eq!(epoch0, (0..10).collect::<Vec<_>>());
    // Another seed gives another order.
    let mut c = Loader::new(10, 3, 43);
    assert_ne!(c.next_indices(), first[0]);
    // Resume from a saved position continues identically.
    let mut d = Loader::new(10, 3, 42);
    for _ in 0..4 {
        d.next_indices();
    }
    let state = d.state();
    let mut e = Loader::new(10, 3, 42);
    e.restore(state);
    assert_eq!(e.next_indices(), first[4]);
    assert_eq!(e.next_indices(), first[5]);
}
