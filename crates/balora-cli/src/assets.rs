//! `balora assets`: fetch the pinned assets (models, corpora) into the cache folder.

use anyhow::{Context, Result};
use std::path::Path;

/// Fetches `only` (all when empty) into `dir` (default: `balora_assets::default_cache_dir()`),
/// then lists what is present.
pub fn run(dir: Option<&Path>, only: &[String]) -> Result<()> {
    let cache = dir.map_or_else(balora_assets::default_cache_dir, Path::to_path_buf);
    let names: Vec<&str> = only.iter().map(String::as_str).collect();
    let paths = balora_assets::fetch(&names, &cache, true)
        .with_context(|| format!("fetching assets into {}", cache.display()))?;
    for spec in balora_assets::ASSETS {
        if names.is_empty() || names.contains(&spec.name) {
            let state = match paths.dir(spec.name) {
                Ok(d) => d.display().to_string(),
                Err(e) => format!("missing: {e}"),
            };
            println!("{:<12} {:<60} {state}", spec.name, spec.description);
        }
    }
    Ok(())
}
