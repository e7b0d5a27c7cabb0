//! `eval`: scores one or more models on one or more datasets.
//!
//! ```kdl
//! eval scores {
//!     model init; model tuned                 // compare "before" and "after"
//!     data heldout metric=exact-match         // default metric by the dataset's format
//!     data web-val metric=perplexity
//!     max-new-tokens 32; max-records 200
//! }
//! ```
//!
//! `metric` per dataset: `loss` / `perplexity` (same numbers), `exact-match` (loss too) or
//! `preference-accuracy`; unset: by format (prompt-completion: exact-match, preference:
//! preference-accuracy, else loss). `max-records N` keeps the first N records of each dataset.
//! `batch-size` is not semantic (it only changes float rounding). Models and datasets are
//! each listed once.

use crate::params::{field, int, DecodeError, FromParam, Input, ParamSet};
use dsl::{KindSchema, NodeDecl, ParamIssue, ParamSpec, ParamType, Value};
use std::collections::BTreeSet;

crate::enum_param! {
    /// What `eval` measures on a dataset.
    pub enum Metric {
        Loss = "loss",
        Perplexity = "perplexity",
        ExactMatch = "exact-match",
        PreferenceAccuracy = "preference-accuracy",
    }
}

/// `data DATASET metric=M`.
#[derive(Clone, Debug, PartialEq)]
pub struct Data {
    pub name: Input,
    /// Unset: the default of the dataset's format.
    pub metric: Option<Metric>,
}

impl FromParam for Data {
    fn from_param(v: Option<&Value>, name: &str) -> Result<Self, DecodeError> {
        match v {
            Some(Value::Record(r)) => Ok(Data {
                name: field(r, name, "name")?,
                metric: field(r, name, "metric")?,
            }),
            other => Err(DecodeError::new(
                name,
                format!("expected a record, got {other:?}"),
            )),
        }
    }
}

fn data_record() -> ParamType {
    ParamType::Record {
        positional: &["name"],
        fields: vec![
            ParamSpec::new("name", ParamType::Ref(&["dataset"])).doc("the dataset node"),
            ParamSpec::new("metric", ParamType::Enum(Metric::NAMES))
                .optional()
                .doc("loss | perplexity | exact-match | preference-accuracy (default by format)"),
        ],
    }
}

crate::params! {
    /// Parameters of `eval`.
    pub struct Params {
        model: Vec<Input> = ParamSpec::new("model", ParamType::Ref(&["model"])).repeated()
            .doc("a model to evaluate; repeat to compare several (before / after)"),
        data: Vec<Data> = ParamSpec::new("data", data_record())
            .repeated()
            .doc("`data NAME metric=exact-match`; repeat for each dataset"),
        max_new_tokens: usize = ParamSpec::new("max-new-tokens", int(1)).default(Value::Int(32))
            .doc("exact-match: most tokens generated per record"),
        max_records: Option<usize> = ParamSpec::new("max-records", int(1)).optional()
            .doc("score only the first N records of each dataset"),
        use_chat_template: bool = ParamSpec::new("use-chat-template", ParamType::Bool).default(Value::Bool(false))
            .doc("render prompt-completion records as a chat turn (as `sft use-chat-template` trains them)"),
        skip_long: bool = ParamSpec::new("skip-long", ParamType::Bool).default(Value::Bool(false))
            .doc("skip (and count) records longer than the model's limit instead of failing"),
        examples: usize = ParamSpec::new("examples", int(0)).default(Value::Int(5))
            .doc("predictions kept per model × dataset in results.json"),
        batch_size: usize = ParamSpec::new("batch-size", int(1)).default(Value::Int(16)).non_semantic()
            .doc("records per forward pass"),
    }
}

/// The `eval` kind's declaration (the common parameters come last, as the registry appends
/// them to every kind).
pub fn schema() -> KindSchema {
    KindSchema::new("eval", 1, "eval")
        .doc("Held-out loss / perplexity, greedy exact-match and preference accuracy of one or more models on one or more datasets.")
        .params(Params::specs())
        .check(check)
        .scores(crate::eval_scores::scores())
}

/// The names in a repeated parameter (`model a; model b`, or `data`'s `name` field) that
/// occur more than once, in order.
fn repeated_names(v: Option<&Value>, name: impl Fn(&Value) -> Option<&str>) -> Vec<String> {
    let mut seen = BTreeSet::new();
    v.and_then(|v| v.as_list())
        .unwrap_or(&[])
        .iter()
        .filter_map(name)
        .filter(|n| !seen.insert(n.to_string()))
        .map(str::to_string)
        .collect()
}

/// Distinct models and datasets.
pub fn check(n: &NodeDecl) -> Vec<ParamIssue> {
    let models = repeated_names(n.params.get("model"), |m| m.as_str());
    let data = repeated_names(n.params.get("data"), |d| {
        d.as_record()
            .and_then(|r| r.get("name"))
            .and_then(|v| v.as_str())
    });
    let model_issues = models.into_iter().map(|name| ParamIssue {
        param: Some("model".into()),
        message: format!("model `{name}` is listed twice"),
        hint: Some("list each model once".into()),
    });
    let data_issues = data.into_iter().map(|name| ParamIssue {
        param: Some("data".into()),
        message: format!("dataset `{name}` is listed twice"),
        hint: Some("list each dataset once".into()),
    });
    model_issues.chain(data_issues).collect()
}
