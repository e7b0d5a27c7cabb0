//! Cluster settings of the Slurm executor: where they come from, what `sbatch` options they
//! make, how mistakes are reported — and that none of them changes a key. (The executor itself
//! is tested against a real Slurm in the end-to-end tests, `tests/tests/slurm.rs`.)

use crate::common;

use common::{kinds, Project};
use runner::keys::PlainHasher;
use runner::slurm::settings::Sources;
use std::collections::BTreeMap;

const BASE: &str = r#"
src s text="hello" n=3 file="data/a.txt"
join j a=s x=2.5 y=7
"#;

fn keys(p: &Project, text: &str) -> BTreeMap<String, String> {
    let k = kinds();
    p.write("r.kdl", text);
    let loaded = common::load(&k, &p.path().join("r.kdl"), &[]);
    runner::plan::keys_of(&loaded, &k.registry, &PlainHasher, None)
        .expect("keys")
        .keyed
        .into_iter()
        .map(|k| (k.id, k.key))
        .collect()
}

fn project() -> Project {
    let p = Project::new();
    p.write("data/a.txt", "alpha\n");
    std::fs::create_dir_all(p.path().join(".git")).unwrap();
    p
}

#[test]
fn cluster_settings_never_change_a_key() {
    let p = project();
    let base = keys(&p, BASE);
    let with = keys(
        &p,
        r#"
src s text="hello" n=3 file="data/a.txt" {
    resources { time "12:00:00"; gpus-per-node 8; }
}
join j a=s x=2.5 y=7
executor slurm {
    partition "gpu"; account "proj"; extra "--constraint=h100"
    kind join { mem "64G"; }
}
"#,
    );
    assert_eq!(base, with);
}

#[test]
fn layers_apply_user_then_project_then_recipe_then_kind_then_node() {
    let p = project();
    let user = p.write(
        "home/temper.toml",
        "[slurm]\npartition = \"cpu\"\naccount = \"me\"\ntime = \"01:00:00\"\nqos = \"low\"\n",
    );
    p.write(
        "temper.toml",
        "[slurm]\naccount = \"team\"\nextra = [\"--exclusive\"]\n[slurm.kind.join]\nqos = \"high\"\ncpus-per-task = 4\n",
    );
    p.write(
        "r.kdl",
        r#"
src s text="hello" n=3 file="data/a.txt" {
    resources { gpus-per-node 2; time "2-00"; }
}
join j a=s x=2.5 y=7
executor slurm {
    partition "gpu"
    signal "HUP"; signal-lead 120; requeue #false
    kind join { time "00:30:00"; }
}
"#,
    );
    let k = kinds();
    let loaded = common::load(&k, &p.path().join("r.kdl"), &[]);
    let src = Sources::with_user_file(&loaded.recipe, Some(user)).expect("settings");
    let s = src.for_node("s", "src").unwrap();
    assert_eq!(s.partition.as_deref(), Some("gpu")); // recipe over user
    assert_eq!(s.account.as_deref(), Some("team")); // project over user
    assert_eq!(s.qos.as_deref(), Some("low")); // user's, no rule for `src`
    assert_eq!(s.time.as_deref(), Some("2-00")); // the node's own
    assert_eq!(s.gpus_per_node, Some(2));
    let args = s.sbatch_args();
    for want in [
        "--partition=gpu",
        "--account=team",
        "--qos=low",
        "--time=2-00",
        "--gpus-per-node=2",
        "--signal=B:HUP@120",
        "--no-requeue",
        "--exclusive",
    ] {
        assert!(args.iter().any(|a| a == want), "{want} in {args:?}");
    }
    let j = src.for_node("j", "join").unwrap();
    assert_eq!(j.qos.as_deref(), Some("high")); // the project's kind rule
    assert_eq!(j.cpus_per_task, Some(4));
    assert_eq!(j.time.as_deref(), Some("00:30:00")); // the recipe's kind rule
    assert_eq!(j.gpus_per_node, None);
    // Defaults: USR2 five minutes ahead, requeue allowed.
    let plain = Sources::with_user_file(&loaded.recipe, None).unwrap();
    let d = Sources::for_node(&plain, "j", "join").unwrap();
    assert_eq!(d.signal, "HUP");
    p.write("r.kdl", BASE);
    let loaded = common::load(&k, &p.path().join("r.kdl"), &[]);
    std::fs::remove_file(p.path().join("temper.toml")).unwrap();
    let none = Sources::with_user_file(&loaded.recipe, None).unwrap();
    let args = none.for_node("s", "src").unwrap().sbatch_args();
    assert_eq!(args, vec!["--signal=B:USR2@300", "--requeue"]);
}

#[test]
fn bad_settings_are_located_errors_with_hints() {
    let p = project();
    let k = kinds();
    let cases = [
        (
            "executor slurm { partiton \"gpu\"; }\n",
            "did you mean `partition`",
        ),
        (
            "executor slurm { gpus-per-node \"8\"; }\n",
            "takes an integer",
        ),
        (
            "executor slurm { time \"soon\"; }\n",
            "is not a Slurm time limit",
        ),
        ("executor slurm { signal \"KILL\"; }\n", "USR2 by default"),
        (
            "executor slurm { extra \"constraint=h100\"; }\n",
            "takes sbatch options",
        ),
        ("executor pbs { queue \"x\"; }\n", "unknown executor `pbs`"),
    ];
    for (block, want) in cases {
        p.write("r.kdl", &format!("{BASE}{block}"));
        let loaded = common::load(&k, &p.path().join("r.kdl"), &[]);
        let err = match Sources::with_user_file(&loaded.recipe, None) {
            Ok(_) => panic!("{block}: accepted"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(want), "{block}: {err}");
        assert!(err.contains("r.kdl:4:"), "{block}: located: {err}");
    }
    p.write("temper.toml", "[slurm]\nmem = \"lots\"\n");
    p.write("r.kdl", BASE);
    let loaded = common::load(&k, &p.path().join("r.kdl"), &[]);
    let err = Sources::with_user_file(&loaded.recipe, None)
        .err()
        .expect("a bad project file")
        .to_string();
    assert!(
        err.contains("temper.toml") && err.contains("not a Slurm size"),
        "{err}"
    );
}
