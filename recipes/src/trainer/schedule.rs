//! Learning-rate schedules as Hugging Face's `get_*_schedule_with_warmup` define them.
//!
//! The rate used for optimizer step `s` (0-based: the `s`-th update) is `lr · λ(s)` with `W`
//! warmup steps and `T` total steps:
//! - warmup (every kind): `λ(s) = s / max(1, W)` for `s < W`;
//! - `constant`: `λ(s) = 1` after warmup;
//! - `linear`: `λ(s) = max(0, (T − s) / max(1, T − W))`;
//! - `cosine`: `p = (s − W) / max(1, T − W)`, `λ(s) = max(0, ½ (1 + cos(π p)))`
//!   (HF's `num_cycles = 0.5`), floored at `min_ratio` when one is given:
//!   `λ = min_ratio + (1 − min_ratio) · ½ (1 + cos(π p))`.
//!
//! Warmup given as a fraction `f` of the run is `W = ⌈f · T⌉` steps (HF `TrainingArguments`).

/// The shape of a schedule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Constant,
    Linear,
    Cosine { min_ratio: f64 },
}

impl Kind {
    pub const NAMES: &'static [&'static str] = &["constant", "linear", "cosine"];
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "constant" => Some(Kind::Constant),
            "linear" => Some(Kind::Linear),
            "cosine" => Some(Kind::Cosine { min_ratio: 0.0 }),
            _ => None,
        }
    }
}

/// Warmup length.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Warmup {
    Steps(u64),
    /// Fraction of the total steps, in `[0, 1]`.
    Fraction(f64),
}

impl Warmup {
    /// Warmup steps for a run of `total` steps (`⌈f · T⌉` for a fraction).
    pub fn steps(&self, total: u64) -> u64 {
        match *self {
            Warmup::Steps(w) => w,
            Warmup::Fraction(f) => (f.clamp(0.0, 1.0) * total as f64).ceil() as u64,
        }
    }
}

/// A schedule over a run of `total` steps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    pub kind: Kind,
    pub base_lr: f64,
    pub warmup: u64,
    pub total: u64,
}

impl Schedule {
    pub fn new(kind: Kind, base_lr: f64, warmup: Warmup, total: u64) -> Self {
        Schedule {
            kind,
            base_lr,
            warmup: warmup.steps(total),
            total,
        }
    }

    /// The multiplier `λ(s)` of step `s`.
    pub fn factor(&self, step: u64) -> f64 {
        let (s, w, t) = (step as f64, self.warmup as f64, self.total as f64);
        if step < self.warmup {
            return s / w.max(1.0);
        }
        match self.kind {
            Kind::Constant => 1.0,
            Kind::Linear => ((t - s) / (t - w).max(1.0)).max(0.0),
            Kind::Cosine { min_ratio } => {
                let p = (s - w) / (t - w).max(1.0);
                let c = (0.5 * (1.0 + (std::f64::consts::PI * p).cos())).max(0.0);
                min_ratio + (1.0 - min_ratio) * c
            }
        }
    }

    /// The learning rate of step `s`.
    pub fn lr(&self, step: u64) -> f64 {
        self.base_lr * self.factor(step)
    }
}
