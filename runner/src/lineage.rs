//! What an adapter artifact folds in, read from its `temper_adapter.json` (written by the
//! worker's LoRA stages): the one reader of that file on the front's side, for `export`, `gc`
//! and the damage checks of a run.

use std::path::Path;

/// What an adapter artifact in `dir` is applied on, as (node, key): its base first, then the
/// adapters folded below it (its `temper_adapter.json`); empty for anything else.
pub fn adapter_lineage(dir: &Path) -> Vec<(String, String)> {
    let Ok(text) = std::fs::read_to_string(dir.join("temper_adapter.json")) else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let stack = v["stack"].as_array().into_iter().flatten();
    std::iter::once(&v["base"])
        .chain(stack)
        .filter_map(|r| Some((r["node"].as_str()?.into(), r["key"].as_str()?.into())))
        .collect()
}
