//! Helpers every command shares: the workspace paths, running and showing commands, writing files,
//! the machine description.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The workspace: its root, the cargo target directory and the cargo to run.
pub struct Xtask {
    pub root: PathBuf,
    pub target: PathBuf,
    pub cargo: String,
}

impl Xtask {
    pub fn new() -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .map(|p| if p.is_absolute() { p } else { root.join(p) })
            .unwrap_or_else(|| root.join("target"));
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        Self {
            root,
            target,
            cargo,
        }
    }

    pub fn cargo(&self) -> Command {
        let mut c = Command::new(&self.cargo);
        c.current_dir(&self.root);
        c
    }

    /// Environment for running GPU backends: wgpu wants a writable `XDG_RUNTIME_DIR` (unset or
    /// not writable: one under the target directory).
    pub fn runtime_env(&self, cmd: &mut Command) -> Result<()> {
        let writable = |dir: &Path| {
            let probe = dir.join(format!(".xtask-probe-{}", std::process::id()));
            let ok = std::fs::write(&probe, b"").is_ok();
            let _ = std::fs::remove_file(&probe);
            ok
        };
        if !std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|d| writable(Path::new(&d))) {
            let dir = self.target.join("xdg-runtime");
            std::fs::create_dir_all(&dir)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
            }
            cmd.env("XDG_RUNTIME_DIR", dir);
        }
        Ok(())
    }
}

/// Writes `text` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

pub fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` with inherited stdio; a non-zero exit is an error naming the command.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = show(cmd);
    eprintln!("\n$ {line}");
    let start = Instant::now();
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{line}`"))?;
    eprintln!("  ({line}: {:.0}s)", start.elapsed().as_secs_f64());
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Whether this process runs as root and `apt-get` is available: [`apt_install`] can work.
pub fn can_apt_install() -> bool {
    capture("id", &["-u"]).as_deref() == Some("0") && crate::vulkan::on_path("apt-get")
}

/// `apt-get update`, then `apt-get install` of `packages` without recommends, non-interactively
/// (as root: see [`can_apt_install`]); each command is shown and a failure names it.
pub fn apt_install(packages: &[&str]) -> Result<()> {
    let apt = |args: &[&str]| {
        let mut c = Command::new("apt-get");
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    run(&mut apt(&["update", "-qq"]))?;
    let mut install = apt(&["install", "-y", "-qq", "--no-install-recommends"]);
    install.args(packages);
    run(&mut install)
}

/// The trimmed stdout of `program args`, `None` when it cannot start or fails.
pub fn capture(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let gpu = capture(
        "nvidia-smi",
        &["--query-gpu=name,driver_version", "--format=csv,noheader"],
    );
    let vulkan: Vec<String> = std::fs::read_dir("/usr/share/vulkan/icd.d")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    json!({
        "cpu": cpu,
        "cores": cores,
        "os": capture("uname", &["-srm"]).unwrap_or_default(),
        "nvidia_gpu": gpu,
        "vulkan_icds": vulkan,
    })
}

/// Replaces the text between `<!-- xtask:NAME:begin -->` and `<!-- xtask:NAME:end -->`.
pub fn replace_section(doc: &Path, name: &str, body: &str) -> Result<()> {
    let text =
        std::fs::read_to_string(doc).with_context(|| format!("reading {}", doc.display()))?;
    let (b, e) = (
        format!("<!-- xtask:{name}:begin -->"),
        format!("<!-- xtask:{name}:end -->"),
    );
    let (Some(i), Some(j)) = (text.find(&b), text.find(&e)) else {
        bail!("{} has no `{b}` … `{e}` markers", doc.display());
    };
    if j < i {
        bail!("{}: `{e}` comes before `{b}`", doc.display());
    }
    let new = format!("{}{b}\n{body}{}", &text[..i], &text[j..]);
    write_atomic(doc, &new)
}
