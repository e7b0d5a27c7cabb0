//! JSON-lines reading: one JSON object per line, blank lines ignored, locations `file:LINE`
//! (1-based, counting blank lines, so they match an editor's line numbers).

use super::sources::SourceFile;
use super::validate::Invalid;
use crate::stage::StageError;
use anyhow::Context;
use serde_json::Value as J;
use std::fs::File;
use std::io::{BufRead, BufReader};

const ARRAY_HINT: &str =
    "the file looks like one JSON array; write one JSON object per line (JSON lines)";

/// A serde_json error without its " at line L column C" suffix, plus the column.
fn describe(e: &serde_json::Error) -> String {
    let s = e.to_string();
    let msg = match s.rfind(" at line ") {
        Some(i) => &s[..i],
        None => s.as_str(),
    };
    format!("{msg} (column {})", e.column())
}

/// Calls `f(location, parsed)` for every non-blank line of `file`, in order.
pub fn read(
    file: &SourceFile,
    mut f: impl FnMut(String, Result<J, Invalid>) -> Result<(), StageError>,
) -> Result<(), StageError> {
    let fh = File::open(&file.path)
        .with_context(|| format!("opening {}", file.name))
        .map_err(StageError::Other)?;
    let mut reader = BufReader::new(fh);
    let mut buf = Vec::new();
    let mut line_no = 0usize;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .with_context(|| format!("reading {}", file.name))
            .map_err(StageError::Other)?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let loc = format!("{}:{line_no}", file.name);
        let text = match std::str::from_utf8(&buf) {
            Ok(t) => t,
            Err(e) => {
                f(
                    loc,
                    Err(Invalid::new(
                        "invalid-json",
                        format!("not valid UTF-8 (byte {})", e.valid_up_to() + 1),
                    )),
                )?;
                continue;
            }
        };
        let text = text.trim_start_matches('\u{feff}').trim();
        if text.is_empty() {
            continue;
        }
        let parsed = match serde_json::from_str::<J>(text) {
            Ok(J::Array(_)) if line_no == 1 => Err(Invalid::new(
                "not-an-object",
                "expected a JSON object, found a list",
            )
            .hint(ARRAY_HINT)),
            Ok(v) => Ok(v),
            Err(e) => {
                let inv = Invalid::new("invalid-json", format!("invalid JSON: {}", describe(&e)));
                Err(if line_no == 1 && text.starts_with('[') {
                    inv.hint(ARRAY_HINT)
                } else {
                    inv.hint("each line must hold exactly one complete JSON object")
                })
            }
        };
        f(loc, parsed)?;
    }
    Ok(())
}
