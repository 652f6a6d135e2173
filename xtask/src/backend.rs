//! The backends xtask builds and runs, and the environment burn-tch needs.

use crate::util::{capture, Xtask};
use crate::Backends;
use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Backend {
    Ndarray,
    Flex,
    Wgpu,
    Cuda,
    Tch,
}

impl Backend {
    const ALL: [Backend; 5] = [Self::Ndarray, Self::Flex, Self::Wgpu, Self::Cuda, Self::Tch];
    pub fn name(self) -> &'static str {
        match self {
            Self::Ndarray => "ndarray",
            Self::Flex => "flex",
            Self::Wgpu => "wgpu",
            Self::Cuda => "cuda",
            Self::Tch => "tch",
        }
    }
    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|b| b.name() == s.trim())
            .with_context(|| {
                format!("unknown backend `{s}`; known: ndarray, flex, wgpu, cuda, tch")
            })
    }
    /// The cargo feature (the CPU backends, ndarray and flex, are always compiled).
    pub fn feature(self) -> Option<&'static str> {
        (!matches!(self, Self::Ndarray | Self::Flex)).then(|| self.name())
    }
}

pub fn parse_backends(b: &Backends, default: &[Backend]) -> Result<Vec<Backend>> {
    let mut v: Vec<Backend> = if b.all {
        Backend::ALL.to_vec()
    } else if b.backend.is_empty() {
        default.to_vec()
    } else {
        b.backend
            .iter()
            .map(|s| Backend::parse(s))
            .collect::<Result<_>>()?
    };
    v.sort();
    v.dedup();
    Ok(v)
}

impl Xtask {
    pub fn tch_venv(&self) -> PathBuf {
        self.target.join("tch-venv")
    }

    /// Build and run environment for burn-tch, or why it is unavailable.
    pub fn tch_env(&self) -> std::result::Result<Vec<(String, String)>, String> {
        let venv = self.tch_venv();
        let venv_python = venv.join("bin/python");
        let (python, is_venv) = if venv_python.exists() {
            (venv_python.to_string_lossy().into_owned(), true)
        } else {
            ("python3".to_string(), false)
        };
        let probe = "import torch, os; print(torch.__version__); print(os.path.join(os.path.dirname(torch.__file__), 'lib'))";
        let Some(out) = capture(&python, &["-c", probe]) else {
            return Err(
                "libtorch not found (no PyTorch importable): run `cargo xtask setup tch`".into(),
            );
        };
        let mut lines = out.lines();
        let version = lines.next().unwrap_or("").to_string();
        let lib = lines.next().unwrap_or("").to_string();
        if !version.starts_with("2.9.") {
            return Err(format!(
                "{python} has PyTorch {version}, burn-tch 0.21 needs 2.9.x: run `cargo xtask setup tch`"
            ));
        }
        let mut env = vec![("LIBTORCH_USE_PYTORCH".to_string(), "1".to_string())];
        if is_venv {
            let path = std::env::var("PATH").unwrap_or_default();
            env.push(("VIRTUAL_ENV".into(), venv.to_string_lossy().into_owned()));
            env.push((
                "PATH".into(),
                format!("{}:{path}", venv.join("bin").to_string_lossy()),
            ));
        }
        let ld = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
        env.push(("LD_LIBRARY_PATH".into(), format!("{lib}:{ld}")));
        Ok(env)
    }
}
