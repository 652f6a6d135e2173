//! `cargo xtask docs`: rustdoc with broken intra-doc links denied, the markdown pages' relative
//! links, the doctests.

use crate::util::{run, Xtask};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

impl Xtask {
    pub fn docs(&self, doctests: bool) -> Result<()> {
        let mut cmd = self.cargo();
        cmd.args(["doc", "--workspace", "--no-deps"]).env(
            "RUSTDOCFLAGS",
            "-D rustdoc::broken_intra_doc_links -D rustdoc::private_intra_doc_links -D rustdoc::bare_urls",
        );
        run(&mut cmd)?;
        check_markdown_links(&self.root)?;
        if doctests {
            run(self.cargo().args(["test", "--workspace", "--doc"]))?;
        }
        Ok(())
    }
}

/// Every relative link in docs/*.md and README.md points at an existing file.
fn check_markdown_links(root: &Path) -> Result<()> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "md"))
                .collect()
        })
        .unwrap_or_default();
    files.push(root.join("README.md"));
    let mut broken = Vec::new();
    let mut count = 0;
    for f in files.iter().filter(|f| f.exists()) {
        let text = std::fs::read_to_string(f)?;
        let mut rest = text.as_str();
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            let Some(end) = rest.find(')') else { break };
            let target = rest[..end].split_whitespace().next().unwrap_or("");
            rest = &rest[end..];
            if target.is_empty()
                || target.starts_with('#')
                || target.contains("://")
                || target.starts_with("mailto:")
            {
                continue;
            }
            count += 1;
            let path = target.split('#').next().unwrap_or(target);
            let base = f.parent().unwrap_or(root);
            if !base.join(path).exists() {
                broken.push(format!("{}: link to `{target}`", f.display()));
            }
        }
    }
    if !broken.is_empty() {
        bail!("broken links in markdown pages:\n  {}", broken.join("\n  "));
    }
    eprintln!(
        "markdown links: {count} relative links in {} pages, all resolve",
        files.len()
    );
    Ok(())
}
