//! Influence-based mixture reweighting (shared/reference/mixtures.md): first-order group
//! influence of each data domain on target losses at a checkpoint, and the mixture update it
//! implies. One concern per file:
//!
//! - [`sample`]: which records are measured, and the halves of the uncertainty estimate;
//! - [`grads`]: the parameter selection, summed sample gradients, losses, the f64 Gram matrix;
//! - [`project`]: the optional random projection of gradients;
//! - [`score`]: influence `⟨h_j, g_k⟩`, scores `s_k`, standard errors, abstention;
//! - [`update`]: the KL-trust-region step, smoothing and the bounded projection;
//! - [`stats`]: rank correlation for check mode;
//! - [`estimate`]: all of the above on token ids, producing the [`estimate::Report`] the
//!   `reweight` kind writes as `diagnostics.json`.

pub mod estimate;
pub mod grads;
pub mod project;
pub mod sample;
pub mod score;
pub mod stats;
pub mod update;

pub use estimate::{estimate, Check, Config, DomainIn, Report, TargetIn};
pub use grads::{Batching, Selection};
pub use update::Bounds;
