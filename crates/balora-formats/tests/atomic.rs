//! `balora_formats::atomic`: complete files, no temporaries left, atomic replacement of files
//! and folders, errors that name the path.

use balora_formats::atomic::{replace_dir, staging_dir, write_atomic, write_atomic_with};
use std::io::Write;
use std::path::Path;

/// Every entry of `dir` (names only), sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn write_atomic_writes_the_complete_file_and_leaves_no_temporary() {
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("nested/deeper/out.bin");
    // 3 MiB of a pattern that is not periodic in any buffer size.
    let bytes: Vec<u8> = (0..3u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    write_atomic(&path, &bytes).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert_eq!(listing(path.parent().unwrap()), ["out.bin"]);
}

#[test]
fn write_atomic_replaces_an_existing_file_in_one_step() {
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("report.json");
    std::fs::write(&path, b"old content that is longer than the new one").unwrap();
    // A reader holding the old file keeps reading the old inode: the new content arrives by a
    // rename, not by truncating and rewriting the old file in place.
    let mut old = std::fs::File::open(&path).unwrap();
    write_atomic(&path, b"new").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"new");
    let mut seen = String::new();
    std::io::Read::read_to_string(&mut old, &mut seen).unwrap();
    assert_eq!(seen, "old content that is longer than the new one");
    assert_eq!(listing(root.path()), ["report.json"]);
}

#[test]
fn a_failing_writer_leaves_the_destination_untouched_and_no_temporary() {
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("a.txt");
    std::fs::write(&path, b"keep").unwrap();
    let err = write_atomic_with(&path, |f| {
        f.write_all(b"half")?;
        Err(std::io::Error::other("disk full (simulated)"))
    })
    .unwrap_err();
    assert!(err.to_string().contains("disk full (simulated)"), "{err}");
    assert!(err.to_string().contains(".a.txt.tmp-"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"keep");
    assert_eq!(listing(root.path()), ["a.txt"]);
}

#[test]
fn errors_name_the_path() {
    let root = tempfile::tempdir().unwrap();
    // The parent "folder" is a file, so neither the folder nor the temporary can be created.
    let blocker = root.path().join("blocker");
    std::fs::write(&blocker, b"x").unwrap();
    let target = blocker.join("out.json");
    let err = write_atomic(&target, b"{}").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("blocker"), "{msg}");
    // Converted to io::Error (as report.rs returns it) the message still names the path.
    let io: std::io::Error = err.into();
    assert!(io.to_string().contains("blocker"), "{io}");
    // A destination that is an existing folder cannot be replaced by a file.
    let dir = root.path().join("adir");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("inside"), b"1").unwrap();
    let err = write_atomic(&dir, b"{}").unwrap_err().to_string();
    assert!(
        err.contains("adir") && err.contains("renaming onto"),
        "{err}"
    );
    assert_eq!(listing(root.path()), ["adir", "blocker"]);
}

#[test]
fn replace_dir_installs_a_new_folder() {
    let root = tempfile::tempdir().unwrap();
    let dest = root.path().join("ckpt");
    let stage = staging_dir(&dest).unwrap();
    write_atomic(&stage.join("a.bin"), &[1, 2]).unwrap();
    write_atomic(&stage.join("sub/b.bin"), &[3]).unwrap();
    replace_dir(&stage, &dest).unwrap();
    assert_eq!(std::fs::read(dest.join("a.bin")).unwrap(), [1, 2]);
    assert_eq!(std::fs::read(dest.join("sub/b.bin")).unwrap(), [3]);
    assert_eq!(listing(root.path()), ["ckpt"]);
}

#[test]
fn replace_dir_swaps_an_existing_folder_and_drops_the_old_content() {
    let root = tempfile::tempdir().unwrap();
    let dest = root.path().join("ckpt");
    std::fs::create_dir(&dest).unwrap();
    std::fs::write(dest.join("old_only.bin"), b"old").unwrap();
    std::fs::write(dest.join("shared.bin"), b"old").unwrap();
    let stage = staging_dir(&dest).unwrap();
    std::fs::write(stage.join("shared.bin"), b"new").unwrap();
    replace_dir(&stage, &dest).unwrap();
    assert_eq!(listing(&dest), ["shared.bin"]);
    assert_eq!(std::fs::read(dest.join("shared.bin")).unwrap(), b"new");
    assert_eq!(
        listing(root.path()),
        ["ckpt"],
        "no staging or old folder is left"
    );
}

#[cfg(target_os = "linux")]
#[test]
fn replace_dir_never_leaves_the_destination_missing() {
    // A reader polls the destination while a writer swaps it 200 times: with the exchange every
    // observation finds a complete folder (the marker file present, holding a whole generation).
    let root = tempfile::tempdir().unwrap();
    let dest = root.path().join("live");
    std::fs::create_dir(&dest).unwrap();
    std::fs::write(dest.join("gen"), b"0").unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (d2, s2) = (dest.clone(), stop.clone());
    let reader = std::thread::spawn(move || {
        let mut misses = 0usize;
        let mut reads = 0usize;
        while !s2.load(std::sync::atomic::Ordering::Relaxed) {
            match std::fs::read(d2.join("gen")) {
                Ok(b) => {
                    reads += 1;
                    assert!(std::str::from_utf8(&b).unwrap().parse::<u32>().is_ok());
                }
                Err(_) => misses += 1,
            }
        }
        (reads, misses)
    });
    for g in 1..=200u32 {
        let stage = staging_dir(&dest).unwrap();
        std::fs::write(stage.join("gen"), g.to_string()).unwrap();
        replace_dir(&stage, &dest).unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (reads, misses) = reader.join().unwrap();
    assert_eq!(
        misses,
        0,
        "the destination was missing in {misses} of {} reads",
        reads + misses
    );
    assert_eq!(std::fs::read(dest.join("gen")).unwrap(), b"200");
    assert_eq!(listing(root.path()), ["live"]);
}

#[test]
fn replace_dir_refuses_a_staged_folder_elsewhere() {
    let root = tempfile::tempdir().unwrap();
    let other = root.path().join("elsewhere");
    std::fs::create_dir(&other).unwrap();
    let stage = other.join("stage");
    std::fs::create_dir(&stage).unwrap();
    let err = replace_dir(&stage, &root.path().join("dest"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("dest") && err.contains("same folder"), "{err}");
}
