//! The `model` kind: init shapes/names/dtype/config, determinism by seed, tied embeddings,
//! GQA, qwen2 biases, and path-mode validation errors.

use super::common::*;
use super::tokenizer::{corpus, train};
use recipes::hf;
use recipes::kinds::model::Model;
use safetensors::SafeTensors;
use serde_json::Value as J;
use std::path::{Path, PathBuf};

fn tokenizer(env: &Env) -> PathBuf {
    let data = corpus(env);
    train(env, &data, 300)
}

fn init(env: &Env, tok: &Path, params: &[(&str, dsl::Value)]) -> (J, PathBuf) {
    let mut all = vec![("tokenizer", r("tok"))];
    all.extend(params.iter().cloned());
    env.run(&Model, &all, &[("tokenizer", tok)]).unwrap()
}

fn config(dir: &Path) -> J {
    serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
}

fn values(st: &SafeTensors, name: &str) -> Vec<f32> {
    let t = st.tensor(name).unwrap();
    t.data()
        .chunks(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn init_writes_hf_layout_with_names_shapes_and_config() {
    let env = Env::new();
    let tok = tokenizer(&env);
    let (sum, out) = init(&env, &tok, &[("kv-heads", i(2)), ("seed", i(7))]);
    let cfg = config(&out);
    assert_eq!(
        cfg["architectures"],
        serde_json::json!(["LlamaForCausalLM"])
    );
    assert_eq!(cfg["model_type"], "llama");
    for (k, v) in [
        ("hidden_size", 64),
        ("intermediate_size", 128),
        ("num_attention_heads", 4),
        ("num_key_value_heads", 2),
        ("num_hidden_layers", 2),
        ("head_dim", 16),
        ("max_position_embeddings", 2048),
        ("vocab_size", 300),
        ("eos_token_id", 0),
        ("bos_token_id", 0),
        ("pad_token_id", 3),
    ] {
        assert_eq!(cfg[k], v, "{k}");
    }
    assert_eq!(cfg["hidden_act"], "silu");
    assert_eq!(cfg["torch_dtype"], "float32");
    assert_eq!(cfg["tie_word_embeddings"], false);
    assert_eq!(cfg["attention_bias"], false);
    assert_eq!(cfg["rope_theta"], 10000.0);
    assert_eq!(cfg["rms_norm_eps"], 1e-5);
    assert_eq!(cfg["initializer_range"], 0.02);
    let keys: Vec<&String> = cfg.as_object().unwrap().keys().collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "keys sorted as transformers writes them");
    for f in [
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "chat_template.jinja",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let tcfg: J =
        serde_json::from_str(&std::fs::read_to_string(out.join("tokenizer_config.json")).unwrap())
            .unwrap();
    assert_eq!(tcfg["model_max_length"], 2048);

    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(
        meta.metadata()
            .as_ref()
            .unwrap()
            .get("format")
            .map(String::as_str),
        Some("pt")
    );
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    assert_eq!(names.len(), 1 + 2 * 9 + 2);
    let shape = |n: &str| st.tensor(n).unwrap().shape().to_vec();
    assert_eq!(shape("model.embed_tokens.weight"), vec![300, 64]);
    assert_eq!(
        shape("model.layers.1.self_attn.q_proj.weight"),
        vec![64, 64]
    );
    assert_eq!(
        shape("model.layers.1.self_attn.k_proj.weight"),
        vec![32, 64]
    );
    assert_eq!(
        shape("model.layers.1.self_attn.v_proj.weight"),
        vec![32, 64]
    );
    assert_eq!(
        shape("model.layers.0.self_attn.o_proj.weight"),
        vec![64, 64]
    );
    assert_eq!(shape("model.layers.0.mlp.gate_proj.weight"), vec![128, 64]);
    assert_eq!(shape("model.layers.0.mlp.down_proj.weight"), vec![64, 128]);
    assert_eq!(shape("lm_head.weight"), vec![300, 64]);
    assert!(st.tensor("model.layers.0.self_attn.q_proj.bias").is_err());
    assert_eq!(
        st.tensor("model.norm.weight").unwrap().dtype(),
        safetensors::Dtype::F32
    );
    assert!(values(&st, "model.layers.0.input_layernorm.weight")
        .iter()
        .all(|v| *v == 1.0));
    let emb = values(&st, "model.embed_tokens.weight");
    let mean = emb.iter().map(|v| *v as f64).sum::<f64>() / emb.len() as f64;
    let std =
        (emb.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / emb.len() as f64).sqrt();
    assert!(
        mean.abs() < 0.002 && (std - 0.02).abs() < 0.001,
        "mean {mean} std {std}"
    );
    let expected: usize =
        300 * 64 * 2 + 64 + 2 * (64 * 64 * 2 + 32 * 64 * 2 + 128 * 64 * 3 + 64 * 2);
    assert_eq!(sum["parameters"], expected);
    // the output is a valid model directory for path mode
    hf::validate_model_dir(&out, "out").unwrap();
}

#[test]
fn same_seed_same_bytes_different_seed_different() {
    let env = Env::new();
    let tok = tokenizer(&env);
    let w = |seed| {
        std::fs::read(
            init(&env, &tok, &[("seed", i(seed))])
                .1
                .join("model.safetensors"),
        )
        .unwrap()
    };
    let a = w(1);
    assert_eq!(a, w(1));
    assert_ne!(a, w(2));
}

#[test]
fn tied_embeddings_qwen2_biases_and_bf16() {
    let env = Env::new();
    let tok = tokenizer(&env);
    let (_, out) = init(
        &env,
        &tok,
        &[
            ("arch", s("qwen2")),
            ("tie-embeddings", b(true)),
            ("dtype", s("bf16")),
            ("heads", i(8)),
            ("kv-heads", i(2)),
            ("head-dim", i(4)),
        ],
    );
    let cfg = config(&out);
    assert_eq!(
        cfg["architectures"],
        serde_json::json!(["Qwen2ForCausalLM"])
    );
    assert_eq!(cfg["tie_word_embeddings"], true);
    assert_eq!(cfg["torch_dtype"], "bfloat16");
    assert_eq!(cfg["head_dim"], 4);
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert!(st.tensor("lm_head.weight").is_err(), "tied: no lm_head");
    let q = st.tensor("model.layers.0.self_attn.q_proj.weight").unwrap();
    assert_eq!(q.dtype(), safetensors::Dtype::BF16);
    assert_eq!(q.shape(), &[32, 64]);
    assert_eq!(
        st.tensor("model.layers.0.self_attn.k_proj.weight")
            .unwrap()
            .shape(),
        &[8, 64]
    );
    assert_eq!(
        st.tensor("model.layers.0.self_attn.o_proj.weight")
            .unwrap()
            .shape(),
        &[64, 32]
    );
    let kb = st.tensor("model.layers.1.self_attn.k_proj.bias").unwrap();
    assert_eq!(kb.shape(), &[8]);
    assert!(kb.data().iter().all(|x| *x == 0));
    // bf16 1.0 = 0x3F80
    assert_eq!(
        &st.tensor("model.norm.weight").unwrap().data()[..2],
        &[0x80, 0x3F]
    );
}

/// Copies a valid model directory to `rel` under the project.
fn model_dir(env: &Env, src: &Path, rel: &str) -> PathBuf {
    let dst = env.root().join(rel);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    dst
}

#[test]
fn path_mode_validates_and_publishes() {
    let env = Env::new();
    let tok = tokenizer(&env);
    let (isum, src) = init(&env, &tok, &[]);
    let dir = model_dir(&env, &src, "models/m");
    let (sum, out) = env.run(&Model, &[("path", p("models/m"))], &[]).unwrap();
    assert_eq!(sum["parameters"], isum["parameters"]);
    assert_eq!(sum["dtype"], "F32");
    assert_eq!(sum["arch"], "llama");
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        std::fs::read(dir.join("model.safetensors")).unwrap()
    );
    assert!(out.join("tokenizer.json").is_file());

    // sharded: index + shard that exists, a second shard that does not
    let shard = "model-00001-of-00002.safetensors";
    std::fs::rename(dir.join("model.safetensors"), dir.join(shard)).unwrap();
    let bytes = std::fs::read(dir.join(shard)).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut map = serde_json::Map::new();
    for n in st.names() {
        map.insert(n.to_string(), J::from(shard));
    }
    let write_index = |map: &serde_json::Map<String, J>| {
        std::fs::write(
            dir.join("model.safetensors.index.json"),
            serde_json::json!({"metadata": {}, "weight_map": map}).to_string(),
        )
        .unwrap();
    };
    write_index(&map);
    let (sum, _) = env.run(&Model, &[("path", p("models/m"))], &[]).unwrap();
    assert_eq!(sum["weight_files"], serde_json::json!([shard]));
    map.insert(
        "lm_head.weight".into(),
        J::from("model-00002-of-00002.safetensors"),
    );
    write_index(&map);
    let (m, _) = env.user_err(&Model, &[("path", p("models/m"))], &[]);
    assert_eq!(m, "models/m/model.safetensors.index.json: shard \"model-00002-of-00002.safetensors\" (holding 1 tensors, e.g. \"lm_head.weight\") does not exist");
    map.insert("lm_head.weight".into(), J::from(shard));
    map.insert("model.extra.weight".into(), J::from(shard));
    write_index(&map);
    let (m, _) = env.user_err(&Model, &[("path", p("models/m"))], &[]);
    assert_eq!(m, format!("models/m/{shard}: tensor \"model.extra.weight\" named by model.safetensors.index.json is not in the shard"));
    std::fs::remove_file(dir.join("model.safetensors.index.json")).unwrap();
    let (m, _) = env.user_err(&Model, &[("path", p("models/m"))], &[]);
    assert_eq!(
        m,
        "models/m: no model.safetensors or model.safetensors.index.json"
    );

    // truncated weights
    std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() - 10]).unwrap();
    let (m, _) = env.user_err(&Model, &[("path", p("models/m"))], &[]);
    assert!(
        m.starts_with("models/m/model.safetensors: tensor \""),
        "{m}"
    );
    assert!(m.contains("truncated"), "{m}");
    std::fs::write(dir.join("model.safetensors"), &bytes).unwrap();

    // config: wrong shape implied, wrong type, missing
    let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        cfg.replace("\"intermediate_size\": 128", "\"intermediate_size\": 96"),
    )
    .unwrap();
    let (m, _) = env.user_err(&Model, &[("path", p("models/m"))], &[]);
    assert_eq!(m, "models/m/model.safetensors: tensor \"model.layers.0.mlp.gate_proj.weight\" has shape [128, 64], config.json implies [96, 64]");
    std::fs::write(
        dir.join("config.json"),
        cfg.replace("\"hidden_size\": 64", "\"hidden_size\": \"64\""),
    )
    .unwrap();
    let (m, _) = env.user_err(&Model, &[("path", p("models/m"))], &[]);
    assert_eq!(m, "models/m/config.json:11: field \"hidden_size\": expected a positive integer, found a string");
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let (m, h) = env.user_err(&Model, &[("path", p("models/m"))], &[]);
    assert_eq!(m, "models/m/config.json: not found");
    assert!(h.contains("config.json"), "{h}");
}

#[test]
fn modes_and_sizes_are_checked() {
    let env = Env::new();
    env.write("tok/tokenizer.json", "{}");
    env.write("m/config.json", "{}");
    let base = "tokenizer t path=\"tok\"\n";
    for ok in [
        "model m path=\"m\"",
        "model m tokenizer=t hidden-size=64 heads=4 kv-heads=2",
        "model m tokenizer=t hidden-size=60 heads=8 head-dim=8",
    ] {
        assert_eq!(
            check_messages(env.root(), &format!("{base}{ok}\n")),
            Vec::<String>::new(),
            "{ok}"
        );
    }
    for (bad, want) in [
        ("model m", "a model needs `path`"),
        ("model m path=\"m\" tokenizer=t", "exclusive"),
        (
            "model m path=\"m\" hidden-size=128",
            "size parameters apply only when initialising",
        ),
        (
            "model m tokenizer=t hidden-size=60 heads=8",
            "not divisible by heads",
        ),
        (
            "model m tokenizer=t heads=4 kv-heads=3",
            "not divisible by kv-heads",
        ),
    ] {
        let msgs = check_messages(env.root(), &format!("{base}{bad}\n"));
        assert!(msgs.iter().any(|m| m.contains(want)), "{bad}: {msgs:?}");
    }
}
