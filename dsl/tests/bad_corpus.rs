//! The bad-recipe corpus (`tests/bad/recipes/*.kdl`) through `dsl::load` with the test
//! registry: each file yields the expected number of errors and a key phrase, never a panic,
//! and renders deterministically. (The e2e harness snapshots `temper check` on the same files.)
use crate::common;

use std::path::{Path, PathBuf};

/// (file, expected error count, phrase one of the messages contains).
const EXPECT: &[(&str, usize, &str)] = &[
    ("01-syntax-unclosed-brace.kdl", 2, "KDL syntax error"),
    ("02-syntax-unterminated-string.kdl", 1, "KDL syntax error"),
    ("03-syntax-bare-true.kdl", 1, "KDL syntax error"),
    ("04-syntax-bad-number.kdl", 1, "KDL syntax error"),
    ("05-syntax-missing-value.kdl", 1, "KDL syntax error"),
    ("06-unknown-kind.kdl", 1, "unknown node kind `datset`"),
    (
        "07-unknown-param.kdl",
        1,
        "unknown parameter `skip-invalids`",
    ),
    ("08-mistyped-int.kdl", 1, "`tiny.layers` expects an integer"),
    (
        "09-mistyped-float.kdl",
        1,
        "`tiny.rope-theta` expects a number",
    ),
    (
        "10-mistyped-bool.kdl",
        1,
        "`corpus.skip-invalid` expects a boolean",
    ),
    ("11-mistyped-enum.kdl", 1, "unknown value `message`"),
    (
        "12-missing-required.kdl",
        1,
        "missing required parameter `format`",
    ),
    (
        "13-missing-reference.kdl",
        1,
        "refers to unknown node `tokk`",
    ),
    (
        "14-wrong-ref-type.kdl",
        1,
        "but `corpus` is a `dataset` node",
    ),
    (
        "15-cycle-two-nodes.kdl",
        1,
        "reference cycle: tok → tiny → tok",
    ),
    (
        "16-cycle-four-nodes.kdl",
        1,
        "reference cycle: tok-a → m-b → tok-b → m-a → tok-a",
    ),
    ("17-duplicate-name.kdl", 1, "duplicate node name `corpus`"),
    (
        "18-duplicate-across-include.kdl",
        1,
        "duplicate node name `chat`",
    ),
    (
        "19-include-missing-file.kdl",
        1,
        "cannot read included file",
    ),
    ("20-include-cycle.kdl", 1, "include cycle"),
    ("21-sweep-unknown-node.kdl", 1, "names unknown node `tinyy`"),
    ("22-sweep-unknown-param.kdl", 1, "has no parameter `layer`"),
    ("23-sweep-non-semantic.kdl", 1, "cannot sweep `tiny.device`"),
    (
        "24-sweep-zip-length-mismatch.kdl",
        1,
        "same number of values",
    ),
    (
        "25-sweep-mistyped-value.kdl",
        1,
        "`tiny.layers` expects an integer",
    ),
    (
        "26-sweep-duplicate-axis.kdl",
        1,
        "`tiny.layers` is swept twice",
    ),
    (
        "27-set-unknown-node.kdl",
        1,
        "--set names unknown node `tinny`",
    ),
    (
        "28-set-mistyped-value.kdl",
        1,
        "`tiny.layers` expects an integer",
    ),
    ("29-set-unknown-param.kdl", 1, "unknown parameter `hidden`"),
    ("30-missing-data-file.kdl", 1, "file not found"),
    ("31-multiple-errors.kdl", 4, "refers to unknown node `tokk`"),
    ("32-check-tokenizer-no-mode.kdl", 1, "exactly one source"),
    (
        "33-check-model-path-and-size.kdl",
        1,
        "size parameters apply only when initialising",
    ),
    ("34-check-model-heads.kdl", 1, "not divisible by heads 5"),
    ("35-node-without-name.kdl", 1, "`dataset` node has no name"),
    ("36-param-set-twice.kdl", 1, "`format` is set twice"),
    ("37-unknown-record-field.kdl", 1, "unknown field `promt`"),
    ("38-out-of-range.kdl", 1, "must be at least 1"),
    ("39-check-model-two-sources.kdl", 1, "exactly one of `path`"),
    ("40-include-relative-path.kdl", 1, "file not found"),
    ("41-unexpected-argument.kdl", 2, "unexpected argument"),
    ("42-set-bare-keyword.kdl", 1, "bad value in override"),
    (
        "43-defaults-semantic-param.kdl",
        1,
        "`defaults` cannot set `seed`",
    ),
    ("44-deep-nesting.kdl", 1, "nested more than 64 levels deep"),
    (
        "45-sweep-million-variants.kdl",
        1,
        "the sweep has 1,000,000 variants, more than the limit of 10,000",
    ),
    (
        "46-include-proc-environ.kdl",
        1,
        "`include` accepts only KDL recipe files",
    ),
    ("47-include-passwd.kdl", 1, "accepts only KDL recipe files"),
    (
        "48-untrusted-outside-path.kdl",
        1,
        "`/etc/passwd` is outside the recipe's repository",
    ),
    (
        "49-untrusted-include-outside.kdl",
        1,
        "include: `../../../../../../../../../../tmp/team-base.kdl` is outside",
    ),
    (
        "50-nul-in-node-name.kdl",
        1,
        "contains the control character \\u{0}",
    ),
    (
        "51-sweep-over-max-variants.kdl",
        1,
        "the sweep has 6 variants, more than the limit of 5",
    ),
    // The test registry has no `cpt` kind (the e2e snapshot checks the real one).
    ("60-adam-eps-zero.kdl", 1, "unknown node kind `cpt`"),
    (
        "61-device-typo.kdl",
        2,
        "device `cuda:9` requested but this machine has 2 CUDA device(s)",
    ),
    // Cluster settings are the runner's to check (the dsl keeps them as written): 0 errors here,
    // the e2e snapshots hold the runner's located errors.
    ("62-executor-setting-typo.kdl", 0, ""),
    ("63-resources-bad-time.kdl", 0, ""),
    // LoRA targets and ranks are checked by the kinds' declarations (`kinds::lora`), which the
    // test registry does not have.
    ("64-lora-target-typo.kdl", 1, "unknown node kind `sft`"),
    ("65-lora-rank-zero.kdl", 1, "unknown node kind `sft`"),
    ("66-lora-tied-lm-head.kdl", 1, "unknown node kind `sft`"),
    // Generation parameters are checked by `kinds::generate` and `kinds::pairs`.
    ("67-generate-n-zero.kdl", 1, "unknown node kind `generate`"),
    (
        "68-generate-negative-temperature.kdl",
        1,
        "unknown node kind `generate`",
    ),
    (
        "69-generate-top-p-zero.kdl",
        1,
        "unknown node kind `generate`",
    ),
    (
        "70-generate-top-p-above-one.kdl",
        1,
        "unknown node kind `generate`",
    ),
    (
        "71-pairs-judge-without-model.kdl",
        2,
        "unknown node kind `pairs`",
    ),
    (
        "72-deep-nesting-one-line.kdl",
        1,
        "nested more than 64 levels deep",
    ),
    // `ranks` against the machine and LoRA ranks against the model are checked by the training
    // kinds' declarations (`kinds::train`, `kinds::lora`).
    ("73-ranks-more-than-cores.kdl", 1, "unknown node kind `sft`"),
    ("74-ranks-more-than-gpus.kdl", 1, "unknown node kind `sft`"),
    ("75-lora-rank-absurd.kdl", 1, "unknown node kind `sft`"),
];

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/bad/recipes")
}

/// `--set` arguments and load options (`--untrusted`, `--max-variants N`, `--cuda-devices N`,
/// `--cpu-cores N`) from a first-line
/// comment `// args: --set a.b=1 --untrusted`.
fn args(text: &str) -> (Vec<String>, dsl::LoadOptions) {
    let mut opts = dsl::LoadOptions::default();
    let Some(rest) = text
        .lines()
        .next()
        .and_then(|l| l.trim().strip_prefix("// args:"))
    else {
        return (Vec::new(), opts);
    };
    let words: Vec<&str> = rest.split_whitespace().collect();
    opts.untrusted = words.contains(&"--untrusted");
    for w in words.windows(2).filter(|w| w[0] == "--cuda-devices") {
        opts.cuda_devices = Some(w[1].parse().unwrap());
    }
    for w in words.windows(2).filter(|w| w[0] == "--cpu-cores") {
        opts.cpu_cores = Some(w[1].parse().unwrap());
    }
    for w in words.windows(2).filter(|w| w[0] == "--max-variants") {
        opts = opts.with_max_variants(w[1].parse().unwrap());
    }
    let sets = words
        .windows(2)
        .filter(|w| w[0] == "--set")
        .map(|w| w[1].to_string())
        .collect();
    (sets, opts)
}

#[test]
fn every_corpus_file_has_an_expectation() {
    let mut files: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".kdl"))
        .collect();
    files.sort();
    let listed: Vec<String> = EXPECT.iter().map(|e| e.0.to_string()).collect();
    assert_eq!(files, listed);
    assert!(files.len() >= 30);
}

#[test]
fn corpus_files_fail_with_the_expected_errors() {
    let reg = common::registry();
    let mut failures = Vec::new();
    for (file, count, phrase) in EXPECT {
        let path = dir().join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        let (sets, opts) = args(&text);
        let result = std::panic::catch_unwind(|| dsl::load_with(&path, &reg, &sets, &opts));
        let Ok(result) = result else {
            failures.push(format!("{file}: PANIC"));
            continue;
        };
        if *count == 0 {
            if let Err(e) = result {
                failures.push(format!("{file}: the dsl should accept it:\n{}", e.render()));
            }
            continue;
        }
        let Err(e) = result else {
            failures.push(format!("{file}: loaded without errors"));
            continue;
        };
        let rendered = e.render();
        if std::env::var_os("SHOW_CORPUS").is_some() {
            println!("===== {file}\n{rendered}");
        }
        if e.len() != *count || !e.messages().iter().any(|m| m.contains(phrase)) {
            failures.push(format!(
                "{file}: expected {count} error(s) with {phrase:?}, got:\n{rendered}"
            ));
        }
        // Every located error shows file:line:col of this corpus (or the --set pseudo-source).
        assert!(
            rendered.contains(".kdl:") || rendered.contains("[--set:"),
            "{file}: {rendered}"
        );
        assert_eq!(
            rendered,
            dsl::load_with(&path, &reg, &sets, &opts)
                .unwrap_err()
                .render()
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
