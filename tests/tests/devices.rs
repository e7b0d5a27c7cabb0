//! Devices through the real binary: a `device` the machine does not have is a recipe error that
//! `check` and `plan` report with its location, before anything runs (`TEMPER_CUDA_DEVICES`
//! makes the machine's CUDA count deterministic; without it the front asks the CUDA driver).

use temper_e2e::{assert_no_panic, text, Project};

const RECIPE: &str = r#"dataset corpus path="data/corpus.jsonl" format=text
tokenizer tok vocab-size=320 { data corpus; }
model tiny tokenizer=tok hidden-size=32 layers=2 heads=4 kv-heads=2 intermediate-size=64 seed=0
cpt domain model=tiny data=corpus {
    seq-len 32; batch-size 4; steps 2; device "cuda:9"
}
"#;

#[test]
fn a_cuda_device_typo_is_found_by_check_and_plan_with_its_location() {
    let p = Project::new();
    p.copy_from_repo("examples/data/corpus.jsonl", "data/corpus.jsonl");
    p.write("recipe.kdl", RECIPE);
    for (cuda, want) in [
        ("0", "this machine has no CUDA device"),
        ("2", "this machine has 2 CUDA device(s)"),
    ] {
        for cmd in ["check", "plan", "run"] {
            let out = p
                .cmd(&[cmd, "recipe.kdl"])
                .env("TEMPER_CUDA_DEVICES", cuda)
                .env("NO_COLOR", "1")
                .output()
                .unwrap();
            assert_no_panic(&out, cmd);
            let t = text(&out);
            assert_eq!(out.status.code(), Some(2), "{cmd} with {cuda} GPUs:\n{t}");
            assert!(
                t.contains("device `cuda:9` requested") && t.contains(want),
                "{cmd}:\n{t}"
            );
            assert!(t.contains("recipe.kdl:5:"), "{cmd}: no location\n{t}");
        }
    }
    // Nothing ran: no artifact, no node log.
    assert!(
        !p.store().join("logs").exists()
            || std::fs::read_dir(p.store().join("logs"))
                .unwrap()
                .next()
                .is_none()
    );
    // On a machine with ten GPUs the same recipe is valid (checked, not run here).
    let out = p
        .cmd(&["check", "recipe.kdl"])
        .env("TEMPER_CUDA_DEVICES", "10")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // `--cuda-devices N` checks against another machine (a login node checking a GPU recipe).
    let out = p
        .cmd(&["check", "recipe.kdl", "--cuda-devices", "16"])
        .env("TEMPER_CUDA_DEVICES", "0")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}
