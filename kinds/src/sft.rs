//! `sft`: supervised fine-tuning of a `model` on prompt-completion or messages data,
//! producing a `model`.
//!
//! Parameters besides the [`Optim`](crate::train::Optim) group: `data`, `tokenizer` (default:
//! the model's files), `loss-on` (`assistant` = `completion`, or `all`), `packing` (#true),
//! `max-len` (default: the model's `max_position_embeddings`, else 2048; never above it),
//! `seq-len` (row length when packing, ≥ `max-len`; default `max-len`), `skip-long` (#false:
//! an example longer than `max-len` is an error), `use-chat-template` (#false), `batch-size`
//! examples per micro-batch (8).

use crate::params::{int, Input};
use crate::train::check_training;
use dsl::{KindSchema, NodeDecl, ParamIssue, ParamSpec, ParamType, Value};

crate::enum_param! {
    /// Which tokens an example trains on (`assistant` and `completion` are synonyms).
    pub enum LossOn { Assistant = "assistant", Completion = "completion", All = "all" }
}

crate::params! {
    /// Parameters of `sft`.
    pub struct Params {
        model: Input = ParamSpec::new("model", ParamType::Ref(&["model"])).doc("the model to train"),
        data: Input = ParamSpec::new("data", ParamType::Ref(&["dataset"])).doc("a prompt-completion or messages dataset"),
        tokenizer: Option<Input> = ParamSpec::new("tokenizer", ParamType::Ref(&["tokenizer", "model"])).optional()
            .doc("default: the model's tokenizer files"),
        loss_on: LossOn = ParamSpec::new("loss-on", ParamType::Enum(LossOn::NAMES)).default(Value::Str("assistant".into()))
            .doc("assistant | completion (the same) | all"),
        packing: bool = ParamSpec::new("packing", ParamType::Bool).default(Value::Bool(true))
            .doc("pack examples into rows (block-diagonal attention) instead of padding"),
        max_len: Option<usize> = ParamSpec::new("max-len", int(2)).optional()
            .doc("longest example in tokens (default: the model's max_position_embeddings)"),
        seq_len: Option<usize> = ParamSpec::new("seq-len", int(2)).optional().doc("row length when packing (default: max-len)"),
        skip_long: bool = ParamSpec::new("skip-long", ParamType::Bool).default(Value::Bool(false))
            .doc("skip and count examples longer than max-len instead of failing"),
        use_chat_template: bool = ParamSpec::new("use-chat-template", ParamType::Bool).default(Value::Bool(false))
            .doc("render prompt-completion records with the chat template"),
        batch_size: usize = ParamSpec::new("batch-size", int(1)).default(Value::Int(8)).doc("examples per micro-batch"),
    }
    groups { optim: crate::train::Optim, common: crate::Common }
}

/// The kind's declaration.
pub fn schema() -> KindSchema {
    KindSchema::new("sft", 1, "model")
        .doc("Supervised fine-tuning on prompt-completion or chat data: loss on the completion / assistant turns, EOS trained.")
        .params(<Params as crate::ParamSet>::specs())
        .check(check)
        .check_in_recipe(crate::train::check_in_recipe)
}

/// The optimiser checks, one run length, and `seq-len ≥ max-len` (the longest example fits a
/// row).
pub fn check(n: &NodeDecl) -> Vec<ParamIssue> {
    let mut out = check_training(n);
    let get = |k: &str| n.params.get(k).and_then(|v| v.as_i64());
    if let (Some(s), Some(m)) = (get("seq-len"), get("max-len")) {
        if s < m {
            out.push(ParamIssue {
                param: Some("seq-len".into()),
                message: format!(
                    "seq-len {s} is shorter than max-len {m}: the longest example must fit in a row"
                ),
                hint: None,
            });
        }
    }
    out
}
