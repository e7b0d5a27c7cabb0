//! `dataset`: local JSON-lines or Parquet files (a file, a directory or a glob) in one of four
//! record formats, validated and normalised.
//!
//! ```kdl
//! dataset chat path="data/chat/*.parquet" format=messages
//! dataset qa path="data/qa.jsonl" format=prompt-completion skip-invalid=#true {
//!     fields prompt="question" completion="answer"   // canonical name = source column
//! }
//! ```
//!
//! `fields` maps canonical field names to the source's column names; an unmapped field is read
//! under its canonical name. `skip-invalid=#true` counts bad records per reason instead of
//! failing on the first one (a dataset left with no record is still an error).

use crate::params::{DecodeError, FromParam, ParamSet, PathParam};
use dsl::{KindSchema, ParamSpec, ParamType, Value};
use std::collections::BTreeMap;

crate::enum_param! {
    /// A dataset's record format.
    pub enum Format {
        /// `{"text": str}`
        Text = "text",
        /// `{"messages": [{"role", "content"}, …]}` with at least one assistant turn.
        Messages = "messages",
        /// `{"prompt": str, "completion": str}`
        PromptCompletion = "prompt-completion",
        /// `{"prompt", "chosen", "rejected"}` with `chosen != rejected`.
        Preference = "preference",
    }
}

/// The `fields` record: canonical field name → source column name (only the fields set).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FieldNames(pub BTreeMap<String, String>);

impl FromParam for FieldNames {
    fn from_param(v: Option<&Value>, name: &str) -> Result<Self, DecodeError> {
        match v {
            None | Some(Value::Null) => Ok(FieldNames::default()),
            Some(Value::Record(r)) => Ok(FieldNames(
                r.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect(),
            )),
            Some(other) => Err(DecodeError::new(
                name,
                format!("expected a record, got {other:?}"),
            )),
        }
    }
}

fn fields_record() -> ParamType {
    let field =
        |n: &'static str, d: &'static str| ParamSpec::new(n, ParamType::Str).optional().doc(d);
    ParamType::Record {
        positional: &[],
        fields: vec![
            field("text", "source column of `text`"),
            field("messages", "source column of `messages`"),
            field("prompt", "source column of `prompt`"),
            field("completion", "source column of `completion`"),
            field("chosen", "source column of `chosen`"),
            field("rejected", "source column of `rejected`"),
        ],
    }
}

crate::params! {
    /// Parameters of `dataset`.
    pub struct Params {
        path: PathParam = ParamSpec::new("path", ParamType::Path)
            .doc("file, directory of .jsonl/.json/.parquet files, or glob; relative to the recipe"),
        format: Format = ParamSpec::new("format", ParamType::Enum(Format::NAMES))
            .doc("text | messages | prompt-completion | preference"),
        fields: FieldNames = ParamSpec::new("fields", fields_record())
            .optional()
            .doc("maps canonical field names to the source's column names: `fields prompt=\"question\"`"),
        skip_invalid: bool = ParamSpec::new("skip-invalid", ParamType::Bool)
            .default(Value::Bool(false))
            .doc("skip invalid records (counted per reason in stats.json) instead of failing"),
    }
}

/// The `dataset` kind's declaration.
pub fn schema() -> KindSchema {
    KindSchema::new("dataset", 1, "dataset")
        .doc("A local JSON-lines or Parquet dataset (file, directory or glob), validated and normalised.")
        .params(Params::specs())
}
