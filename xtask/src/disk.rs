//! Disk space during `cargo xtask test`: a fresh build of every feature set the checks need takes
//! several GiB, and CI machines differ in how much they have free (a CI run once died with
//! "No space left on device" while linking the workspace's test binaries). Each phase reports the
//! free space and the target directory's size, and when space is short the test binaries a
//! finished phase leaves behind are deleted (cargo relinks them if they are needed again).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Below this much free space, finished phases' test binaries are deleted.
const LOW_FREE_BYTES: u64 = 20 << 30;

/// Free bytes on the file system holding `path` (its nearest existing ancestor), from `df -Pk`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    let mut p = path;
    while !p.exists() {
        p = p.parent()?;
    }
    let out = Command::new("df").arg("-Pk").arg(p).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // POSIX format: a header line, then `fs blocks used available capacity mount`.
    let kib: u64 = text
        .lines()
        .nth(1)?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Total size of the files under `dir` (not following links).
fn size_of(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => size_of(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// Prints the free space and the target directory's size (`when`: "after the workspace tests").
pub fn report(target: &Path, when: &str) {
    let free = free_bytes(target).map_or("?".into(), |b| format!("{:.1}", gib(b)));
    eprintln!(
        "disk {when}: {free} GiB free, {} is {:.1} GiB",
        target.display(),
        gib(size_of(target))
    );
}

/// The test, example and binary executables cargo left in `<target>/<profile>/deps`: plain files
/// with an executable bit and no extension (libraries are `.rlib`/`.rmeta`/`.so`, dep-info `.d`).
fn executables(deps: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let Ok(entries) = std::fs::read_dir(deps) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            let p = e.path();
            p.extension().is_none()
                && e.metadata()
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .map(|e| e.path())
        .collect()
}

/// After a finished phase, when less than 20 GiB is free: deletes the executables in
/// `<target>/debug/deps` (already run; later phases build their own) and says how much it freed.
pub fn prune_if_low(target: &Path, phase: &str) {
    let free = free_bytes(target).unwrap_or(u64::MAX);
    if free >= LOW_FREE_BYTES {
        return;
    }
    let mut freed = 0u64;
    for exe in executables(&target.join("debug/deps")) {
        let len = std::fs::metadata(&exe).map(|m| m.len()).unwrap_or(0);
        if std::fs::remove_file(&exe).is_ok() {
            freed += len;
        }
    }
    eprintln!(
        "disk: {:.1} GiB free (< {} GiB) after {phase}: deleted its test binaries, {:.1} GiB",
        gib(free),
        LOW_FREE_BYTES >> 30,
        gib(freed)
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn free_space_of_a_path_not_yet_created_is_its_ancestors() {
        let missing = std::env::temp_dir().join("xtask-disk-no-such-dir/deeper");
        let free = free_bytes(&missing).expect("df on the nearest existing ancestor");
        let direct = free_bytes(&std::env::temp_dir()).unwrap();
        // Builds running beside the test change the free space between the two `df` calls.
        assert!(free.abs_diff(direct) < 1 << 30, "{free} vs {direct}");
    }

    #[test]
    fn only_extensionless_executables_count_as_test_binaries() {
        let dir = std::env::temp_dir().join(format!("xtask-disk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let make = |name: &str, mode: u32| {
            let p = dir.join(name);
            std::fs::write(&p, b"x").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        make("trainer-0123456789abcdef", 0o755);
        make("libburn-0123456789abcdef.rlib", 0o644);
        make("libserde_derive-0123456789abcdef.so", 0o755);
        make("trainer-0123456789abcdef.d", 0o644);
        let found = executables(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found, vec![dir.join("trainer-0123456789abcdef")]);
    }
}
