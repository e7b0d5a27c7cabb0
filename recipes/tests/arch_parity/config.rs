//! config.json validation: what loads, and what fails naming the field and the value.

use super::common::config;
use recipes::arch::{ArchConfig, Family};
use serde_json::{json, Value as J};

fn parse(c: &J) -> Result<ArchConfig, String> {
    ArchConfig::from_json(c, "m/config.json").map_err(|e| e.to_string())
}

#[test]
fn rope_theta_in_both_forms() {
    let new = parse(&config(
        "llama",
        json!({"rope_parameters": {"rope_theta": 5e5, "rope_type": "default"}}),
    ))
    .unwrap();
    assert_eq!(new.rope_theta, 5e5);
    let mut old = config("llama", json!({"rope_theta": 5e5, "rope_scaling": null}));
    old.as_object_mut().unwrap().remove("rope_parameters");
    assert_eq!(parse(&old).unwrap(), new);
    let mut none = config("llama", json!({}));
    none.as_object_mut().unwrap().remove("rope_parameters");
    assert_eq!(parse(&none).unwrap().rope_theta, 10000.0);
}

#[test]
fn family_specific_fields() {
    let q = parse(&config("qwen2", json!({}))).unwrap();
    assert_eq!(q.family, Family::Qwen2);
    assert!(q.qkv_bias && !q.o_bias && !q.mlp_bias);
    assert_eq!(q.windows, vec![None, None]); // sliding_window ignored without use_sliding_window
    let q = parse(&config(
        "qwen2",
        json!({"use_sliding_window": true, "sliding_window": 8, "max_window_layers": 1}),
    ))
    .unwrap();
    assert_eq!(q.windows, vec![None, Some(8)]);
    let l = parse(&config(
        "llama",
        json!({"attention_bias": true, "mlp_bias": true, "tie_word_embeddings": true}),
    ))
    .unwrap();
    assert!(l.qkv_bias && l.o_bias && l.mlp_bias && l.tie_embeddings);
    let m = parse(&config(
        "mistral",
        json!({"sliding_window": 4096, "head_dim": 16}),
    ))
    .unwrap();
    assert_eq!((m.head_dim, m.windows[0]), (16, Some(4096)));
    assert_eq!(parse(&config("llama", json!({}))).unwrap().head_dim, 8);
}

#[test]
fn unsupported_values_name_field_and_value() {
    let cases: Vec<(J, &str)> = vec![
        (
            config("llama", json!({"hidden_act": "gelu"})),
            "hidden_act = \"gelu\" is not supported",
        ),
        (
            config("gemma", json!({})),
            "model_type = \"gemma\" is not supported",
        ),
        (
            config(
                "llama",
                json!({"architectures": ["LlamaForSequenceClassification"]}),
            ),
            "architectures = \"LlamaForSequenceClassification\" is not supported",
        ),
        (
            config(
                "llama",
                json!({"rope_parameters": {"rope_theta": 1e4, "rope_type": "llama3", "factor": 8.0}}),
            ),
            "rope_parameters.rope_type = \"llama3\" is not supported",
        ),
        (
            config(
                "llama",
                json!({"rope_scaling": {"type": "linear", "factor": 2.0}}),
            ),
            "rope_scaling.type = \"linear\" is not supported",
        ),
        (
            config("llama", json!({"attention_dropout": 0.1})),
            "attention_dropout = 0.1 is not supported",
        ),
        (
            config("llama", json!({"num_key_value_heads": 3})),
            "num_key_value_heads = 3 is not supported",
        ),
        (
            config("mistral", json!({"attention_bias": true})),
            "attention_bias = true is not supported",
        ),
        (
            config("qwen2", json!({"mlp_bias": true})),
            "mlp_bias = true is not supported",
        ),
        (
            config("llama", json!({"head_dim": 7})),
            "head_dim = 7 is not supported",
        ),
        (
            config("mistral", json!({"sliding_window": "wide"})),
            "sliding_window = \"wide\" is not supported",
        ),
    ];
    for (cfg, want) in cases {
        let err = parse(&cfg).expect_err(want);
        assert!(err.contains(want), "expected `{want}` in `{err}`");
        assert!(err.starts_with("m/config.json: "), "{err}");
    }
}
