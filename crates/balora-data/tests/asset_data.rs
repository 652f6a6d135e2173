//! The `chatterbot` and `rotten-tomatoes` data assets: the strict YAML and CSV readers (values
//! and errors naming file and line), their records through `load_dataset`, and the real assets
//! against counts and hashes computed independently with Python (PyYAML 6.0.4, `csv`).

use balora_config::{DataFormat, DataSection};
use balora_data::assets::{chatterbot_pairs, read_chatterbot, rotten_tomatoes_reviews};
use balora_data::csv::parse_csv;
use balora_data::yaml::parse_chatterbot;
use balora_data::{load_dataset, Encoder};
use sha2::{Digest, Sha256};
use std::path::Path;

fn yaml(text: &str) -> Result<balora_data::yaml::ChatterbotFile, String> {
    parse_chatterbot(Path::new("t.yml"), text).map_err(|e| e.to_string())
}

fn texts(text: &str) -> Vec<Vec<String>> {
    yaml(text)
        .unwrap()
        .conversations
        .into_iter()
        .map(|c| c.into_iter().map(|u| u.text).collect())
        .collect()
}

#[test]
fn yaml_scalars_follow_yaml() {
    // Expected values are what PyYAML 6.0.4 `safe_load` returns for the same text.
    let doc = "categories:\n- AI\n- greetings\nconversations:\n- - Hi there\n  - 'It''s me,\n    hello'\n  - \"say \\\"yes\\\"\\tnow\"\n- - a plain\n    continued line\n\n    new paragraph\n  - |\n    def f():\n        return 1\n\n  - |-\n    no newline\n# a comment\n- - x\n  - y\n";
    let f = yaml(doc).unwrap();
    assert_eq!(f.categories, ["AI", "greetings"]);
    assert_eq!(
        texts(doc),
        [
            vec!["Hi there", "It's me, hello", "say \"yes\"\tnow"],
            vec![
                "a plain continued line\nnew paragraph",
                "def f():\n    return 1\n",
                "no newline"
            ],
            vec!["x", "y"],
        ]
    );
    assert_eq!(
        f.conversations[1]
            .iter()
            .map(|u| u.line)
            .collect::<Vec<_>>(),
        [9, 13, 17]
    );
}

#[test]
fn yaml_errors_name_file_and_line() {
    for (doc, line, what) in [
        ("conversations:\n- - Hi\n  - key: value\n", 3, "mapping"),
        ("conversations:\n- - 'never closed\n", 2, "unterminated"),
        (
            "conversations:\n- - Hi\nsettings:\n",
            3,
            "unknown key `settings`",
        ),
        ("conversations:\n- - Hi\n\t- there\n", 3, "indentation"),
        ("conversations:\n- - [a, b]\n", 2, "unsupported YAML"),
        ("conversations:\n- - 'a' b\n", 2, "after the closing quote"),
        ("conversations:\n- -\n", 2, "nested deeper"),
        ("conversations:\n- - x\n  -\n", 3, "unexpected indentation"),
        (
            "conversations:\n- - x\n-- y\n",
            3,
            "expected `- - utterance`",
        ),
        ("conversations:\n- - \n", 2, "empty item"),
        ("- - Hi\n", 1, "before `categories:`"),
        ("conversations:\n  - orphan\n", 2, "before any"),
        ("conversations:\n- - \"bad \\q\"\n", 2, "unknown escape"),
    ] {
        let e = yaml(doc).unwrap_err();
        assert!(
            e.starts_with(&format!("t.yml:{line}: ")) && e.contains(what),
            "{doc:?}: {e}"
        );
    }
}

#[test]
fn csv_fields_and_errors() {
    let p = Path::new("d.csv");
    let c = parse_csv(
        p,
        "label,text\nfresh,\"a, \"\"quoted\"\"\nline\"\r\nrotten,plain\n\n",
    )
    .unwrap();
    assert_eq!(c.header, ["label", "text"]);
    assert_eq!(
        c.rows,
        [
            (2, vec!["fresh".into(), "a, \"quoted\"\nline".into()]),
            (4, vec!["rotten".into(), "plain".into()])
        ]
    );
    for (text, line, what) in [
        ("a,b\n1,2\n3\n", 3, "1 fields, the header has 2"),
        (
            "a,b\n1,2\n3,\"open\n\nstill\n",
            3,
            "unterminated quoted field",
        ),
        ("a,b\n1,x\"y\n", 2, "inside an unquoted field"),
        ("a,b\n1,\"x\"y\n", 2, "after a closing quote"),
    ] {
        let e = parse_csv(p, text).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("d.csv:{line}: ")) && e.contains(what),
            "{text:?}: {e}"
        );
    }
    let e = parse_csv(p, "a,b\n1,2\n")
        .unwrap()
        .column(p, "text")
        .unwrap_err()
        .to_string();
    assert!(e.contains("no column `text`"), "{e}");
}

/// A word-level tokenizer over `words` (whitespace split), ChatML markers special.
fn encoder(words: &[&str]) -> Encoder {
    let mut all = vec![
        "[UNK]",
        "<pad>",
        "<|im_start|>",
        "<|im_end|>",
        "user",
        "assistant",
    ];
    all.extend(words);
    let vocab: Vec<String> = all
        .iter()
        .enumerate()
        .map(|(i, w)| format!("\"{w}\": {i}"))
        .collect();
    let added: Vec<String> = (1..4)
        .map(|i| format!(r#"{{"id": {i}, "content": "{}", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}}"#, all[i]))
        .collect();
    let json = format!(
        r#"{{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [{}],
        "normalizer": null, "pre_tokenizer": {{"type": "Whitespace"}}, "post_processor": null, "decoder": null,
        "model": {{"type": "WordLevel", "vocab": {{{}}}, "unk_token": "[UNK]"}}}}"#,
        added.join(", "),
        vocab.join(", ")
    );
    Encoder::new(tokenizers::Tokenizer::from_bytes(json.as_bytes()).unwrap())
}

fn asset_cfg(name: &str, format: DataFormat) -> DataSection {
    DataSection {
        asset: Some(name.into()),
        path: None,
        format,
        seq_len: 64,
        validation_fraction: 0.0,
        ..DataSection::default()
    }
}

#[test]
fn chatterbot_pairs_become_masked_prompt_completion_examples() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.yml"),
        "categories:\n- t\nconversations:\n- - hi\n  - hello there\n  - good\n- - cat\n  - mat\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not yaml").unwrap();
    let pairs = chatterbot_pairs(dir.path()).unwrap();
    let got: Vec<(&str, &str, usize)> = pairs
        .iter()
        .map(|p| (p.prompt.as_str(), p.completion.as_str(), p.source.line))
        .collect();
    assert_eq!(
        got,
        [
            ("hi", "hello there", 4),
            ("hello there", "good", 5),
            ("cat", "mat", 7)
        ]
    );

    let enc = encoder(&["hi", "hello", "there", "good", "cat", "mat"]);
    let data = load_dataset(
        &asset_cfg("chatterbot", DataFormat::Auto),
        dir.path(),
        &enc,
        0,
    )
    .unwrap();
    assert_eq!(data.train.len(), 3);
    // Shuffled: find the "cat" → "mat" example; only "mat" and the closing marker are trained.
    let cat = enc.encode("cat", false).unwrap()[0];
    let ex = data.train.iter().find(|e| e.ids.contains(&cat)).unwrap();
    let prompt = enc
        .encode(
            "<|im_start|>user\ncat<|im_end|>\n<|im_start|>assistant\n",
            false,
        )
        .unwrap();
    let completion = enc.encode("mat<|im_end|>", false).unwrap();
    assert_eq!(
        ex.ids,
        [
            prompt.clone(),
            completion.clone(),
            enc.encode("\n", false).unwrap()
        ]
        .concat()
    );
    let trained: Vec<bool> = ex
        .ids
        .iter()
        .enumerate()
        .map(|(i, _)| i >= prompt.len() && i < prompt.len() + completion.len())
        .collect();
    assert_eq!(ex.target, trained);

    let e = load_dataset(
        &asset_cfg("chatterbot", DataFormat::Text),
        dir.path(),
        &enc,
        0,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("data.format = \"jsonl\""), "{e}");
    std::fs::write(
        dir.path().join("b.yml"),
        "conversations:\n- - hi\n  - a: b\n",
    )
    .unwrap();
    let e = load_dataset(
        &asset_cfg("chatterbot", DataFormat::Jsonl),
        dir.path(),
        &enc,
        0,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("b.yml:3: "), "{e}");
}

#[test]
fn rotten_tomatoes_rows_become_labelled_examples_split_by_validation_fraction() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("category,text,movie_name,has_plot_and_reviews\n");
    csv.push_str("plot,\"a story,\nlong\",m,True\n");
    for i in 0..20 {
        let label = if i % 3 == 0 { "rotten" } else { "fresh" };
        csv.push_str(&format!("{label},good cat {i},m,True\n"));
    }
    let path = dir.path().join("rt.csv.bz2");
    let mut z = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::best());
    z.write_all(csv.as_bytes()).unwrap();
    std::fs::write(&path, z.finish().unwrap()).unwrap();
    let reviews = rotten_tomatoes_reviews(&path).unwrap();
    assert_eq!(reviews.len(), 20);
    assert_eq!(
        (reviews[0].label.as_str(), reviews[0].source.line),
        ("rotten", 4)
    );

    let enc = encoder(&["good", "cat"]);
    let mut cfg = asset_cfg("rotten-tomatoes", DataFormat::Classification);
    cfg.validation_fraction = 0.25;
    let a = load_dataset(&cfg, &path, &enc, 7).unwrap();
    let b = load_dataset(&cfg, &path, &enc, 7).unwrap();
    assert_eq!((a.train.len(), a.valid.len()), (15, 5));
    assert_eq!(
        a.classes,
        ["rotten", "fresh"],
        "indices in order of first appearance"
    );
    let ids = |d: &balora_data::Dataset| d.valid.iter().map(|e| e.ids.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&a), ids(&b), "the split is deterministic for a seed");

    std::fs::write(
        dir.path().join("bad.csv"),
        "category,text\nfresh,ok\nmeh,what\n",
    )
    .unwrap();
    let e = rotten_tomatoes_reviews(&dir.path().join("bad.csv"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad.csv:3: ") && e.contains("\"meh\""), "{e}");
}

fn hex(h: Sha256) -> String {
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn real_chatterbot_matches_pyyaml() {
    let Some(_) = balora_assets::for_test("chatterbot") else {
        return;
    };
    let dir = balora_assets::find(&balora_assets::default_cache_dir())
        .chatterbot_dir()
        .unwrap();
    // From PyYAML 6.0.4 over sorted(glob('*.yml')) of chatterbot_corpus/data/english:
    // 21 files, 2026 `conversations` items, of which one is a str, not a list (trivia.yml
    // line 35, its reply folded in); the 2025 lists hold 4419 - 88 = 4331 utterances; sha256
    // over every utterance + b"\x1e", each conversation closed by b"\x1d".
    let files = read_chatterbot(&dir).unwrap();
    assert_eq!(files.len(), 21);
    let odd: Vec<(&Path, usize, &str)> = files
        .iter()
        .flat_map(|(p, f)| {
            f.not_conversations
                .iter()
                .map(move |u| (p.as_path(), u.line, u.text.as_str()))
        })
        .collect();
    assert_eq!(odd.len(), 1);
    assert!(
        odd[0].0.ends_with("trivia.yml") && odd[0].1 == 35,
        "{odd:?}"
    );
    assert_eq!(
        odd[0].2,
        "In a game of bingo, which number is represented by the phrase \"two little ducks\"? - '22'"
    );
    let mut h = Sha256::new();
    let (mut convs, mut utts) = (0, 0);
    for (_, f) in &files {
        for c in &f.conversations {
            convs += 1;
            for u in c {
                utts += 1;
                h.update(u.text.as_bytes());
                h.update(b"\x1e");
            }
            h.update(b"\x1d");
        }
    }
    assert_eq!((convs, utts), (2025, 4331));
    assert_eq!(
        hex(h),
        "1903e00471086dd25a19dfdd3ccf4221bb6c6d0f8603389380eb463f0d2d8c11"
    );
    // Pairs: zip(c, c[1:]) per list conversation, both sides .strip()ped; sha256 over
    // prompt + b"\x1f" + completion + b"\x1e".
    let pairs = chatterbot_pairs(&dir).unwrap();
    assert_eq!(pairs.len(), 2306);
    let mut h = Sha256::new();
    for p in &pairs {
        h.update(format!("{}\x1f{}\x1e", p.prompt, p.completion).as_bytes());
    }
    assert_eq!(
        hex(h),
        "641ee9fefc74ddf602f4dd62d713443756cba4ebfa68afc0ea03df1f24ae7332"
    );
}

#[test]
fn real_rotten_tomatoes_matches_python_csv() {
    let Some(_) = balora_assets::for_test("rotten-tomatoes") else {
        return;
    };
    let path = balora_assets::find(&balora_assets::default_cache_dir())
        .rotten_tomatoes_csv()
        .unwrap();
    // From Python's csv.DictReader over the bz2-decompressed file: 13905 rows, of which
    // 7403 fresh, 5405 rotten, 1097 plot; sha256 over category + b"\x1f" + text + b"\x1e" of
    // the fresh/rotten rows in file order.
    let reviews = rotten_tomatoes_reviews(&path).unwrap();
    let count = |l: &str| reviews.iter().filter(|r| r.label == l).count();
    assert_eq!(
        (reviews.len(), count("fresh"), count("rotten")),
        (12808, 7403, 5405)
    );
    let mut h = Sha256::new();
    for r in &reviews {
        h.update(format!("{}\x1f{}\x1e", r.label, r.text).as_bytes());
    }
    assert_eq!(
        hex(h),
        "ff6581e45b8c17238c7fcda1c405bbd92aad40a127975a9e5b624a0608b7a96b"
    );
}
