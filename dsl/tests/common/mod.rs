//! A test registry mirroring the agreed `dataset`, `tokenizer` and `model` schemas (the real
//! ones live in `recipes/`, which links tch), plus two small kinds (`align`, `merge`, `mix`)
//! used to exercise sweeps over downstream nodes, repeated refs and records.
#![allow(dead_code)]

use dsl::{KindSchema, NodeDecl, ParamIssue, ParamSpec, ParamType, Registry, Value};

fn int() -> ParamType {
    ParamType::Int {
        min: Some(1),
        max: None,
    }
}

fn float() -> ParamType {
    ParamType::Float {
        min: None,
        max: None,
    }
}

fn set(d: &NodeDecl, p: &str) -> bool {
    !matches!(d.params.get(p), None | Some(Value::Null))
        && !matches!(d.params.get(p), Some(Value::List(l)) if l.is_empty())
}

fn issue(param: Option<&str>, message: &str, hint: &str) -> ParamIssue {
    ParamIssue {
        param: param.map(String::from),
        message: message.into(),
        hint: Some(hint.into()),
    }
}

fn check_tokenizer(d: &NodeDecl) -> Vec<ParamIssue> {
    let modes = [
        set(d, "path"),
        set(d, "from"),
        set(d, "vocab-size") || set(d, "data"),
    ];
    let n = modes.iter().filter(|m| **m).count();
    if n != 1 {
        return vec![issue(
            None,
            "a tokenizer needs exactly one source: `path`, `from`, or `vocab-size` with `data`",
            "load one with `path=\"dir\"`, take a model's with `from=MODEL`, or train one with `vocab-size=N { data DATASET }`",
        )];
    }
    if modes[2] && !(set(d, "vocab-size") && set(d, "data")) {
        let missing = if set(d, "vocab-size") {
            "data"
        } else {
            "vocab-size"
        };
        return vec![issue(
            Some(if missing == "data" {
                "vocab-size"
            } else {
                "data"
            }),
            &format!("training a tokenizer needs `{missing}` too"),
            "train mode: `tokenizer NAME vocab-size=N { data DATASET }`",
        )];
    }
    Vec::new()
}

const SIZE: [&str; 13] = [
    "arch",
    "hidden-size",
    "layers",
    "heads",
    "kv-heads",
    "head-dim",
    "intermediate-size",
    "max-position",
    "rope-theta",
    "rms-norm-eps",
    "tie-embeddings",
    "init-std",
    "seed",
];

fn check_model(d: &NodeDecl) -> Vec<ParamIssue> {
    let mut out = Vec::new();
    match (set(d, "path"), set(d, "tokenizer")) {
        (true, true) | (false, false) => out.push(issue(
            None,
            "a model needs exactly one of `path` (load) or `tokenizer` (initialise)",
            "load with `path=\"models/dir\"` or initialise with `tokenizer=TOK hidden-size=…`",
        )),
        (true, false) => {
            for p in SIZE {
                if d.param_locs.contains_key(p) {
                    out.push(issue(
                        Some(p),
                        "size parameters apply only when initialising",
                        "remove it, or initialise with `tokenizer=TOK` instead of `path`",
                    ));
                }
            }
        }
        (false, true) => {
            let g = |p: &str| d.params.get(p).and_then(Value::as_i64);
            let (hidden, heads) = (g("hidden-size").unwrap_or(64), g("heads").unwrap_or(4));
            if !set(d, "head-dim") && hidden % heads != 0 {
                out.push(issue(
                    Some("heads"),
                    &format!("hidden-size {hidden} is not divisible by heads {heads}"),
                    "choose heads dividing hidden-size, or set head-dim",
                ));
            }
            if let Some(kv) = g("kv-heads") {
                if heads % kv != 0 {
                    out.push(issue(
                        Some("kv-heads"),
                        &format!("heads {heads} is not divisible by kv-heads {kv}"),
                        "kv-heads must divide heads",
                    ));
                }
            }
        }
    }
    out
}

pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(
        KindSchema::new("dataset", 1, "dataset")
            .param(ParamSpec::new("path", ParamType::Path))
            .param(ParamSpec::new(
                "format",
                ParamType::Enum(&["text", "messages", "prompt-completion", "preference"]),
            ))
            .param(
                ParamSpec::new(
                    "fields",
                    ParamType::Record {
                        positional: &[],
                        fields: [
                            "text",
                            "messages",
                            "prompt",
                            "completion",
                            "chosen",
                            "rejected",
                        ]
                        .into_iter()
                        .map(|f| ParamSpec::new(f, ParamType::Str).optional())
                        .collect(),
                    },
                )
                .optional(),
            )
            .param(ParamSpec::new("skip-invalid", ParamType::Bool).default(Value::Bool(false))),
    );
    r.register(
        KindSchema::new("tokenizer", 1, "tokenizer")
            .param(ParamSpec::new("path", ParamType::Path).optional())
            .param(ParamSpec::new("from", ParamType::Ref(&["model"])).optional())
            .param(ParamSpec::new("vocab-size", int()).optional())
            .param(
                ParamSpec::new("data", ParamType::Ref(&["dataset"]))
                    .optional()
                    .repeated(),
            )
            .param(ParamSpec::new("min-frequency", int()).default(Value::Int(2)))
            .param(
                ParamSpec::new("special-tokens", ParamType::List(Box::new(ParamType::Str)))
                    .default(Value::List(
                        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
                            .into_iter()
                            .map(|s| Value::Str(s.into()))
                            .collect(),
                    )),
            )
            .param(ParamSpec::new("chat-template", ParamType::Path).optional())
            .param(ParamSpec::new("eos-token", ParamType::Str).optional())
            .check(check_tokenizer),
    );
    let f = |name, v: f64| ParamSpec::new(name, float()).default(Value::Float(v));
    let i = |name, v: i64| ParamSpec::new(name, int()).default(Value::Int(v));
    r.register(
        KindSchema::new("model", 1, "model")
            .param(ParamSpec::new("path", ParamType::Path).optional())
            .param(ParamSpec::new("tokenizer", ParamType::Ref(&["tokenizer"])).optional())
            .param(
                ParamSpec::new("arch", ParamType::Enum(&["llama", "qwen2", "mistral"]))
                    .default(Value::Str("llama".into())),
            )
            .param(i("hidden-size", 64))
            .param(i("layers", 2))
            .param(i("heads", 4))
            .param(ParamSpec::new("kv-heads", int()).optional())
            .param(ParamSpec::new("head-dim", int()).optional())
            .param(i("intermediate-size", 128))
            .param(i("max-position", 2048))
            .param(f("rope-theta", 10000.0))
            .param(f("rms-norm-eps", 1e-5))
            .param(ParamSpec::new("tie-embeddings", ParamType::Bool).default(Value::Bool(false)))
            .param(f("init-std", 0.02))
            .param(
                ParamSpec::new(
                    "seed",
                    ParamType::Int {
                        min: Some(0),
                        max: None,
                    },
                )
                .default(Value::Int(0)),
            )
            .param(
                ParamSpec::new("dtype", ParamType::Enum(&["f32", "bf16", "f16"]))
                    .default(Value::Str("f32".into())),
            )
            .check(check_model),
    );
    // Test-only kinds.
    r.register(
        KindSchema::new("align", 1, "model")
            .param(ParamSpec::new("model", ParamType::Ref(&["model"])))
            .param(ParamSpec::new("data", ParamType::Ref(&["dataset"])))
            .param(
                ParamSpec::new(
                    "beta",
                    ParamType::Float {
                        min: Some(0.0),
                        max: None,
                    },
                )
                .default(Value::Float(0.1)),
            )
            .param(ParamSpec::new("steps", int()).default(Value::Int(10))),
    );
    r.register(
        KindSchema::new("merge", 1, "model")
            .param(ParamSpec::new("model", ParamType::Ref(&["model"])).repeated())
            .param(
                ParamSpec::new(
                    "t",
                    ParamType::Float {
                        min: Some(0.0),
                        max: Some(1.0),
                    },
                )
                .default(Value::Float(0.5)),
            ),
    );
    r.register(
        KindSchema::new("mix", 1, "dataset")
            .param(
                ParamSpec::new(
                    "source",
                    ParamType::Record {
                        positional: &["name"],
                        fields: vec![
                            ParamSpec::new("name", ParamType::Ref(&["dataset"])),
                            ParamSpec::new("weight", float()).default(Value::Float(1.0)),
                        ],
                    },
                )
                .repeated(),
            )
            .param(ParamSpec::new("tokens", int()).optional()),
    );
    // A record with a list field, written with a block of field children (like `lora`).
    r.register(
        KindSchema::new("adapt", 1, "model").param(
            ParamSpec::new(
                "lora",
                ParamType::Record {
                    positional: &[],
                    fields: vec![
                        ParamSpec::new("rank", int()).default(Value::Int(8)),
                        ParamSpec::new("target", ParamType::List(Box::new(ParamType::Str)))
                            .default(Value::List(vec![Value::Str("q".into())])),
                    ],
                },
            )
            .optional(),
        ),
    );
    r
}
