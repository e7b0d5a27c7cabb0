//! Hostile recipes: resource limits, include restrictions, untrusted mode and name hygiene
//! (part of the `load` test binary).

use crate::common;
use dsl::{load_str, load_with, Diagnostics, LoadOptions};
use std::fs;
use std::path::Path;

/// A repository (`.git`) with data and the recipe directory `repo/sub`, and a secret file
/// beside the repository.
fn repo() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let sub = d.path().join("repo/sub");
    fs::create_dir_all(d.path().join("repo/.git")).unwrap();
    fs::create_dir_all(sub.join("data")).unwrap();
    fs::write(sub.join("data/t.jsonl"), "{}\n").unwrap();
    fs::write(d.path().join("secret.txt"), "SECRET-MARKER root:x:0:0\n").unwrap();
    d
}

fn load_in(
    dir: &Path,
    text: &str,
    sets: &[&str],
    opts: &LoadOptions,
) -> Result<dsl::Recipe, Diagnostics> {
    let path = dir.join("main.kdl");
    fs::write(&path, text).unwrap();
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    load_with(&path, &common::registry(), &sets, opts)
}

#[track_caller]
fn err_in(dir: &Path, text: &str, sets: &[&str], opts: &LoadOptions) -> (Diagnostics, String) {
    match load_in(dir, text, sets, opts) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => {
            let r = e.render();
            (e, r)
        }
    }
}

const BASE: &str = "dataset corpus path=\"data/t.jsonl\" format=text\n\
                    tokenizer tok vocab-size=512 { data corpus; }\n\
                    model tiny tokenizer=tok\n";

fn untrusted() -> LoadOptions {
    LoadOptions {
        untrusted: true,
        ..Default::default()
    }
}

#[test]
fn deep_nesting_is_a_located_error_not_a_crash() {
    let d = repo();
    let sub = d.path().join("repo/sub");
    let deep = format!("{}{}", "a { ".repeat(2000), "} ".repeat(2000));
    let (e, r) = err_in(&sub, &deep, &[], &LoadOptions::default());
    assert_eq!(e.len(), 1, "{r}");
    assert!(
        e.messages()[0].contains("nested more than 64 levels"),
        "{r}"
    );
    assert_eq!(
        e.errors()[0].location().unwrap(),
        format!("{}:1:259", sub.join("main.kdl").display())
    );
    assert!(e.errors()[0].hint().unwrap().contains("unbalanced"));
    // Unbalanced closers, comment items and `/-` chains are bounded too.
    for text in [
        "}".repeat(300_000),
        format!("a /* {} */", "*/*".repeat(100_000)),
        format!("{}a", "/- ".repeat(100_000)),
        format!("a {{}}\"{}\"", "{".repeat(100_000)),
    ] {
        let (e, _) = err_in(&sub, &text, &[], &LoadOptions::default());
        assert!(!e.is_empty());
    }
    // At the limit a recipe still loads (the nesting is in a record-free kind's child, so the
    // error is about the schema, not the depth).
    let ok_depth = format!("dataset x {}{}", "{ a ".repeat(63), "}".repeat(63));
    let (e, r) = err_in(&sub, &ok_depth, &[], &LoadOptions::default());
    assert!(!r.contains("nested more than"), "{r}");
    assert!(!e.is_empty());
}

#[test]
fn reference_chains_do_not_recurse() {
    // 4,900 merges in a chain (each declared before what it references, so the walk from the
    // first goes 4,900 deep) closed into a cycle, loaded on a small stack.
    let mut text = String::new();
    for i in 0..4900 {
        text.push_str(&format!("merge m{i} {{ model m{}; }}\n", i + 1));
    }
    text.push_str("merge m4900 { model m0; }\n");
    let d = repo();
    let sub = d.path().join("repo/sub");
    let r = std::thread::Builder::new()
        .stack_size(128 << 10)
        .spawn(move || {
            load_str("main.kdl", &text, &sub, &common::registry(), &[])
                .unwrap_err()
                .messages()
        })
        .unwrap()
        .join()
        .unwrap();
    assert!(r.iter().any(|m| m.contains("reference cycle")), "{r:?}");
}

#[test]
fn a_million_variant_sweep_is_refused_before_expansion() {
    let d = repo();
    let sub = d.path().join("repo/sub");
    // Six axes of ten values: 10^6 variants. A mistyped value (`x`) would be reported if the
    // values were checked: they are not, nothing is expanded.
    let axes = [
        "hidden-size",
        "layers",
        "heads",
        "intermediate-size",
        "max-position",
        "seed",
    ]
    .iter()
    .map(|p| format!("    tiny.{p} x 2 3 4 5 6 7 8 9 10\n"))
    .collect::<String>();
    let text = format!("{BASE}sweep {{\n{axes}}}\n");
    let (e, r) = err_in(&sub, &text, &[], &LoadOptions::default());
    assert_eq!(e.len(), 1, "{r}");
    assert_eq!(
        e.messages()[0],
        "the sweep has 1,000,000 variants, more than the limit of 10,000"
    );
    assert!(
        e.errors()[0].location().unwrap().ends_with("main.kdl:4:1"),
        "{r}"
    );
    assert!(
        e.errors()[0]
            .hint()
            .unwrap()
            .contains("--max-variants 1000000"),
        "{r}"
    );
    // Raising the limit lets validation run (and find the mistyped values).
    let opts = LoadOptions::default().with_max_variants(1_000_000);
    let (e, _) = err_in(&sub, &text, &[], &opts);
    assert!(
        e.messages()
            .iter()
            .all(|m| m.contains("expects an integer")),
        "{:?}",
        e.messages()
    );
    // Zip groups count once; `--set` replaces an axis.
    let zipped = format!(
        "{BASE}sweep {{ zip {{ tiny.seed 1 2 3 4 5; tiny.layers 1 2 3 4 5; }}; tiny.heads 1 2 }}\n"
    );
    let small = LoadOptions::default().with_max_variants(10);
    assert!(load_in(&sub, &zipped, &[], &small).is_ok());
    let tiny = LoadOptions {
        max_variants: 5,
        ..Default::default()
    };
    assert!(load_in(&sub, &zipped, &[], &tiny).is_err());
    assert!(load_in(&sub, &zipped, &["tiny.heads=4"], &tiny).is_ok());
}

#[test]
fn an_expansion_too_large_for_the_instance_limit_is_refused() {
    // 2,000 variants reaching a chain of 600 nodes: 1.2 M instances.
    let d = repo();
    let sub = d.path().join("repo/sub");
    let mut text = String::from(BASE);
    text.push_str("merge n0 { model tiny; }\n");
    for i in 1..600 {
        text.push_str(&format!("merge n{i} {{ model n{}; }}\n", i - 1));
    }
    let seeds: Vec<String> = (0..2000).map(|i| i.to_string()).collect();
    text.push_str(&format!("sweep {{ tiny.seed {} }}\n", seeds.join(" ")));
    let (e, r) = err_in(&sub, &text, &[], &LoadOptions::default());
    assert_eq!(e.len(), 1, "{r}");
    assert!(
        e.messages()[0].contains("instance ids, more than the limit of 1,000,000"),
        "{r}"
    );
    assert!(
        e.errors()[0].hint().unwrap().contains("--max-variants"),
        "{r}"
    );
}

#[test]
fn size_and_node_limits_are_located_errors() {
    let d = repo();
    let sub = d.path().join("repo/sub");
    // Nodes: 10,001 at top level.
    let many: String = (0..10_001).map(|i| format!("x{i}\n")).collect();
    let (e, r) = err_in(&sub, &many, &[], &LoadOptions::default());
    assert_eq!(e.messages(), vec!["the recipe has more than 10,000 nodes"]);
    assert!(
        e.errors()[0]
            .location()
            .unwrap()
            .ends_with("main.kdl:10001:1"),
        "{r}"
    );
    // `repeat` copies count.
    let (e, _) = err_in(
        &sub,
        "repeat 1000 { a \"x-{i}\"; b; c; d; e; f; g; h; i; j; k; }",
        &[],
        &LoadOptions::default(),
    );
    assert!(
        e.messages()[0].contains("makes 11,000 nodes"),
        "{:?}",
        e.messages()
    );
    // Bytes: the root file, then an include.
    let big = format!("// {}\n", "x".repeat(1 << 20));
    let (e, r) = err_in(&sub, &big, &[], &LoadOptions::default());
    assert!(
        e.messages()[0].contains("larger than the limit of 1 MiB"),
        "{r}"
    );
    assert!(e.errors()[0].location().is_some(), "{r}");
    fs::write(sub.join("big.kdl"), &big).unwrap();
    let (e, r) = err_in(&sub, "include \"big.kdl\"\n", &[], &LoadOptions::default());
    assert!(
        e.messages()[0].contains("more than the limit per file of 1 MiB"),
        "{r}"
    );
    assert!(
        e.errors()[0].location().unwrap().ends_with("main.kdl:1:9"),
        "{r}"
    );
}

#[test]
fn include_reads_recipe_files_only_and_never_echoes_others() {
    let d = repo();
    let sub = d.path().join("repo/sub");
    let secret = d.path().join("secret.txt");
    // Any file can be named; none is shown.
    let cases = [
        "/proc/self/environ".to_string(),
        "/etc/passwd".to_string(),
        secret.display().to_string(),
        "../../secret.txt".to_string(),
        "data".to_string(),
    ];
    for c in &cases {
        let (e, r) = err_in(
            &sub,
            &format!("include \"{c}\"\n"),
            &[],
            &LoadOptions::default(),
        );
        assert_eq!(e.len(), 1, "{r}");
        assert!(
            e.messages()[0].contains("accepts only KDL recipe files"),
            "{r}"
        );
        assert!(!r.contains("SECRET-MARKER") && !r.contains("PATH="), "{r}");
    }
    // Renaming does not help: a `.kdl` link to it, a directory, a fifo.
    std::os::unix::fs::symlink(&secret, sub.join("link.kdl")).unwrap();
    fs::create_dir_all(sub.join("dir.kdl")).unwrap();
    let fifo = std::process::Command::new("mkfifo")
        .arg(sub.join("pipe.kdl"))
        .status()
        .is_ok_and(|s| s.success());
    for (name, phrase) in [
        ("link.kdl", "a link to a file without the `.kdl` extension"),
        ("dir.kdl", "is a directory"),
        ("pipe.kdl", "is a special file"),
    ] {
        if name == "pipe.kdl" && !fifo {
            continue;
        }
        let (e, r) = err_in(
            &sub,
            &format!("include \"{name}\"\n"),
            &[],
            &LoadOptions::default(),
        );
        assert!(e.messages()[0].contains(phrase), "{name}: {r}");
        assert!(!r.contains("SECRET-MARKER"), "{r}");
    }
    // An outside `.kdl` that does not parse: located, without its text.
    fs::write(d.path().join("leak.kdl"), "SECRET-MARKER = 1\n").unwrap();
    let (e, r) = err_in(
        &sub,
        "include \"../../leak.kdl\"\n",
        &[],
        &LoadOptions::default(),
    );
    assert!(!r.contains("SECRET-MARKER"), "{r}");
    assert!(r.contains("leak.kdl:1:"), "{r}");
    assert!(e.messages()[0].contains("KDL syntax error"), "{r}");
    // Inside the repository the snippet is shown as usual.
    fs::write(sub.join("bad.kdl"), "VISIBLE = 1\n").unwrap();
    let (_, r) = err_in(&sub, "include \"bad.kdl\"\n", &[], &LoadOptions::default());
    assert!(r.contains("VISIBLE = 1"), "{r}");
}

#[test]
fn untrusted_mode_keeps_every_path_inside_the_repository() {
    let d = repo();
    let sub = d.path().join("repo/sub");
    fs::create_dir_all(sub.join("shards")).unwrap();
    fs::write(sub.join("shards/a.jsonl"), "{}\n").unwrap();
    fs::write(d.path().join("repo/top.jsonl"), "{}\n").unwrap();
    fs::write(
        d.path().join("outside.kdl"),
        "dataset o path=\"x\" format=text\n",
    )
    .unwrap();
    // Inside: relative, `..` within the repository, globs, directories.
    let inside = "dataset a path=\"data/t.jsonl\" format=text\n\
                  dataset b path=\"../top.jsonl\" format=text\n\
                  dataset c path=\"shards/*.jsonl\" format=text\n\
                  dataset e path=\"shards\" format=text\n";
    assert!(load_in(&sub, inside, &[], &untrusted()).is_ok());
    // Outside: refused whether or not it exists, as written or through a link.
    std::os::unix::fs::symlink(d.path().join("secret.txt"), sub.join("data/link.jsonl")).unwrap();
    for (path, phrase) in [
        ("../../secret.txt", "is outside the recipe's repository"),
        (
            "../../no-such-file.jsonl",
            "is outside the recipe's repository",
        ),
        ("/etc/passwd", "is outside the recipe's repository"),
        ("/etc/*", "is outside the recipe's repository"),
        ("../../*.txt", "is outside the recipe's repository"),
        ("data/link.jsonl", "through a symlink"),
        ("data", "holds a symlink leading outside"),
        ("data/*.jsonl", "holds a symlink leading outside"),
    ] {
        let text = format!("dataset x path=\"{path}\" format=text\n");
        let (e, r) = err_in(&sub, &text, &[], &untrusted());
        assert_eq!(e.len(), 1, "{path}: {r}");
        assert!(e.messages()[0].contains(phrase), "{path}: {r}");
        assert!(e.errors()[0].hint().unwrap().contains("--untrusted"), "{r}");
        assert!(!r.contains("SECRET-MARKER"), "{r}");
        // Trusted, the same recipe passes the path check (or reports it missing).
        if let Err(e) = load_in(&sub, &text, &[], &LoadOptions::default()) {
            assert!(
                e.messages()[0].contains("file not found"),
                "{path}: {}",
                e.render()
            );
        }
    }
    // `--set` paths and includes too.
    let (e, _) = err_in(&sub, inside, &["a.path=\"/etc/passwd\""], &untrusted());
    assert!(e.messages()[0].contains("outside the recipe's repository"));
    let (e, r) = err_in(&sub, "include \"../../outside.kdl\"\n", &[], &untrusted());
    assert!(
        e.messages()[0].starts_with("include: `../../outside.kdl` is outside"),
        "{r}"
    );
    assert!(load_in(
        &sub,
        "include \"../../outside.kdl\"\n",
        &[],
        &LoadOptions::default()
    )
    .unwrap_err()
    .messages()[0]
        .contains("file not found"));
}

#[test]
fn control_characters_are_refused_in_names_sets_and_sweeps() {
    let d = repo();
    let sub = d.path().join("repo/sub");
    let (e, r) = err_in(
        &sub,
        "dataset \"a\\u{0}b\" path=\"data/t.jsonl\" format=text\n",
        &[],
        &LoadOptions::default(),
    );
    assert_eq!(
        e.messages(),
        vec!["node name `a\\u{0}b` contains the control character \\u{0}"]
    );
    assert!(!r.contains('\0'), "{r:?}");
    assert!(
        e.errors()[0].location().unwrap().ends_with("main.kdl:1:9"),
        "{r}"
    );
    let (e, _) = err_in(
        &sub,
        "dataset \"x\\u{202e}\" path=\"data/t.jsonl\" format=text\n",
        &[],
        &LoadOptions::default(),
    );
    assert!(e.messages()[0].contains("\\u{202e}"));
    let (e, _) = err_in(&sub, BASE, &["tiny\u{0}.seed=1"], &LoadOptions::default());
    assert!(e.messages()[0].contains("override target `tiny\\u{0}.seed` contains the control"));
    let sweep = format!("{BASE}sweep {{ corpus.format text \"mes\\u{{1b}}sages\" }}\n");
    let (e, _) = err_in(&sub, &sweep, &[], &LoadOptions::default());
    assert!(
        e.messages()[0]
            .contains("sweep value of `corpus.format` contains the control character \\u{1b}"),
        "{:?}",
        e.messages()
    );
}

#[test]
fn an_error_far_into_a_long_line_renders_a_window_of_it() {
    // miette panics drawing a label past column 65,535 (found by the fuzzer): the line is drawn
    // as a window around the label, which the header still places at column 70,042.
    let d = repo();
    let sub = d.path().join("repo/sub");
    let text = format!(
        "dataset x path=\"data/t.jsonl\" format=text{}bogus=1\n",
        " ".repeat(70_000)
    );
    let (e, r) = err_in(&sub, &text, &[], &LoadOptions::default());
    assert_eq!(e.len(), 1, "{r}");
    assert!(r.contains("main.kdl:1:70042]"), "{r}");
    assert!(r.contains("unknown parameter `bogus`"), "{r}");
    assert!(
        r.contains(&format!("1 │ …{}bogus=1", " ".repeat(60))),
        "{r}"
    );
    assert!(r.len() < 1000, "the 70,000-character line is not drawn");
}

#[test]
fn rendered_diagnostics_never_carry_control_characters() {
    // A raw ESC in the file (a syntax error, so its line is shown) and one in a reference
    // written as an escape (echoed in the message).
    let d = repo();
    let sub = d.path().join("repo/sub");
    for text in [
        "dataset x \u{1b}[2J\u{1b}]0;pwned\u{7}\n",
        "model m tokenizer=\"t\\u{1b}[2J\"\n",
    ] {
        let (_, r) = err_in(&sub, text, &[], &LoadOptions::default());
        assert!(!r.chars().any(|c| c.is_control() && c != '\n'), "{r:?}");
        assert!(r.contains("\\u{1b}"), "{r}");
    }
}
