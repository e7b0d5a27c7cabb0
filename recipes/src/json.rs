//! The crate's JSON file writer: every JSON file temper writes into an artifact (configs,
//! summaries, mixtures, tokenizer configs) is pretty-printed with a final newline, like the
//! files `transformers` writes, so diffs and `cat` read well.

use anyhow::Context;
use serde_json::Value as J;
use std::fs;
use std::path::Path;

/// Writes `value` as pretty JSON with a final newline.
pub fn write_json(path: &Path, value: &J) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}
