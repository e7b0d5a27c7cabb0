//! `pairs`: preference pairs from the completions of a `generate` node, ranked by a score.
//!
//! ```kdl
//! pairs ranked data=samples { score reference-match }
//! ```
//!
//! For each prompt the completion with the highest score is `chosen` and the one with the lowest
//! `rejected` (ties broken by the completion's order); prompts whose completions all score the
//! same are skipped and counted, and so are completions identical as text. Scores:
//! - `reference-match`: `1 − Levenshtein(completion, reference) / max(len)` on characters after
//!   trimming (1 for an exact match), against the prompt's reference;
//! - `judge-logp`: the mean per-token log-probability of the completion under `model=` (a judge
//!   or the reference policy), prompt as context;
//! - `length`: shorter is better (`−characters`), a baseline and a tie-breaker for tests.

use crate::params::{is_set, Input};
use dsl::device::Dtype;
use dsl::{KindSchema, NodeDecl, ParamIssue, ParamSpec, ParamType, Value};

crate::enum_param! {
    /// How `pairs` ranks completions.
    pub enum Score {
        ReferenceMatch = "reference-match",
        JudgeLogp = "judge-logp",
        Length = "length",
    }
}

crate::params! {
    /// Parameters of `pairs`.
    pub struct Params {
        data: Input = ParamSpec::new("data", ParamType::Ref(&["dataset"]))
            .doc("the output of a `generate` node with n ≥ 2"),
        score: Score = ParamSpec::new("score", ParamType::Enum(Score::NAMES)).default(Value::Str("reference-match".into()))
            .doc("reference-match | judge-logp | length"),
        model: Option<Input> = ParamSpec::new("model", ParamType::Ref(&["model"])).optional()
            .doc("the judge of `score judge-logp`"),
        dtype: Dtype = ParamSpec::new("dtype", ParamType::Enum(Dtype::NAMES)).default(Value::Str("auto".into()))
            .doc("the judge's compute dtype: auto = f32 on CPU, bf16 on CUDA"),
        batch_size: usize = ParamSpec::new("batch-size", crate::params::int(1)).default(Value::Int(8)).non_semantic()
            .doc("judge: completions per forward pass"),
    }
}

/// The kind's declaration: its output is a preference dataset.
pub fn schema() -> KindSchema {
    KindSchema::new("pairs", 1, "dataset")
        .doc("Preference pairs (prompt/chosen/rejected) from a `generate` node's completions, ranked by a score; ties skipped and counted.")
        .params(<Params as crate::ParamSet>::specs())
        .check(check)
}

/// `judge-logp` needs `model=`, which no other score reads.
pub fn check(n: &NodeDecl) -> Vec<ParamIssue> {
    let judge = n.params.get("score").and_then(|v| v.as_str()) == Some("judge-logp");
    match (judge, is_set(n, "model")) {
        (true, false) => vec![ParamIssue {
            param: Some("score".into()),
            message: "score judge-logp needs the judge: `model=`".into(),
            hint: Some("`pairs ranked data=samples model=judge { score judge-logp }`".into()),
        }],
        (false, true) => vec![ParamIssue {
            param: Some("model".into()),
            message: "`model=` is only read by `score judge-logp`".into(),
            hint: Some("remove `model=`, or set `score judge-logp`".into()),
        }],
        _ => Vec::new(),
    }
}
