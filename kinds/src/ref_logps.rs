//! `ref-logps`: a dataset tokenised once with the reference model's log-probs of every record,
//! read by `dpo` and `npo` (which never load the reference model).
//!
//! Parameters: `model` (the reference; omit it to only tokenise, for simpo / orpo, and then
//! give `tokenizer`), `data`, `tokenizer` (default: the model's files), `max-len` (default: the
//! model's `max_position_embeddings`, else 1024; never above it), `max-prompt-len` (longer
//! prompts keep their last tokens), `use-chat-template`, `dtype` of the reference pass and
//! `batch-size` records per forward (not in the key).

use crate::params::{int, is_set, Input};
use dsl::device::Dtype;
use dsl::{KindSchema, NodeDecl, ParamIssue, ParamSpec, ParamType, Value};

crate::params! {
    /// Parameters of `ref-logps`.
    pub struct Params {
        model: Option<Input> = ParamSpec::new("model", ParamType::Ref(&["model"])).optional()
            .doc("the reference model (omit to only tokenise, for simpo / orpo)"),
        data: Input = ParamSpec::new("data", ParamType::Ref(&["dataset"]))
            .doc("preference data, or any dataset for npo forget / retain sets"),
        tokenizer: Option<Input> = ParamSpec::new("tokenizer", ParamType::Ref(&["tokenizer", "model"])).optional()
            .doc("default: the model's tokenizer files"),
        max_len: Option<usize> = ParamSpec::new("max-len", int(2)).optional()
            .doc("longest prompt + completion in tokens (default: the model's max_position_embeddings, else 1024)"),
        max_prompt_len: Option<usize> = ParamSpec::new("max-prompt-len", int(1)).optional()
            .doc("prompts longer than this keep their last tokens (default: no limit besides max-len)"),
        use_chat_template: bool = ParamSpec::new("use-chat-template", ParamType::Bool).default(Value::Bool(false))
            .doc("render plain-text pairs / prompt-completion records with the chat template"),
        dtype: Dtype = ParamSpec::new("dtype", ParamType::Enum(Dtype::NAMES)).default(Value::Str("auto".into()))
            .doc("reference compute dtype: auto = f32 on CPU, bf16 on CUDA"),
        batch_size: usize = ParamSpec::new("batch-size", int(1)).default(Value::Int(8)).non_semantic()
            .doc("records per forward pass"),
    }
}

/// The kind's declaration.
pub fn schema() -> KindSchema {
    KindSchema::new("ref-logps", 1, "ref-logps")
        .doc("Tokenised preference (or forget/retain) data with the reference model's log-probs, computed once and read by dpo / npo.")
        .params(<Params as crate::ParamSet>::specs())
        .check(check)
}

/// A reference model or, to only tokenise, a tokenizer.
pub fn check(n: &NodeDecl) -> Vec<ParamIssue> {
    let mut out = Vec::new();
    if !is_set(n, "model") && !is_set(n, "tokenizer") {
        out.push(ParamIssue {
            param: None,
            message: "ref-logps needs `model=` (the reference) or, to only tokenise, `tokenizer=`"
                .into(),
            hint: Some("`ref-logps ref model=sft data=prefs`".into()),
        });
    }
    out
}
