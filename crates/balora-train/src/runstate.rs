//! The trainer's run-folder side: `metrics.jsonl`, progress output, and resuming from the newest
//! intact checkpoint with a compatibility check.

use crate::checkpoint::{clean_stale, list_checkpoints, Checkpoint};
use crate::trainer::MetricRecord;
use crate::TrainError;
use balora_config::TrainerSection;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Appends records to `metrics.jsonl`.
pub(crate) struct MetricsFile {
    file: Option<std::fs::File>,
}

impl MetricsFile {
    /// Opens `out/metrics.jsonl`: with `keep_up_to` (resume) the records up to that step stay and
    /// later ones go (they are produced again); without it the file starts empty.
    pub(crate) fn open(out: Option<&Path>, keep_up_to: Option<u64>) -> Result<Self, TrainError> {
        let Some(dir) = out else {
            return Ok(Self { file: None });
        };
        std::fs::create_dir_all(dir).map_err(|e| TrainError::Io(dir.display().to_string(), e))?;
        let path = dir.join("metrics.jsonl");
        let kept: String = match keep_up_to {
            Some(step) if path.exists() => std::fs::read_to_string(&path)
                .map_err(|e| TrainError::Io(path.display().to_string(), e))?
                .lines()
                .filter(|l| serde_json::from_str::<MetricRecord>(l).is_ok_and(|r| r.step <= step))
                .map(|l| format!("{l}\n"))
                .collect(),
            _ => String::new(),
        };
        balora_formats::atomic::write_atomic(&path, kept.as_bytes())
            .map_err(|e| TrainError::Io(path.display().to_string(), e.into()))?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| TrainError::Io(path.display().to_string(), e))?;
        Ok(Self { file: Some(file) })
    }

    pub(crate) fn write(&mut self, r: &MetricRecord) {
        if let Some(f) = &mut self.file {
            if let Ok(line) = serde_json::to_string(r) {
                if let Err(e) = writeln!(f, "{line}") {
                    tracing::warn!("cannot append to metrics.jsonl: {e}");
                }
            }
        }
    }
}

/// Plain-text progress lines (no terminal) are logged every this many steps…
pub const PROGRESS_EVERY_STEPS: u64 = 10;
/// …or when this many seconds passed since the last line, whichever comes first.
pub const PROGRESS_EVERY_S: f64 = 5.0;

/// Step progress on stderr: a bar on a terminal, else a plain log line every
/// [`PROGRESS_EVERY_STEPS`] steps or [`PROGRESS_EVERY_S`] seconds (and at the last step).
pub(crate) struct Progress {
    pub(crate) bar: indicatif::ProgressBar,
    lines: bool,
    total: u64,
    last_line: Instant,
}

impl Progress {
    pub(crate) fn new(total: u64, start: u64, show: bool) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let bar = if show && terminal {
            let pb = indicatif::ProgressBar::new(total);
            pb.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < ETA {eta_precise}]",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            pb.set_position(start);
            pb
        } else {
            indicatif::ProgressBar::hidden()
        };
        Self {
            bar,
            lines: show && !terminal,
            total,
            last_line: Instant::now(),
        }
    }

    /// Reports step `step` (`msg`: loss, lr, throughput).
    pub(crate) fn step(&mut self, step: u64, msg: String, elapsed_s: f64, done_here: u64) {
        if self.lines {
            let due = step.is_multiple_of(PROGRESS_EVERY_STEPS)
                || step == self.total
                || self.last_line.elapsed().as_secs_f64() >= PROGRESS_EVERY_S;
            if due {
                let eta = elapsed_s / done_here.max(1) as f64 * (self.total - step) as f64;
                tracing::info!("step {step}/{}  {msg}  ETA {eta:.0}s", self.total);
                self.last_line = Instant::now();
            }
        }
        self.bar.set_position(step);
        self.bar.set_message(msg);
    }
}

/// Where a resumed run starts.
pub(crate) struct Resumed {
    pub(crate) checkpoint: Checkpoint,
    pub(crate) dir: PathBuf,
}

/// Prepares `root` (`<out>/checkpoints`) for a run: removes leftovers of interrupted saves; for a
/// fresh run refuses existing checkpoints (they would be pruned against this run's); for a resume
/// returns the newest intact checkpoint (warning about and removing newer damaged ones), checked
/// against `cfg` and `method` unless `allow_change`.
pub(crate) fn prepare(
    root: &Path,
    cfg: &TrainerSection,
    method: &str,
    allow_change: bool,
) -> Result<Option<Resumed>, TrainError> {
    for p in clean_stale(root) {
        tracing::warn!("removed {} (left by an interrupted save)", p.display());
    }
    if !cfg.resume {
        if let Some((_, dir)) = list_checkpoints(root).last() {
            return Err(TrainError::Data(format!(
                "{} holds checkpoints of an earlier run (newest {}); resume it with \
                 trainer.resume = true, or start in an empty folder",
                root.display(),
                dir.display()
            )));
        }
        return Ok(None);
    }
    let crate::checkpoint::LatestIntact { found, skipped } = Checkpoint::latest_intact(root);
    for (dir, why) in &skipped {
        tracing::warn!("skipping damaged checkpoint {}: {why}", dir.display());
    }
    let Some((dir, ck)) = found else {
        let why = if skipped.is_empty() {
            "there is no checkpoint".to_string()
        } else {
            format!("none of its {} checkpoint(s) is intact", skipped.len())
        };
        return Err(TrainError::Data(format!(
            "trainer.resume = true but {why} in {}; start a fresh run instead (trainer.resume = false)",
            root.display()
        )));
    };
    let s = &ck.state;
    let mut diffs = Vec::new();
    let mut diff = |field: &str, old: String, new: String| {
        if old != new {
            diffs.push(format!("{field}: {old} → {new}"));
        }
    };
    diff("method", s.method.clone(), method.to_string());
    diff(
        "trainer.steps",
        s.total_steps.to_string(),
        cfg.steps.to_string(),
    );
    diff("trainer.lr", s.lr_peak.to_string(), cfg.lr.to_string());
    diff(
        "trainer.warmup_steps",
        s.warmup.to_string(),
        cfg.warmup_steps.to_string(),
    );
    diff("trainer.seed", s.seed.to_string(), cfg.seed.to_string());
    if !diffs.is_empty() && !allow_change {
        return Err(TrainError::Data(format!(
            "cannot resume from {}: the run changed ({}); resume with the run's settings, or allow \
             the change explicitly",
            dir.display(),
            diffs.join("; ")
        )));
    }
    for (d, _) in &skipped {
        std::fs::remove_dir_all(d).map_err(|e| TrainError::Io(d.display().to_string(), e))?;
    }
    if !skipped.is_empty() {
        tracing::warn!(
            "resuming from the newest intact checkpoint {} (step {})",
            dir.display(),
            s.step
        );
    }
    Ok(Some(Resumed {
        checkpoint: ck,
        dir,
    }))
}
