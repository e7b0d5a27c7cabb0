//! Key stability, both ways: what must not change a key, and what must.

use crate::common;

use common::{kinds, Project};
use dsl::{KindSchema, ParamSpec, ParamType, Value};
use recipes::{Stage, StageCtx, StageError};
use runner::keys::{self, PlainHasher};
use runner::Kinds;
use std::collections::BTreeMap;
use std::path::Path;

/// id → key of every instance of `recipe` (a file in `dir`).
fn keys_in(k: &Kinds, dir: &Path, text: &str) -> BTreeMap<String, String> {
    std::fs::write(dir.join("r.kdl"), text).expect("write recipe");
    let loaded = common::load(k, &dir.join("r.kdl"), &[]);
    let keyed = runner::plan::keys_of(&loaded, &k.registry, &PlainHasher, None)
        .expect("keys")
        .keyed;
    keyed.into_iter().map(|k| (k.id, k.key)).collect()
}

const BASE: &str = r#"
src s text="hello" n=3 file="data/a.txt"
join j a=s x=2.5 y=7
"#;

fn project() -> Project {
    let p = Project::new();
    p.write("data/a.txt", "alpha\n");
    p
}

#[test]
fn reordering_formatting_and_comments_keep_keys() {
    let p = project();
    let k = kinds();
    let base = keys_in(&k, p.path(), BASE);
    let reordered = keys_in(
        &k,
        p.path(),
        r#"
// a comment
join j y=7 a=s x=2.5   // properties reordered, declared before its input
src   s  file="data/a.txt"   n=3   text="hello"
"#,
    );
    assert_eq!(base, reordered);
    let children = keys_in(
        &k,
        p.path(),
        "src s text=\"hello\" {\n    file \"data/a.txt\"\n    /* block comment */ n 3\n}\njoin j { y 7; x 2.5; a s }\n",
    );
    assert_eq!(base, children);
}

#[test]
fn moving_the_project_keeps_keys() {
    let p = project();
    let q = Project::new();
    q.write("deeper/dir/data/a.txt", "alpha\n");
    let k = kinds();
    let here = keys_in(&k, p.path(), BASE);
    let there = keys_in(&k, &q.path().join("deeper/dir"), BASE);
    assert_eq!(here, there);
}

#[test]
fn renaming_a_node_keeps_keys() {
    let p = project();
    let k = kinds();
    let base = keys_in(&k, p.path(), BASE);
    let renamed = keys_in(
        &k,
        p.path(),
        "src source text=\"hello\" n=3 file=\"data/a.txt\"\njoin joined a=source x=2.5 y=7\n",
    );
    assert_eq!(base["s"], renamed["source"]);
    assert_eq!(base["j"], renamed["joined"]);
}

#[test]
fn non_semantic_params_keep_keys() {
    let p = project();
    let k = kinds();
    let base = keys_in(&k, p.path(), BASE);
    let other = keys_in(
        &k,
        p.path(),
        r#"
src s text="hello" n=3 file="data/a.txt" device=cpu threads=3 log-every=99
join j a=s x=2.5 y=7 device="cuda:1"
"#,
    );
    assert_eq!(base, other);
}

#[test]
fn touching_a_file_keeps_keys_changing_content_changes_them() {
    let p = project();
    let k = kinds();
    let base = keys_in(&k, p.path(), BASE);
    // Rewrite the same content (new mtime, maybe new inode).
    std::thread::sleep(std::time::Duration::from_millis(20));
    p.write("data/a.txt", "alpha\n");
    assert_eq!(base, keys_in(&k, p.path(), BASE));
    p.write("data/a.txt", "alpha!\n");
    let changed = keys_in(&k, p.path(), BASE);
    assert_ne!(base["s"], changed["s"]);
    assert_ne!(
        base["j"], changed["j"],
        "a file change propagates downstream"
    );
}

#[test]
fn every_semantic_param_changes_the_key() {
    let p = project();
    p.write("data/b.txt", "beta\n");
    let k = kinds();
    let base = keys_in(&k, p.path(), BASE);
    let variants = [
        (
            "s",
            "src s text=\"hello!\" n=3 file=\"data/a.txt\"\njoin j a=s x=2.5 y=7",
        ),
        (
            "s",
            "src s text=\"hello\" n=4 file=\"data/a.txt\"\njoin j a=s x=2.5 y=7",
        ),
        (
            "s",
            "src s text=\"hello\" n=3 file=\"data/b.txt\"\njoin j a=s x=2.5 y=7",
        ),
        ("s", "src s text=\"hello\" n=3\njoin j a=s x=2.5 y=7"),
        (
            "s",
            "src s text=\"hello\" n=3 file=\"data/a.txt\" ratio=0.25\njoin j a=s x=2.5 y=7",
        ),
        (
            "s",
            "src s text=\"hello\" n=3 file=\"data/a.txt\" mode=b\njoin j a=s x=2.5 y=7",
        ),
        (
            "s",
            "src s text=\"hello\" n=3 file=\"data/a.txt\" flag=#true\njoin j a=s x=2.5 y=7",
        ),
        (
            "j",
            "src s text=\"hello\" n=3 file=\"data/a.txt\"\njoin j a=s x=2.0 y=7",
        ),
        (
            "j",
            "src s text=\"hello\" n=3 file=\"data/a.txt\"\njoin j a=s x=2.5 y=8",
        ),
        (
            "j",
            "src s text=\"hello\" n=3 file=\"data/a.txt\"\njoin j a=s b=s x=2.5 y=7",
        ),
    ];
    for (node, text) in variants {
        let ks = keys_in(&k, p.path(), text);
        assert_ne!(
            base[node], ks[node],
            "changing {node} in {text:?} must change its key"
        );
        // Upstream changes propagate: j's key changes whenever s's does.
        assert_ne!(
            base["j"], ks["j"],
            "{text:?} must change j (directly or through s)"
        );
    }
}

#[test]
fn explicit_default_equals_omitted() {
    let p = project();
    let k = kinds();
    let a = keys_in(&k, p.path(), "src s text=\"1\"\njoin j a=s x=2.0");
    let b = keys_in(&k, p.path(), "src s text=\"1\"\njoin j a=s x=2.0 y=0");
    assert_eq!(
        a, b,
        "setting a default explicitly is the same as leaving it out"
    );
}

#[test]
fn directory_and_glob_paths_hash_relative_contents() {
    let p = Project::new();
    p.write("d/x.jsonl", "1\n");
    p.write("d/sub/y.jsonl", "2\n");
    p.write("d/.hidden", "ignored\n");
    let content = keys::path_content(p.path(), "d", &PlainHasher).expect("dir");
    let names: Vec<&String> = content.as_object().expect("object").keys().collect();
    assert_eq!(names, ["sub/y.jsonl", "x.jsonl"]);
    let g = keys::path_content(p.path(), "d/*.jsonl", &PlainHasher).expect("glob");
    assert_eq!(
        g.as_object().expect("object").keys().collect::<Vec<_>>(),
        ["x.jsonl"]
    );
    let err = keys::path_content(p.path(), "d/*.parquet", &PlainHasher).unwrap_err();
    assert!(
        format!("{err:#}").contains("no file matches `d/*.parquet`"),
        "{err:#}"
    );
    let err = keys::path_content(p.path(), "missing.txt", &PlainHasher).unwrap_err();
    assert!(
        format!("{err:#}").contains("`missing.txt` does not exist"),
        "{err:#}"
    );
    // No absolute path anywhere in a tree.
    let text = content.to_string();
    assert!(!text.contains(&p.path().to_string_lossy().into_owned()));
}

/// A kind whose later releases add a parameter or bump the version.
struct Evolving {
    version: u32,
    with_extra: bool,
}
impl Stage for Evolving {
    fn schema(&self) -> KindSchema {
        let mut k = KindSchema::new("evo", self.version, "data").param(
            ParamSpec::new(
                "lr",
                ParamType::Float {
                    min: None,
                    max: None,
                },
            )
            .default(Value::Float(0.1)),
        );
        if self.with_extra {
            k = k.param(
                ParamSpec::new(
                    "warmup",
                    ParamType::Int {
                        min: None,
                        max: None,
                    },
                )
                .default(Value::Int(0))
                .added_later(),
            );
        }
        k
    }
    fn run(&self, _: &StageCtx) -> Result<serde_json::Value, StageError> {
        Ok(serde_json::Value::Null)
    }
}

fn evo_kinds(version: u32, with_extra: bool) -> Kinds {
    common::kinds_of(vec![
        Box::new(Evolving {
            version,
            with_extra,
        }),
        Box::new(common::Join),
    ])
}

#[test]
fn added_later_param_at_default_keeps_keys_else_changes_them() {
    let p = Project::new();
    let recipe = "evo e lr=0.2\njoin j a=e";
    let v1 = keys_in(&evo_kinds(1, false), p.path(), recipe);
    let v1_extra = keys_in(&evo_kinds(1, true), p.path(), recipe);
    assert_eq!(
        v1, v1_extra,
        "a new parameter at its default must not change keys"
    );
    let explicit_default = keys_in(
        &evo_kinds(1, true),
        p.path(),
        "evo e lr=0.2 warmup=0\njoin j a=e",
    );
    assert_eq!(v1, explicit_default);
    let set = keys_in(
        &evo_kinds(1, true),
        p.path(),
        "evo e lr=0.2 warmup=5\njoin j a=e",
    );
    assert_ne!(v1["e"], set["e"]);
    assert_ne!(v1["j"], set["j"]);
}

#[test]
fn kind_version_changes_keys() {
    let p = Project::new();
    let recipe = "evo e lr=0.2\njoin j a=e";
    let v1 = keys_in(&evo_kinds(1, false), p.path(), recipe);
    let v2 = keys_in(&evo_kinds(2, false), p.path(), recipe);
    assert_ne!(v1["e"], v2["e"]);
    assert_ne!(v1["j"], v2["j"]);
}

#[test]
fn canonical_form_sorts_fields_recursively() {
    let a: serde_json::Value =
        serde_json::from_str(r#"{"b": {"y": 1, "x": [ {"q": 1, "p": 2} ]}, "a": 0}"#).unwrap();
    let b: serde_json::Value =
        serde_json::from_str(r#"{"a": 0, "b": {"x": [ {"p": 2, "q": 1} ], "y": 1}}"#).unwrap();
    assert_eq!(
        keys::canonical_string(&a),
        r#"{"a":0,"b":{"x":[{"p":2,"q":1}],"y":1}}"#
    );
    assert_eq!(keys::digest(&a), keys::digest(&b));
}

/// Golden digests: an accidental change of the key scheme (or of the test kinds' params)
/// fails here. Regenerate deliberately with `TEMPER_UPDATE_GOLDEN=1`.
#[test]
fn golden_keys() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    check_golden(&kinds(), &dir.join("basic.kdl"), &dir.join("basic.keys"));
}

/// Golden digests of the built-in kinds (`dataset`, `tokenizer`, `model`).
#[test]
fn golden_keys_builtin_kinds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    check_golden(
        &Kinds::builtin(),
        &dir.join("builtin.kdl"),
        &dir.join("builtin.keys"),
    );
}

/// Golden digests of every built-in kind, most parameters away from their defaults (every merge
/// method, every dpo loss, every eval metric, record and list parameters): refactoring a kind
/// must leave its keys alone.
#[test]
fn golden_keys_every_builtin_kind() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let k = Kinds::builtin();
    check_golden(&k, &dir.join("kinds.kdl"), &dir.join("kinds.keys"));
    // Every kind is covered.
    let text = std::fs::read_to_string(dir.join("kinds.kdl")).unwrap();
    for kind in k.registry.kinds().map(|s| s.name) {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{kind} "))),
            "golden/kinds.kdl has no `{kind}` node"
        );
    }
}

fn check_golden(k: &Kinds, recipe: &Path, expected: &Path) {
    let loaded = common::load(k, recipe, &[]);
    let keyed = runner::plan::keys_of(&loaded, &k.registry, &PlainHasher, None)
        .expect("keys")
        .keyed;
    let mut lines: Vec<String> = keyed
        .iter()
        .map(|k| format!("{} {}\n", k.id, k.key))
        .collect();
    lines.sort();
    let got: String = lines.concat();
    if std::env::var_os("TEMPER_UPDATE_GOLDEN").is_some() {
        std::fs::write(expected, &got).expect("write golden");
        return;
    }
    let want = std::fs::read_to_string(expected).unwrap_or_default();
    assert_eq!(
        got,
        want,
        "key digests of {} changed; if intended, rerun with TEMPER_UPDATE_GOLDEN=1",
        recipe.display()
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Writes `node` with its `(param, value)` entries in the given order, each either as a
    /// property or as a child node, with comments and odd spacing sprinkled in.
    fn render(
        kind: &str,
        name: &str,
        entries: &[(&str, &str)],
        as_child: &[bool],
        pad: usize,
    ) -> String {
        let sp = " ".repeat(pad + 1);
        let mut props = String::new();
        let mut children = String::new();
        for ((k, v), child) in entries.iter().zip(as_child) {
            if *child {
                children += &format!("{sp}{k} {v} // c\n");
            } else {
                props += &format!("{sp}{k}={v}");
            }
        }
        if children.is_empty() {
            format!("{kind} {name}{props} /* n */\n")
        } else {
            format!("{kind} {name}{props} {{\n{children}}}\n")
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
        #[test]
        fn keys_ignore_order_layout_and_comments(
            src_order in Just(vec![("text", "\"hi\""), ("n", "4"), ("ratio", "0.75"), ("mode", "b"), ("flag", "#true")]).prop_shuffle(),
            join_order in Just(vec![("a", "s"), ("x", "3.5"), ("y", "2")]).prop_shuffle(),
            src_child in proptest::collection::vec(any::<bool>(), 5),
            join_child in proptest::collection::vec(any::<bool>(), 3),
            join_first in any::<bool>(),
            pad in 0usize..3,
        ) {
            let p = Project::new();
            let k = kinds();
            let base = keys_in(&k, p.path(), "src s text=\"hi\" n=4 ratio=0.75 mode=b flag=#true\njoin j a=s x=3.5 y=2\n");
            let s = render("src", "s", &src_order, &src_child, pad);
            let j = render("join", "j", &join_order, &join_child, pad);
            let text = if join_first { format!("// shuffled\n{j}\n{s}") } else { format!("{s}\n\n{j}") };
            prop_assert_eq!(base, keys_in(&k, p.path(), &text), "recipe:\n{}", text);
        }
    }
}

/// A training-like kind with a `dtype` that may be `auto`.
struct Trains;
impl Stage for Trains {
    fn schema(&self) -> KindSchema {
        KindSchema::new("trains", 1, "model").param(
            ParamSpec::new("dtype", ParamType::Enum(&["auto", "f32", "bf16"]))
                .default(Value::Str("auto".into())),
        )
    }
    fn run(&self, _: &StageCtx) -> Result<serde_json::Value, StageError> {
        Ok(serde_json::Value::Null)
    }
}

#[test]
fn dtype_auto_enters_the_key_as_the_resolved_dtype() {
    let p = Project::new();
    let k = common::kinds_of(vec![Box::new(Trains)]);
    let auto_cpu = keys_in(&k, p.path(), "trains t device=cpu");
    let f32 = keys_in(&k, p.path(), "trains t dtype=f32 device=cpu");
    let bf16_cuda = keys_in(&k, p.path(), "trains t device=cuda:0");
    let bf16 = keys_in(&k, p.path(), "trains t dtype=bf16");
    // On CPU, auto means f32; on CUDA, bf16: the resolved dtype is what the key holds.
    assert_eq!(auto_cpu["t"], f32["t"]);
    assert_eq!(bf16_cuda["t"], bf16["t"]);
    assert_ne!(auto_cpu["t"], bf16_cuda["t"]);
}

/// A project holding the golden text corpus as `data/text.jsonl`.
fn text_project() -> Project {
    let p = Project::new();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/data");
    std::fs::create_dir_all(p.path().join("data")).unwrap();
    std::fs::copy(dir.join("text.jsonl"), p.path().join("data/text.jsonl")).unwrap();
    p
}

/// `precision` enters a training node's key only where it changes what the node computes
/// against the key's `dtype` alone (`bf16-mixed`): CPU nodes (`auto` = f32) and explicit
/// `dtype bf16` nodes (pure bf16, as before `precision`) keep their keys, `precision bf16`
/// on CUDA is the old CUDA default, and CUDA's new default (bf16-mixed) is a new key.
#[test]
fn precision_enters_the_key_only_where_it_changes_the_numerics() {
    let p = text_project();
    let k = Kinds::builtin();
    let keys = keys_in(
        &k,
        p.path(),
        r#"
dataset corpus path="data/text.jsonl" format=text
tokenizer tok vocab-size=300 { data corpus; }
model tiny tokenizer=tok hidden-size=32 layers=1 heads=2 kv-heads=1 intermediate-size=64
cpt cpu model=tiny data=corpus steps=1 device=cpu
cpt cpu-f32 model=tiny data=corpus steps=1 device=cpu precision=f32
cpt cpu-dtype-f32 model=tiny data=corpus steps=1 device=cpu dtype=f32
cpt cpu-mixed model=tiny data=corpus steps=1 device=cpu precision=bf16-mixed
cpt cpu-dtype-bf16 model=tiny data=corpus steps=1 device=cpu dtype=bf16
cpt cpu-bf16 model=tiny data=corpus steps=1 device=cpu precision=bf16
cpt cpu-save model=tiny data=corpus steps=1 device=cpu save-dtype=bf16
cpt cuda model=tiny data=corpus steps=1 device=cuda:0
cpt cuda-mixed model=tiny data=corpus steps=1 device=cuda:0 precision=bf16-mixed
cpt cuda-bf16 model=tiny data=corpus steps=1 device=cuda:0 precision=bf16
"#,
    );
    assert_eq!(keys["cpu"], keys["cpu-f32"]);
    assert_eq!(keys["cpu"], keys["cpu-dtype-f32"]);
    assert_eq!(keys["cpu-dtype-bf16"], keys["cpu-bf16"]);
    assert_eq!(keys["cpu-dtype-bf16"], keys["cuda-bf16"]);
    assert_eq!(keys["cuda"], keys["cuda-mixed"]);
    assert_eq!(keys["cpu-mixed"], keys["cuda-mixed"]);
    assert_ne!(keys["cpu"], keys["cpu-mixed"]);
    assert_ne!(keys["cpu-mixed"], keys["cpu-bf16"]);
    assert_ne!(keys["cpu"], keys["cpu-save"]);
    // An explicit precision and an explicit dtype that disagree are refused where they are
    // written, as is a save-dtype on a LoRA node.
    std::fs::write(
        p.path().join("bad.kdl"),
        r#"
dataset corpus path="data/text.jsonl" format=text
tokenizer tok vocab-size=300 { data corpus; }
model tiny tokenizer=tok hidden-size=32 layers=1 heads=2 kv-heads=1 intermediate-size=64
cpt a model=tiny data=corpus steps=1 dtype=bf16 precision=f32
cpt b model=tiny data=corpus steps=1 save-dtype=bf16 { lora rank=4; }
"#,
    )
    .unwrap();
    let err = match runner::plan::load(&p.path().join("bad.kdl"), &k.registry, &[]) {
        Ok(_) => panic!("the recipe loaded"),
        Err(e) => format!("{e:?}"),
    };
    assert!(
        err.contains("precision f32 computes in f32, but the node sets dtype bf16"),
        "{err}"
    );
    assert!(
        err.contains("save-dtype applies to a full model's weights"),
        "{err}"
    );
}

/// `dtype auto` is keyed for the machine that builds the node (`runner::target`): a recipe
/// planned here without a GPU, on a machine with one (`--cuda-devices`), or for Slurm jobs that
/// ask for GPUs (`gpus-per-node`, or `--gres=gpu…` in `extra`) or not: a GPU node's key is the
/// same wherever it was planned, and differs from the CPU key; an explicit device wins.
#[test]
fn dtype_auto_is_keyed_for_the_machine_that_builds_the_node() {
    use runner::slurm::settings::Sources;
    use runner::target::Target;
    let p = text_project();
    let tiny = "dataset corpus path=\"data/text.jsonl\" format=text\n\
                tokenizer tok vocab-size=300 { data corpus; }\n\
                model tiny tokenizer=tok hidden-size=32 layers=1 heads=2 intermediate-size=64\n";
    std::fs::write(
        p.path().join("r.kdl"),
        tiny.to_string()
            + r#"
cpt gpu model=tiny data=corpus steps=1 { resources { gpus-per-node 4; }; }
cpt gres model=tiny data=corpus steps=1 { resources { extra "--gres=gpu:h100:2"; }; }
cpt cpu model=tiny data=corpus steps=1
cpt pinned model=tiny data=corpus steps=1 device=cpu { resources { gpus-per-node 4; }; }
"#,
    )
    .unwrap();
    let k = Kinds::builtin();
    let mut loaded = common::load(&k, &p.path().join("r.kdl"), &[]);
    let mut keyed = |target: Target| -> BTreeMap<String, (String, Option<&'static str>)> {
        loaded.target = target;
        runner::plan::keys_of(&loaded, &k.registry, &PlainHasher, None)
            .expect("keys")
            .keyed
            .into_iter()
            .map(|k| (k.id, (k.key, k.keyed_for)))
            .collect()
    };
    let here = keyed(Target::local(0, false));
    let workstation = keyed(Target::local(1, true));
    let sources =
        Sources::with_user_file(&common::load(&k, &p.path().join("r.kdl"), &[]).recipe, None)
            .unwrap();
    let slurm = keyed(sources.target().unwrap());
    for id in ["gpu", "gres", "cpu"] {
        assert_eq!(here[id].1, Some("cpu"), "{id}");
        assert_eq!(workstation[id].1, Some("cuda"), "{id}");
        assert_ne!(
            here[id].0, workstation[id].0,
            "{id}: keyed for CPU and for CUDA"
        );
    }
    assert_eq!(
        slurm["gpu"], workstation["gpu"],
        "a GPU job keys as a GPU workstation"
    );
    assert_eq!(slurm["gres"], workstation["gres"]);
    assert_eq!(
        slurm["cpu"], here["cpu"],
        "a job without GPUs keys as a CPU machine"
    );
    // `device cpu` is CPU wherever it runs; the model and data nodes have no dtype.
    assert_eq!(slurm["pinned"], here["pinned"]);
    assert_eq!(workstation["pinned"], here["pinned"]);
    assert_eq!(here["pinned"].1, Some("cpu"));
    assert_eq!(here["corpus"].1, None);
}
