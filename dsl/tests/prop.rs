//! Property: reordering properties, children and nodes, choosing property or child form,
//! reformatting whitespace and adding comments never changes the validated parameters (the
//! runner's key stability builds on this). The DSL fuzzer is the `fuzz` module.
use crate::common;

use dsl::{load_str, Value};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::fs;

/// (kind, name, [(param, value text)]) — each param is written once, in either form.
/// (kind, name, [(param, value text)]).
type Decl = (
    &'static str,
    &'static str,
    Vec<(&'static str, &'static str)>,
);

fn nodes() -> Vec<Decl> {
    vec![
        (
            "dataset",
            "corpus",
            vec![
                ("path", "\"data/t.jsonl\""),
                ("format", "text"),
                ("skip-invalid", "#true"),
            ],
        ),
        (
            "dataset",
            "chat",
            vec![("path", "\"data/t.jsonl\""), ("format", "messages")],
        ),
        (
            "tokenizer",
            "tok",
            vec![
                ("vocab-size", "512"),
                ("min-frequency", "3"),
                ("eos-token", "\"</s>\""),
            ],
        ),
        (
            "model",
            "tiny",
            vec![
                ("tokenizer", "tok"),
                ("hidden-size", "64"),
                ("heads", "4"),
                ("kv-heads", "2"),
                ("rope-theta", "10_000.0"),
                ("init-std", "0.02"),
                ("seed", "7"),
                ("arch", "qwen2"),
            ],
        ),
    ]
}

const SPACES: [&str; 4] = [" ", "  ", "\t", " /* c */ "];

fn render(
    order: &[usize],
    shuffles: &[Vec<usize>],
    forms: &[bool],
    spaces: &[usize],
    comments: &[bool],
) -> String {
    let all = nodes();
    let mut out = String::from("// recipe\n");
    let mut k = 0;
    let next = |k: &mut usize| {
        *k += 1;
        *k
    };
    for &ni in order {
        let (kind, name, params) = &all[ni];
        let sp = |i: usize| SPACES[spaces[i % spaces.len()]];
        out.push_str(&format!("{kind}{}{name}", sp(next(&mut k))));
        let mut children = Vec::new();
        for &pi in &shuffles[ni] {
            let (p, v) = params[pi];
            if forms[(ni * 8 + pi) % forms.len()] {
                out.push_str(&format!("{}{p}={v}", sp(next(&mut k))));
            } else {
                children.push(format!("{p}{}{v}", sp(next(&mut k))));
            }
        }
        // The tokenizer's repeated `data` children stay in a fixed order (their order matters).
        if *name == "tok" {
            children.push("data corpus".into());
            children.push("data chat".into());
        }
        if !children.is_empty() {
            out.push_str(" {\n");
            for c in children {
                let comment = if comments[next(&mut k) % comments.len()] {
                    " // note"
                } else {
                    ""
                };
                out.push_str(&format!("    {c}{comment}\n"));
            }
            out.push('}');
        }
        if comments[next(&mut k) % comments.len()] {
            out.push_str(" // trailing");
        }
        out.push_str("\n\n");
    }
    out
}

fn params_of(text: &str, dir: &std::path::Path) -> BTreeMap<String, BTreeMap<String, Value>> {
    let r = match load_str("main.kdl", text, dir, &common::registry(), &[]) {
        Ok(r) => r,
        Err(e) => panic!("{}\n{}", text, e.render()),
    };
    r.nodes.into_iter().map(|n| (n.name, n.params)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn formatting_and_order_do_not_change_params(
        order in Just(vec![0usize, 1, 2, 3]).prop_shuffle(),
        s0 in Just((0..3).collect::<Vec<usize>>()).prop_shuffle(),
        s1 in Just((0..2).collect::<Vec<usize>>()).prop_shuffle(),
        s2 in Just((0..3).collect::<Vec<usize>>()).prop_shuffle(),
        s3 in Just((0..8).collect::<Vec<usize>>()).prop_shuffle(),
        forms in prop::collection::vec(any::<bool>(), 32),
        spaces in prop::collection::vec(0usize..4, 1..16),
        comments in prop::collection::vec(any::<bool>(), 1..8),
    ) {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("data")).unwrap();
        fs::write(d.path().join("data/t.jsonl"), "{}").unwrap();
        let canonical = render(&[0, 1, 2, 3], &[vec![0, 1, 2], vec![0, 1], vec![0, 1, 2], (0..8).collect()], &[true], &[0], &[false]);
        let variant = render(&order, &[s0, s1, s2, s3], &forms, &spaces, &comments);
        prop_assert_eq!(params_of(&canonical, d.path()), params_of(&variant, d.path()));
    }
}
