//! `generate`: completions of a model for the prompts of a dataset, written as a dataset.
//!
//! ```kdl
//! generate samples model=tuned data=prompts {
//!     n 4                          // completions per prompt
//!     max-new-tokens 256
//!     temperature 0.8; top-p 0.95; top-k 0; seed 0
//!     use-chat-template #true
//!     stop "<|im_end|>"
//! }
//! ```
//!
//! Sampling: logits / `temperature`, then the `top-k` largest (0 = all), then the smallest set of
//! most likely tokens whose probability reaches `top-p` (1 = all); `temperature 0` is greedy
//! (argmax). Each completion draws from its own random stream, keyed by `seed`, the record's
//! index and the completion's index, so the output does not depend on `batch-size` (not in the
//! key). Prompts longer than the model's position limit fail the node, or with
//! `skip-long #true` are skipped and counted.

use crate::params::{float, float_in, int, Input};
use dsl::device::Dtype;
use dsl::{KindSchema, NodeDecl, ParamIssue, ParamSpec, ParamType, Value};

crate::params! {
    /// Parameters of `generate`.
    pub struct Params {
        model: Input = ParamSpec::new("model", ParamType::Ref(&["model"]))
            .doc("the model that writes the completions (a full model or an adapter)"),
        data: Input = ParamSpec::new("data", ParamType::Ref(&["dataset"]))
            .doc("the prompts: prompt-completion (the completion is kept as the reference), preference (the prompt; chosen as reference) or messages (up to the last assistant turn, which is the reference)"),
        n: usize = ParamSpec::new("n", int(1)).default(Value::Int(1))
            .doc("completions per prompt"),
        max_new_tokens: usize = ParamSpec::new("max-new-tokens", int(1)).default(Value::Int(128))
            .doc("most tokens generated per completion"),
        temperature: f64 = ParamSpec::new("temperature", float(0.0)).default(Value::Float(1.0))
            .doc("softmax temperature; 0 = greedy"),
        top_p: f64 = ParamSpec::new("top-p", float_in(0.0, 1.0)).default(Value::Float(1.0))
            .doc("nucleus sampling: keep the most likely tokens up to this probability (1 = off)"),
        top_k: usize = ParamSpec::new("top-k", int(0)).default(Value::Int(0))
            .doc("keep the k most likely tokens (0 = off)"),
        seed: u64 = ParamSpec::new("seed", int(0)).default(Value::Int(0))
            .doc("seed of the sampling streams"),
        stop: Vec<String> = ParamSpec::new("stop", ParamType::List(Box::new(ParamType::Str))).optional()
            .doc("strings that end a completion (not kept), besides the model's EOS tokens"),
        use_chat_template: bool = ParamSpec::new("use-chat-template", ParamType::Bool).default(Value::Bool(false))
            .doc("render prompt-completion prompts as a user turn with the chat template (messages always are)"),
        logprobs: bool = ParamSpec::new("logprobs", ParamType::Bool).default(Value::Bool(false))
            .doc("also record each generated token's log-probability under the model"),
        skip_long: bool = ParamSpec::new("skip-long", ParamType::Bool).default(Value::Bool(false))
            .doc("skip (and count) prompts that leave no room below the position limit instead of failing"),
        max_records: Option<usize> = ParamSpec::new("max-records", int(1)).optional()
            .doc("use only the first N prompts"),
        dtype: Dtype = ParamSpec::new("dtype", ParamType::Enum(Dtype::NAMES)).default(Value::Str("auto".into()))
            .doc("compute dtype: auto = f32 on CPU, bf16 on CUDA"),
        batch_size: usize = ParamSpec::new("batch-size", int(1)).default(Value::Int(8)).non_semantic()
            .doc("completions decoded together (does not change the output)"),
    }
}

/// The kind's declaration: its output is a dataset.
pub fn schema() -> KindSchema {
    KindSchema::new("generate", 1, "dataset")
        .doc("Completions of a model for the prompts of a dataset (batched, KV-cached decoding; greedy or sampled), written as a dataset that `pairs`, `sft` or `eval` read.")
        .params(<Params as crate::ParamSet>::specs())
        .check(check)
}

/// `top-p` in (0, 1]; an empty stop string.
pub fn check(n: &NodeDecl) -> Vec<ParamIssue> {
    let mut out = Vec::new();
    if let Some(p) = n.params.get("top-p").and_then(|v| v.as_f64()) {
        if p <= 0.0 {
            out.push(ParamIssue {
                param: Some("top-p".into()),
                message: format!("top-p {p} keeps no token: it must be in (0, 1]"),
                hint: Some("`top-p 0.95`, or `top-p 1` for no nucleus filtering".into()),
            });
        }
    }
    let stops = n
        .params
        .get("stop")
        .and_then(|v| v.as_list())
        .unwrap_or(&[]);
    if stops.iter().any(|s| s.as_str() == Some("")) {
        out.push(ParamIssue {
            param: Some("stop".into()),
            message: "an empty stop string would end every completion at once".into(),
            hint: Some("`stop \"<|im_end|>\"`".into()),
        });
    }
    out
}
