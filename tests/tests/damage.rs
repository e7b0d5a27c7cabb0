//! Nothing is used that the store cannot vouch for (issue: a corrupted adapter was read
//! downstream even after `verify` flagged it). Through the real binary, on one store:
//! - bytes flipped in an adapter (`ad`): `plan` says `damaged ad … adapter_model.safetensors
//!   changed since it was published`, `run` of a recipe with a new eval moves the copy aside,
//!   rebuilds `ad` byte for byte and the new eval equals the one built from the intact store;
//! - bytes flipped in a model (`domain`, a cpt) with the time put back: `plan` cannot see it,
//!   `verify` marks it, then `plan`/`status` say damaged and `run` rebuilds it byte for byte;
//! - bytes flipped in a dataset (`heldout`) with the time put back: `run --verify-inputs`
//!   re-hashes what it reads, rebuilds the dataset and the eval equals the intact store's;
//! - bytes flipped after the plan, while the run waits to start a node: the worker's own check
//!   of its inputs fails the node rather than read them, and the rerun rebuilds;
//! - a `touch` alone is not damage; `export` refuses a damaged artifact; `gc --damaged` deletes
//!   the copies moved aside (a plain gc keeps them).

use serde_json::Value as J;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use temper_e2e::{copy_all, text, Project};

const RECIPE: &str = r#"
dataset corpus  path="data/corpus.jsonl"  format=text
dataset train   path="data/train.jsonl"   format=prompt-completion
dataset heldout path="data/heldout.jsonl" format=prompt-completion
tokenizer tok vocab-size=320 { data corpus; }
model tiny tokenizer=tok hidden-size=32 layers=2 heads=4 kv-heads=2 intermediate-size=64 seed=0
cpt domain model=tiny data=corpus {
    seq-len 32; batch-size 4; steps 12; lr 2e-3; device cpu; threads 1
}
sft ad model=domain data=train {
    steps 5; batch-size 8; seq-len 64; lr 1e-3; device cpu; threads 1
    lora rank=4 alpha=8 { target "q_proj" "v_proj"; }
}
eval ade { model ad; data heldout metric=loss; max-records RECORDS; device cpu; threads 1; }
"#;

fn recipe(records: u32) -> String {
    RECIPE.replace("RECORDS", &records.to_string())
}

fn project() -> Project {
    let p = Project::new();
    for f in ["corpus", "train", "heldout"] {
        p.copy_from_repo(
            &format!("examples/data/{f}.jsonl"),
            &format!("data/{f}.jsonl"),
        );
    }
    for n in [10, 11, 12, 13] {
        p.write(&format!("r{n}.kdl"), &recipe(n));
    }
    p
}

/// Instance id → (key, state) from `plan --json`.
fn plan(p: &Project, recipe: &str) -> BTreeMap<String, (String, String)> {
    let out = p.run(&["plan", recipe, "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let v: J = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap().to_string(),
                (
                    e["key"].as_str().unwrap().to_string(),
                    e["state"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

/// Runs `temper ARGS`, asserts success and returns stdout and stderr.
fn ok(p: &Project, args: &[&str]) -> String {
    let out = p.run(args);
    assert!(out.status.success(), "temper {args:?}: {}", text(&out));
    text(&out)
}

/// Every file of an artifact with a digest of its bytes, wall-clock fields left out
/// (`seconds` of `train_summary.json`, `tokens_per_s` of `metrics.jsonl`).
fn files(dir: &Path) -> BTreeMap<String, String> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
            let bytes = std::fs::read(e.path()).unwrap();
            let bytes = match rel.as_str() {
                "train_summary.json" => {
                    let mut v: J = serde_json::from_slice(&bytes).unwrap();
                    let m = v.as_object_mut().unwrap();
                    m.remove("seconds");
                    m.remove("peak_rss_mib");
                    v.to_string().into_bytes()
                }
                "metrics.jsonl" => String::from_utf8(bytes)
                    .unwrap()
                    .lines()
                    .map(|l| {
                        let mut v: J = serde_json::from_str(l).unwrap();
                        v.as_object_mut().unwrap().remove("tokens_per_s");
                        v.to_string()
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
                    .into_bytes(),
                _ => bytes,
            };
            let mut h = std::hash::DefaultHasher::new();
            std::hash::Hash::hash(&bytes, &mut h);
            (rel, format!("{:016x}", std::hash::Hasher::finish(&h)))
        })
        .filter(|(rel, _)| rel != "MANIFEST.json")
        .collect()
}

/// The rows of an eval's `results.json` (what it measured, without timings).
fn results(p: &Project, key: &str) -> J {
    let path = p.store().join("artifacts").join(key).join("results.json");
    let v: J = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["results"].clone()
}

/// Flips 3 bytes of `path` 40 bytes before its end, in place; `keep_time` puts the
/// modification time back (an edit a `stat` cannot see).
fn flip(path: &Path, keep_time: bool) {
    let before = std::fs::metadata(path).unwrap().modified().unwrap();
    let bytes = std::fs::read(path).unwrap();
    let at = bytes.len() - 40;
    let mut f = OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(at as u64)).unwrap();
    f.write_all(&[!bytes[at], !bytes[at + 1], !bytes[at + 2]])
        .unwrap();
    f.sync_all().unwrap();
    let t = if keep_time {
        before
    } else {
        SystemTime::now() + Duration::from_secs(2)
    };
    f.set_modified(t).unwrap();
}

fn line_of<'a>(out: &'a str, state: &str, id: &str) -> &'a str {
    out.lines()
        .find(|l| {
            let mut w = l.split_whitespace();
            l.starts_with(state) && w.nth(state.split(' ').count()) == Some(id)
        })
        .unwrap_or_else(|| panic!("no `{state} {id}` line in:\n{out}"))
}

#[test]
fn damaged_artifacts_are_never_read_and_are_rebuilt_byte_for_byte() {
    let p = project();
    let s = p.store();
    ok(&p, &["run", "r10.kdl"]);
    let keys = plan(&p, "r10.kdl");
    assert!(keys.values().all(|(_, st)| st == "cached"), "{keys:?}");
    let key = |id: &str| keys[id].0.clone();
    let art = |id: &str| s.join("artifacts").join(key(id));
    let intact: BTreeMap<&str, BTreeMap<String, String>> = ["ad", "domain", "heldout"]
        .into_iter()
        .map(|id| (id, files(&art(id))))
        .collect();

    // The reference: the same store, intact, builds the evals of r11 and r13.
    let r = project();
    copy_all(&s, &r.store());
    ok(&r, &["run", "r11.kdl"]);
    ok(&r, &["run", "r13.kdl"]);
    let ref11 = results(&r, &plan(&r, "r11.kdl")["ade"].0);
    let ref13 = results(&r, &plan(&r, "r13.kdl")["ade"].0);

    // A touch is not damage (the bytes are confirmed by hash).
    let tok = art("tok").join("tokenizer.json");
    File::options()
        .write(true)
        .open(&tok)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(60))
        .unwrap();
    assert_eq!(plan(&p, "r10.kdl")["tok"].1, "cached");

    // 1. The adapter, bytes flipped.
    flip(&art("ad").join("adapter_model.safetensors"), false);
    let out = ok(&p, &["plan", "r11.kdl"]);
    let l = line_of(&out, "damaged", "ad");
    assert!(
        l.ends_with("adapter_model.safetensors changed since it was published"),
        "{l}"
    );
    let exp = p.run(&["export", "r10.kdl", "ad", "out-ad"]);
    assert!(
        !exp.status.success(),
        "export of a damaged adapter must fail"
    );
    assert!(text(&exp).contains("damaged"), "{}", text(&exp));
    let out = ok(&p, &["run", "r11.kdl"]);
    assert!(out.contains("moved aside"), "{out}");
    assert_eq!(files(&art("ad")), intact["ad"], "rebuilt byte for byte");
    let k11 = plan(&p, "r11.kdl")["ade"].0.clone();
    assert_eq!(
        results(&p, &k11),
        ref11,
        "the eval equals the intact store's"
    );
    let copies: Vec<PathBuf> = std::fs::read_dir(s.join("damaged"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|d| d.is_dir())
        .collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    let note = std::fs::read_to_string(copies[0].join("DAMAGE.json")).unwrap();
    assert!(note.contains("adapter_model.safetensors"), "{note}");
    assert!(copies[0]
        .join("artifact/adapter_model.safetensors")
        .is_file());

    // 2. The cpt model, bytes flipped with the time put back: only `verify` can see it.
    flip(&art("domain").join("model.safetensors"), true);
    assert_eq!(plan(&p, "r10.kdl")["domain"].1, "cached");
    let v = p.run(&["verify"]);
    assert_eq!(v.status.code(), Some(1), "{}", text(&v));
    assert!(
        text(&v).contains("marked 1 artifact(s) damaged"),
        "{}",
        text(&v)
    );
    let out = ok(&p, &["plan", "r10.kdl"]);
    let l = line_of(&out, "damaged", "domain");
    assert!(
        l.contains(
            "model.safetensors content no longer matches its manifest (found by temper verify)"
        ),
        "{l}"
    );
    let st = ok(&p, &["status"]);
    assert!(st.contains("damaged: ") && st.contains("domain"), "{st}");
    ok(&p, &["run", "r10.kdl"]);
    assert_eq!(files(&art("domain")), intact["domain"]);
    assert!(plan(&p, "r10.kdl").values().all(|(_, st)| st == "cached"));
    ok(&p, &["verify"]);

    // 3. A dataset, bytes flipped with the time put back: `run --verify-inputs` re-hashes it.
    let data = std::fs::read_dir(art("heldout"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|f| f.extension().is_some_and(|x| x == "jsonl") && !f.ends_with("metrics.jsonl"))
        .expect("the dataset's data file");
    flip(&data, true);
    let out = ok(&p, &["run", "r13.kdl", "--verify-inputs"]);
    assert!(out.contains("1 damaged"), "{out}");
    assert_eq!(files(&art("heldout")), intact["heldout"]);
    let k13 = plan(&p, "r13.kdl")["ade"].0.clone();
    assert_eq!(results(&p, &k13), ref13);

    // 4. Damage that appears after the plan: the worker checks its inputs before the stage
    // reads them, and fails the node instead of reading them; the rerun rebuilds.
    let run = p
        .cmd(&["run", "r12.kdl"])
        .env("TEMPER_PAUSE_AT", "stage:ade:2500")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    flip(&art("ad").join("adapter_model.safetensors"), false);
    let out = run.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = text(&out);
    assert!(
        err.contains("the artifact of ad (") && err.contains("is damaged"),
        "{err}"
    );
    ok(&p, &["run", "r12.kdl"]);
    assert_eq!(files(&art("ad")), intact["ad"]);

    // The copies stay until asked for.
    let gc = ok(&p, &["gc", "r10.kdl", "r11.kdl", "r12.kdl", "r13.kdl"]);
    assert!(gc.contains("kept") && gc.contains("damaged cop"), "{gc}");
    assert_eq!(std::fs::read_dir(s.join("damaged")).unwrap().count(), 4);
    ok(
        &p,
        &[
            "gc",
            "r10.kdl",
            "r11.kdl",
            "r12.kdl",
            "r13.kdl",
            "--damaged",
        ],
    );
    assert_eq!(std::fs::read_dir(s.join("damaged")).unwrap().count(), 0);
}
