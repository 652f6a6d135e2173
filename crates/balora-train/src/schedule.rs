//! Learning-rate schedules.

use balora_config::ScheduleName;

/// A schedule over `total` steps: linear warmup from `peak/warmup` to `peak`, then constant,
/// linear decay to 0, or cosine decay to `min_ratio·peak`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    /// Shape after warmup.
    pub kind: ScheduleName,
    /// Peak lr.
    pub peak: f64,
    /// Warmup steps.
    pub warmup: u64,
    /// Total steps.
    pub total: u64,
    /// Cosine floor as a fraction of `peak`.
    pub min_ratio: f64,
}

impl LrSchedule {
    /// The lr of step `step` (1-based: the first optimizer step is step 1).
    ///
    /// ```
    /// use balora_train::LrSchedule;
    /// use balora_config::ScheduleName;
    /// let s = LrSchedule { kind: ScheduleName::Cosine, peak: 1.0, warmup: 2, total: 12, min_ratio: 0.0 };
    /// assert_eq!(s.lr(1), 0.5);
    /// assert_eq!(s.lr(2), 1.0);
    /// assert!((s.lr(7) - 0.5).abs() < 1e-12);
    /// assert!(s.lr(12).abs() < 1e-12);
    /// ```
    pub fn lr(&self, step: u64) -> f64 {
        if step <= self.warmup && self.warmup > 0 {
            return self.peak * step as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1) as f64;
        let progress = ((step - self.warmup) as f64 / span).clamp(0.0, 1.0);
        match self.kind {
            ScheduleName::Constant => self.peak,
            ScheduleName::Linear => self.peak * (1.0 - progress),
            ScheduleName::Cosine => {
                let floor = self.peak * self.min_ratio;
                floor + (self.peak - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}
