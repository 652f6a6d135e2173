//! The Vulkan driver the wgpu checks need on Linux: is one installed (an ICD manifest where the
//! Vulkan loader looks, and the loader `libvulkan.so.1`), and if not, install Mesa's (lavapipe
//! runs Vulkan on the CPU) with apt when we may, else say in one sentence what to run.
//!
//! macOS (Metal) and Windows (DX12) need no Vulkan driver for wgpu: there this is a no-op.

use crate::util::{apt_install, capture};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// The Debian/Ubuntu packages of Mesa's Vulkan drivers (lavapipe included) and the loader.
pub const APT_PACKAGES: [&str; 2] = ["mesa-vulkan-drivers", "libvulkan1"];

/// What `cargo xtask test` does about the Vulkan driver.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// A driver is installed.
    Ready,
    /// None, but we are root on an apt system: install [`APT_PACKAGES`].
    Install,
    /// None, and we cannot install one: the sentence to stop with.
    Stop(String),
}

/// The directories the Vulkan loader searches for ICD manifests on Linux, in its order (the
/// `XDG_CONFIG_DIRS`, `/etc`, `XDG_DATA_HOME` and `XDG_DATA_DIRS` locations, with their defaults).
pub fn icd_dirs() -> Vec<PathBuf> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let split = |v: String| -> Vec<PathBuf> { v.split(':').map(PathBuf::from).collect() };
    let mut bases: Vec<PathBuf> = split(var("XDG_CONFIG_DIRS").unwrap_or("/etc/xdg".into()));
    bases.push("/etc".into());
    if let Some(home) = var("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|h| Path::new(&h).join(".local/share")))
    {
        bases.push(home);
    }
    bases.extend(split(
        var("XDG_DATA_DIRS").unwrap_or("/usr/local/share:/usr/share".into()),
    ));
    bases.into_iter().map(|b| b.join("vulkan/icd.d")).collect()
}

/// The ICD manifests (`*.json`) in `dirs`; a missing directory has none. `VK_DRIVER_FILES` or
/// `VK_ICD_FILENAMES`, when set, replace the search (as for the loader): then the listed files
/// that exist.
pub fn icd_manifests(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let listed = ["VK_DRIVER_FILES", "VK_ICD_FILENAMES"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()));
    if let Some(files) = listed {
        return files
            .split(':')
            .map(PathBuf::from)
            .filter(|p| p.is_file())
            .collect();
    }
    let mut found: Vec<PathBuf> = dirs
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flat_map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json") && p.is_file())
        .collect();
    found.sort();
    found
}

/// Whether the Vulkan loader `libvulkan.so.1` is installed (the dynamic linker's cache, else the
/// usual library directories).
pub fn loader_present() -> bool {
    let cached = ["ldconfig", "/sbin/ldconfig", "/usr/sbin/ldconfig"]
        .iter()
        .find_map(|p| capture(p, &["-p"]));
    if let Some(cache) = cached {
        if cache.contains("libvulkan.so.1") {
            return true;
        }
    }
    [
        "/lib/x86_64-linux-gnu",
        "/usr/lib/x86_64-linux-gnu",
        "/lib/aarch64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
        "/usr/local/lib",
    ]
    .iter()
    .any(|d| Path::new(d).join("libvulkan.so.1").exists())
}

/// Whether `program` is an executable file in a `PATH` directory.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|d| {
            let p = d.join(program);
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                p.metadata()
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            }
            #[cfg(not(unix))]
            p.is_file()
        })
    })
}

/// The decision, from what was found: `manifests` (ICD files), `loader` (`libvulkan.so.1`),
/// `root` (uid 0) and `apt` (`apt-get` on `PATH`).
pub fn plan(manifests: &[PathBuf], loader: bool, root: bool, apt: bool) -> Plan {
    if !manifests.is_empty() && loader {
        return Plan::Ready;
    }
    if root && apt {
        return Plan::Install;
    }
    let missing = match (manifests.is_empty(), loader) {
        (true, false) => "no Vulkan driver (ICD manifest) and no Vulkan loader (libvulkan.so.1)",
        (true, true) => "no Vulkan driver (no ICD manifest in the loader's icd.d directories)",
        _ => "no Vulkan loader (libvulkan.so.1)",
    };
    let packages = APT_PACKAGES.join(" ");
    let how = if apt {
        format!("run `sudo apt-get install {packages}` (Mesa; lavapipe runs Vulkan on the CPU)")
    } else {
        format!(
            "install your system's Mesa Vulkan drivers and loader (Debian/Ubuntu: \
             `sudo apt-get install {packages}`)"
        )
    };
    Plan::Stop(format!(
        "the wgpu checks need a Vulkan driver and this machine has {missing}: {how}, or pass \
         `--no-wgpu` to skip them"
    ))
}

/// Makes sure the wgpu checks have a Vulkan driver: nothing to do when one is installed (or not on
/// Linux); installs [`APT_PACKAGES`] non-interactively as root on an apt system; otherwise an
/// error naming the command to run.
pub fn ensure_driver() -> Result<()> {
    if !cfg!(target_os = "linux") {
        return Ok(());
    }
    let dirs = icd_dirs();
    let manifests = icd_manifests(&dirs);
    let root = capture("id", &["-u"]).as_deref() == Some("0");
    match plan(&manifests, loader_present(), root, on_path("apt-get")) {
        Plan::Ready => {
            let names: Vec<String> = manifests
                .iter()
                .filter_map(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .collect();
            eprintln!("Vulkan drivers: {}", names.join(", "));
            Ok(())
        }
        Plan::Stop(why) => bail!(why),
        Plan::Install => {
            eprintln!(
                "No Vulkan driver for the wgpu checks: installing {} (Mesa; lavapipe runs Vulkan on the CPU).",
                APT_PACKAGES.join(" ")
            );
            apt_install(&APT_PACKAGES)?;
            if icd_manifests(&dirs).is_empty() || !loader_present() {
                bail!(
                    "installed {} but still found no Vulkan driver in {}",
                    APT_PACKAGES.join(" "),
                    dirs.iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh empty directory under the system temp dir.
    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("xtask-vulkan-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn manifests_are_the_json_files_of_existing_icd_dirs() {
        if std::env::var_os("VK_DRIVER_FILES").is_some()
            || std::env::var_os("VK_ICD_FILENAMES").is_some()
        {
            return; // the override replaces the directory search
        }
        let root = scratch("icd");
        let empty = root.join("etc/vulkan/icd.d");
        let share = root.join("usr/share/vulkan/icd.d");
        std::fs::create_dir_all(&empty).unwrap();
        std::fs::create_dir_all(&share).unwrap();
        let missing = root.join("nowhere/vulkan/icd.d");
        let dirs = vec![missing.clone(), empty.clone(), share.clone()];
        assert!(icd_manifests(&dirs).is_empty(), "no manifest yet");

        std::fs::write(share.join("README"), "not a manifest").unwrap();
        std::fs::create_dir_all(share.join("sub.json")).unwrap(); // a directory, not a file
        assert!(icd_manifests(&dirs).is_empty(), "only *.json files count");

        std::fs::write(share.join("lvp_icd.x86_64.json"), "{}").unwrap();
        std::fs::write(empty.join("nvidia_icd.json"), "{}").unwrap();
        assert_eq!(
            icd_manifests(&dirs),
            vec![
                empty.join("nvidia_icd.json"),
                share.join("lvp_icd.x86_64.json")
            ]
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn icd_dirs_include_the_system_locations() {
        let dirs = icd_dirs();
        assert!(dirs.iter().all(|d| d.ends_with("vulkan/icd.d")), "{dirs:?}");
        assert!(
            dirs.contains(&PathBuf::from("/etc/vulkan/icd.d")),
            "{dirs:?}"
        );
        if std::env::var_os("XDG_DATA_DIRS").is_none() {
            assert!(dirs.contains(&PathBuf::from("/usr/share/vulkan/icd.d")));
        }
    }

    #[test]
    fn plan_installs_only_as_root_with_apt_and_otherwise_names_the_command() {
        let some = vec![PathBuf::from("/usr/share/vulkan/icd.d/lvp_icd.x86_64.json")];
        let none: Vec<PathBuf> = Vec::new();
        for (root, apt) in [(false, false), (false, true), (true, false), (true, true)] {
            assert_eq!(plan(&some, true, root, apt), Plan::Ready);
        }
        assert_eq!(plan(&none, false, true, true), Plan::Install);
        assert_eq!(plan(&none, true, true, true), Plan::Install);
        assert_eq!(plan(&some, false, true, true), Plan::Install);
        for (manifests, loader, root, apt) in [
            (&none, true, false, true),
            (&none, false, true, false),
            (&some, false, false, false),
        ] {
            let Plan::Stop(why) = plan(manifests, loader, root, apt) else {
                panic!("expected a stop for {manifests:?} loader={loader} root={root} apt={apt}");
            };
            assert!(
                why.contains("apt-get install mesa-vulkan-drivers libvulkan1")
                    && why.contains("--no-wgpu"),
                "{why}"
            );
            assert_eq!(why.matches(". ").count(), 0, "one sentence: {why}");
        }
    }
}
