//! Loading and saving: sharding, stored dtypes, tied embeddings, and the errors for weights that
//! do not match config.json.

use super::common::*;
use recipes::arch::{HfModel, LoadOptions, SaveOptions};
use serde_json::json;
use std::path::Path;
use tch::{Kind, Tensor};

fn load(dir: &Path, opts: &LoadOptions) -> Result<HfModel, String> {
    HfModel::load(dir, "m", opts).map_err(|e| e.to_string())
}

fn vars(m: &HfModel) -> Vec<(String, Tensor)> {
    let mut v: Vec<_> = m.vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let p = dir.join("config.json");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(c.as_object_mut().unwrap());
    std::fs::write(&p, serde_json::to_string_pretty(&c).unwrap()).unwrap();
}

#[test]
fn sharded_round_trip_is_exact() {
    let m = random_model(config("llama", json!({})), 1);
    let d = tempfile::tempdir().unwrap();
    let opts = SaveOptions {
        max_shard_bytes: 30_000,
        ..Default::default()
    };
    let files = m.save(d.path(), &opts).unwrap();
    let shards: Vec<_> = files.iter().filter(|f| f.contains("-of-")).collect();
    assert!(shards.len() >= 3, "{files:?}");
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(d.path().join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        index["weight_map"].as_object().unwrap().len(),
        vars(&m).len()
    );
    let total = index["metadata"]["total_size"].as_u64().unwrap();
    assert_eq!(total, m.num_params() as u64 * 4);
    let back = load(d.path(), &LoadOptions::default()).unwrap();
    for ((n, a), (n2, b)) in vars(&m).iter().zip(vars(&back).iter()) {
        assert_eq!(n, n2);
        assert_eq!(max_diff(a, b), 0.0, "{n}");
    }
    // Saving again unsharded removes the shards.
    m.save(d.path(), &SaveOptions::default()).unwrap();
    assert!(d.path().join("model.safetensors").is_file());
    assert!(!d.path().join("model.safetensors.index.json").exists());
    assert!(load(d.path(), &LoadOptions::default()).is_ok());
}

#[test]
fn stored_dtypes_convert_on_load() {
    let m = random_model(config("qwen2", json!({})), 2);
    for (stored, name) in [(Kind::BFloat16, "bfloat16"), (Kind::Half, "float16")] {
        let d = tempfile::tempdir().unwrap();
        m.save(
            d.path(),
            &SaveOptions {
                dtype: Some(stored),
                ..Default::default()
            },
        )
        .unwrap();
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.path().join("config.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["dtype"], name);
        let h =
            recipes::hf::read_safetensors_header(&d.path().join("model.safetensors"), "m").unwrap();
        assert!(h
            .tensors
            .values()
            .all(|t| t.dtype == if stored == Kind::Half { "F16" } else { "BF16" }));
        // into f32: exactly the rounded values
        let f = load(d.path(), &LoadOptions::default()).unwrap();
        assert_eq!(f.kind(), Kind::Float);
        for ((n, a), (_, b)) in vars(&m).iter().zip(vars(&f).iter()) {
            assert_eq!(
                max_diff(&a.to_kind(stored).to_kind(Kind::Float), b),
                0.0,
                "{n}"
            );
        }
        // into the stored dtype: forward runs in it
        let opts = LoadOptions {
            dtype: Some(stored),
            ..Default::default()
        };
        let low = load(d.path(), &opts).unwrap();
        let x = ids(&[&[3, 1, 4, 1, 5, 9, 2, 6]]);
        let y =
            tch::no_grad(|| low.forward(&x, &arange_pos(1, 8), recipes::arch::AttnMask::Causal))
                .unwrap();
        assert_eq!(y.kind(), stored);
        let y32 =
            tch::no_grad(|| f.forward(&x, &arange_pos(1, 8), recipes::arch::AttnMask::Causal))
                .unwrap();
        let scale = y32.abs().max().double_value(&[]);
        assert!(
            max_diff(&y, &y32) < 0.1 * scale,
            "{name}: low precision far off"
        );
    }
}

#[test]
fn tied_embeddings_have_no_lm_head() {
    let m = random_model(config("llama", json!({"tie_word_embeddings": true})), 4);
    assert!(m.model.lm_head.is_none());
    let d = tempfile::tempdir().unwrap();
    m.save(d.path(), &SaveOptions::default()).unwrap();
    let w = recipes::hf::read_weights(d.path(), "m").unwrap();
    assert!(!w.tensors.contains_key("lm_head.weight"));
    assert!(w.tensors.contains_key("model.embed_tokens.weight"));
    let back = load(d.path(), &LoadOptions::default()).unwrap();
    let x = ids(&[&[3, 1, 4, 1]]);
    let a =
        tch::no_grad(|| m.forward(&x, &arange_pos(1, 4), recipes::arch::AttnMask::Causal)).unwrap();
    let b = tch::no_grad(|| back.forward(&x, &arange_pos(1, 4), recipes::arch::AttnMask::Causal))
        .unwrap();
    assert_eq!(max_diff(&a, &b), 0.0);
}

#[test]
fn mismatched_weights_fail_naming_the_tensor() {
    let m = random_model(config("llama", json!({"attention_bias": true})), 5);
    let d = tempfile::tempdir().unwrap();
    m.save(d.path(), &SaveOptions::default()).unwrap();
    // the file has biases the config does not declare
    edit_config(d.path(), |c| {
        c.insert("attention_bias".into(), false.into());
    });
    let e = load(d.path(), &LoadOptions::default()).err().unwrap();
    assert!(
        e.contains(
            "m/model.safetensors: unexpected tensor \"model.layers.0.self_attn.k_proj.bias\""
        ),
        "{e}"
    );
    // a wrong size
    edit_config(d.path(), |c| {
        c.insert("attention_bias".into(), true.into());
        c.insert("intermediate_size".into(), 48.into());
    });
    let e = load(d.path(), &LoadOptions::default()).err().unwrap();
    assert!(e.contains("tensor \"model.layers.0.mlp.down_proj.weight\" has shape [32, 64], config.json implies [32, 48]"), "{e}");
    // missing tensors
    let plain = random_model(config("llama", json!({})), 6);
    plain.save(d.path(), &SaveOptions::default()).unwrap();
    edit_config(d.path(), |c| {
        c.insert("mlp_bias".into(), true.into());
    });
    let e = load(d.path(), &LoadOptions::default()).err().unwrap();
    assert!(
        e.contains("m: tensor \"model.layers.0.mlp.down_proj.bias\""),
        "{e}"
    );
    assert!(
        e.contains("missing from the weights (model.safetensors)"),
        "{e}"
    );
}

#[test]
fn missing_shard_fails_naming_it() {
    let m = random_model(config("mistral", json!({})), 8);
    let d = tempfile::tempdir().unwrap();
    let files = m
        .save(
            d.path(),
            &SaveOptions {
                max_shard_bytes: 30_000,
                ..Default::default()
            },
        )
        .unwrap();
    let shard = files.iter().find(|f| f.starts_with("model-00002")).unwrap();
    std::fs::remove_file(d.path().join(shard)).unwrap();
    let e = load(d.path(), &LoadOptions::default()).err().unwrap();
    assert!(
        e.contains(&format!("shard \"{shard}\"")) && e.contains("does not exist"),
        "{e}"
    );
}

#[test]
fn tokenizer_files_are_copied_through() {
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("tokenizer.json"), "{\"tok\": 1}").unwrap();
    std::fs::write(src.path().join("chat_template.jinja"), "{{ messages }}").unwrap();
    std::fs::write(
        src.path().join("generation_config.json"),
        "{\"eos_token_id\": 7}",
    )
    .unwrap();
    let m = random_model(config("llama", json!({})), 9);
    let d = tempfile::tempdir().unwrap();
    let opts = SaveOptions {
        copy_from: Some(src.path().to_path_buf()),
        ..Default::default()
    };
    let files = m.save(d.path(), &opts).unwrap();
    assert_eq!(
        files,
        [
            "chat_template.jinja",
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "tokenizer.json"
        ]
    );
    assert_eq!(
        std::fs::read_to_string(d.path().join("generation_config.json")).unwrap(),
        "{\"eos_token_id\": 7}"
    );
    // without a source, generation_config.json comes from config.json's token ids
    let d2 = tempfile::tempdir().unwrap();
    m.save(d2.path(), &SaveOptions::default()).unwrap();
    let g: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(d2.path().join("generation_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        g,
        json!({"_from_model_config": true, "bos_token_id": 1, "eos_token_id": 2})
    );
}
