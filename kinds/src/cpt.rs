//! `cpt`: continued pre-training of a `model` on text, producing a `model`.
//!
//! Parameters besides the [`Optim`](crate::train::Optim) group: `data` (a text dataset or a
//! mixture of them), `tokenizer` (default: the model's files), `seq-len` tokens per block
//! (1024), the run's length — one of `steps`, `epochs` (a dataset only) or a `tokens` budget —
//! and the micro-batch: `batch-size` sequences (8) or `batch-tokens` (`⌊batch-tokens / seq-len⌋`
//! sequences), exclusive.

use crate::params::{int, is_set, Input};
use crate::train::check_optim;
use dsl::{KindSchema, NodeDecl, ParamIssue, ParamSpec, ParamType, Value};

crate::params! {
    /// Parameters of `cpt`.
    pub struct Params {
        model: Input = ParamSpec::new("model", ParamType::Ref(&["model"])).doc("the model to train"),
        data: Input = ParamSpec::new("data", ParamType::Ref(&["dataset", "mixture"])).doc("a text dataset or a mixture of them"),
        tokenizer: Option<Input> = ParamSpec::new("tokenizer", ParamType::Ref(&["tokenizer", "model"])).optional()
            .doc("default: the model's tokenizer files"),
        seq_len: usize = ParamSpec::new("seq-len", int(2)).default(Value::Int(1024)).doc("tokens per block"),
        tokens: Option<u64> = ParamSpec::new("tokens", int(1)).optional().doc("token budget (ends the stream)"),
        batch_size: usize = ParamSpec::new("batch-size", int(1)).default(Value::Int(8)).doc("sequences per micro-batch"),
        batch_tokens: Option<usize> = ParamSpec::new("batch-tokens", int(1)).optional()
            .doc("tokens per micro-batch (instead of batch-size)"),
    }
    groups { optim: crate::train::Optim, common: crate::Common }
}

/// The kind's declaration.
pub fn schema() -> KindSchema {
    KindSchema::new("cpt", 1, "model")
        .doc("Continued pre-training: documents packed into blocks of `seq-len` tokens, causal-LM loss on every token.")
        .params(<Params as crate::ParamSet>::specs())
        .check(check)
        .check_in_recipe(crate::train::check_in_recipe)
}

/// The optimiser checks; `batch-size` / `batch-tokens` exclusive; one of `steps`, `epochs`,
/// `tokens`.
pub fn check(n: &NodeDecl) -> Vec<ParamIssue> {
    let mut out = Vec::new();
    check_optim(n, &mut out);
    let issue = |p: &str, m: &str| ParamIssue {
        param: Some(p.into()),
        message: m.into(),
        hint: None,
    };
    if is_set(n, "batch-tokens") && is_set(n, "batch-size") {
        out.push(issue(
            "batch-tokens",
            "`batch-size` and `batch-tokens` are exclusive",
        ));
    }
    let set: Vec<&str> = ["steps", "epochs", "tokens"]
        .into_iter()
        .filter(|k| is_set(n, k))
        .collect();
    if set.len() > 1 {
        out.push(issue(
            set[1],
            &format!(
                "`{}` are exclusive: the run has one length",
                set.join("` and `")
            ),
        ));
    }
    out
}
