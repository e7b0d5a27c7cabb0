//! The malformed-data corpus (`tests/bad/data-recipes/`): every recipe passes the DSL and its
//! first node fails with a user error (message naming the file), never a panic or an internal
//! error. The end-to-end harness snapshots the same cases through the binary; a recipe whose
//! first line starts `// whole-recipe:` fails in a later node, given the earlier ones' outputs,
//! and only the harness runs it.

use recipes::{CancelToken, NoProgress, StageCtx, StageError};
use std::path::Path;
use std::sync::Arc;

#[test]
fn every_bad_data_recipe_fails_with_a_user_error() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/bad/data-recipes");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 12);
    let registry = kinds::registry();
    let stages = recipes::stages();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        if text.starts_with("// whole-recipe:") {
            continue;
        }
        let recipe = dsl::load(&f, &registry, &[])
            .unwrap_or_else(|d| panic!("{}: {}", f.display(), d.render()));
        let node = &recipe.nodes[0];
        let stage = stages
            .iter()
            .find(|s| s.schema().name == node.kind)
            .unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let out_dir = tmp.path().join("out");
        std::fs::create_dir_all(&out_dir).unwrap();
        let ctx = StageCtx::new(
            recipes::Job {
                node: node.name.clone(),
                kind: node.kind.clone(),
                key: String::new(),
                params: node.params.clone(),
                root_dir: recipe.root_dir.clone(),
                inputs: Default::default(),
                out_dir,
                work_dir: tmp.path().join("work"),
                device: "cpu".into(),
                ..Default::default()
            },
            Arc::new(NoProgress),
            CancelToken::new(),
        );
        match stage.run(&ctx) {
            Err(StageError::User { message, hint }) => {
                assert!(
                    message.contains("../data/"),
                    "{}: message names no file: {message}",
                    f.display()
                );
                eprintln!(
                    "{}:\n  {message}\n  hint: {}",
                    f.file_name().unwrap().to_string_lossy(),
                    hint.unwrap_or_default()
                );
            }
            other => panic!("{}: expected a user error, got {other:?}", f.display()),
        }
    }
}
