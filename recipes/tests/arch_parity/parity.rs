//! Logits parity with transformers (f32, CPU), both directions.

use super::common::*;
use recipes::arch::{AttnMask, HfModel, LoadOptions, SaveOptions};
use std::path::PathBuf;
use tch::Kind;

fn load(dir: &std::path::Path) -> HfModel {
    HfModel::load(dir, &dir.display().to_string(), &LoadOptions::default())
        .unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()))
}

#[test]
fn logits_match_transformers() {
    let fx = fixtures();
    let inputs = read_st(&fx.join("inputs.safetensors"));
    for name in MODELS {
        let m = load(&fx.join(name));
        assert_eq!(m.kind(), Kind::Float);
        let want = read_st(&fx.join(name).join("logits.safetensors"));
        for (b, ids, mask, pos) in batches(&inputs) {
            let got = temper_logits(&m, &ids, &mask, &pos);
            let d = max_diff_valid(&got, &want[&format!("{b}.logits")], &mask);
            eprintln!("parity {name} {b}: max |temper - transformers| = {d:.3e}");
            assert!(d < 1e-4, "{name} {b}: logits differ by {d}");
        }
        // A padding mask of all ones is the plain causal mask.
        let (_, ids, mask, pos) = &batches(&inputs)[0];
        let causal = temper_logits(&m, ids, mask, pos);
        let padded = tch::no_grad(|| m.forward(ids, pos, AttnMask::Padding(mask))).unwrap();
        assert!(max_diff(&causal, &padded) < 1e-5);
    }
}

#[test]
fn saved_by_temper_loads_in_transformers() {
    let fx = fixtures();
    let inputs_path = fx.join("inputs.safetensors");
    let inputs = read_st(&inputs_path);
    let out = tempfile::tempdir().unwrap();
    let mut args: Vec<PathBuf> = vec![inputs_path.clone()];
    let mut ours = vec![];
    for name in MODELS {
        let m = load(&fx.join(name));
        let dir = out.path().join(name);
        // The mistral copy is sharded (a threshold of 40 kB gives several shards).
        let max_shard_bytes = if *name == "mistral" { 40_000 } else { u64::MAX };
        let files = m
            .save(
                &dir,
                &SaveOptions {
                    max_shard_bytes,
                    copy_from: m.source.clone(),
                    ..Default::default()
                },
            )
            .unwrap();
        assert!(files.contains(&"config.json".to_string()));
        assert!(files.contains(&"generation_config.json".to_string()));
        if *name == "mistral" {
            assert!(dir.join("model.safetensors.index.json").is_file());
            assert!(!dir.join("model.safetensors").exists());
            assert!(
                files.iter().filter(|f| f.contains("-of-")).count() >= 3,
                "{files:?}"
            );
        }
        let meta = recipes::hf::read_weights(&dir, "saved").unwrap();
        for f in &meta.files {
            let h = recipes::hf::read_safetensors_header(&dir.join(f), f).unwrap();
            assert_eq!(h.metadata.get("format").map(String::as_str), Some("pt"));
        }
        // Reloaded by temper: the same logits, bit for bit.
        let back = load(&dir);
        for (_, ids, mask, pos) in batches(&inputs) {
            let a = temper_logits(&m, &ids, &mask, &pos);
            let b = temper_logits(&back, &ids, &mask, &pos);
            assert_eq!(max_diff(&a, &b), 0.0, "{name}: reload changed the logits");
        }
        args.push(dir.clone());
        args.push(out.path().join(format!("{name}.hf.safetensors")));
        ours.push((name, m));
    }
    let t = std::time::Instant::now();
    let refs: Vec<&std::path::Path> = args.iter().map(|p| p.as_path()).collect();
    run_python("logits.py", &refs);
    eprintln!(
        "logits.py on {} saved models: {:.1}s",
        MODELS.len(),
        t.elapsed().as_secs_f64()
    );
    for (name, m) in ours {
        let hf_saved = read_st(&out.path().join(format!("{name}.hf.safetensors")));
        let hf_orig = read_st(&fx.join(name).join("logits.safetensors"));
        for (b, ids, mask, pos) in batches(&inputs) {
            let key = format!("{b}.logits");
            let same = max_diff(&hf_saved[&key], &hf_orig[&key]);
            let ours = max_diff_valid(
                &temper_logits(&m, &ids, &mask, &pos),
                &hf_saved[&key],
                &mask,
            );
            eprintln!(
                "saved {name} {b}: transformers(saved) vs transformers(original) {same:.3e}, \
                 temper vs transformers(saved) {ours:.3e}"
            );
            assert_eq!(same, 0.0, "{name} {b}: transformers sees other weights");
            assert!(
                ours < 1e-5,
                "{name} {b}: temper vs transformers(saved) = {ours}"
            );
        }
    }
}

#[test]
fn top_level_rope_theta_form_loads() {
    let fx = fixtures();
    let dir = tempfile::tempdir().unwrap();
    recipes::hf::link_or_copy_dir(&fx.join("llama"), dir.path()).unwrap();
    let cfg_path = dir.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    let o = cfg.as_object_mut().unwrap();
    o.remove("rope_parameters");
    o.insert("rope_theta".into(), 500000.0.into());
    o.insert("rope_scaling".into(), serde_json::Value::Null);
    std::fs::remove_file(&cfg_path).unwrap(); // a hard link to the fixture
    std::fs::write(&cfg_path, serde_json::to_string(&cfg).unwrap()).unwrap();
    let old = load(dir.path());
    let new = load(&fx.join("llama"));
    assert_eq!(old.config, new.config);
    assert_eq!(old.config.rope_theta, 500000.0);
    let inputs = read_st(&fx.join("inputs.safetensors"));
    for (_, ids, mask, pos) in batches(&inputs) {
        let a = temper_logits(&old, &ids, &mask, &pos);
        let b = temper_logits(&new, &ids, &mask, &pos);
        assert_eq!(max_diff(&a, &b), 0.0);
    }
}

/// The comparison can fail: the same weights with the rope base or the sliding window changed
/// give clearly different logits, so the fixtures exercise both.
#[test]
fn parity_is_sensitive_to_rope_and_window() {
    let fx = fixtures();
    let inputs = read_st(&fx.join("inputs.safetensors"));
    let edits: [(&str, &str, serde_json::Value); 3] = [
        (
            "llama",
            "rope_parameters",
            serde_json::json!({"rope_theta": 10000.0, "rope_type": "default"}),
        ),
        ("mistral", "sliding_window", serde_json::Value::Null),
        ("qwen2", "use_sliding_window", false.into()),
    ];
    for (name, field, value) in edits {
        let dir = tempfile::tempdir().unwrap();
        recipes::hf::link_or_copy_dir(&fx.join(name), dir.path()).unwrap();
        let p = dir.path().join("config.json");
        let mut cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        cfg[field] = value;
        std::fs::remove_file(&p).unwrap();
        std::fs::write(&p, cfg.to_string()).unwrap();
        let m = load(dir.path());
        let want = read_st(&fx.join(name).join("logits.safetensors"));
        let (b, ids, mask, pos) = &batches(&inputs)[0];
        let d = max_diff_valid(
            &temper_logits(&m, ids, mask, pos),
            &want[&format!("{b}.logits")],
            mask,
        );
        assert!(d > 1e-2, "{name} with {field} changed still matches ({d})");
    }
}
