//! `select`: collapses the variants of a swept node into the best one by a score.
//!
//! ```kdl
//! sweep { aligned.beta 0.05 0.1 0.3 }
//! eval pref-scores { model aligned; data prefs-heldout }
//! select best from=aligned by="pref-scores:prefs-heldout.preference_accuracy" max
//! merge final method=slerp t=0.5 { model tuned; model best }
//! ```
//!
//! `by="EVAL:DATA.METRIC"` names an `eval` node, one of its datasets and a metric of its
//! `results.json` rows ([`crate::eval_scores::METRICS`]);
//! the row read for a candidate is the one whose model is that candidate's instance of `from`
//! (or the eval's only model). `max` / `min` (a bare word, or `goal=`) says which end wins; ties go
//! to the first candidate in sweep order. `over="node.param"` collapses only that sweep axis
//! (select over β for each lr); unset, every axis that reaches `from` is collapsed.
//!
//! A select node is not a stage: the front resolves it once every score is built (the DSL
//! expands it, the planner keys it, the executor records it). Its key is derived from every
//! candidate's key, every score's key and the scores' values; what it *produces* is the winner's
//! artifact, shared, and nodes downstream are keyed by the winner's key, so they rerun only when
//! the winner (or its artifact) changes.

use dsl::{KindSchema, ParamSpec, ParamType};

/// Which end of the score wins.
pub const GOALS: &[&str] = &["max", "min"];

/// The `select` kind's declaration.
pub fn schema() -> KindSchema {
    KindSchema::new("select", 1, dsl::schema::SELECT_PRODUCES)
        .doc("Picks the best variant of a swept node by an eval metric; downstream nodes use the winner's artifact.")
        .param(
            ParamSpec::new("from", ParamType::Ref(&[]))
                .doc("the swept node whose variants compete"),
        )
        .param(
            ParamSpec::new("by", ParamType::Str)
                .doc("the score: `EVAL:DATA.METRIC`, e.g. `scores:heldout.preference_accuracy`"),
        )
        .param(
            ParamSpec::new("goal", ParamType::Enum(GOALS))
                .doc("`max` or `min` (also written as a bare word after the name)"),
        )
        .param(
            ParamSpec::new("over", ParamType::Str)
                .optional()
                .doc("collapse only this sweep axis, `node.param` (default: every axis reaching `from`)"),
        )
        .words(&[("max", "goal"), ("min", "goal")])
}
